"""The ``kmsg`` collector: record parsing, resume state, and end to end through a real busd."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio
from conftest import ROOT, Bus, async_wait_for, wait_for

from bus import config, protocol
from bus.client import ControlClient, Publisher
from bus.event import Event, new_event
from collectors.kmsg import (
    MAX_RECORD,
    Assembler,
    Bad,
    BadInput,
    Kmsg,
    Lines,
    Record,
    boot_id,
    parse_dictionary_line,
    parse_header,
    severity_of,
    unescape,
)

SAMPLE = ROOT.parent / "shared" / "samples" / "kmsg-scsi-cascade.kmsg"
BOOT_TIME = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def record(seq: int, msg: str = "", prio: int = 6, usec: int | None = None, **fields: str) -> str:
    """One record in the /dev/kmsg text format, with its dictionary lines."""
    usec = seq * 1000 if usec is None else usec
    return f"{prio},{seq},{usec},-;{msg or f'message {seq}'}\n" + "".join(f" {k}={v}\n" for k, v in fields.items())


def records(first: int, last: int) -> str:
    return "".join(record(s) for s in range(first, last + 1))


def seqs(events: list[Event]) -> list[int]:
    return [e["extensions"]["seq"] for e in events]


def kmsg_bus(bus: Bus, path: Path | str, **options: Any) -> None:
    """Start busd with one kmsg collector named ``kmsg`` and wait until it reads."""
    bus.write({"kmsg": {"type": "collector", "builtin": "kmsg", "path": str(path), **options}})
    bus.start()
    bus.wait_running("kmsg")
    wait_reading(bus)


def wait_reading(bus: Bus, count: int = 1) -> None:
    wait_for(lambda: len(plugin_logs(bus, "kmsg_reading")) >= count, what="kmsg_reading in the log")


def plugin_logs(bus: Bus, event: str) -> list[dict[str, Any]]:
    return [r for r in bus.log_records() if r.get("plugin") == "kmsg" and r.get("event") == event]


def produced(bus: Bus) -> int:
    return int(bus.plugin("kmsg")["events_in"])


def saved_state(bus: Bus) -> dict[str, Any] | None:
    path = bus.state_dir / "kmsg" / "state.json"
    return json.loads(path.read_text()) if path.exists() else None


def append(path: Path, text: str | bytes) -> None:
    with path.open("ab") as f:
        f.write(text.encode() if isinstance(text, str) else text)


# -- the record parser -----------------------------------------------------------------------------

def test_header_fields_level_facility_and_severity() -> None:
    rec = parse_header(b"3,1243,9436467335,-;print_req_error: I/O error, dev sdf, sector 9984")
    assert (rec.level, rec.facility, rec.seq, rec.usec, rec.flags) == (3, 0, 1243, 9436467335, "-")
    assert rec.msg == "print_req_error: I/O error, dev sdf, sector 9984"
    user = parse_header(b"11,7,5,c;busdtest: something")  # <11> = facility 1 (user), level 3
    assert (user.level, user.facility, user.flags) == (3, 1, "c")
    # newer kernels may add fields after the flags (caller id): they are accepted and left out
    assert parse_header(b"6,8,9,-,caller=T42;hello").msg == "hello"
    assert parse_header(b"6,8,9,-;a;b").msg == "a;b"
    assert [severity_of(level) for level in range(8)] == ["error"] * 4 + ["warn"] + ["info"] * 3


def test_escapes_are_decoded() -> None:
    assert unescape(b"line one\\x0aline two") == "line one\nline two"
    assert unescape(b"back\\x5cslash tab\\x09x") == "back\\slash tab\tx"
    assert unescape(b"caf\\xc3\\xa9") == "café"  # escaped UTF-8 bytes become one character
    assert unescape(b"bad \\xff byte") == "bad \ufffd byte"
    assert unescape(b"not an escape \\xZZ") == "not an escape \\xZZ"
    rec = parse_header(b"4,2,3,-;md/raid1:md0: Disk failure on sdb1.\\x0amd/raid1:md0: Operation continuing")
    assert rec.msg == "md/raid1:md0: Disk failure on sdb1.\nmd/raid1:md0: Operation continuing"


def test_dictionary_lines() -> None:
    assert parse_dictionary_line(b" SUBSYSTEM=scsi") == ("SUBSYSTEM", "scsi")
    assert parse_dictionary_line(b" DEVICE=+scsi:6:0:0:0") == ("DEVICE", "+scsi:6:0:0:0")
    assert parse_dictionary_line(b" X=a=b\\x20c") == ("X", "a=b c")
    with pytest.raises(BadInput) as exc:
        parse_dictionary_line(b" no equals sign")
    assert exc.value.kind == "bad_dictionary"


def assemble(lines: list[bytes]) -> tuple[list[Record], list[Bad]]:
    bad: list[Bad] = []
    asm = Assembler(bad.append)
    out = [r for n, line in enumerate(lines, 1) if (r := asm.feed(line, n)) is not None]
    last = asm.flush()
    return out + ([last] if last else []), bad


def test_sample_records_with_their_dictionaries() -> None:
    recs, bad = assemble(SAMPLE.read_bytes().splitlines())
    assert bad == []
    assert [r.seq for r in recs] == [1239, 1240, 1241, 1242, 1243, 1244, 1245, 1246, 1256]
    assert recs[0].fields == {"SUBSYSTEM": "scsi", "DEVICE": "+scsi:6:0:0:0"}
    assert recs[0].line == 1 and recs[1].line == 4
    assert recs[4].fields == {} and recs[4].level == 3


@pytest.mark.parametrize(("line", "kind"), [
    (b"this line has no semicolon at all", "no_semicolon"),
    (b"6,1239,94364", "no_semicolon"),  # cut off inside the prefix
    (b"x,1,2,-;prio is not a number", "bad_header"),
    (b"6,1.5,2,-;seq is not an integer", "bad_header"),
    (b"6,1;too few fields", "bad_header"),
    (b"-6,1,2,-;negative", "bad_header"),
    (b"6,1,2,-;bad \xff\xfe utf-8", "invalid_utf8"),
    (b"6,1,2,-;a \x00 NUL byte", "nul_byte"),
    (b"6,1,2,-;" + b"x" * MAX_RECORD, "too_long"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "nul_byte"),
])
def test_garbage_headers_are_refused(line: bytes, kind: str) -> None:
    with pytest.raises(BadInput) as exc:
        parse_header(line)
    assert exc.value.kind == kind


def test_assembler_skips_garbage_and_keeps_good_records() -> None:
    lines = [
        b" SUBSYSTEM=orphan",                      # 1: a dictionary line before any record
        b"6,1,10,-;first",                         # 2
        b" SUBSYSTEM=scsi",                        # 3
        b" not a dictionary entry",                # 4: dropped, the record stays
        b"garbage without a semicolon",            # 5
        b" DEVICE=+belongs-to-the-garbage",        # 6: goes with the refused line, not reported
        b"6,2,20,-;second \xc3",                   # 7: invalid UTF-8
        b"",                                       # 8: blank, ignored
        b"6,3,30,-;third",                         # 9
        b" BIG=" + b"v" * (MAX_RECORD - 10),       # 10: record with its dictionary over the limit
        b"6,4,40,-;fourth",                        # 11
    ]
    recs, bad = assemble(lines)
    assert [(r.seq, r.msg, r.fields) for r in recs] == [(1, "first", {"SUBSYSTEM": "scsi"}), (4, "fourth", {})]
    assert [(b.kind, b.line, b.seq) for b in bad] == [
        ("orphan_continuation", 1, None), ("bad_dictionary", 4, 1), ("no_semicolon", 5, None),
        ("invalid_utf8", 7, None), ("too_long", 9, 3)]


def test_lines_split_across_reads_and_drop_overlong_lines() -> None:
    bad: list[Bad] = []
    lines = Lines(bad.append)
    assert lines.feed(b"6,1,1,-;on") == []
    assert lines.feed(b"e\n 6,") == [(1, b"6,1,1,-;one")]
    assert lines.feed(b"x" * (MAX_RECORD + 1)) == []
    assert [(b.kind, b.line) for b in bad] == [("too_long", 2)]
    assert lines.feed(b"still the same line\n6,3,1,-;three\n") == [(3, b"6,3,1,-;three")]
    assert lines.feed(b"6,4,1,-;cut") == []
    lines.reset()
    assert [(b.kind, b.line) for b in bad] == [("too_long", 2), ("truncated", 4)]
    assert lines.feed(b"6,5,1,-;five\n") == [(1, b"6,5,1,-;five")]


def test_publisher_reports_acknowledged_events_in_emission_order(tmp_path: Path) -> None:
    """Acknowledgements that arrive out of order are handed on only once everything before them is in."""
    async def scenario() -> list[list[str]]:
        ctx = zmq.asyncio.Context()
        router = ctx.socket(zmq.ROUTER)
        endpoint = f"ipc://{tmp_path}/control.sock"
        router.bind(endpoint)
        client = ControlClient(endpoint, ctx)
        publisher = Publisher(client, "p", min_batch=1)
        released: list[list[str]] = []
        publisher.on_acked = lambda events: released.append([e["msg"] for e in events])
        for msg in ("one", "two", "three"):
            await publisher.emit(new_event("t", "T", msg))
        requests = [await router.recv_multipart() for _ in range(3)]
        for answered, index in enumerate((2, 0, 1), 1):  # the broker answers the third request first
            ident, payload = requests[index][0], protocol.unpackb(requests[index][-1])
            await router.send_multipart([ident, protocol.packb({"id": payload["id"], "ok": True, "accepted": 1})])
            await async_wait_for(lambda n=answered: publisher.pending() == 3 - n, 5, "the publisher to release")
            released.append(["|"])
        await publisher.close(0)
        client.close()
        router.close(0)
        ctx.term()
        return released

    assert asyncio.run(scenario()) == [["|"], ["one"], ["|"], ["two"], ["three"], ["|"]]


# -- the collector without busd ---------------------------------------------------------------------

class Captured(Kmsg):
    """The collector with its output kept in a list instead of sent to busd."""

    def __init__(self, runtime_dir: Path, **options: Any) -> None:
        super().__init__({"BUS_PLUGIN": "k1", "BUS_RUNTIME_DIR": str(runtime_dir),
                          "BUS_PLUGIN_CONFIG": json.dumps({"builtin": "kmsg", "path": "/dev/kmsg", **options})})
        self.out: list[Event] = []

    async def emit(self, event: Event) -> None:
        self.out.append(event)


def rec(seq: int) -> Record:
    return Record(6, 0, seq, seq, "-", f"m{seq}")


def test_overrun_is_reported_as_a_gap(tmp_path: Path) -> None:
    k = Captured(tmp_path)

    async def feed() -> None:
        await k.handle(rec(5))
        await k.handle(rec(9), overrun=True)  # EPIPE: 6, 7 and 8 were overwritten
        await k.handle(rec(9))                # already emitted
        await k.handle(rec(10), overrun=True)  # EPIPE but nothing missing

    asyncio.run(feed())
    gap = k.out[1]
    assert [e["event_type"] for e in k.out] == ["KMSG", "KMSG_GAP", "KMSG", "KMSG"]
    assert gap["severity"] == "warn" and gap["system"] == "kmsg"
    assert gap["extensions"] == {"from_seq": 6, "to_seq": 8, "missed": 3}
    assert gap["msg"].startswith("3 kernel log records (seq 6..8) were lost")
    # the same record gives the same event id, so busd drops it when it is sent again after a crash
    again = Captured(tmp_path)
    asyncio.run(again.handle(rec(5)))
    assert again.out[0]["event_id"] == k.out[0]["event_id"]


def test_state_is_saved_atomically_and_checked(tmp_path: Path) -> None:
    k = Captured(tmp_path)
    assert k.load_state() is None
    k.on_acked([k.record_event(rec(41)), k.gap_event(43, 44, "test"), k.record_event(rec(45))])
    k.save_state()
    state_file = tmp_path / "state" / "k1.json"
    assert json.loads(state_file.read_text()) == {"boot_id": boot_id(), "path": "/dev/kmsg", "seq": 45}
    assert [p.name for p in state_file.parent.iterdir()] == ["k1.json"]  # no temporary file left
    assert Captured(tmp_path).load_state() == 45
    for bad in ({"boot_id": "another-boot", "path": "/dev/kmsg", "seq": 45},
                {"boot_id": boot_id(), "path": "/var/log/other", "seq": 45},
                {"boot_id": boot_id(), "path": "/dev/kmsg", "seq": "45"}):
        state_file.write_text(json.dumps(bad))
        assert Captured(tmp_path).load_state() is None
    state_file.write_text("{not json")
    assert Captured(tmp_path).load_state() is None


# -- through a real busd ----------------------------------------------------------------------------

def test_sample_through_busd(bus: Bus) -> None:
    kmsg_bus(bus, SAMPLE, since_boot=True)
    events = bus.tail(9, "--kind", "raw")
    expected, _ = assemble(SAMPLE.read_bytes().splitlines())
    assert len(events) == len(expected) == 9
    for event, want in zip(events, expected, strict=True):
        assert event["system"] == "kmsg" and event["kind"] == "raw" and event["event_type"] == "KMSG"
        assert event["source"] == "kmsg" and event["hostname"] == "testhost"
        assert event["dev_name"] == "" and event["dev_wwid"] == ""
        assert event["msg"] == want.msg
        assert event["severity"] == severity_of(want.level)
        assert event["timestamp"] == pytest.approx(BOOT_TIME + want.usec / 1e6, abs=0.05)
        assert event["extensions"] == {"level": want.level, "facility": 0, "seq": want.seq, "usec": want.usec,
                                       "flags": "-", **want.fields}
    first, io_error, ext4 = events[0], events[4], events[5]
    assert first["msg"] == "sd 6:0:0:0: [sdf] tag#2 FAILED Result: hostbyte=DID_OK driverbyte=DRIVER_SENSE"
    assert first["extensions"] == {"level": 6, "facility": 0, "seq": 1239, "usec": 9436467326, "flags": "-",
                                   "SUBSYSTEM": "scsi", "DEVICE": "+scsi:6:0:0:0"}
    assert (io_error["severity"], io_error["extensions"]["level"]) == ("error", 3)
    assert (ext4["severity"], ext4["extensions"]["level"]) == ("warn", 4)
    assert [e["severity"] for e in events].count("info") == 4
    # what busd acknowledged is saved for a restart
    wait_for(lambda: (saved_state(bus) or {}).get("seq") == 1256, what="state file with seq 1256")


def test_follows_a_file_like_tail_f(bus: Bus, tmp_path: Path) -> None:
    log = tmp_path / "kmsg.log"
    log.write_text(records(1, 3) + "6,4,4,-;half a li")  # since_boot = false: none of this is sent
    kmsg_bus(bus, log)
    append(log, "ne\n" + record(5, "multi\\x0aline", SUBSYSTEM="block", DEVICE="b8:16") + records(6, 7))
    events = bus.tail(3, "--kind", "raw")
    assert seqs(events) == [5, 6, 7]
    assert events[0]["msg"] == "multi\nline"
    assert events[0]["extensions"]["SUBSYSTEM"] == "block" and events[0]["extensions"]["DEVICE"] == "b8:16"
    # replaced (rename over it): the new file is read from its start, records seen already are not sent again
    new = tmp_path / "new.log"
    new.write_text(records(6, 9))
    new.rename(log)
    wait_for(lambda: produced(bus) == 5, what="records 8 and 9 of the new file")
    # truncated in place, then written again
    log.write_text(records(10, 11))
    wait_for(lambda: produced(bus) == 7, what="records 10 and 11 after truncation")
    assert seqs(bus.tail(7, "--kind", "raw")) == [5, 6, 7, 8, 9, 10, 11]
    assert bus.plugin("kmsg")["restarts"] == 0


def test_fifo(bus: Bus, tmp_path: Path) -> None:
    fifo = tmp_path / "kmsg.fifo"
    os.mkfifo(fifo)
    kmsg_bus(bus, fifo)
    with fifo.open("w") as f:  # one writer, line by line: the dictionary still joins its record
        for line in record(1, "via fifo", SUBSYSTEM="scsi").splitlines(keepends=True):
            f.write(line)
            f.flush()
    with fifo.open("w") as f:  # another writer later
        f.write(records(2, 3))
    events = bus.tail(3, "--kind", "raw")
    assert seqs(events) == [1, 2, 3]
    assert events[0]["msg"] == "via fifo" and events[0]["extensions"]["SUBSYSTEM"] == "scsi"


def test_resume_after_sigkill_and_after_busd_restart(bus: Bus, tmp_path: Path) -> None:
    log = tmp_path / "kmsg.log"
    log.write_text(records(1, 5))
    kmsg_bus(bus, log, since_boot=True)
    wait_for(lambda: (saved_state(bus) or {}).get("seq") == 5, what="state file with seq 5")
    os.kill(bus.plugin("kmsg")["pid"], signal.SIGKILL)
    append(log, records(6, 8))
    wait_for(lambda: bus.plugin("kmsg")["restarts"] == 1, what="kmsg restarted")
    wait_for(lambda: (saved_state(bus) or {}).get("seq") == 8, what="state file with seq 8")
    assert seqs(bus.tail(8, "--kind", "raw")) == list(range(1, 9))
    assert produced(bus) == 8
    assert len(plugin_logs(bus, "resuming")) == 1

    # busd itself restarts: a new broker remembers no event ids, so only the state prevents repeats
    bus.stop()
    append(log, records(9, 10))
    bus.notifications.clear()
    bus.start()
    bus.wait_running("kmsg")
    assert seqs(bus.tail(2, "--kind", "raw")) == [9, 10]
    wait_for(lambda: (saved_state(bus) or {}).get("seq") == 10, what="state file with seq 10")
    assert bus.status()["broker"]["head"]["raw"] == 2


def test_gap_after_resume_is_reported(bus: Bus, tmp_path: Path) -> None:
    log = tmp_path / "kmsg.log"
    log.write_text(records(20, 22))
    state = bus.state_dir / "kmsg" / "state.json"
    state.parent.mkdir(parents=True)
    state.write_text(json.dumps({"boot_id": boot_id(), "path": str(log), "seq": 10}))
    kmsg_bus(bus, log)  # since_boot = false, but the state wins
    events = bus.tail(4, "--kind", "raw")
    gap = events[0]
    assert (gap["system"], gap["event_type"], gap["severity"]) == ("kmsg", "KMSG_GAP", "warn")
    assert gap["extensions"] == {"from_seq": 11, "to_seq": 19, "missed": 9}
    assert "9 kernel log records" in gap["msg"]
    assert seqs(events[1:]) == [20, 21, 22]


def test_garbage_is_skipped_and_logged_once_per_kind(bus: Bus, tmp_path: Path) -> None:
    log = tmp_path / "kmsg.log"
    good = [record(1, "good one", SUBSYSTEM="scsi"), record(2, "good two"), record(3, "good three", prio=3)]
    garbage = [
        b" DEVICE=+orphan:before-any-record\n",
        b"no semicolon here\n",
        b"6,77,100\n",                             # truncated inside the prefix
        b"six,78,100,-;not a number\n",
        b"6,79,100,-;invalid \xff\xfe utf-8\n",
        b"6,80,100,-;NUL \x00 inside\n",
        b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\n",
        b"6,81,100,-;" + b"z" * (MAX_RECORD + 100) + b"\n",
        b"also no semicolon\n",
    ]
    append(log, garbage[0] + good[0].encode() + b"".join(garbage[1:5]) + good[1].encode()
           + b"".join(garbage[5:]) + good[2].encode())
    kmsg_bus(bus, log, since_boot=True)
    events = bus.tail(3, "--kind", "raw")
    assert [(e["msg"], e["severity"]) for e in events] == [
        ("good one", "info"), ("good two", "info"), ("good three", "error")]
    assert events[0]["extensions"]["SUBSYSTEM"] == "scsi"
    wait_for(lambda: (saved_state(bus) or {}).get("seq") == 3, what="state file with seq 3")
    assert produced(bus) == 3
    entry = bus.plugin("kmsg")
    assert (entry["state"], entry["restarts"]) == ("running", 0)
    reports = {r["kind"]: r for r in plugin_logs(bus, "bad_input")}
    assert len(plugin_logs(bus, "bad_input")) == len(reports)  # once per kind
    assert {k: r["line"] for k, r in reports.items()} == {
        "orphan_continuation": 1, "no_semicolon": 4, "bad_header": 6, "invalid_utf8": 7, "nul_byte": 9,
        "too_long": 11}
    counts = {"orphan_continuation": 1, "no_semicolon": 3, "bad_header": 1, "invalid_utf8": 1, "nul_byte": 2,
              "too_long": 1}
    wait_for(lambda: bus.plugin("kmsg").get("bad_input") == counts,
                     what="the bad-input counts in busctl status --json")
    text = bus.run("busctl", "status").stdout
    assert "bad input skipped: " + ",".join(f"{k}={v}" for k, v in sorted(counts.items())) in text


def test_live_dev_kmsg(bus: Bus) -> None:
    kmsg_bus(bus, "/dev/kmsg")  # since_boot = false: only records logged from now on
    marker = f"busdtest-{uuid.uuid4()}"
    with open("/dev/kmsg", "w") as f:
        f.write(f"<3>{marker}: something\n")

    def found() -> Event | None:
        events = bus.tail(produced(bus), "--kind", "raw") if produced(bus) else []
        return next((e for e in events if e["msg"].startswith(marker)), None)

    event = wait_for(found, what=f"{marker} from /dev/kmsg")
    assert event["msg"] == f"{marker}: something"
    assert (event["system"], event["event_type"], event["severity"]) == ("kmsg", "KMSG", "error")
    ext = event["extensions"]
    assert (ext["level"], ext["facility"]) == (3, 1)
    assert abs(event["timestamp"] - time.time()) < 10
    assert ext["seq"] > 0 and ext["usec"] > 0


def test_example_configuration_blocks_are_valid(tmp_path: Path) -> None:
    """The commented-out kmsg and udev tables of conf/busd.toml load once uncommented."""
    lines = (ROOT / "conf" / "busd.toml").read_text().splitlines()
    blocks = []
    for name in ("kmsg", "udev"):
        start = lines.index(f"# [plugins.{name}]")
        end = next(i for i in range(start, len(lines)) if not lines[i].startswith("# "))
        blocks += [line[2:] for line in lines[start:end]]
    conf = tmp_path / "busd.toml"
    conf.write_text("\n".join(blocks) + "\n")
    loaded = config.load(conf)
    assert {n: p.builtin for n, p in loaded.plugins.items()} == {"kmsg": "kmsg", "udev": "udev"}
    assert loaded.plugins["kmsg"].table["path"] == "/dev/kmsg"

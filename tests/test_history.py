"""Receiver ``history``, ``busctl query``, ``busctl dev info`` and ``bus-tail --since`` against a real busd."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from conftest import Bus, ev, wait_for
from fakesys import FakeSys

from bus.event import new_event
from bus.filter import Filter
from bus.history import History, HistoryError
from bus.query import Query


def history_conf(**options: Any) -> dict[str, dict[str, Any]]:
    return {"hist": {"type": "receiver", "builtin": "history", "filter": {"kind": "all"}, "prune_interval": 0.2,
                     **options}}


def counter(bus: Bus, name: str) -> int:
    return int(bus.plugin("hist").get("counters", {}).get(name, 0))


def query(bus: Bus, *args: str) -> list[dict[str, Any]]:
    res = bus.run("busctl", "query", "--json", *args)
    return [json.loads(line) for line in res.stdout.splitlines()]


def test_store_query_each_word_and_restart(bus: Bus) -> None:
    bus.write(history_conf())
    bus.start()
    bus.wait_running("hist")
    old = time.time() - 7200
    events = [ev("scsi", "SCSI_ERROR", "e1", severity="error", dev_name="sdf", dev_wwid="naa.1", timestamp=old),
              ev("multipath", "DM_MPATH_PATH_FAILED", "f1", severity="warn", dev_name="mpatha"),
              ev("multipath", "DM_MPATH_PATH_REINSTATED", "r1", dev_name="mpatha"),
              ev("lvm", "LVM_X", "l1", hostname="other", dev_wwid="naa.1")]
    for e in events:
        e["event_id"] = str(uuid.uuid4())
    bus.emit(events)
    wait_for(lambda: counter(bus, "stored") == 4, what="4 stored")
    assert [e["msg"] for e in query(bus)] == ["e1", "f1", "r1", "l1"]
    assert [e["msg"] for e in query(bus, "--system", "multipath")] == ["f1", "r1"]
    assert [e["msg"] for e in query(bus, "--severity", "warn")] == ["e1", "f1"]
    assert [e["msg"] for e in query(bus, "--event-type", "DM_MPATH_*")] == ["f1", "r1"]
    assert [e["msg"] for e in query(bus, "--event-type", "SCSI_ERROR", "--event-type", "LVM_*")] == ["e1", "l1"]
    assert [e["msg"] for e in query(bus, "--dev", "naa.1")] == ["e1", "l1"]
    assert [e["msg"] for e in query(bus, "--dev", "mpatha", "--limit", "1")] == ["r1"]
    assert [e["msg"] for e in query(bus, "--host", "other")] == ["l1"]
    assert [e["msg"] for e in query(bus, "--since", "1h")] == ["f1", "r1", "l1"]
    assert [e["msg"] for e in query(bus, "--until", "1h")] == ["e1"]
    assert [e["msg"] for e in query(bus, "--kind", "synthetic")] == []
    text = bus.run("busctl", "query", "--system", "scsi").stdout
    assert "ERROR scsi/SCSI_ERROR sdf e1" in text
    bus.stop()
    bus.start()
    assert [e["msg"] for e in query(bus)] == ["e1", "f1", "r1", "l1"]
    # the same events delivered again (same ids) are stored once
    bus.wait_running("hist")
    bus.emit(events)
    wait_for(lambda: counter(bus, "duplicates") == 4, what="4 duplicates recognised")
    assert counter(bus, "stored") == 0 and len(query(bus)) == 4
    res = bus.run("busctl", "query", "--since", "yesterdayish", check=False)
    assert res.returncode == 2 and "--since 'yesterdayish'" in res.stderr


def test_retention_by_age_and_bytes(tmp_path: Path) -> None:
    db = History.open(tmp_path / "h.sqlite")
    now = time.time()
    events = [new_event("scsi", "X", "m" * 500, timestamp=now - 1000 + i / 100) for i in range(20000)]
    db.insert_many(events)
    assert db.insert_many(events[:10]) == 0  # duplicates ignored
    assert db.prune(max_age=1000 - 100, now=now) == 10000  # the first half is older than 900 s
    assert db.oldest() == events[10000]["timestamp"]
    size = (tmp_path / "h.sqlite").stat().st_size
    db.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pruned = db.prune(max_bytes=1 << 20)
    assert 0 < pruned < 10000 and db.used_bytes() <= 1.5 * (1 << 20)
    db.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert (tmp_path / "h.sqlite").stat().st_size < size / 2  # the file really shrank
    newest = db.query(Query(Filter.parse({}), limit=1))
    assert newest[0]["event_id"] == events[-1]["event_id"]


def test_running_receiver_prunes_by_age(bus: Bus) -> None:
    """Retention runs continuously in the receiver: what is older than max_age goes, the rest stays."""
    bus.write(history_conf(max_age=3600))
    bus.start()
    bus.wait_running("hist")
    old = [ev("scsi", "OLD", str(i), timestamp=time.time() - 7200) for i in range(50)]
    new = [ev("scsi", "NEW", str(i)) for i in range(50)]
    bus.emit(old + new)
    wait_for(lambda: counter(bus, "stored") == 100 and counter(bus, "pruned") == 50, what="the old half pruned")
    assert [e["event_type"] for e in query(bus)] == ["NEW"] * 50


def test_garbage_database_moved_aside(bus: Bus) -> None:
    path = bus.state_dir / "hist" / "history.sqlite"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not sqlite at all" * 100)
    try:
        History.open_readonly(path)
        raise AssertionError("opened garbage")
    except HistoryError as exc:
        assert str(path) in str(exc) and "file is not a database" in str(exc)
    bus.write(history_conf())
    bus.start()
    bus.wait_running("hist")
    bus.emit([ev("scsi", "AFTER", "a")])
    wait_for(lambda: counter(bus, "stored") == 1, what="stored after the garbage")
    assert [e["msg"] for e in query(bus)] == ["a"]
    [aside] = path.parent.glob("history.sqlite.corrupt-*")
    assert aside.read_bytes().startswith(b"this is not sqlite")
    assert "history_corrupt" in bus.read_log()
    assert "file is not a database" in bus.run("busctl", "status").stdout


def test_since_seam_no_gap_no_duplicate(bus: Bus) -> None:
    bus.write(history_conf())
    bus.start()
    bus.wait_running("hist")
    before = [ev("scsi", "OLD", str(i), event_id=str(uuid.uuid4())) for i in range(300)]
    bus.emit(before)
    wait_for(lambda: counter(bus, "stored") >= 150, what="some stored")
    import subprocess
    import threading

    from conftest import BIN
    after = [ev("scsi", "NEW", str(i), event_id=str(uuid.uuid4())) for i in range(3000)]
    total = len(before) + len(after)
    # a live stream of 1 000 events/s through one bus-emit (each line leaves as it is written)
    emitter = subprocess.Popen([str(BIN / "bus-emit"), "--config", str(bus.config)], stdin=subprocess.PIPE, text=True)
    halfway = threading.Event()

    def feed() -> None:
        assert emitter.stdin is not None
        start = time.monotonic()
        for i, event in enumerate(after):
            emitter.stdin.write(json.dumps(event) + "\n")
            emitter.stdin.flush()
            if i == 1000:
                halfway.set()
            pause = start + (i + 1) / 1000 - time.monotonic()
            if pause > 0:
                time.sleep(pause)  # pacing the stream, not waiting for anything
        emitter.stdin.close()

    feeder = threading.Thread(target=feed)
    feeder.start()
    assert halfway.wait(30)
    # bus-tail starts in the middle of the stream: history, then the broker's buffer, then live
    tail = subprocess.Popen([str(BIN / "bus-tail"), "--config", str(bus.config), "--json", "--kind", "all",
                             "--since", "1h", "--count", str(total)], stdout=subprocess.PIPE, text=True)
    feeder.join()
    assert emitter.wait(30) == 0
    out, _ = tail.communicate(timeout=60)
    ids = [json.loads(line)["event_id"] for line in out.splitlines()]
    assert len(ids) == total and set(ids) == {e["event_id"] for e in before + after}


def test_dev_info(bus: Bus, tmp_path: Path) -> None:
    fake = FakeSys(tmp_path)
    fake.disk("sdf", "8:80", wwid="naa.6001")
    fake.dm("dm-0", "253:0", name="mpatha", uuid="mpath-3600")
    fake.slaves("dm-0", "sdf")
    bus.write(history_conf())
    bus.start()
    bus.wait_running("hist")
    bus.emit([ev("scsi", "E", "err", severity="error", dev_name="sdf", dev_wwid="naa.6001"),
              ev("scsi", "W", "warn", severity="warn", dev_name="sdf"),
              ev("scsi", "I", "renamed", dev_name="sdg", dev_wwid="naa.6001")])
    wait_for(lambda: counter(bus, "stored") == 3, what="3 stored")
    info = json.loads(bus.run("busctl", "dev", "info", "sdf", "--json", "--sysfs-root", fake.options["sysfs_root"]).stdout)
    assert info["names"] == ["sdf", "sdg"] and info["wwids"] == ["naa.6001"]
    assert info["kernel"]["sdf"]["holders"] == ["dm-0"]
    assert [e["msg"] for e in info["events"]["error"]] == ["err"]
    assert [e["msg"] for e in info["events"]["warn"]] == ["warn"]
    assert [e["msg"] for e in info["events"]["info"]] == ["renamed"]


def test_disk_full_error_then_recovery(bus: Bus) -> None:
    import subprocess

    mnt = bus.base / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True).returncode:
        import pytest
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        bus.write(history_conf(path=str(mnt / "history.sqlite"), max_bytes=0))
        bus.start()
        bus.wait_running("hist")
        filler = mnt / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)  # until full
        sent = [ev("scsi", "FULL", "x" * 200, event_id=str(uuid.uuid4())) for _ in range(3000)]
        bus.emit(sent)
        wait_for(lambda: counter(bus, "pending") > 0, what="events pending on a full disk")
        assert "full" in bus.run("busctl", "status").stdout
        assert "history_write_failed" in bus.read_log()
        filler.unlink()
        wait_for(lambda: counter(bus, "stored") == len(sent) and counter(bus, "pending") == 0, what="recovered")
        assert {e["event_id"] for e in query(bus)} == {e["event_id"] for e in sent}
        assert counter(bus, "lost") == 0
        assert "full" not in bus.run("busctl", "status").stdout
    finally:
        bus.close()
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)

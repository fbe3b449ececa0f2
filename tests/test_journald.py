"""Receiver ``journald``: native-protocol entries decoded from a real AF_UNIX datagram socket."""

from __future__ import annotations

import array
import fcntl
import json
import os
import re
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import Bus, ev, shipped_example, wait_for

from bus.config import load
from bus.exceptions import ConfigError
from receivers.journald import encode, field_name, message_id


@dataclass
class Entry:
    """One decoded journal entry: field values (a field may repeat), how it travelled."""

    fields: dict[str, list[bytes]] = field(default_factory=dict)
    binary: set[str] = field(default_factory=set)
    memfd: bool = False

    def __getitem__(self, name: str) -> str:
        (value,) = self.fields[name]
        return value.decode()


def decode(data: bytes) -> Entry:
    """Decode a native-protocol entry: ``NAME=value\\n``, or ``NAME\\n`` + 64-bit LE length + data + ``\\n``."""
    entry = Entry()
    pos = 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            pos = end + 1
        else:
            name = line
            (size,) = struct.unpack_from("<Q", data, end + 1)
            start = end + 1 + 8
            value = data[start:start + size]
            assert data[start + size:start + size + 1] == b"\n", "binary field not closed by a newline"
            pos = start + size + 1
            entry.binary.add(name.decode())
        text = name.decode()
        assert re.fullmatch(r"[A-Z][A-Z0-9_]{0,63}", text), f"invalid journal field name {text!r}"
        entry.fields.setdefault(text, []).append(value)
    return entry


class JournalSink:
    """A datagram socket bound where the receiver sends, decoding what arrives (memfds included)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.entries: list[Entry] = []

    def poll(self) -> int:
        """Read every waiting datagram; return how many entries arrived so far."""
        fd_size = array.array("i").itemsize
        while True:
            try:
                data, ancdata, flags, _ = self.sock.recvmsg(1 << 20, socket.CMSG_SPACE(fd_size))
            except BlockingIOError:
                return len(self.entries)
            assert not flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC)
            fds = array.array("i")
            for level, kind, cdata in ancdata:
                assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
                fds.frombytes(cdata[: len(cdata) - len(cdata) % fd_size])
            if fds:
                assert len(fds) == 1 and data == b"", "a memfd comes alone in an empty datagram"
                # journald refuses a memfd that is not sealed
                seals = fcntl.fcntl(fds[0], fcntl.F_GET_SEALS)
                assert seals & (fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW) == (
                    fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
                try:  # read from offset 0, as journald maps it (the sender's writes moved the shared offset)
                    entry = decode(os.pread(fds[0], os.fstat(fds[0]).st_size, 0))
                finally:
                    os.close(fds[0])
                entry.memfd = True
            else:
                entry = decode(data)
            self.entries.append(entry)

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


# -- units -------------------------------------------------------------------------------------------


def test_message_id_is_stable_and_per_type() -> None:
    """MESSAGE_ID: 32 lower-case hex digits from the type alone; this value must never change."""
    assert message_id("SCSI_MEDIUM_ERROR") == "bad5430149485270afd765bc082d7f50"
    assert message_id("BLK_IO_ERROR") == message_id("BLK_IO_ERROR") != message_id("BLK_IO_ERRORS")


def test_field_names_follow_the_journal_rules() -> None:
    """Upper case, [A-Z0-9_] only, never more than 64 characters, long names kept distinct."""
    assert field_name("BUS_EXT_", "io-errors.count") == b"BUS_EXT_IO_ERRORS_COUNT"
    assert field_name("BUS_EXT_", "Zoné") == b"BUS_EXT_ZON_"
    long_a, long_b = field_name("BUS_EXT_", "x" * 80 + "a"), field_name("BUS_EXT_", "x" * 80 + "b")
    assert len(long_a) == 64 and long_a != long_b and re.fullmatch(rb"[A-Z0-9_]+", long_a)


def test_encode_plain_and_binary_forms() -> None:
    """Single-line values use NAME=value, multi-line ones the length-prefixed binary form."""
    event = {"v": 1, "event_id": "e1", "timestamp": 1.5, "hostname": "h", "severity": "warn", "system": "scsi",
             "kind": "synthetic", "event_type": "T", "dev_wwid": "", "dev_name": "sdb", "msg": "one\ntwo",
             "source": "p", "extensions": {"n": 3, "flag": True, "list": [1, "a"], "text": "a=b"}}
    entry = decode(encode(event))
    assert entry["MESSAGE"] == "one\ntwo" and entry.binary == {"MESSAGE"}
    assert entry["PRIORITY"] == "4" and entry["SYSLOG_IDENTIFIER"] == "busd"
    assert entry["BUS_TIMESTAMP"] == "1.5" and entry["BUS_DEV_WWID"] == "" and entry["BUS_EXT_N"] == "3"
    assert entry["BUS_EXT_FLAG"] == "true" and json.loads(entry["BUS_EXT_LIST"]) == [1, "a"]
    assert entry["BUS_EXT_TEXT"] == "a=b"
    assert "BUS_V" not in entry.fields and "BUS_MSG" not in entry.fields and "BUS_EXTENSIONS" not in entry.fields
    # an empty msg is replaced by the readable line
    assert "scsi/T sdb" in decode(encode({**event, "msg": ""}))["MESSAGE"]


@pytest.mark.parametrize(("text", "message"), [
    ("queue_size = 0", "plugins.j.queue_size: must be at least 1"),
    ("retry_max = -1", "plugins.j.retry_max: must be positive"),
    ("sokcet = '/x'", "plugins.j.sokcet: unknown key"),
])
def test_bad_options(tmp_path: Path, text: str, message: str) -> None:
    """Bad options are refused at configuration time, naming the key."""
    conf = tmp_path / "busd.toml"
    conf.write_text(f"[plugins.j]\ntype = 'receiver'\nbuiltin = 'journald'\n{text}\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(conf)


# -- through a real busd -------------------------------------------------------------------------------


def _journal_bus(bus: Bus, path: Path) -> None:
    bus.write({"journal": {"type": "receiver", "builtin": "journald", "socket": str(path), "retry_max": 0.2,
                           "filter": {"kind": "all"}}})
    bus.start()
    bus.wait_running("journal")


def test_events_arrive_with_every_field(bus: Bus) -> None:
    """bus-emit -> busd -> journald receiver -> socket: exact fields, binary form, memfd for a big entry."""
    path = bus.base / "journal.sock"
    sink = JournalSink(path)
    try:
        _journal_bus(bus, path)
        big = "x" * 300_000
        bus.emit([
            ev("scsi", "SCSI_MEDIUM_ERROR", "medium error on sdb", severity="error", dev_name="sdb",
               dev_wwid="naa.5000c500a1b2c3d4", kind="synthetic",
               extensions={"sector": 1234, "sense-key": "0x3", "nested": {"a": [1, 2]}}),
            ev("drbd", "DRBD_SPLIT_BRAIN", "split brain\nresource r0\npeer node2", severity="warn", dev_name="r0/0"),
            ev("md", "MD_RESYNC_DONE", "resync done", dev_name="md0", extensions={"blob": big}),
        ])
        wait_for(lambda: sink.poll() >= 3, what="3 journal entries")
        # raw and synthetic events are two streams: their relative order is not fixed
        published = {e["event_type"]: e for e in bus.tail(3, "--kind", "all")}
        entries = {e["BUS_EVENT_TYPE"]: e for e in sink.entries}
        assert entries.keys() == published.keys() == {"SCSI_MEDIUM_ERROR", "DRBD_SPLIT_BRAIN", "MD_RESYNC_DONE"}
        first, split, resync = entries["SCSI_MEDIUM_ERROR"], entries["DRBD_SPLIT_BRAIN"], entries["MD_RESYNC_DONE"]
        for event_type, entry in entries.items():
            event = published[event_type]
            assert entry["MESSAGE"] == event["msg"]
            assert entry["MESSAGE_ID"] == message_id(event["event_type"])
            for key in ("event_id", "system", "event_type", "dev_wwid", "dev_name", "severity", "hostname",
                        "source", "kind"):
                assert entry[f"BUS_{key.upper()}"] == event[key], key
            assert float(entry["BUS_TIMESTAMP"]) == event["timestamp"]
            assert entry["SYSLOG_IDENTIFIER"] == "busd"
        assert first["PRIORITY"] == "3" and first["BUS_DEV_WWID"] == "naa.5000c500a1b2c3d4"
        assert first["BUS_EXT_SECTOR"] == "1234" and first["BUS_EXT_SENSE_KEY"] == "0x3"
        assert json.loads(first["BUS_EXT_NESTED"]) == {"a": [1, 2]}
        assert first["BUS_SOURCE"] == "bus-emit" and first["BUS_HOSTNAME"] == "testhost"
        assert not first.binary and not first.memfd
        assert split["PRIORITY"] == "4" and split.binary == {"MESSAGE"}
        assert split["MESSAGE"] == "split brain\nresource r0\npeer node2"
        assert split["BUS_KIND"] == "raw"
        assert resync.memfd and resync["BUS_EXT_BLOB"] == big and resync["PRIORITY"] == "6"
    finally:
        sink.close()


def test_journald_down_at_start_then_up(bus: Bus) -> None:
    """No socket at first: a clear error, counted; once it appears, every waiting event arrives in order."""
    path = bus.base / "late.sock"
    _journal_bus(bus, path)
    bus.emit([ev("scsi", f"EVENT_{i}", f"event {i}", kind="synthetic") for i in range(5)])
    errors = wait_for(lambda: [r for r in bus.log_records() if r.get("event") == "journald_unavailable"],
                      what="journald_unavailable in the log")
    assert errors[0]["level"] == "error" and str(path) in errors[0]["error"] and errors[0]["plugin"] == "journal"
    wait_for(lambda: bus.plugin("journal").get("counters", {}).get("journald_errors", 0) >= 1,
             what="journald_errors counted in busctl status")
    assert "journald_errors=" in bus.run("busctl", "status").stdout
    sink = JournalSink(path)
    try:
        wait_for(lambda: sink.poll() >= 5, what="5 entries after journald came up")
        assert [e["BUS_EVENT_TYPE"] for e in sink.entries] == [f"EVENT_{i}" for i in range(5)]
        wait_for(lambda: any(r.get("event") == "journald_recovered" for r in bus.log_records()),
                 what="journald_recovered in the log")
        bus.emit([ev("scsi", "AFTER", "after", kind="synthetic")])
        wait_for(lambda: sink.poll() >= 6, what="an entry sent directly")
        assert sink.entries[-1]["MESSAGE"] == "after" and len(sink.entries) == 6
    finally:
        sink.close()


def test_commented_examples_in_shipped_config_are_valid(tmp_path: Path) -> None:
    """The commented journald and email tables of conf/busd.toml load once uncommented."""
    config = shipped_example(tmp_path, "journal", "mail")
    assert config.plugins["journal"].builtin == "journald" and config.plugins["mail"].builtin == "email"
    assert config.plugins["journal"].table["flood_window"] == 10

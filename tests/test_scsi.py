"""Parser ``scsi``: the lines of one failed command make one event; offline devices; correlation and hold."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Bus, wait_for
from fakesys import FakeSys
from kernel_input import feed, kmsg_events, line_events, make, sample

from bus.config import load
from bus.event import Event
from bus.exceptions import ConfigError
from bus.plugin import derive_id
from parsers.scsi import Scsi, decode_cdb

SDF_WWID = "naa.6001405f1e2d3c4b"
SDC_WWID = "naa.5000c500a1b2c3d4"
SDA_WWID_FILE = "t10.ATA     ST2000DM001-1CH164                      Z1E1ABCD"
SDA_WWID = "t10.ATA ST2000DM001-1CH164 Z1E1ABCD"  # sysfs padding collapsed
SDB_WWID = "naa.600a0b800026b2820000a4b85a4e1c3f"


@pytest.fixture(name="fake")
def fixture_fake(tmp_path: Path) -> FakeSys:
    """Disks of the samples: sdf 6:0:0:0, sdc 8:0:0:0, sdg 5:0:0:0 (no wwid), sda 0:0:0:0, sdb 2:0:0:0."""
    fake = FakeSys(tmp_path)
    fake.disk("sdf", "8:80", wwid=SDF_WWID, hctl="6:0:0:0")
    fake.disk("sdc", "8:32", wwid=SDC_WWID, hctl="8:0:0:0")
    fake.disk("sdg", "8:96", hctl="5:0:0:0")
    fake.disk("sda", "8:0", wwid=SDA_WWID_FILE, hctl="0:0:0:0")
    fake.disk("sdb", "8:16", wwid=SDB_WWID, hctl="2:0:0:0")
    return fake


def scsi(fake: FakeSys, **options: Any) -> Scsi:
    """A scsi parser on the fake sysfs."""
    parser: Scsi = make(Scsi, "scsi", **fake.options, **options)
    return parser


def shape(e: Event) -> tuple[str, str, str, str]:
    """The four fields every assertion checks."""
    return e["event_type"], e["severity"], e["dev_name"], e["dev_wwid"]


def core(e: Event) -> dict[str, Any]:
    """The extensions without the bookkeeping keys (ids, kmsg seq, kernel name)."""
    return {k: v for k, v in e["extensions"].items() if k not in ("raw_event_id", "kmsg_seq", "kernel_name")}


def close_by_tick(parser: Scsi, count: int) -> list[Event]:
    """Tick until ``count`` groups have timed out; return their events."""
    out: list[Event] = []
    wait_for(lambda: out.extend(parser.tick(time.time())) or len(out) >= count, timeout=5, what="groups to time out")
    return out


def test_kmsg_cascade_gives_exactly_one_not_ready(fake: FakeSys) -> None:
    """The kmsg sample: five SCSI/block records, then ext4/jbd2 noise: one SCSI_NOT_READY with every detail."""
    parser = scsi(fake)
    raws = kmsg_events(sample("kmsg-scsi-cascade.kmsg"))
    out = feed(parser, raws)
    assert len(out) == 1
    e = out[0]
    assert shape(e) == ("SCSI_NOT_READY", "error", "sdf", SDF_WWID)
    assert e["system"] == "scsi" and e["kind"] == "synthetic"
    assert e["msg"] == "sdf: SCSI Not Ready (Logical unit communication failure), Write(10) sector 9984"
    assert e["timestamp"] == raws[0]["timestamp"]
    assert e["extensions"] == {
        "raw_event_id": raws[0]["event_id"], "kmsg_seq": 1239, "kernel_name": "sdf",
        "hctl": "6:0:0:0", "tag": 2, "result": {"hostbyte": "DID_OK", "driverbyte": "DRIVER_SENSE"},
        "sense_key": "Not Ready", "sense_flags": ["current"], "asc": "Logical unit communication failure",
        "cdb": "Write(10) 2a 00 00 00 27 00 00 00 40 00", "command": "Write(10)", "lba": 9984, "blocks": 64,
        "sector": 9984, "io_error": "I/O error", "lines": 5}
    assert parser.hold() is None and not parser.groups.groups


def test_dmesg_medium_samples_every_shape(fake: FakeSys) -> None:
    """The four dmesg shapes: closed by end_request / blk_update_request, the other two by the window."""
    parser = scsi(fake, correlation_window=0.05)
    raws = line_events(sample("dmesg-scsi-medium.txt"))
    out = feed(parser, raws)
    assert [shape(e) for e in out] == [("SCSI_MEDIUM_ERROR", "error", "sdc", SDC_WWID)] * 2
    # without tag#, "Result:" without FAILED, "CDB: Read(10): ..." with a colon; end_request gives the sector
    assert out[0]["msg"] == "sdc: SCSI Medium Error (Incompatible medium installed), Read(10) sector 0"
    assert core(out[0]) == {
        "hctl": "18:0:0:0", "result": {"hostbyte": "DID_OK", "driverbyte": "DRIVER_SENSE"},
        "sense_key": "Medium Error", "sense_flags": ["current"], "asc": "Incompatible medium installed",
        "cdb": "Read(10) 28 00 00 00 00 00 00 00 08 00 00 00", "command": "Read(10)", "lba": 0, "blocks": 8,
        "sector": 0, "io_error": "I/O error", "lines": 5}
    assert out[0]["extensions"]["raw_event_id"] == raws[0]["event_id"]
    # tag#255 from "Sense Key" on (no Result line), closed by blk_update_request with op
    assert out[1]["msg"] == "sdc: SCSI Medium Error (Unrecovered read error), Read(10) sector 10000"
    assert core(out[1]) == {
        "hctl": "8:0:0:0", "tag": 255, "sense_key": "Medium Error", "sense_flags": ["current"],
        "asc": "Unrecovered read error", "cdb": "Read(10) 28 00 00 00 27 10 00 00 01 00", "command": "Read(10)",
        "lba": 10000, "blocks": 1, "sector": 10000, "io_error": "critical medium error", "op": "READ", "lines": 4}
    # sdg tag#12 (no CDB, no block line) and sda ("[sda]  Sense Key", [descriptor]) stay open, held
    assert parser.hold() == 11
    late = close_by_tick(parser, 2)
    assert [shape(e) for e in late] == [("SCSI_MEDIUM_ERROR", "error", "sdg", ""),
                                        ("SCSI_MEDIUM_ERROR", "error", "sda", SDA_WWID)]
    assert late[0]["msg"] == "sdg: SCSI Medium Error (Unrecovered read error)"
    assert core(late[0]) == {"hctl": "5:0:0:0", "tag": 12, "result": {"hostbyte": "DID_OK", "driverbyte": "DRIVER_SENSE"},
                             "sense_key": "Medium Error", "sense_flags": ["current"],
                             "asc": "Unrecovered read error", "lines": 3}
    assert core(late[1]) == {"hctl": "0:0:0:0", "sense_key": "Medium Error", "sense_flags": ["current", "descriptor"],
                             "asc": "Unrecovered read error - auto reallocate failed", "lines": 2}
    assert late[1]["msg"] == "sda: SCSI Medium Error (Unrecovered read error - auto reallocate failed)"
    assert late[0]["event_id"] == derive_id(raws[10]["event_id"], "scsi", 1_000_000)
    assert late[1]["timestamp"] == raws[13]["timestamp"]
    assert parser.hold() is None


OLD_KERNEL = """\
Mar  3 04:12:09 db1 kernel: sd 0:0:0:0: [sda] Unhandled sense code
Mar  3 04:12:09 db1 kernel: sd 0:0:0:0: [sda]  Result: hostbyte=DID_OK driverbyte=DRIVER_SENSE
Mar  3 04:12:09 db1 kernel: sd 0:0:0:0: [sda]  Sense Key : Medium Error [current] [descriptor]
Mar  3 04:12:09 db1 kernel: Descriptor sense data with sense descriptors (in hex):
Mar  3 04:12:09 db1 kernel:        72 03 11 04 00 00 00 0c 00 0a 80 00 00 00 00 00
Mar  3 04:12:09 db1 kernel: sd 0:0:0:0: [sda]  Add. Sense: Unrecovered read error - auto reallocate failed
Mar  3 04:12:09 db1 kernel: sd 0:0:0:0: [sda] CDB: Read(10): 28 00 00 a3 49 a0 00 00 08 00
Mar  3 04:12:09 db1 kernel: end_request: critical medium error, dev sda, sector 10701216
"""
KERNEL_5 = """\
[81234.500100] sd 0:0:0:0: [sda] tag#28 FAILED Result: hostbyte=DID_OK driverbyte=DRIVER_SENSE cmd_age=3s
[81234.500104] sd 0:0:0:0: [sda] tag#28 Sense Key : Medium Error [current]
[81234.500107] sd 0:0:0:0: [sda] tag#28 Add. Sense: Unrecovered read error
[81234.500110] sd 0:0:0:0: [sda] tag#28 CDB: Read(16) 88 00 00 00 00 01 1d 1c 5e 00 00 00 00 08 00 00
[81234.500115] blk_update_request: critical medium error, dev sda, sector 4783365632 op 0x0:(READ) flags 0x80700 \
phys_seg 1 prio class 0
"""
KERNEL_6 = """\
2024-05-02T11:20:31.1188+02:00 st2 kernel: sd 2:0:0:0: [sdb] tag#17 FAILED Result: hostbyte=DID_OK driverbyte=DRIVER_OK cmd_age=0s
sd 2:0:0:0: [sdb] tag#17 Sense Key : Hardware Error [current]
sd 2:0:0:0: [sdb] tag#17 Add. Sense: Internal target failure
sd 2:0:0:0: [sdb] tag#17 CDB: Write(16) 8a 00 00 00 00 00 00 01 86 a0 00 00 00 10 00 00
critical target error, dev sdb, sector 100000 op 0x1:(WRITE) flags 0x8800 phys_seg 2 prio class 2
"""


def test_old_kernel_with_unhandled_sense_code_and_descriptor_lines(fake: FakeSys) -> None:
    """2.6/3.x: "Unhandled sense code", two spaces, hex descriptor lines in between, end_request."""
    parser = scsi(fake)
    [e] = feed(parser, line_events(OLD_KERNEL))
    assert shape(e) == ("SCSI_MEDIUM_ERROR", "error", "sda", SDA_WWID)
    assert core(e) == {
        "hctl": "0:0:0:0", "result": {"hostbyte": "DID_OK", "driverbyte": "DRIVER_SENSE"},
        "sense_key": "Medium Error", "sense_flags": ["current", "descriptor"],
        "asc": "Unrecovered read error - auto reallocate failed",
        "cdb": "Read(10) 28 00 00 a3 49 a0 00 00 08 00", "command": "Read(10)", "lba": 10701216, "blocks": 8,
        "sector": 10701216, "io_error": "critical medium error", "lines": 6}


def test_kernel_5_read16_and_kernel_6_bare_block_line(fake: FakeSys) -> None:
    """5.x: cmd_age and Read(16); 6.x: ISO syslog prefix, Hardware Error, the block line without a prefix."""
    parser = scsi(fake)
    [five] = feed(parser, line_events(KERNEL_5))
    assert shape(five) == ("SCSI_MEDIUM_ERROR", "error", "sda", SDA_WWID)
    assert core(five)["result"] == {"hostbyte": "DID_OK", "driverbyte": "DRIVER_SENSE", "cmd_age": "3s"}
    assert (core(five)["tag"], core(five)["lba"], core(five)["sector"], core(five)["op"]) == (28, 4783365632, 4783365632, "READ")
    assert five["msg"] == "sda: SCSI Medium Error (Unrecovered read error), Read(16) sector 4783365632"
    [six] = feed(parser, line_events(KERNEL_6))
    assert shape(six) == ("SCSI_HARDWARE_ERROR", "error", "sdb", SDB_WWID)
    assert core(six) == {
        "hctl": "2:0:0:0", "tag": 17, "result": {"hostbyte": "DID_OK", "driverbyte": "DRIVER_OK", "cmd_age": "0s"},
        "sense_key": "Hardware Error", "sense_flags": ["current"], "asc": "Internal target failure",
        "cdb": "Write(16) 8a 00 00 00 00 00 00 01 86 a0 00 00 00 10 00 00", "command": "Write(16)",
        "lba": 100000, "blocks": 16, "sector": 100000, "io_error": "critical target error", "op": "WRITE", "lines": 5}


@pytest.mark.parametrize(("key", "asc", "event_type", "severity"), [
    ("Illegal Request", "Invalid field in cdb", "SCSI_SENSE_ERROR", "error"),
    ("Aborted Command", "Initiator detected error message received", "SCSI_SENSE_ERROR", "error"),
    ("Data Protect", "Write protected", "SCSI_SENSE_ERROR", "error"),
    ("Recovered Error", "Failure prediction threshold exceeded", "SCSI_SENSE_ERROR", "warn"),
    ("Unit Attention", "Power on, reset, or bus device reset occurred", "SCSI_SENSE_ERROR", "warn"),
    ("Not Ready", "Logical unit not ready, manual intervention required", "SCSI_NOT_READY", "error"),
    ("Hardware Error", "Internal target failure", "SCSI_HARDWARE_ERROR", "error"),
])
def test_event_type_follows_the_sense_key(fake: FakeSys, key: str, asc: str, event_type: str, severity: str) -> None:
    """Medium/Hardware/Not Ready have their own types; every other key is SCSI_SENSE_ERROR with sense_key."""
    parser = scsi(fake)
    text = (f"sd 2:0:0:0: [sdb] tag#3 FAILED Result: hostbyte=DID_OK driverbyte=DRIVER_SENSE\n"
            f"sd 2:0:0:0: [sdb] tag#3 Sense Key : {key} [current]\n"
            f"sd 2:0:0:0: [sdb] tag#3 Add. Sense: {asc}\n"
            f"sd 2:0:0:0: [sdb] tag#3 CDB: Write(10) 2a 00 00 00 08 00 00 00 08 00\n"
            f"blk_update_request: I/O error, dev sdb, sector 2048 op 0x1:(WRITE) flags 0x0 phys_seg 1 prio class 0\n")
    [e] = feed(parser, line_events(text))
    assert shape(e) == (event_type, severity, "sdb", SDB_WWID)
    assert (e["extensions"]["sense_key"], e["extensions"]["asc"], e["extensions"]["sector"]) == (key, asc, 2048)
    assert e["msg"] == f"sdb: SCSI {key} ({asc}), Write(10) sector 2048"


def test_failed_command_without_sense_is_command_failed(fake: FakeSys) -> None:
    """DID_NO_CONNECT (closed by its block line) and an old DID_TIME_OUT (closed by the window): SCSI_COMMAND_FAILED."""
    parser = scsi(fake, correlation_window=0.05)
    text = ("sd 2:0:0:0: [sdb] tag#7 FAILED Result: hostbyte=DID_NO_CONNECT driverbyte=DRIVER_OK cmd_age=0s\n"
            "sd 2:0:0:0: [sdb] tag#7 CDB: Read(10) 28 00 00 00 08 00 00 00 08 00\n"
            "blk_update_request: I/O error, dev sdb, sector 2048 op 0x0:(READ) flags 0x0 phys_seg 1 prio class 0\n"
            "sd 6:0:0:0: [sdf] Result: hostbyte=DID_TIME_OUT driverbyte=DRIVER_OK\n")
    [e] = feed(parser, line_events(text))
    assert shape(e) == ("SCSI_COMMAND_FAILED", "error", "sdb", SDB_WWID)
    assert e["msg"] == "sdb: SCSI command failed (hostbyte=DID_NO_CONNECT driverbyte=DRIVER_OK), Read(10) sector 2048"
    assert core(e) == {"hctl": "2:0:0:0", "tag": 7,
                       "result": {"hostbyte": "DID_NO_CONNECT", "driverbyte": "DRIVER_OK", "cmd_age": "0s"},
                       "cdb": "Read(10) 28 00 00 00 08 00 00 00 08 00", "command": "Read(10)", "lba": 2048, "blocks": 8,
                       "sector": 2048, "io_error": "I/O error", "op": "READ", "lines": 3}
    [late] = close_by_tick(parser, 1)
    assert shape(late) == ("SCSI_COMMAND_FAILED", "error", "sdf", SDF_WWID)
    assert late["msg"] == "sdf: SCSI command failed (hostbyte=DID_TIME_OUT driverbyte=DRIVER_OK)"
    assert core(late) == {"hctl": "6:0:0:0", "result": {"hostbyte": "DID_TIME_OUT", "driverbyte": "DRIVER_OK"},
                          "lines": 1}


def test_new_command_on_same_device_closes_the_previous_group(fake: FakeSys) -> None:
    """Without tag#: a second "Sense Key" (or Result) for the device starts a new command."""
    parser = scsi(fake)
    text = ("sd 0:0:0:0: [sda]  Sense Key : Medium Error [current]\n"
            "sd 0:0:0:0: [sda]  Add. Sense: Unrecovered read error\n"
            "sd 0:0:0:0: [sda]  Sense Key : Aborted Command [current]\n"
            "sd 0:0:0:0: [sda]  Add. Sense: No additional sense information\n"
            "sd 0:0:0:0: [sda] Result: hostbyte=DID_OK driverbyte=DRIVER_SENSE\n")
    raws = line_events(text)
    out = []
    for n, raw in enumerate(raws, 1):
        parser.delivery = n
        got = parser.handle(raw) or []
        out.append([e["event_type"] for e in got])
        if n == 3:
            assert got[0]["extensions"]["asc"] == "Unrecovered read error"
    assert out == [[], [], ["SCSI_MEDIUM_ERROR"], [], ["SCSI_SENSE_ERROR"]]
    assert parser.hold() == 5  # the Result line opened the third command


def test_interleaved_tags_and_block_line_picks_the_group_by_sector(fake: FakeSys) -> None:
    """Two commands in flight on sdb: their lines interleave by tag; the block lines close the right one."""
    parser = scsi(fake)
    text = ("sd 2:0:0:0: [sdb] tag#1 FAILED Result: hostbyte=DID_OK driverbyte=DRIVER_SENSE\n"
            "sd 2:0:0:0: [sdb] tag#2 FAILED Result: hostbyte=DID_OK driverbyte=DRIVER_SENSE\n"
            "sd 2:0:0:0: [sdb] tag#1 Sense Key : Medium Error [current]\n"
            "sd 2:0:0:0: [sdb] tag#2 Sense Key : Hardware Error [current]\n"
            "sd 2:0:0:0: [sdb] tag#1 CDB: Read(10) 28 00 00 00 00 64 00 00 08 00\n"
            "sd 2:0:0:0: [sdb] tag#2 CDB: Read(10) 28 00 00 00 04 e2 00 00 01 00\n"
            "blk_update_request: I/O error, dev sdc, sector 104\n"
            "blk_update_request: I/O error, dev sdb, sector 10000\n")
    raws = line_events(text)
    out = feed(parser, raws)
    # sector 10000 is LBA 1250 of a 4 KiB-block disk: tag 2, although tag 1 is older
    assert [(e["event_type"], e["extensions"]["tag"], e["extensions"]["sector"]) for e in out] == [
        ("SCSI_HARDWARE_ERROR", 2, 10000)]
    assert parser.hold() == 1
    [e] = feed(parser, line_events("blk_update_request: I/O error, dev sdb, sector 104\n"))
    assert (e["event_type"], e["extensions"]["tag"], e["extensions"]["lba"], e["extensions"]["sector"]) == (
        "SCSI_MEDIUM_ERROR", 1, 100, 104)
    assert parser.hold() is None


def test_hold_is_the_oldest_open_group(fake: FakeSys) -> None:
    """hold() returns the delivery of the oldest open group's first line until that group closes."""
    parser = scsi(fake)
    raws = line_events("ata1: noise\n"
                       "sd 6:0:0:0: [sdf] tag#1 FAILED Result: hostbyte=DID_OK driverbyte=DRIVER_SENSE\n"
                       "sd 2:0:0:0: [sdb] tag#9 FAILED Result: hostbyte=DID_OK driverbyte=DRIVER_SENSE\n"
                       "print_req_error: I/O error, dev sdf, sector 8\n"
                       "print_req_error: I/O error, dev sdb, sector 16\n")
    holds = []
    for n, raw in enumerate(raws, 1):
        parser.delivery = n
        parser.handle(raw)
        holds.append(parser.hold())
    assert holds == [None, 2, 2, 3, None]


def test_device_offline_lines(fake: FakeSys) -> None:
    """Offline lines with and without [sdX] (then the disk comes from /sys/bus/scsi/devices/H:C:T:L/block)."""
    parser = scsi(fake)
    text = ("[ 9120.118000] sd 2:0:0:0: rejecting I/O to offline device\n"
            "scsi 6:0:0:0: Device offlined - not ready after error recovery\n"
            "sd 8:0:0:0: [sdc] tag#4 rejecting I/O to offline device\n"
            "sd 0:0:0:0: [sda] Unit is offline\n"
            "sd 9:0:0:0: rejecting I/O to offline device\n")
    out = feed(parser, line_events(text))
    assert [shape(e) for e in out] == [("SCSI_DEVICE_OFFLINE", "error", "sdb", SDB_WWID),
                                       ("SCSI_DEVICE_OFFLINE", "error", "sdf", SDF_WWID),
                                       ("SCSI_DEVICE_OFFLINE", "error", "sdc", SDC_WWID),
                                       ("SCSI_DEVICE_OFFLINE", "error", "sda", SDA_WWID),
                                       ("SCSI_DEVICE_OFFLINE", "error", "", "")]
    assert out[0]["msg"] == "sdb: SCSI device offline (rejecting I/O to offline device)"
    assert core(out[0]) == {"hctl": "2:0:0:0", "reason": "rejecting I/O to offline device"}
    assert core(out[1]) == {"hctl": "6:0:0:0", "reason": "Device offlined - not ready after error recovery"}
    assert core(out[2]) == {"hctl": "8:0:0:0", "tag": 4, "reason": "rejecting I/O to offline device"}
    assert out[4]["msg"] == "9:0:0:0: SCSI device offline (rejecting I/O to offline device)"
    assert parser.hold() is None


@pytest.mark.parametrize("line", [
    "sd 2:0:0:0: [sdb] Write cache: enabled, read cache: enabled, doesn't support DPO or FUA",
    "sd 2:0:0:0: [sdb] Attached SCSI disk",
    "sd 2:0:0:0: Attached scsi generic sg1 type 0",
    "sr 1:0:0:0: [sr0] tag#0 Sense Key : Not Ready [current]",
    "sd 2:0:0:0: [sdb] Sense Key garbage",
    "sd 2:0:0: [sdb] Sense Key : Medium Error [current]",
    "Result: hostbyte=DID_OK driverbyte=DRIVER_SENSE",
    "print_req_error: I/O error, dev sdf, sector 9984",
    "EXT4-fs warning (device sdf): ext4_end_bio:323: I/O error 10 writing to inode 12",
    "nfs: server storage1 not responding, still trying; offline",
    "sd 2:0:0:0: [sdb] CDB: zz zz",
    "\x00\xff\ufffd garbage Sense Key",
    "",
])
def test_unknown_lines_and_near_misses_give_nothing(fake: FakeSys, line: str) -> None:
    """Lines the parser does not know, including near-misses, give no event and open no group."""
    parser = scsi(fake)
    assert feed(parser, line_events(line) or [{"msg": line}]) == []
    assert parser.hold() is None


def test_events_without_text_give_nothing(fake: FakeSys) -> None:
    """A raw event whose msg is missing or not a string is ignored, not a crash."""
    parser = scsi(fake)
    assert parser.handle({"system": "kmsg"}) is None
    assert parser.handle({"system": "kmsg", "msg": 42}) is None


def test_block_line_for_another_device_leaves_the_group_open(fake: FakeSys) -> None:
    """Only the block line of the group's own device closes it."""
    parser = scsi(fake)
    out = feed(parser, line_events("sd 6:0:0:0: [sdf] tag#2 Sense Key : Not Ready [current]\n"
                                   "print_req_error: I/O error, dev sdg, sector 1\n"))
    assert out == [] and parser.hold() == 1


def test_decode_cdb() -> None:
    """LBA and length of 6-, 10-, 12- and 16-byte CDBs; other commands give None."""
    assert decode_cdb(bytes.fromhex("0a 1f ff ff 00 00")) == (0x1FFFFF, 256)
    assert decode_cdb(bytes.fromhex("28 00 00 00 27 10 00 00 01 00")) == (10000, 1)
    assert decode_cdb(bytes.fromhex("a8 00 00 01 00 00 00 00 01 00 00 00")) == (65536, 256)
    assert decode_cdb(bytes.fromhex("8a 00 00 00 00 00 00 01 86 a0 00 00 00 10 00 00")) == (100000, 16)
    assert decode_cdb(bytes.fromhex("12 00 00 00 24 00")) is None  # INQUIRY
    assert decode_cdb(bytes.fromhex("28 00 00")) is None
    assert decode_cdb(b"") is None


def test_correlation_window_option_is_checked(tmp_path: Path) -> None:
    """busd refuses a window that is not positive, and unknown keys, naming the key."""
    config = tmp_path / "busd.toml"
    for table, key in (('correlation_window = 0', "plugins.scsi.correlation_window"),
                       ('window = 1.0', "plugins.scsi.window")):
        config.write_text(f'[main]\nruntime_dir = "{tmp_path}"\n[plugins.scsi]\ntype = "parser"\nbuiltin = "scsi"\n{table}\n')
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load(config)
    config.write_text(f'[main]\nruntime_dir = "{tmp_path}"\n[plugins.scsi]\ntype = "parser"\nbuiltin = "scsi"\n'
                      'correlation_window = 2\n')
    flt = load(config).plugins["scsi"].filter
    event = {"system": "kmsg", "kind": "raw", "event_type": "KMSG", "severity": "info"}
    # the default filter routes only kmsg lines that hold one of the parser's keywords
    assert flt.match({**event, "msg": "sd 6:0:0:0: [sdf] tag#2 Sense Key : Not Ready [current]"})
    assert not flt.match({**event, "msg": "usb 1-1: new high-speed USB device number 2 using ehci-pci"})


def test_end_to_end_through_busd(bus: Bus, tmp_path: Path) -> None:
    """A replay of the dmesg sample plus the kmsg records through busd: exactly five SCSI events."""
    fake = FakeSys(tmp_path)
    fake.disk("sdc", "8:32", wwid=SDC_WWID, hctl="8:0:0:0")
    fake.disk("sdf", "8:80", wwid=SDF_WWID, hctl="6:0:0:0")
    (bus.base / "dmesg.txt").write_text(sample("dmesg-scsi-medium.txt"))
    bus.write({
        "replay": {"type": "collector", "builtin": "replay", "path": str(bus.base / "dmesg.txt"), "interval": 0.0},
        "scsi": {"type": "parser", "builtin": "scsi", "correlation_window": 0.2, **fake.options},
    })
    bus.start()
    bus.wait_running("scsi")
    bus.emit([{k: v for k, v in e.items() if k != "source"} for e in kmsg_events(sample("kmsg-scsi-cascade.kmsg"))])

    def drained() -> bool:
        p = bus.plugin("scsi")
        return p["events_in"] >= 5 and not p["delivery"]["pending"] and not p["delivery"]["in_flight"]
    wait_for(drained, what="scsi parser to close every group")
    assert bus.plugin("scsi")["events_in"] == 5
    out = bus.tail(5, "--system", "scsi")
    assert sorted((e["event_type"], e["dev_name"], e["dev_wwid"], e["source"]) for e in out) == [
        ("SCSI_MEDIUM_ERROR", "sda", "", "scsi"), ("SCSI_MEDIUM_ERROR", "sdc", SDC_WWID, "scsi"),
        ("SCSI_MEDIUM_ERROR", "sdc", SDC_WWID, "scsi"), ("SCSI_MEDIUM_ERROR", "sdg", "", "scsi"),
        ("SCSI_NOT_READY", "sdf", SDF_WWID, "scsi")]
    [not_ready] = [e for e in out if e["event_type"] == "SCSI_NOT_READY"]
    assert (not_ready["extensions"]["hctl"], not_ready["extensions"]["tag"], not_ready["extensions"]["sector"],
            not_ready["extensions"]["asc"], not_ready["extensions"]["cdb"]) == (
        "6:0:0:0", 2, 9984, "Logical unit communication failure", "Write(10) 2a 00 00 00 27 00 00 00 40 00")
    assert all(e["kind"] == "synthetic" and e["hostname"] == "testhost" for e in out)

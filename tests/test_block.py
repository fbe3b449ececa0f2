"""Parser ``block``: one BLK_IO_ERROR per block-layer I/O error line, every kernel's shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import Bus, wait_for
from fakesys import FakeSys
from kernel_input import feed, kmsg_events, line_events, make, sample

from bus.event import Event
from parsers.block import Block

SDF_WWID = "naa.6001405f1e2d3c4b"
SDC_WWID = "naa.5000c500a1b2c3d4"
SDB_WWID = "naa.600a0b800026b2820000a4b85a4e1c3f"
MPATHA_UUID = "mpath-3600a0b800026b2820000a4b85a4e1c3f"


@pytest.fixture(name="fake")
def fixture_fake(tmp_path: Path) -> FakeSys:
    """sdf, sdc, sdb with a partition sdb1, and the multipath map dm-0 (mpatha)."""
    fake = FakeSys(tmp_path)
    fake.disk("sdf", "8:80", wwid=SDF_WWID, hctl="6:0:0:0")
    fake.disk("sdc", "8:32", wwid=SDC_WWID, hctl="8:0:0:0")
    fake.disk("sdb", "8:16", wwid=SDB_WWID, hctl="2:0:0:0")
    fake.partition("sdb", 1, "8:17")
    fake.dm("dm-0", "253:0", name="mpatha", uuid=MPATHA_UUID)
    return fake


def block(fake: FakeSys) -> Block:
    """A block parser on the fake sysfs."""
    parser: Block = make(Block, "block", **fake.options)
    return parser


def core(e: Event) -> dict[str, Any]:
    """The extensions without the bookkeeping keys (ids, kmsg seq, kernel name)."""
    return {k: v for k, v in e["extensions"].items() if k not in ("raw_event_id", "kmsg_seq", "kernel_name")}


def summary(e: Event) -> tuple[str, str, str, str, str]:
    """Type, severity, device name and WWID, message."""
    return e["event_type"], e["severity"], e["dev_name"], e["dev_wwid"], e["msg"]


def test_kmsg_cascade(fake: FakeSys) -> None:
    """print_req_error gives the sector; the Buffer I/O error carries the 506 suppressed before it; nothing else."""
    raws = kmsg_events(sample("kmsg-scsi-cascade.kmsg"))
    out = feed(block(fake), raws)
    assert [summary(e) for e in out] == [
        ("BLK_IO_ERROR", "error", "sdf", SDF_WWID, "sdf: I/O error, sector 9984"),
        ("BLK_IO_ERROR", "error", "sdf", SDF_WWID,
         "sdf: Buffer I/O error, logical block 4960 (506 similar messages suppressed before)")]
    assert out[0]["extensions"] == {"raw_event_id": raws[4]["event_id"], "kmsg_seq": 1243, "kernel_name": "sdf",
                                    "error": "I/O error", "function": "print_req_error", "sector": 9984}
    assert out[1]["extensions"] == {"raw_event_id": raws[7]["event_id"], "kmsg_seq": 1246, "kernel_name": "sdf",
                                    "error": "I/O error", "function": "buffer_io_error", "logical_block": 4960,
                                    "suppressed": 506}
    assert out[1]["timestamp"] == raws[7]["timestamp"] and out[1]["system"] == "block"


def test_dmesg_medium_sample(fake: FakeSys) -> None:
    """end_request, Buffer I/O error on device, blk_update_request with op/flags/phys_seg/prio class."""
    out = feed(block(fake), line_events(sample("dmesg-scsi-medium.txt")))
    assert [summary(e) for e in out] == [
        ("BLK_IO_ERROR", "error", "sdc", SDC_WWID, "sdc: I/O error, sector 0"),
        ("BLK_IO_ERROR", "error", "sdc", SDC_WWID, "sdc: Buffer I/O error, logical block 0"),
        ("BLK_IO_ERROR", "error", "sdc", SDC_WWID, "sdc: critical medium error, READ sector 10000")]
    assert [core(e) for e in out] == [
        {"error": "I/O error", "function": "end_request", "sector": 0},
        {"error": "I/O error", "function": "buffer_io_error", "logical_block": 0},
        {"error": "critical medium error", "function": "blk_update_request", "sector": 10000, "op": "READ",
         "op_code": 0, "flags": "0x0", "phys_seg": 1, "prio_class": 0}]


@pytest.mark.parametrize(("line", "expected", "ext"), [
    ("[  812.004411] blk_update_request: I/O error, dev sdb, sector 2048",  # 3.x/4.x
     ("BLK_IO_ERROR", "error", "sdb", SDB_WWID, "sdb: I/O error, sector 2048"),
     {"error": "I/O error", "function": "blk_update_request", "sector": 2048}),
    ("print_req_error: critical target error, dev sdb, sector 123 flags 80700",  # 5.0-5.2
     ("BLK_IO_ERROR", "error", "sdb", SDB_WWID, "sdb: critical target error, sector 123"),
     {"error": "critical target error", "function": "print_req_error", "sector": 123, "flags": "0x80700"}),
    ("I/O error, dev sdb, sector 123 op 0x1:(WRITE) flags 0x800 phys_seg 1 prio class 2",  # 5.18+
     ("BLK_IO_ERROR", "error", "sdb", SDB_WWID, "sdb: I/O error, WRITE sector 123"),
     {"error": "I/O error", "function": "", "sector": 123, "op": "WRITE", "op_code": 1, "flags": "0x800",
      "phys_seg": 1, "prio_class": 2}),
    ("2024-05-02T11:20:31.118842+02:00 stor2 kernel: critical medium error, dev nvme0n1, sector 5 op 0x0:(READ) "
     "flags 0x0 phys_seg 1 prio class 2",
     ("BLK_IO_ERROR", "error", "nvme0n1", "", "nvme0n1: critical medium error, READ sector 5"),
     {"error": "critical medium error", "function": "", "sector": 5, "op": "READ", "op_code": 0, "flags": "0x0",
      "phys_seg": 1, "prio_class": 2}),
    ("recoverable transport error, dev sdb, sector 77 op 0x0:(READ) flags 0x4000 phys_seg 1 prio class 0",
     ("BLK_IO_ERROR", "warn", "sdb", SDB_WWID, "sdb: recoverable transport error, READ sector 77"),
     {"error": "recoverable transport error", "function": "", "sector": 77, "op": "READ", "op_code": 0,
      "flags": "0x4000", "phys_seg": 1, "prio_class": 0}),
    ("device offline error, dev sdb, sector 0 op 0x0:(READ) flags 0x0 phys_seg 1 prio class 2 extra 7",
     ("BLK_IO_ERROR", "error", "sdb", SDB_WWID, "sdb: device offline error, READ sector 0"),
     {"error": "device offline error", "function": "", "sector": 0, "op": "READ", "op_code": 0, "flags": "0x0",
      "phys_seg": 1, "prio_class": 2}),
    ("Apr 26 10:25:44 node1 kernel: Buffer I/O error on dev dm-0, logical block 8, async page read",
     ("BLK_IO_ERROR", "error", "mpatha", MPATHA_UUID, "mpatha (dm-0): Buffer I/O error, logical block 8 (async page read)"),
     {"error": "I/O error", "function": "buffer_io_error", "logical_block": 8, "detail": "async page read",
      "op": "READ"}),
    ("Buffer I/O error on dev sdb1, logical block 0, lost async page write",
     ("BLK_IO_ERROR", "error", "sdb1", SDB_WWID + "-part1",
      "sdb1: Buffer I/O error, logical block 0 (lost async page write)"),
     {"error": "I/O error", "function": "buffer_io_error", "logical_block": 0, "detail": "lost async page write",
      "op": "WRITE"}),
    ("Buffer I/O error on device sdb1, logical block 123456",  # 2.6
     ("BLK_IO_ERROR", "error", "sdb1", SDB_WWID + "-part1", "sdb1: Buffer I/O error, logical block 123456"),
     {"error": "I/O error", "function": "buffer_io_error", "logical_block": 123456}),
])
def test_line_shapes_of_other_kernels(fake: FakeSys, line: str, expected: tuple[str, ...], ext: dict[str, Any]) -> None:
    """Each kernel generation's I/O error line gives one event with its details."""
    [e] = feed(block(fake), line_events(line))
    assert summary(e) == expected
    assert core(e) == ext


def test_suppressed_counts_go_to_the_next_event_of_their_kind(fake: FakeSys) -> None:
    """Rate-limiter counts are no events; each goes to the next buffer or request error, once."""
    parser = block(fake)
    out = feed(parser, line_events(
        "blk_print_req_error: 12 callbacks suppressed\n"
        "buffer_io_error: 3 callbacks suppressed\n"
        "kauditd_printk_skb: 5 callbacks suppressed\n"
        "I/O error, dev sdb, sector 8 op 0x0:(READ) flags 0x0 phys_seg 1 prio class 2\n"
        "I/O error, dev sdb, sector 16 op 0x0:(READ) flags 0x0 phys_seg 1 prio class 2\n"
        "Buffer I/O error on dev sdb1, logical block 1, async page read\n"
        "Buffer I/O error on dev sdb1, logical block 2, async page read\n"))
    assert [e["extensions"].get("suppressed") for e in out] == [12, None, 3, None]
    assert out[0]["msg"] == "sdb: I/O error, READ sector 8 (12 similar messages suppressed before)"


@pytest.mark.parametrize("line", [
    "EXT4-fs warning (device sdf): ext4_end_bio:323: I/O error 10 writing to inode 12 (offset 464060416 size 1507328)",
    "JBD2: Detected IO errors while flushing file data on sdf-8",
    "XFS (dm-0): metadata I/O error in \"xfs_trans_read_buf_map\" at daddr 0x1a len 8 error 5",
    "ata1.00: error: { UNC }",
    "Buffer I/O error on device sdf",
    "I/O error, dev sdf",
    "blk_update_request: I/O error, dev sdf, sector abc",
    "foo: I/O error, dev sda, sector 5",
    "I/O error, dev sda, sector 5x",
    "buffer_io_error: many callbacks suppressed",
    "sd 2:0:0:0: [sdb] Write cache: enabled, read cache: enabled, doesn't support DPO or FUA",
    "\x00\x01 error, dev \ufffd",
])
def test_unknown_lines_and_near_misses_give_nothing(fake: FakeSys, line: str) -> None:
    """Lines that are not I/O errors, or are mangled, give nothing."""
    parser = block(fake)
    assert feed(parser, line_events(line)) == []
    assert parser.suppressed == {"buffer": 0, "request": 0}


def test_end_to_end_through_busd(bus: Bus, tmp_path: Path) -> None:
    """kmsg records and dmesg lines through busd (default filter): exactly the five BLK_IO_ERROR events."""
    fake = FakeSys(tmp_path)
    fake.disk("sdf", "8:80", wwid=SDF_WWID, hctl="6:0:0:0")
    bus.write({"block": {"type": "parser", "builtin": "block", **fake.options}})
    bus.start()
    bus.wait_running("block")
    events = kmsg_events(sample("kmsg-scsi-cascade.kmsg")) + line_events(sample("dmesg-scsi-medium.txt"))
    bus.emit([{k: v for k, v in e.items() if k != "source"} for e in events])

    # the default filter has the broker route only the lines that hold one of the parser's keywords
    routed = [e for e in events if any(k in e["msg"] for k in Block.KEYWORDS)]
    assert 5 <= len(routed) < len(events)

    def drained() -> bool:
        p = bus.plugin("block")
        return p["events_out"] == len(routed) and not p["delivery"]["pending"]
    wait_for(drained, what="block parser to handle every input")
    assert bus.plugin("block")["events_in"] == 5
    out = bus.tail(5, "--system", "block")
    assert [(e["event_type"], e["severity"], e["dev_name"], e["dev_wwid"], e["msg"], e["source"]) for e in out] == [
        ("BLK_IO_ERROR", "error", "sdf", SDF_WWID, "sdf: I/O error, sector 9984", "block"),
        ("BLK_IO_ERROR", "error", "sdf", SDF_WWID,
         "sdf: Buffer I/O error, logical block 4960 (506 similar messages suppressed before)", "block"),
        ("BLK_IO_ERROR", "error", "sdc", "", "sdc: I/O error, sector 0", "block"),
        ("BLK_IO_ERROR", "error", "sdc", "", "sdc: Buffer I/O error, logical block 0", "block"),
        ("BLK_IO_ERROR", "error", "sdc", "", "sdc: critical medium error, READ sector 10000", "block")]

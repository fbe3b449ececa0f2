# ruff: noqa: E501  (the expected events are data rows, one per line)
"""Issue 3 end to end: kernel records -> kmsg collector -> the six kernel parsers -> bus-tail.

The recorded samples (../shared/samples) go through a real busd with the kmsg collector on a file;
the live test writes records into the real /dev/kmsg and reads them back through the same busd path.
"""

from __future__ import annotations

import json
import random
import re
import uuid
from pathlib import Path
from typing import Any

from conftest import Bus, wait_for
from fakesys import FakeSys
from kernel_input import sample

PARSERS = ("scsi", "block", "multipath", "fs", "mdraid", "lvm")


def as_kmsg(text: str, first_seq: int, prio: int = 6) -> str:
    """Turn dmesg/syslog text into /dev/kmsg records, one per line (an indented line is a line of its own)."""
    out = []
    for n, line in enumerate((ln.strip() for ln in text.splitlines() if ln.strip()), first_seq):
        out.append(f"{prio},{n},{n * 1000},-;{line}")
    return "\n".join(out) + "\n"


def storage_bus(bus: Bus, fake: FakeSys, path: Path | str, *, since_boot: bool) -> None:
    """Write and start a busd: kmsg collector on ``path``, every kernel parser on the fake sysfs tree."""
    plugins: dict[str, dict[str, Any]] = {
        "kmsg": {"type": "collector", "builtin": "kmsg", "path": str(path), "since_boot": since_boot}}
    for name in PARSERS:
        plugins[name] = {"type": "parser", "builtin": name, **fake.options}
    bus.write(plugins)
    bus.start()
    bus.wait_running("kmsg", *PARSERS)


def summary(event: dict[str, Any], *keys: str) -> tuple[Any, ...]:
    """The fields a test pins down: type, device, WWID and the named extensions."""
    ext = event["extensions"]
    return (event["event_type"], event["severity"], event["dev_name"], event["dev_wwid"],
            *(ext.get(k) for k in keys))


def sample_tree(tmp: Path) -> FakeSys:
    fake = FakeSys(tmp)
    fake.disk("sdf", "8:80", wwid="naa.6001405f00000000000000000000000f", hctl="6:0:0:0")
    fake.disk("sdc", "8:32", wwid="t10.ATA     SAMSUNG HD103SJ     S246J90B", hctl="18:0:0:0")
    fake.disk("sda", "8:0", wwid="naa.50014ee2b0000000", hctl="0:0:0:0")
    fake.disk("sdg", "8:96", wwid="naa.5000c500a0000000", hctl="5:0:0:0")
    fake.disk("sdd", "8:48", wwid="naa.60014050000000000000000000000d0d", hctl="3:0:0:1")
    fake.disk("sdb", "8:16", wwid="naa.60014050000000000000000000000b0b", hctl="3:0:0:0")
    fake.dm("dm-0", "253:0", name="mpatha", uuid="mpath-36001405000000000000000000000aaaa")
    fake.slaves("dm-0", "sdb", "sdd")
    fake.dm("dm-1", "253:1", name="vg0-data", uuid="LVM-Qx5yAbCdEfGhIjKlMnOpQrStUvWxYz01Qx5yAbCdEfGhIjKlMnOpQrStUvWxYz02")
    fake.partition("sdg", 1, "8:97")
    fake.md("md0", "9:0", uuid="5f0e2c1a:9b8d7e6f:11223344:55667788")
    fake.md("md127", "9:127", uuid="0a0b0c0d:01020304:05060708:090a0b0c")
    fake.md("md1", "9:1", uuid="deadbeef:00000000:11111111:22222222")
    return fake


def test_samples_through_busd_give_exactly_the_expected_events(bus: Bus, tmp_path: Path) -> None:
    fake = sample_tree(tmp_path / "tree")
    records = sample("kmsg-scsi-cascade.kmsg")
    seq = 2000
    for name in ("dmesg-scsi-medium.txt", "dmesg-multipath.txt", "dmesg-fs.txt", "dmesg-md.txt"):
        records += as_kmsg(sample(name), seq)
        seq += 100
    feed = tmp_path / "kmsg"
    feed.write_text(records)
    storage_bus(bus, fake, feed, since_boot=True)
    expected = EXPECTED_SAMPLE_EVENTS
    events = bus.tail(len(expected), last=len(expected) + 5, timeout=60)
    got = sorted((summary(e, *EXTRA_KEYS.get(e["event_type"], ())) for e in events), key=repr)
    assert got == sorted(expected, key=repr)
    # the collector stays quiet afterwards: nothing beyond the expected events was published
    head = bus.status()["broker"]["head"]["synthetic"]
    assert head == len(expected), head


_EXTRA = {"SCSI": ("hctl", "tag", "sense_key", "asc", "cdb", "sector"), "BLK": ("function", "sector", "logical_block"),
          "DM_MPATH": ("path_devt", "map", "source"), "FS": ("fstype", "reason"), "MD": ("member", "remaining_devices")}
EXTRA_KEYS = {t: keys for prefix, keys in _EXTRA.items() for t in (
    "SCSI_NOT_READY", "SCSI_MEDIUM_ERROR", "BLK_IO_ERROR", "DM_MPATH_PATH_FAILED", "DM_MPATH_PATH_REINSTATED",
    "FS_IO_ERROR", "FS_MOUNTED", "FS_SHUTDOWN", "MD_RESYNC_STARTED", "MD_RESYNC_DONE", "MD_DISK_FAILURE",
    "MD_RECOVERY_STARTED", "MD_CHECK_STARTED", "MD_CHECK_DONE") if t.startswith(prefix)}
# One event per real problem: the SCSI failures are one event each (their 3-5 lines correlated), the
# five-line XFS shutdown is one, the two-line md disk failure is one; "delaying data-check", "not clean",
# "active with 2 out of 2 mirrors" and "Please umount" give nothing.
EXPECTED_SAMPLE_EVENTS: list[tuple[Any, ...]] = [
    ('BLK_IO_ERROR', 'error', 'sdc', 't10.ATA SAMSUNG HD103SJ S246J90B', 'blk_update_request', 10000, None),
    ('BLK_IO_ERROR', 'error', 'sdc', 't10.ATA SAMSUNG HD103SJ S246J90B', 'buffer_io_error', None, 0),
    ('BLK_IO_ERROR', 'error', 'sdc', 't10.ATA SAMSUNG HD103SJ S246J90B', 'end_request', 0, None),
    ('BLK_IO_ERROR', 'error', 'sdf', 'naa.6001405f00000000000000000000000f', 'buffer_io_error', None, 4960),
    ('BLK_IO_ERROR', 'error', 'sdf', 'naa.6001405f00000000000000000000000f', 'print_req_error', 9984, None),
    ('DM_MPATH_PATH_FAILED', 'error', 'sdb', 'naa.60014050000000000000000000000b0b', '8:16', 'mpatha', 'multipathd'),
    ('DM_MPATH_PATH_FAILED', 'error', 'sdd', 'naa.60014050000000000000000000000d0d', '8:48', 'mpatha', 'kernel'),
    ('DM_MPATH_PATH_REINSTATED', 'info', 'sdd', 'naa.60014050000000000000000000000d0d', '8:48', 'mpatha', 'kernel'),
    ('FS_IO_ERROR', 'error', 'sdf', 'naa.6001405f00000000000000000000000f', 'ext4', 'detected IO errors while flushing file data'),
    ('FS_IO_ERROR', 'error', 'sdf', 'naa.6001405f00000000000000000000000f', 'ext4', None),
    ('FS_MOUNTED', 'info', 'vg0/data', 'LVM-Qx5yAbCdEfGhIjKlMnOpQrStUvWxYz01Qx5yAbCdEfGhIjKlMnOpQrStUvWxYz02', 'ext4', None),
    ('FS_SHUTDOWN', 'error', 'sdb1', '', 'xfs', 'Corruption of in-memory data'),
    ('FS_SHUTDOWN', 'error', 'vg0/data', 'LVM-Qx5yAbCdEfGhIjKlMnOpQrStUvWxYz01Qx5yAbCdEfGhIjKlMnOpQrStUvWxYz02', 'xfs', 'Corruption of in-memory data'),
    ('FS_SHUTDOWN', 'error', 'vg0/data', 'LVM-Qx5yAbCdEfGhIjKlMnOpQrStUvWxYz01Qx5yAbCdEfGhIjKlMnOpQrStUvWxYz02', 'xfs', 'Corruption of in-memory data'),
    ('MD_CHECK_DONE', 'info', 'md1', 'deadbeef:00000000:11111111:22222222', None, None),
    ('MD_CHECK_STARTED', 'info', 'md1', 'deadbeef:00000000:11111111:22222222', None, None),
    ('MD_DISK_FAILURE', 'error', 'md0', '5f0e2c1a:9b8d7e6f:11223344:55667788', 'sdb1', 1),
    ('MD_DISK_FAILURE', 'error', 'md127', '0a0b0c0d:01020304:05060708:090a0b0c', 'sdb1', 1),
    ('MD_RECOVERY_STARTED', 'info', 'md127', '0a0b0c0d:01020304:05060708:090a0b0c', None, None),
    ('MD_RESYNC_DONE', 'info', 'md0', '5f0e2c1a:9b8d7e6f:11223344:55667788', None, None),
    ('MD_RESYNC_STARTED', 'info', 'md0', '5f0e2c1a:9b8d7e6f:11223344:55667788', None, None),
    ('SCSI_MEDIUM_ERROR', 'error', 'sda', 'naa.50014ee2b0000000', '0:0:0:0', None, 'Medium Error', 'Unrecovered read error - auto reallocate failed', None, None),
    ('SCSI_MEDIUM_ERROR', 'error', 'sdc', 't10.ATA SAMSUNG HD103SJ S246J90B', '18:0:0:0', None, 'Medium Error', 'Incompatible medium installed', 'Read(10) 28 00 00 00 00 00 00 00 08 00 00 00', 0),
    ('SCSI_MEDIUM_ERROR', 'error', 'sdc', 't10.ATA SAMSUNG HD103SJ S246J90B', '8:0:0:0', 255, 'Medium Error', 'Unrecovered read error', 'Read(10) 28 00 00 00 27 10 00 00 01 00', 10000),
    ('SCSI_MEDIUM_ERROR', 'error', 'sdg', 'naa.5000c500a0000000', '5:0:0:0', 12, 'Medium Error', 'Unrecovered read error', None, None),
    ('SCSI_NOT_READY', 'error', 'sdf', 'naa.6001405f00000000000000000000000f', '6:0:0:0', 2, 'Not Ready', 'Logical unit communication failure', 'Write(10) 2a 00 00 00 27 00 00 00 40 00', 9984),
]


def test_live_dev_kmsg_records_become_storage_events(bus: Bus, tmp_path: Path) -> None:
    """Records written into the real kernel log come out as SCSI and block events with sysfs names."""
    fake = FakeSys(tmp_path / "tree")
    # a unique disk per run, so records from other runs in the same kernel log never match
    letters = "".join(random.choice("hijklmnopqrstuvwxyz") for _ in range(3))
    disk, hctl, tag, sector = f"sd{letters}", f"{random.randrange(20, 99)}:0:0:{random.randrange(9)}", \
        random.randrange(1, 999), random.randrange(10_000, 9_999_999)
    wwid = f"naa.6001405{uuid.uuid4().hex[:25]}"
    fake.disk(disk, "65:16", wwid=wwid, hctl=hctl)
    storage_bus(bus, fake, "/dev/kmsg", since_boot=False)
    lba = sector  # 512-byte sectors: the CDB's LBA is the sector
    lines = [
        f"<3>sd {hctl}: [{disk}] tag#{tag} FAILED Result: hostbyte=DID_OK driverbyte=DRIVER_SENSE",
        f"<3>sd {hctl}: [{disk}] tag#{tag} Sense Key : Medium Error [current]",
        f"<3>sd {hctl}: [{disk}] tag#{tag} Add. Sense: Unrecovered read error",
        f"<3>sd {hctl}: [{disk}] tag#{tag} CDB: Read(10) 28 00 {lba >> 24 & 255:02x} {lba >> 16 & 255:02x} "
        f"{lba >> 8 & 255:02x} {lba & 255:02x} 00 00 08 00",
        f"<3>blk_update_request: critical medium error, dev {disk}, sector {sector} op 0x0:(READ) flags 0x0 "
        "phys_seg 1 prio class 0",
    ]
    with open("/dev/kmsg", "w") as kmsg:
        for line in lines:
            kmsg.write(line + "\n")
            kmsg.flush()

    def mine() -> list[dict[str, Any]]:
        res = bus.run("bus-tail", "--json", "--count", "2", "--last", "1000", "--system", "scsi", "--system", "block")
        found = [json.loads(x) for x in res.stdout.splitlines()]
        return [e for e in found if e["dev_name"] == disk]
    def both() -> list[dict[str, Any]] | None:
        found = mine()
        return found if len(found) == 2 else None
    events = wait_for(both, 20, "the SCSI and block events")
    by_type = {e["event_type"]: e for e in events}
    scsi, block = by_type["SCSI_MEDIUM_ERROR"], by_type["BLK_IO_ERROR"]
    assert scsi["dev_wwid"] == wwid and block["dev_wwid"] == wwid
    assert scsi["severity"] == "error"
    assert scsi["extensions"]["hctl"] == hctl
    assert scsi["extensions"]["tag"] == tag
    assert scsi["extensions"]["asc"] == "Unrecovered read error"
    assert scsi["extensions"]["sector"] == sector
    assert re.fullmatch(r"Read\(10\) 28 00 .*", scsi["extensions"]["cdb"])
    assert block["extensions"]["sector"] == sector
    assert isinstance(scsi["extensions"]["kmsg_seq"], int)

"""Parser ``fs``: ext4/jbd2, XFS and btrfs kernel lines to FS_* events, unit tests and one run through busd."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import Bus
from fakesys import FakeSys
from kernel_input import SAMPLES, expire, feed, kmsg_events, line_event, load_parser_config, make, only, sample, summary

from bus.exceptions import ConfigError
from parsers.fs import Fs

LVM_DATA = "LVM-" + "Xf3kq9Lr" * 8
UUID_DM1 = "0b1e2f3a-5c6d-4e7f-8a9b-0c1d2e3f4a5b"
UUID_VDB = "6f4e2a10-97c3-4d2b-b1a5-3e8d9c7b6a54"
UUID_PRINTED = "4ac5d4c4-2b5e-4f0d-9a43-8f3c11e2d7a9"
WWID_SDB = "naa.5000c50015ea71ac"
WWID_SDF = "naa.6001405f1e2d3c4b"
WWID_SDD = "naa.5000c500a1b2c3d4"


@pytest.fixture(name="fake")
def fixture_fake(tmp_path: Path) -> FakeSys:
    """Disks with WWIDs, a virtio disk without one (its filesystem UUID stands in), an LVM volume."""
    fake = FakeSys(tmp_path)
    fake.disk("sdb", "8:16", wwid=WWID_SDB)
    fake.partition("sdb", 1, "8:17")
    fake.disk("sdf", "8:80", wwid=WWID_SDF, hctl="6:0:0:0")
    fake.disk("sdd", "8:48", wwid=WWID_SDD, hctl="3:0:0:0")
    fake.partition("sdd", 1, "8:49")
    fake.disk("vdb", "252:16", hctl="0:0:1:0")
    fake.fs("vdb", UUID_VDB)
    fake.dm("dm-1", "253:1", name="vg-data", uuid=LVM_DATA)
    fake.fs("dm-1", UUID_DM1)
    return fake


@pytest.fixture(name="fs")
def fixture_fs(fake: FakeSys) -> Fs:
    """The parser with a short correlation window."""
    parser = make(Fs, "fs", fake, correlation_window=0.2)
    assert isinstance(parser, Fs)
    return parser


def ext(event: dict[str, Any]) -> dict[str, Any]:
    """Extensions without the raw event's id (random per test run)."""
    return {k: v for k, v in event["extensions"].items() if k != "raw_event_id"}


# --- the sample files ----------------------------------------------------------------------------

def test_every_line_of_the_fs_sample(fs: Fs) -> None:
    lines = (SAMPLES / "dmesg-fs.txt").read_text().splitlines()
    now = feed(fs, *lines)
    later = expire(fs)
    assert [summary(e) for e in now + later] == [
        ("FS_MOUNTED", "info", "vg/data", LVM_DATA),
        ("FS_SHUTDOWN", "error", "vg/data", LVM_DATA),
        ("FS_SHUTDOWN", "error", "sdb1", WWID_SDB + "-part1"),
        ("FS_SHUTDOWN", "error", "vg/data", LVM_DATA),
    ]
    mounted, shutdown, sdb1, old = now + later
    assert ext(mounted) == {"kernel_name": "dm-1", "fstype": "ext4", "data_mode": "ordered", "remount": False,
                            "fs_uuid": UUID_DM1}
    assert mounted["msg"] == "vg/data: ext4 mounted (ordered)"
    # five lines of one XFS shutdown, and what it printed after, are one event; "Please umount" adds nothing
    assert ext(shutdown) == {
        "kernel_name": "dm-1", "fstype": "xfs", "reason": "Corruption of in-memory data", "flags": "0x8",
        "called_from": "fs/xfs/xfs_trans.c:985", "file": "fs/xfs/xfs_trans.c", "line": 985,
        "return_address": "0xffffffffc0d5335f", "fs_uuid": UUID_DM1,
        "details": [lines[1].split("): ", 1)[1], lines[2].split("): ", 1)[1], "Failed to recover intents",
                    "log mount finish failed", "xfs_log_force: error -5 returned."]}
    assert shutdown["msg"] == "vg/data: xfs shut down: Corruption of in-memory data (called from fs/xfs/xfs_trans.c:985)"
    assert shutdown["extensions"]["raw_event_id"] != mounted["extensions"]["raw_event_id"]
    assert ext(sdb1) == {"kernel_name": "sdb1", "fstype": "xfs", "reason": "Corruption of in-memory data",
                         "details": ["Corruption of in-memory data detected.  Shutting down filesystem"]}
    assert ext(old) == {"kernel_name": "dm-1", "fstype": "xfs", "reason": "Corruption of in-memory data",
                        "fs_uuid": UUID_DM1,
                        "details": ["Corruption of in-memory data detected.  Shutting down filesystem: dm-1"]}


def test_fs_lines_of_the_kmsg_cascade(fs: Fs) -> None:
    """The SCSI failure cascading to ext4 and jbd2: two fs events, with the kmsg sequence numbers."""
    out = []
    for raw in kmsg_events(sample("kmsg-scsi-cascade.kmsg")):
        out += fs.handle(raw) or []
    assert [summary(e) for e in out] == [("FS_IO_ERROR", "error", "sdf", WWID_SDF)] * 2
    io, journal = out
    assert ext(io) == {"kmsg_seq": 1244, "kernel_name": "sdf", "fstype": "ext4", "function": "ext4_end_bio",
                       "line": 323, "error": 10, "inode": 12, "block": 6432, "offset": 464060416, "size": 1507328}
    assert io["msg"] == "sdf: ext4 I/O error 10 writing to inode 12, block 6432"
    assert ext(journal) == {"kmsg_seq": 1256, "kernel_name": "sdf", "fstype": "ext4", "journal": True,
                            "journal_device": "sdf-8", "journal_inode": 8,
                            "reason": "detected IO errors while flushing file data"}


# --- ext4 ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("line", "expected"), [
    ("EXT4-fs (sdb1): mounted filesystem with ordered data mode. Opts: (null)",
     {"data_mode": "ordered", "remount": False}),
    ("[    4.120] EXT4-fs (sdb1): mounted filesystem with writeback data mode. Opts: errors=remount-ro,data=writeback. "
     "Quota mode: none.",
     {"data_mode": "writeback", "options": "errors=remount-ro,data=writeback", "quota_mode": "none", "remount": False}),
    (f"EXT4-fs (sdb1): mounted filesystem {UUID_PRINTED} r/w with ordered data mode. Quota mode: none.",
     {"mode": "r/w", "data_mode": "ordered", "quota_mode": "none", "remount": False, "fs_uuid": UUID_PRINTED}),
    (f"Apr 26 10:25:44 host kernel: EXT4-fs (sdb1): mounted filesystem {UUID_PRINTED} ro without journal. "
     "Quota mode: disabled.",
     {"mode": "ro", "data_mode": "no journal", "quota_mode": "disabled", "remount": False, "fs_uuid": UUID_PRINTED}),
    ("EXT4-fs (sdb1): mounted filesystem with ordered data mode", {"data_mode": "ordered", "remount": False}),
    ("EXT4-fs (sdb1): re-mounted. Opts: errors=remount-ro", {"options": "errors=remount-ro", "remount": True}),
    ("EXT4-fs (sdb1): re-mounted. Opts: (null). Quota mode: none.", {"quota_mode": "none", "remount": True}),
    (f"EXT4-fs (sdb1): re-mounted {UUID_PRINTED} ro. Quota mode: none.",
     {"mode": "ro", "quota_mode": "none", "remount": True, "fs_uuid": UUID_PRINTED}),
])
def test_ext4_mounts(fs: Fs, line: str, expected: dict[str, Any]) -> None:
    event = only(feed(fs, line))
    assert summary(event) == ("FS_MOUNTED", "info", "sdb1", WWID_SDB + "-part1")
    assert ext(event) == {"kernel_name": "sdb1", "fstype": "ext4", **expected}


def test_ext4_unmount_and_the_printed_uuid_stays_with_the_device(fs: Fs) -> None:
    mounted, error, unmounted, old = feed(
        fs, f"EXT4-fs (vdb): mounted filesystem {UUID_PRINTED} r/w with ordered data mode. Quota mode: none.",
        "EXT4-fs error (device vdb): ext4_find_entry:1455: inode #2: comm ls: reading directory lblock 0",
        f"EXT4-fs (vdb): unmounting filesystem {UUID_PRINTED}.",
        "EXT4-fs (sdb1): unmounting filesystem.")
    # vdb has no WWID: its filesystem UUID stands in, the printed one before /dev/disk/by-uuid
    assert [summary(e) for e in (mounted, error, unmounted)] == [
        ("FS_MOUNTED", "info", "vdb", UUID_PRINTED), ("FS_ERROR", "error", "vdb", UUID_PRINTED),
        ("FS_UNMOUNTED", "info", "vdb", UUID_PRINTED)]
    assert error["extensions"]["fs_uuid"] == UUID_PRINTED
    assert summary(old) == ("FS_UNMOUNTED", "info", "sdb1", WWID_SDB + "-part1")
    assert ext(old) == {"kernel_name": "sdb1", "fstype": "ext4"}
    # once unmounted, the printed UUID is forgotten: /dev/disk/by-uuid tells what is on the device now
    assert summary(only(feed(fs, "EXT4-fs (vdb): Remounting filesystem read-only"))) == (
        "FS_REMOUNT_READ_ONLY", "error", "vdb", UUID_VDB)


def test_a_device_without_wwid_falls_back_to_its_filesystem_uuid(fs: Fs) -> None:
    event = only(feed(fs, "EXT4-fs (vdb): Remounting filesystem read-only"))
    assert summary(event) == ("FS_REMOUNT_READ_ONLY", "error", "vdb", UUID_VDB)
    assert ext(event) == {"kernel_name": "vdb", "fstype": "ext4", "mode": "ro", "fs_uuid": UUID_VDB}
    assert event["msg"] == "vdb: ext4 remounted read-only after an error"


@pytest.mark.parametrize(("line", "expected", "msg"), [
    ("EXT4-fs error (device sdb1): ext4_find_entry:1455: inode #2: comm ls: reading directory lblock 0",
     {"function": "ext4_find_entry", "line": 1455, "inode": 2, "comm": "ls", "reason": "reading directory lblock 0"},
     "sdb1: ext4 error in ext4_find_entry:1455 (inode 2): reading directory lblock 0"),
    ("EXT4-fs error (device sdb1): ext4_journal_check_start:83: comm kworker/u256:1: Detected aborted journal",
     {"function": "ext4_journal_check_start", "line": 83, "comm": "kworker/u256:1", "reason": "Detected aborted journal"},
     "sdb1: ext4 error in ext4_journal_check_start:83: Detected aborted journal"),
    ("EXT4-fs error (device sdb1) in ext4_writepages:2813: Journal has aborted",
     {"function": "ext4_writepages", "line": 2813, "reason": "Journal has aborted"},
     "sdb1: ext4 error in ext4_writepages:2813: Journal has aborted"),
    ("EXT4-fs error (device sdb1): ext4_mb_generate_buddy:757: group 1, block bitmap and bg descriptor inconsistent: "
     "32768 vs 32767 free clusters",
     {"function": "ext4_mb_generate_buddy", "line": 757, "group": 1,
      "reason": "block bitmap and bg descriptor inconsistent: 32768 vs 32767 free clusters"}, None),
    ("EXT4-fs error (device sdb1): ext4_ext_check_inode:481: inode #12: block 8464: comm cp: path /data/f: "
     "bad header/extent: invalid magic",
     {"function": "ext4_ext_check_inode", "line": 481, "inode": 12, "block": 8464, "comm": "cp", "path": "/data/f",
      "reason": "bad header/extent: invalid magic"}, None),
    ("EXT4-fs error (device sdb1): ext4_lookup: deleted inode referenced: 1234",
     {"function": "ext4_lookup", "reason": "deleted inode referenced: 1234"},
     "sdb1: ext4 error in ext4_lookup: deleted inode referenced: 1234"),
])
def test_ext4_errors(fs: Fs, line: str, expected: dict[str, Any], msg: str | None) -> None:
    event = only(feed(fs, line))
    assert summary(event) == ("FS_ERROR", "error", "sdb1", WWID_SDB + "-part1")
    assert ext(event) == {"kernel_name": "sdb1", "fstype": "ext4", **expected}
    if msg:
        assert event["msg"] == msg


def test_ext4_io_errors(fs: Fs) -> None:
    new, sb_prev, sb_write = feed(
        fs, "[  +0.000658] EXT4-fs warning (device sdd1): ext4_end_bio:342: I/O error 10 writing to inode 81661955 "
            "starting block 125702400)",
        "EXT4-fs (sdd1): previous I/O error to superblock detected",
        "EXT4-fs (sdd1): I/O error while writing superblock")
    assert [summary(e) for e in (new, sb_prev, sb_write)] == [("FS_IO_ERROR", "error", "sdd1", WWID_SDD + "-part1")] * 3
    assert ext(new) == {"kernel_name": "sdd1", "fstype": "ext4", "function": "ext4_end_bio", "line": 342, "error": 10,
                        "inode": 81661955, "block": 125702400}
    assert sb_prev["extensions"]["reason"] == "previous I/O error to superblock detected"
    assert sb_write["msg"] == "sdd1: ext4 I/O error while writing superblock"


def test_ext4_failed_allocation_and_data_loss_are_one_error(fs: Fs) -> None:
    """The real sequence of a failing disk: each line's event, the allocation failure joined with its sequel."""
    out = feed(fs, "EXT4-fs warning (device sdd1): ext4_end_bio:342: I/O error 10 writing to inode 81661955 "
                   "starting block 125702400)",
               "Aborting journal on device sdd1-8.",
               "EXT4-fs (sdd1): Delayed block allocation failed for inode 81661956 at logical offset 0 with max "
               "blocks 2048 with error 30",
               "EXT4-fs (sdd1): This should not happen!! Data will be lost",
               "EXT4-fs error (device sdd1) in ext4_writepages:2813: Journal has aborted",
               "JBD2: Error -5 detected when updating journal superblock for sdd1-8.")
    assert [(e["event_type"], e["dev_name"]) for e in out] == [
        ("FS_IO_ERROR", "sdd1"), ("FS_ERROR", "sdd1"), ("FS_ERROR", "sdd1"), ("FS_ERROR", "sdd1"),
        ("FS_IO_ERROR", "sdd1")]
    aborted, lost, journal_sb = out[1], out[2], out[4]
    assert ext(aborted) == {"kernel_name": "sdd1", "fstype": "ext4", "journal": True, "journal_device": "sdd1-8",
                            "journal_inode": 8, "reason": "journal aborted"}
    assert ext(lost) == {"kernel_name": "sdd1", "fstype": "ext4", "reason": "delayed block allocation failed",
                         "inode": 81661956, "offset": 0, "blocks": 2048, "error": 30, "data_lost": True}
    assert lost["msg"] == "sdd1: ext4 delayed block allocation failed for inode 81661956 (error 30): data will be lost"
    assert ext(journal_sb) == {"kernel_name": "sdd1", "fstype": "ext4", "journal": True, "journal_device": "sdd1-8",
                               "journal_inode": 8, "error": -5, "reason": "I/O error when updating journal superblock"}
    assert not fs.groups.groups


def test_ext4_failed_allocation_alone_goes_out_when_the_window_ends(fs: Fs) -> None:
    fs.delivery = 41
    raw = line_event("EXT4-fs (sdb1): Delayed block allocation failed for inode 18 at logical offset 768 with max "
                     "blocks 2 with error 28")
    assert fs.handle(raw) is None
    assert fs.hold() == 41
    event = only(expire(fs))
    assert fs.hold() is None
    assert summary(event) == ("FS_ERROR", "error", "sdb1", WWID_SDB + "-part1")
    assert ext(event) == {"kernel_name": "sdb1", "fstype": "ext4", "reason": "delayed block allocation failed",
                          "inode": 18, "offset": 768, "blocks": 2, "error": 28, "data_lost": False}
    assert event["extensions"]["raw_event_id"] == raw["event_id"]
    assert event["event_id"] != raw["event_id"]
    lone = only(feed(fs, "EXT4-fs (sdb1): This should not happen!! Data will be lost"))
    assert ext(lone) == {"kernel_name": "sdb1", "fstype": "ext4", "reason": "This should not happen!! Data will be lost",
                         "data_lost": True}


@pytest.mark.parametrize(("line", "event_type", "severity", "expected"), [
    ("Kernel panic - not syncing: EXT4-fs (device sdb1): panic forced after error", "FS_PANIC", "error",
     {"reason": "panic forced after error"}),
    ("EXT4-fs (device sdb1): panic forced after error", "FS_PANIC", "error", {"reason": "panic forced after error"}),
    ("EXT4-fs (sdb1): shut down requested (2)", "FS_SHUTDOWN", "error",
     {"reason": "shut down requested", "flags": 2, "shutdown_mode": "nologflush"}),
    ("EXT4-fs (sdb1): failed to convert unwritten extents to written extents -- potential data loss!  "
     "(inode 12, error -30)", "FS_ERROR", "error",
     {"reason": "failed to convert unwritten extents -- potential data loss", "inode": 12, "error": -30,
      "data_lost": True}),
    ("EXT4-fs (sdb1): warning: mounting fs with errors, running e2fsck is recommended", "FS_ERROR", "warn",
     {"reason": "mounting fs with errors, running e2fsck is recommended"}),
])
def test_ext4_other_problems(fs: Fs, line: str, event_type: str, severity: str, expected: dict[str, Any]) -> None:
    event = only(feed(fs, line))
    assert summary(event) == (event_type, severity, "sdb1", WWID_SDB + "-part1")
    assert ext(event) == {"kernel_name": "sdb1", "fstype": "ext4", **expected}


@pytest.mark.parametrize(("line", "dev", "wwid", "expected"), [
    ("JBD2: Detected IO errors while flushing file data on sdf-8", "sdf", WWID_SDF,
     {"journal_device": "sdf-8", "journal_inode": 8, "reason": "detected IO errors while flushing file data"}),
    ("JBD2: Detected IO errors -5 while flushing file data on dm-1-8", "vg/data", LVM_DATA,
     {"kernel_name": "dm-1", "journal_device": "dm-1-8", "journal_inode": 8, "error": -5,
      "reason": "detected IO errors while flushing file data", "fs_uuid": UUID_DM1}),
    ("JBD2: I/O error when updating journal superblock for sdb1-8.", "sdb1", WWID_SDB + "-part1",
     {"journal_device": "sdb1-8", "journal_inode": 8, "reason": "I/O error when updating journal superblock"}),
    ("JBD2: I/O error when updating journal superblock for dm-1.", "vg/data", LVM_DATA,  # an external journal
     {"kernel_name": "dm-1", "journal_device": "dm-1", "reason": "I/O error when updating journal superblock",
      "fs_uuid": UUID_DM1}),
])
def test_jbd2_io_errors_are_ext4_journal_errors(fs: Fs, line: str, dev: str, wwid: str, expected: dict[str, Any]) -> None:
    event = only(feed(fs, line))
    assert summary(event) == ("FS_IO_ERROR", "error", dev, wwid)
    assert ext(event) == {"kernel_name": dev, "fstype": "ext4", "journal": True, **expected}


# --- XFS ----------------------------------------------------------------------------------------

def test_xfs_mount_and_unmount(fs: Fs) -> None:
    assert feed(fs, f"XFS (vdb): Mounting V5 Filesystem {UUID_PRINTED}", "XFS (vdb): Starting recovery (logdev: internal)"
                ) == []
    recovered, = feed(fs, "XFS (vdb): Ending recovery (logdev: internal)")
    assert summary(recovered) == ("FS_MOUNTED", "info", "vdb", UUID_PRINTED)
    assert ext(recovered) == {"kernel_name": "vdb", "fstype": "xfs", "version": 5, "recovery": True,
                              "logdev": "internal", "fs_uuid": UUID_PRINTED}
    unmounted, = feed(fs, f"XFS (vdb): Unmounting Filesystem {UUID_PRINTED}")
    assert summary(unmounted) == ("FS_UNMOUNTED", "info", "vdb", UUID_PRINTED)
    clean, = feed(fs, "XFS (sdb1): Mounting V4 Filesystem", "XFS (sdb1): Ending clean mount")
    assert ext(clean) == {"kernel_name": "sdb1", "fstype": "xfs", "version": 4, "recovery": False}
    assert clean["msg"] == "sdb1: xfs mounted"
    norecovery, = feed(fs, f"XFS (sdb1): Mounting V5 filesystem {UUID_PRINTED} in no-recovery mode. Filesystem will be "
                           "inconsistent.")
    assert ext(norecovery) == {"kernel_name": "sdb1", "fstype": "xfs", "version": 5, "recovery": False, "norecovery": True,
                               "mode": "ro", "fs_uuid": UUID_PRINTED}
    old_clean, old_recovery, old_unmount = feed(
        fs, "Ending clean XFS mount for filesystem: dm-1",
        "Ending XFS recovery on filesystem: dm-1 (logdev: internal)", "XFS (dm-1): Unmounting Filesystem")
    assert [summary(e) for e in (old_clean, old_recovery, old_unmount)] == [
        ("FS_MOUNTED", "info", "vg/data", LVM_DATA), ("FS_MOUNTED", "info", "vg/data", LVM_DATA),
        ("FS_UNMOUNTED", "info", "vg/data", LVM_DATA)]
    assert old_recovery["extensions"]["recovery"] is True


def test_xfs_log_io_error_and_the_shutdown_it_causes_are_one_event(fs: Fs) -> None:
    assert feed(fs, "XFS (dm-1): log I/O error -5",
                "XFS (dm-1): Filesystem has been shut down due to log error (0x2).",
                "XFS (dm-1): Please unmount the filesystem and rectify the problem(s).") == []
    event = only(expire(fs))
    assert summary(event) == ("FS_SHUTDOWN", "error", "vg/data", LVM_DATA)
    assert ext(event) == {"kernel_name": "dm-1", "fstype": "xfs", "reason": "Log error", "flags": "0x2", "error": -5,
                          "io_errors": 1, "fs_uuid": UUID_DM1,
                          "details": ["log I/O error -5", "Filesystem has been shut down due to log error (0x2)."]}
    assert event["msg"] == "vg/data: xfs shut down: Log error after a log I/O error -5"


def test_xfs_shutdown_new_format_and_user_initiated(fs: Fs) -> None:
    assert feed(fs, "XFS (sdb1): Corruption of in-memory data (0x8) detected at xfs_trans_cancel+0x13c/0x150 [xfs] "
                    "(fs/xfs/xfs_trans.c:1098).  Shutting down filesystem.",
                "XFS (sdb1): Please unmount the filesystem and rectify the problem(s)",
                "XFS (dm-1): User initiated shutdown received.",
                "XFS (dm-1): Metadata I/O Error (0x4) detected at xfs_fs_goingdown+0x57/0x110 [xfs] "
                "(fs/xfs/xfs_fsops.c:481).  Shutting down filesystem.") == []
    corruption, user = expire(fs)
    assert summary(corruption) == ("FS_SHUTDOWN", "error", "sdb1", WWID_SDB + "-part1")
    assert ext(corruption) == {
        "kernel_name": "sdb1", "fstype": "xfs", "reason": "Corruption of in-memory data", "flags": "0x8",
        "called_from": "fs/xfs/xfs_trans.c:1098", "file": "fs/xfs/xfs_trans.c", "line": 1098,
        "function": "xfs_trans_cancel", "return_address": "xfs_trans_cancel+0x13c/0x150 [xfs]",
        "details": ["Corruption of in-memory data (0x8) detected at xfs_trans_cancel+0x13c/0x150 [xfs] "
                    "(fs/xfs/xfs_trans.c:1098).  Shutting down filesystem."]}
    assert summary(user) == ("FS_SHUTDOWN", "warn", "vg/data", LVM_DATA)
    assert user["extensions"]["reason"] == "User initiated shutdown"
    assert user["extensions"]["user"] is True
    assert user["extensions"]["function"] == "xfs_fs_goingdown"


def test_xfs_old_kernel_forms(fs: Fs) -> None:
    assert feed(fs, 'Filesystem "sdb1": xfs_do_force_shutdown(0x2) called from line 1017 of file fs/xfs/xfs_log.c.  '
                    "Return address = 0xffffffff88315f1d",
                'Filesystem "sdb1": Log I/O Error Detected.  Shutting down filesystem: sdb1',
                'Filesystem "sdb1": Please umount the filesystem, and rectify the problem(s)',
                "XFS (dm-1): User initiated shutdown (0x4) received. Shutting down filesystem",
                "XFS (vdb): All device paths lost.  Shutting down filesystem") == []
    log, user, paths = expire(fs)
    assert (log["extensions"]["reason"], log["extensions"]["called_from"], log["severity"]) == (
        "Log I/O Error", "fs/xfs/xfs_log.c:1017", "error")
    assert (user["extensions"]["reason"], user["extensions"]["flags"], user["severity"]) == (
        "User initiated shutdown", "0x4", "warn")
    assert summary(paths) == ("FS_SHUTDOWN", "error", "vdb", UUID_VDB)
    assert paths["extensions"]["reason"] == "All device paths lost"


def test_xfs_repeated_shutdown_calls_are_not_a_new_shutdown(fs: Fs) -> None:
    called = ("XFS (sdb1): xfs_do_force_shutdown(0x1) called from line 1213 of file fs/xfs/xfs_buf.c.  "
              "Return address = xfs_buf_ioend+0x1e4/0x220 [xfs]")
    feed(fs, called, "XFS (sdb1): I/O Error Detected. Shutting down filesystem")
    first = only(expire(fs))
    assert (first["event_type"], first["extensions"]["reason"], first["extensions"]["function"]) == (
        "FS_SHUTDOWN", "I/O Error", "xfs_buf_ioend")
    assert feed(fs, called) == []
    assert expire(fs) == []  # the filesystem is already down
    feed(fs, "XFS (sdb1): Mounting V5 Filesystem", "XFS (sdb1): Ending clean mount", called)
    again = only(expire(fs))  # after a new mount a lone call is a new shutdown, its reason from its flags
    assert (again["event_type"], again["extensions"]["reason"]) == ("FS_SHUTDOWN", "Metadata I/O Error")


def test_xfs_io_errors_without_shutdown(fs: Fs) -> None:
    assert feed(fs, 'XFS (dm-1): metadata I/O error in "xfs_buf_iodone_callback_error+0x2a5/0x2e0 [xfs]" at daddr '
                    "0x1816a90 len 8 error 5",
                'XFS (dm-1): metadata I/O error in "xfs_imap_to_bp+0x5c/0x80 [xfs]" at daddr 0x8a66c0 len 32 error 5',
                'XFS (sdb1): metadata I/O error: block 0x3a8a40 ("xfs_trans_read_buf_map") error 5 numblks 16') == []
    dm1, sdb1 = expire(fs)
    assert summary(dm1) == ("FS_IO_ERROR", "error", "vg/data", LVM_DATA)
    assert {k: ext(dm1)[k] for k in ("reason", "error", "daddr", "function", "io_errors")} == {
        "reason": "metadata I/O error", "error": 5, "daddr": "0x1816a90",
        "function": "xfs_buf_iodone_callback_error", "io_errors": 2}
    assert dm1["msg"] == "vg/data: xfs metadata I/O error 5 (2 lines)"
    assert {k: ext(sdb1).get(k) for k in ("error", "daddr", "function")} == {
        "error": 5, "daddr": "0x3a8a40", "function": "xfs_trans_read_buf_map"}


@pytest.mark.parametrize("lines", [
    ["XFS (sdb1): Metadata corruption detected at xfs_dinode_verify.part.0+0x739/0x920 [xfs], inode 0x427b2d1"],
    ["XFS (sdb1): Metadata CRC error detected at xfs_agf_read_verify+0x8f/0xf0 [xfs], xfs_agf block 0x1"],
    ["XFS (sdb1): Internal error XFS_WANT_CORRUPTED_GOTO at line 1423 of file fs/xfs/libxfs/xfs_alloc.c.  "
     "Caller xfs_free_ag_extent+0x3e8/0x7a0 [xfs]"],
    ['Filesystem "sdb1": XFS internal error xfs_trans_cancel at line 1138 of file fs/xfs/xfs_trans.c.  '
     "Caller 0xffffffff8830a8f5"],
    ["XFS (sdb1): log mount/recovery failed: error -117", "XFS (sdb1): log mount failed"],
    ['XFS (sdb1): metadata I/O error in "xfs_trans_read_buf_map+0x1c7/0x330 [xfs]" at daddr 0x2 len 1 error 117'],
])
def test_xfs_errors(fs: Fs, lines: list[str]) -> None:
    assert feed(fs, *lines) == []
    event = only(expire(fs))
    assert summary(event) == ("FS_ERROR", "error", "sdb1", WWID_SDB + "-part1")
    assert event["extensions"]["details"] == [line.split(": ", 1)[1] for line in lines]
    assert event["msg"] == "sdb1: xfs error: " + lines[0].split(": ", 1)[1]


# --- btrfs --------------------------------------------------------------------------------------

def test_btrfs_mount_lines_are_one_mount(fs: Fs) -> None:
    assert feed(fs, f"BTRFS: device fsid {UUID_PRINTED} devid 1 transid 9196 /dev/sdb scanned by mount (6062)",
                "BTRFS info (device sdb): using crc32c (crc32c-intel) checksum algorithm",
                "BTRFS info (device sdb): disk space caching is enabled",
                "BTRFS info (device sdb): has skinny extents",
                "BTRFS info (device sdb): bdev /dev/sdb errs: wr 18, rd 136, flush 0, corrupt 0, gen 0",
                "BTRFS info (device sdb): enabling ssd optimizations") == []
    event = only(expire(fs))
    assert summary(event) == ("FS_MOUNTED", "info", "sdb", WWID_SDB)
    assert ext(event) == {
        "kernel_name": "sdb", "fstype": "btrfs", "fs_uuid": UUID_PRINTED,
        "options": "using crc32c (crc32c-intel) checksum algorithm, disk space caching is enabled, has skinny extents, "
                   "enabling ssd optimizations",
        "device_errors": {"/dev/sdb": {"wr": 18, "rd": 136, "flush": 0, "corrupt": 0, "gen": 0}}}
    assert feed(fs, f"BTRFS info (device vdb): first mount of filesystem {UUID_PRINTED}",
                "BTRFS info (device vdb): using free-space-tree") == []
    first = only(expire(fs))
    assert summary(first) == ("FS_MOUNTED", "info", "vdb", UUID_PRINTED)
    assert first["extensions"]["options"] == "using free-space-tree"
    unmounted = only(feed(fs, f"BTRFS info (device vdb): last unmount of filesystem {UUID_PRINTED}"))
    assert summary(unmounted) == ("FS_UNMOUNTED", "info", "vdb", UUID_PRINTED)


def test_btrfs_failed_mount_is_errors_not_a_mount(fs: Fs) -> None:
    errors = feed(fs, "BTRFS info (device sdb): disk space caching is enabled",
                  "BTRFS error (device sdb): parent transid verify failed on 30556160 wanted 12 found 8",
                  "BTRFS error (device sdb): open_ctree failed")
    assert [(e["event_type"], e["extensions"]["reason"]) for e in errors] == [
        ("FS_ERROR", "parent transid verify failed on 30556160 wanted 12 found 8"), ("FS_ERROR", "open_ctree failed")]
    assert expire(fs) == []


def test_btrfs_write_failure_cascade(fs: Fs) -> None:
    out = feed(fs, "BTRFS error (device sdb): bdev /dev/sdb errs: wr 1, rd 0, flush 0, corrupt 0, gen 0",
               "BTRFS: Transaction aborted (error -5)",
               "BTRFS error (device sdb: state A): Transaction aborted (error -5)",
               "BTRFS: error (device sdb) in btrfs_commit_transaction:2345: errno=-5 IO failure (Error while writing "
               "out transaction)",
               "BTRFS info (device sdb): forced readonly",
               "BTRFS warning (device sdb): Skipping commit of aborted transaction.",
               "BTRFS: error (device sdb: state EA) in cleanup_transaction:1958: errno=-5 IO failure",
               "BTRFS warning (device sdb: state EA): lost page write due to IO error on /dev/sdb (-5)")
    assert [summary(e) for e in out] == [
        ("FS_IO_ERROR", "error", "sdb", WWID_SDB), ("FS_ERROR", "error", "sdb", WWID_SDB),
        ("FS_REMOUNT_READ_ONLY", "error", "sdb", WWID_SDB), ("FS_ERROR", "error", "sdb", WWID_SDB),
        ("FS_IO_ERROR", "error", "sdb", WWID_SDB)]
    io, commit, readonly, cleanup, lost = out
    assert ext(io) == {"kernel_name": "sdb", "fstype": "btrfs", "member": "/dev/sdb", "fs_device": "sdb",
                       "errors": {"wr": 1, "rd": 0, "flush": 0, "corrupt": 0, "gen": 0}}
    assert io["msg"] == "sdb: btrfs I/O errors (wr 1, rd 0, flush 0, corrupt 0, gen 0)"
    assert ext(commit) == {"kernel_name": "sdb", "fstype": "btrfs", "function": "btrfs_commit_transaction", "line": 2345,
                           "error": -5, "error_name": "IO failure", "reason": "Error while writing out transaction"}
    assert ext(readonly) == {"kernel_name": "sdb", "fstype": "btrfs", "mode": "ro"}
    assert (cleanup["extensions"]["state"], cleanup["extensions"]["reason"]) == ("EA", "IO failure")
    assert (lost["extensions"]["error"], lost["extensions"]["state"]) == (-5, "EA")


@pytest.mark.parametrize(("line", "event_type", "expected"), [
    ("BTRFS warning (device sdb): csum failed root 5 ino 257 off 0 csum 0x8941f998 expected csum 0x98f94189 mirror 1",
     "FS_ERROR", {"inode": 257, "offset": 0, "root": 5}),
    ("BTRFS critical (device sdb): corrupt leaf: root=1 block=32505856 slot=32, invalid root item size, have 239 "
     "expect 439", "FS_ERROR", {"reason": "corrupt leaf: root=1 block=32505856 slot=32, invalid root item size, "
                                          "have 239 expect 439"}),
    ("BTRFS error (device sdb): error writing primary super block to device 1", "FS_IO_ERROR", {"devid": 1}),
    ("Kernel panic - not syncing: BTRFS panic (device sdb) in btrfs_free_extent:7103: Error removing extent "
     "(errno=-2 No such entry)", "FS_PANIC",
     {"function": "btrfs_free_extent", "line": 7103, "reason": "Error removing extent", "error": -2}),
    ("BTRFS critical (device sdb): panic in __btrfs_free_extent:3000: Ref count mismatch (errno=-5 IO failure)",
     "FS_PANIC", {"function": "__btrfs_free_extent", "line": 3000}),
])
def test_btrfs_other_problems(fs: Fs, line: str, event_type: str, expected: dict[str, Any]) -> None:
    event = only(feed(fs, line))
    assert summary(event)[:3] == (event_type, "error", "sdb")
    assert {k: ext(event)[k] for k in expected} == expected


# --- what gives nothing -------------------------------------------------------------------------

@pytest.mark.parametrize("line", [
    "EXT4-fs (sdb1): recovery complete",
    "EXT4-fs (sdb1): error count since last fsck: 5",
    "EXT4-fs warning (device sdb1): ext4_dx_add_entry:2461: Directory (ino: 2) index full, reach max htree level :2",
    "EXT4-fs (sdb1",
    "EXT4-fs error",
    "XFS (sdb1): Please umount the filesystem and rectify the problem(s)",
    "XFS (sdb1): xfs_log_force: error -5 returned.",
    "XFS (sdb1): Starting recovery (logdev: internal)",
    "XFS (sdb1): ctx ticket reservation ran out. Need to up reservation",
    'Filesystem "sdb1" is not what you think',
    "BTRFS info (device sdb): balance: resume skipped",
    "BTRFS info (device dm-0): devid 1 device path /dev/mapper/luks changed to /dev/dm-0 scanned by systemd-udevd (895)",
    "BTRFS warning: duplicate device /dev/sdd devid 1 generation 8 scanned by systemd-udevd (6254)",
    "BTRFS warning (device sdb): Skipping commit of aborted transaction.",
    "BTRFS info (device sdb): bdev /dev/sdb errs: wr 0, rd 1, flush 0, corrupt 0, gen 0",
    f"BTRFS: device fsid {UUID_PRINTED} devid 1 transid 44043 /dev/dm-0 scanned by systemd-udevd (715)",
    "JBD2: Spotted dirty metadata buffer (dev = sdb1, blocknr = 0). There's a risk of filesystem corruption.",
    "Aborting journal",
    "sd 6:0:0:0: [sdf] tag#2 Sense Key : Not Ready [current]",
    "\x00\xff garbage EXT4-fs XFS BTRFS JBD2 \u2603",
    "",
])
def test_lines_that_give_nothing(fs: Fs, line: str) -> None:
    assert feed(fs, line) == []
    assert feed(fs, line, kmsg=True) == []
    assert not fs.groups.groups
    assert fs.hold() is None


# --- through a real busd ------------------------------------------------------------------------

# --- configuration -------------------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "message"), [
    ("correlation_window = 0", "plugins.x.correlation_window: must be more than 0 seconds"),
    ("correlation_window = 'soon'", "plugins.x.correlation_window: must be an integer or a number, not a string"),
    ("sysfs = '/sys'", "plugins.x.sysfs: unknown key for built-in parser 'fs'"),
])
def test_bad_options_are_refused(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_parser_config(tmp_path, "fs", extra)
    assert message in str(info.value)


@pytest.mark.parametrize(("system", "routed"), [("kmsg", True), ("syslog", False), ("udev", False)])
def test_the_default_filter(tmp_path: Path, system: str, routed: bool) -> None:
    plugin = load_parser_config(tmp_path, "fs", "correlation_window = 2")
    line = "EXT4-fs (sdb1): Remounting filesystem read-only"
    assert plugin.filter.match(line_event(line, system=system)) is routed
    assert plugin.filter.match({**line_event(line, system=system), "kind": "synthetic"}) is False
    # the broker routes only lines that hold one of the parser's keywords
    assert plugin.filter.match(line_event("usb 1-1: new high-speed USB device", system=system)) is False


def test_fs_sample_through_busd(bus: Bus, fake: FakeSys) -> None:
    bus.write({
        "replay": {"type": "collector", "builtin": "replay", "path": str(SAMPLES / "dmesg-fs.txt"), "interval": 0.0},
        "fs": {"type": "parser", "builtin": "fs", "correlation_window": 0.3, **fake.options},
    })
    bus.start()
    bus.wait_running("fs")
    events = bus.tail(4, "--system", "fs")
    assert sorted(summary(e) for e in events) == sorted([
        ("FS_MOUNTED", "info", "vg/data", LVM_DATA),
        ("FS_SHUTDOWN", "error", "vg/data", LVM_DATA),
        ("FS_SHUTDOWN", "error", "sdb1", WWID_SDB + "-part1"),
        ("FS_SHUTDOWN", "error", "vg/data", LVM_DATA),
    ])
    assert all(e["kind"] == "synthetic" and e["source"] == "fs" and e["hostname"] == "testhost" for e in events)
    shutdowns = [e for e in events if e["extensions"].get("called_from")]
    assert [e["extensions"]["called_from"] for e in shutdowns] == ["fs/xfs/xfs_trans.c:985"]
    assert bus.plugin("fs")["state"] == "running"

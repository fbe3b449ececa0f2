"""Parser ``fs``: filesystem events of ext4 (with its jbd2 journal), XFS and btrfs from the kernel log.

Input: raw kernel log events (the default filter: ``system = "kmsg"``, ``kind = "raw"``), one
kmsg record or one dmesg/syslog line each. Options: ``sysfs_root``, ``dev_root`` (where sysfs
and /dev are; tests use a fake tree) and ``correlation_window`` (seconds the lines of one problem
are collected before its event goes out, default 1).

Output (``system = "fs"``), one event per real problem:

============================  ========  ==============================================================
event_type                    severity  kernel lines
============================  ========  ==============================================================
``FS_MOUNTED``                info      ext4 ``mounted filesystem`` / ``re-mounted`` (``remount``);
                                        XFS ``Ending clean mount`` / ``Ending recovery`` (after
                                        ``Mounting V5 Filesystem <uuid>``); btrfs: the mount-time info
                                        lines of one device (``first mount of filesystem <uuid>``,
                                        ``disk space caching is enabled``...) make one event
``FS_UNMOUNTED``              info      ext4 ``unmounting filesystem``, XFS ``Unmounting Filesystem``,
                                        btrfs ``last unmount of filesystem``
``FS_IO_ERROR``               error     ext4 ``I/O error N writing to inode``, superblock I/O errors;
                                        jbd2 ``Detected IO errors while flushing file data`` and
                                        ``I/O error when updating journal superblock``; XFS
                                        ``metadata I/O error`` / ``log I/O error`` not followed by a
                                        shutdown; btrfs ``bdev X errs: wr..`` (error level),
                                        ``lost page write``, ``error writing primary super block``
``FS_ERROR``                  error     ``EXT4-fs error``, a failed delayed allocation (with its ``This
                                        should not happen!! Data will be lost``), ``Aborting journal``;
                                        XFS corruption, internal errors, failed log mounts; btrfs
                                        ``error (device X) in f:l: errno=..`` and other error/critical
                                        lines. ``warn`` for ``mounting fs with errors``
``FS_REMOUNT_READ_ONLY``      error     ext4 ``Remounting filesystem read-only``, btrfs ``forced readonly``
``FS_SHUTDOWN``               error     XFS forced shutdown, every form (``xfs_do_force_shutdown(0x8)
                                        called from``, ``... detected.  Shutting down filesystem``,
                                        ``Filesystem has been shut down due to log error``, the old
                                        ``Filesystem "dm-1": ...``): the lines of one device within the
                                        window make ONE event, its I/O error or corruption included
                                        (``warn`` when user initiated); ext4 ``shut down requested``
``FS_PANIC``                  error     ``EXT4-fs (device X): panic forced after error``, btrfs panic
============================  ========  ==============================================================

``dev_name`` is the device (``sdb1``, ``vg/lv`` for ``dm-1``; the jbd2 journal ``sdf-8`` is
device ``sdf``), ``dev_wwid`` its WWID from sysfs or, for a device without one, the filesystem
UUID (from the message when the kernel prints it, else ``/dev/disk/by-uuid``).

Extensions: ``fstype`` (``ext4``, ``xfs``, ``btrfs``; jbd2 is ``ext4`` with ``journal: true`` and
``journal_inode``), ``fs_uuid`` when known, ``kernel_name``, ``raw_event_id``, ``kmsg_seq``, and
what the line says: ``function``, ``line``, ``file``, ``inode``, ``block``, ``comm``, ``path``,
``group``, ``error`` (the error number as printed), ``reason`` (the text), ``mode`` (``r/w``,
``ro``), ``options``, ``data_mode``, ``quota_mode``, ``remount``; XFS shutdowns ``reason``,
``flags``, ``called_from`` (``file:line``), ``function`` / ``return_address``, ``details`` (the
other lines of the incident) and ``io_errors``; btrfs ``errors`` (``wr``, ``rd``, ``flush``,
``corrupt``, ``gen``), ``member`` (the device of a multi-device filesystem), ``state``.

Lines these filesystems print that are none of the above (warnings, informational lines, the
``Please umount the filesystem`` advice, historical error counters at mount) give no event.
"""

from __future__ import annotations

import re
import time
from typing import Any

from bus.config import Option
from bus.event import Event
from bus.plugin import run
from parsers._kernel import KERNEL_OPTIONS, Group, KernelParser, check_kernel_options, kernel_filter

OPTIONS = {
    **KERNEL_OPTIONS,
    "correlation_window": Option((int, float), 1.0, "seconds during which the lines of one problem are collected"),
}
check_options = check_kernel_options

_UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
_SYM = r"\S+(?: \[\w+\])?"  # a %pS address: "xfs_trans_cancel+0x13c/0x150 [xfs]" or "0xffffffffc0d5335f"
_MEMORY = 4096  # devices remembered (filesystem UUIDs, XFS shutdowns)

# ext4 (fs/ext4/super.c, page-io.c, inode.c; formats of 2.6.32 to 6.x)
_EXT4_MSG = re.compile(r"^EXT4-fs \((?P<dev>[^)\s]+)\): (?P<text>.*)$")
_EXT4_MOUNTED = re.compile(
    rf"^mounted filesystem (?:(?P<uuid>{_UUID}) )?(?:(?P<mode>r/w|ro) )?"
    r"with(?:out journal|(?: (?P<data>\w+) data mode))"
    r"(?:\.\s*Opts: (?P<opts>.*?))?(?:[.;]?\s*Quota mode: (?P<quota>[\w-]+))?\.?$")
_EXT4_REMOUNTED = re.compile(
    rf"^re-mounted(?: (?P<uuid>{_UUID}))?(?: (?P<mode>r/w|ro))?\.?"
    r"(?:\s*Opts: (?P<opts>.*?))?(?:[.;]?\s*Quota mode: (?P<quota>[\w-]+))?\.?$")
_EXT4_UNMOUNTING = re.compile(rf"^unmounting filesystem(?: (?P<uuid>{_UUID}))?\.?$")
_EXT4_SHUTDOWN = re.compile(r"^shut down requested \((?P<flags>\d+)\)")
_EXT4_SB_IO = re.compile(r"^(?P<reason>previous I/O error to superblock detected|I/O error while writing superblock)")
_EXT4_DALLOC = re.compile(
    r"^[Dd]elayed block allocation failed for inode (?P<inode>\d+) at logical offset (?P<offset>\d+) "
    r"with max blocks (?P<blocks>\d+) with error (?P<error>-?\d+)")
_EXT4_DATA_LOST = "This should not happen!! Data will be lost"
_EXT4_CONVERT = re.compile(
    r"^failed to convert unwritten extents to written extents -- potential data loss!\s*"
    r"\(inode (?P<inode>\d+), error (?P<error>-?\d+)\)")
_EXT4_WITH_ERRORS = "warning: mounting fs with errors"
_EXT4_ERROR = re.compile(
    r"^EXT4-fs error \(device (?P<dev>[^)\s]+)\)(?::| in) (?P<function>\w+)(?::(?P<line>\d+))?:?\s*(?P<rest>.*)$")
_EXT4_ERROR_FIELD = re.compile(  # "inode #2: block 9: comm ls: path /a: ", "group 1, inode 12: block 9:"
    r"^(?:(?:inode #(?P<inode>\d+)|block (?P<block>\d+)|inode (?P<inode2>\d+)):\s*"
    r"|(?:comm (?P<comm>.+?)|path (?P<path>.+?)):\s+|group (?P<group>\d+),\s*)")
_EXT4_IO_WARNING = re.compile(
    r"^EXT4-fs warning \(device (?P<dev>[^)\s]+)\): (?P<function>\w+):(?P<line>\d+): (?:inode #\d+: comm .+?: )?"
    r"I/O error (?P<error>-?\d+) writing to inode (?P<inode>\d+)"
    r"(?: \(offset (?P<offset>\d+) size (?P<size>\d+))? starting block (?P<block>\d+)")
_EXT4_PANIC = re.compile(r"EXT4-fs \(device (?P<dev>[^)\s]+)\): panic forced after error|EXT4-fs panic from previous error")

# jbd2 (fs/jbd2/commit.c, journal.c); the device is "<bdev>-<journal inode>" for an internal journal
_JBD2 = re.compile(
    r"^(?:JBD2: Detected IO errors(?: (?P<error>-?\d+))? while flushing file data on (?P<flush>\S+?)"
    r"|JBD2: (?:I/O error|Error (?P<error2>-?\d+) detected) when updating journal superblock for (?P<sb>\S+?)"
    r"|Aborting journal on device (?P<abort>\S+?))\.?$")

# XFS (fs/xfs/xfs_fsops.c, xfs_log.c, xfs_buf.c, xfs_error.c, xfs_super.c; 2.6 to 6.x)
_XFS_MSG = re.compile(r'^(?:XFS \((?P<dev>[^)\s]+)\)|Filesystem "(?P<old>[^"]+)"): (?P<text>.*)$')
_XFS_OLD_MOUNT = re.compile(r"^(?:Ending clean XFS mount|Ending XFS recovery on) (?:for )?filesystem: (?P<dev>\S+)")
_XFS_MOUNTING = re.compile(
    rf"^Mounting (?:V(?P<version>\d) )?[Ff]ilesystem(?: (?P<uuid>{_UUID}))?(?P<norecovery> in no-recovery mode)?")
_XFS_ENDING = re.compile(r"^Ending (?:clean mount|recovery \(logdev: (?P<logdev>[^)]+)\))")
_XFS_UNMOUNTING = re.compile(rf"^Unmounting Filesystem(?: (?P<uuid>{_UUID}))?")
_XFS_CALLED = re.compile(
    r"^\w+\((?P<flags>0x[0-9a-fA-F]+)\) called from line (?P<line>\d+)\s+of file (?P<file>\S+?)\.\s+"
    rf"Return address = (?P<addr>{_SYM})")
_XFS_REASON = re.compile(
    r"^(?P<reason>.+?)(?: \((?P<flags>0x[0-9a-fA-F]+)\))?(?: (?:[Dd]etected|received))?"
    rf"(?: at (?P<addr>{_SYM}) \((?P<file>[^()\s]+):(?P<line>\d+)\))?\.\s+Shutting down filesystem")
_XFS_LOG_SHUTDOWN = re.compile(r"^Filesystem has been shut down due to log error \((?P<flags>0x[0-9a-fA-F]+)\)")
_XFS_USER = "User initiated shutdown received"
_XFS_PLEASE = re.compile(r"^Please u(?:n)?mount the filesystem")
_XFS_META_IO = re.compile(
    r'^metadata I/O error(?: in "(?P<func>[^"]+)" at daddr (?P<daddr>0x[0-9a-fA-F]+) len (?P<len>\d+) '
    r'error (?P<error>-?\d+)|: block (?P<daddr2>0x[0-9a-fA-F]+) \("(?P<func2>[^"]+)"\) error (?P<error2>-?\d+))')
_XFS_LOG_IO = re.compile(r"^log I/O error (?P<error>-?\d+)")
_XFS_CORRUPT = re.compile(
    rf"^(?:Metadata (?:corruption|CRC error) detected at (?P<addr>\S+?(?: \[\w+\])?),\s*(?P<what>.*)"
    rf"|(?:XFS i|I)nternal error (?P<check>\S+) at line (?P<line>\d+) of file (?P<file>\S+?)\.\s+Caller (?P<caller>{_SYM})"
    r"|Corruption detected\. Unmount and run xfs_repair)")
_XFS_MOUNT_FAILED = re.compile(
    r"^(?:log mount failed|log mount/recovery failed: error (?P<error>-?\d+)|log mount finish failed"
    r"|Failed to recover (?:intents|leftover CoW staging extents).*)$")
_XFS_LOG_FORCE = re.compile(r"^xfs_log_force: error (?P<error>-?\d+) returned")
# xfs_mount.h SHUTDOWN_* bits that kept their meaning across kernel versions
_XFS_FLAGS = {0x1: "Metadata I/O Error", 0x2: "Log I/O Error", 0x4: "User initiated shutdown",
              0x8: "Corruption of in-memory data"}
_XFS_IO, _XFS_ERROR, _XFS_SHUTDOWN = 0, 1, 2

# btrfs (fs/btrfs/messages.c, volumes.c, super.c, disk-io.c; "(device sdb: state EA)" since 5.19)
_BTRFS_DEV = r"\(device (?P<dev>[^\s:)]+)(?::? state (?P<state>\w+))?\)"
_BTRFS_MSG = re.compile(
    rf"^BTRFS (?P<level>emergency|alert|critical|error|warning|notice|info|debug) {_BTRFS_DEV}: (?P<text>.*)$")
_BTRFS_FS_ERROR = re.compile(
    rf"^BTRFS: error {_BTRFS_DEV} in (?P<function>\w+):(?P<line>\d+): errno=(?P<errno>-?\d+) "
    r"(?P<errstr>[^(]*?)\s*(?:\((?P<reason>.*)\))?$")
_BTRFS_PANIC = re.compile(
    rf"BTRFS panic {_BTRFS_DEV} in (?P<function>\w+):(?P<line>\d+): (?P<reason>.*?)"
    r"(?: \(errno=(?P<errno>-?\d+) (?P<errstr>[^)]*)\))?$")
_BTRFS_SCANNED = re.compile(
    rf"^BTRFS(?: info)?: device (?:fsid (?P<uuid>{_UUID})|label .+?) devid (?P<devid>\d+) transid (?P<transid>\d+) "
    r"(?P<path>/\S+)")
_BTRFS_FIRST_MOUNT = re.compile(rf"^first mount of filesystem (?P<uuid>{_UUID})")
_BTRFS_LAST_UNMOUNT = re.compile(rf"^last unmount of filesystem (?P<uuid>{_UUID})")
_BTRFS_MOUNT_INFO = re.compile(
    r"^(?:disk space caching is enabled|has skinny extents|using free[ -]space[ -]tree|using \S+(?: \(.+?\))? checksum "
    r"algorithm|enabling ssd optimizations|(?:use|force) \w+ compression.*|turning on (?:sync|async) discard"
    r"|auto enabling async discard|flagging fs with big metadata feature|setting nodata(?:sum|cow)|enabling auto defrag"
    r"|(?:checking|creating) UUID tree|allowing degraded mounts|enabling tree log|using spread ssd allocation scheme"
    r"|ignoring (?:data csums|bad roots)|disabling log replay at mount time|enabling all of the rescue options"
    r"|trying to use backup root at mount time|max_inline at \d+)$")
_BTRFS_BDEV_ERRS = re.compile(
    r"^bdev (?P<bdev>\S+) errs: wr (?P<wr>\d+), rd (?P<rd>\d+), flush (?P<flush>\d+), corrupt (?P<corrupt>\d+), "
    r"gen (?P<gen>\d+)")
_BTRFS_IO = re.compile(
    r"^(?:lost page write due to IO error on (?P<bdev>\S+?)(?: \((?P<error>-?\d+)\))?"
    r"|error writing primary super block to device (?P<devid>\d+))$")
_BTRFS_CSUM = re.compile(r"^csum failed root (?P<root>-?\d+) ino (?P<inode>\d+) off (?P<offset>\d+)")
_BTRFS_PANIC_CRIT = re.compile(r"^panic in (?P<function>\w+):(?P<line>\d+): (?P<reason>.*)")


def _int(value: str | None) -> int | None:
    return None if value is None else int(value)


def _journal_device(name: str) -> tuple[str, int | None]:
    """Split a jbd2 device name: ``sdb1-8`` is inode 8 of ``sdb1``; ``dm-3`` (an external journal) stays."""
    if re.fullmatch(r"dm-\d+", name):
        return name, None
    m = re.fullmatch(r"(.+)-(\d+)", name)
    return (m[1], int(m[2])) if m else (name, None)


def _function(address: str) -> str:
    """Return the function of a %pS address (``xfs_trans_cancel+0x13c/0x150 [xfs]``) or a name, else ``""``."""
    m = re.match(r"([A-Za-z_][\w.]*)(?:\+0x|$)", address)
    return m[1] if m else ""


class Fs(KernelParser):
    """ext4, jbd2, XFS and btrfs kernel lines to ``FS_*`` events (see the module docstring)."""

    SYSTEM = "fs"
    KEYWORDS = ("EXT4-fs", "JBD2", "Aborting journal", "XFS", 'Filesystem "', "BTRFS")
    correlation_window = 1.0

    def __init__(self, env: Any = None) -> None:
        super().__init__(env)
        self.uuids: dict[str, str] = {}
        """Filesystem UUIDs the kernel printed, by kernel device name (for later lines that do not)."""
        self.xfs_mounting: dict[str, dict[str, Any]] = {}
        """What an XFS "Mounting ..." line said, until its "Ending ..." line makes the mount event."""
        self.xfs_down: set[str] = set()
        """Devices whose XFS shutdown was reported (later lone ``called from`` lines repeat it)."""

    def parse_line(self, line: str, raw: Event) -> list[Event] | None:
        """Dispatch on the subsystem prefix of the line."""
        if "EXT4-fs" in line:
            return self._ext4(line, raw)
        if line.startswith(("JBD2", "Aborting journal")):
            return self._jbd2(line, raw)
        if "BTRFS" in line:
            return self._btrfs(line, raw)
        if line.startswith(("XFS", 'Filesystem "', "Ending ")):
            return self._xfs(line, raw)
        return None

    # --- shared -------------------------------------------------------------------------

    def _remember(self, kname: str, fs_uuid: str | None) -> None:
        if fs_uuid and kname:
            if len(self.uuids) >= _MEMORY:
                self.uuids.clear()
            self.uuids[kname] = fs_uuid.lower()

    def _fs_event(self, raw: Event, event_type: str, severity: str, dev: str, what: str, fstype: str,
                  fs_uuid: str | None = None, **extensions: Any) -> Event:
        """Build an event about the filesystem on ``dev``; ``None`` extensions are left out."""
        kname = self.sysfs.kernel_name(dev) if dev else ""
        self._remember(kname, fs_uuid)
        uuid = self.uuids.get(kname) or (self.sysfs.fs_uuid(dev) if dev else "")
        name = self.sysfs.name(dev) if dev else ""
        ext = {k: v for k, v in extensions.items() if v is not None}
        if uuid:
            ext["fs_uuid"] = uuid
        event = self.synth(raw, event_type, severity, dev, f"{name}: {what}" if name else what, fstype=fstype, **ext)
        if not event["dev_wwid"]:
            event["dev_wwid"] = uuid
        if event_type in ("FS_MOUNTED", "FS_UNMOUNTED"):
            self.xfs_down.discard(kname)
        if event_type == "FS_UNMOUNTED":
            self.uuids.pop(kname, None)  # the next filesystem on the device may be another one
        return event

    def _group(self, key: tuple[str, ...], raw: Event, **fields: Any) -> Group:
        group = self.groups.open(key, raw, self.delivery)
        group.fields.update(fields)
        return group

    def close_group(self, group: Group) -> Event | None:
        """Turn a finished group into its event (XFS incident, ext4 failed allocation, btrfs mount)."""
        kind = group.key[0]
        if kind == "xfs":
            return self._xfs_event(group)
        if kind == "ext4-dalloc":
            return self._dalloc_event(group, data_lost=False)
        if kind == "btrfs-mount":
            return self._btrfs_mount_event(group)
        return None

    # --- ext4 ---------------------------------------------------------------------------

    def _ext4(self, line: str, raw: Event) -> list[Event] | None:
        if m := _EXT4_PANIC.search(line):
            dev = m["dev"] or ""
            return [self._fs_event(raw, "FS_PANIC", "error", dev, "ext4 panic forced after error", "ext4",
                                   reason="panic forced after error")]
        if m := _EXT4_ERROR.match(line):
            return [self._ext4_error(m, raw)]
        if m := _EXT4_IO_WARNING.match(line):
            what = f"ext4 I/O error {m['error']} writing to inode {m['inode']}, block {m['block']}"
            return [self._fs_event(raw, "FS_IO_ERROR", "error", m["dev"], what, "ext4", function=m["function"],
                                   line=int(m["line"]), error=int(m["error"]), inode=int(m["inode"]),
                                   block=int(m["block"]), offset=_int(m["offset"]), size=_int(m["size"]))]
        if (m := _EXT4_MSG.match(line)) is None:
            return None
        dev, text = m["dev"], m["text"]
        if m := _EXT4_MOUNTED.match(text):
            mode = f" {m['mode']}" if m["mode"] else ""
            opts = m["opts"] if m["opts"] not in (None, "(null)") else None
            data_mode = m["data"] or "no journal"
            return [self._fs_event(raw, "FS_MOUNTED", "info", dev, f"ext4 mounted{mode} ({data_mode})", "ext4",
                                   m["uuid"], mode=m["mode"], data_mode=data_mode, options=opts, quota_mode=m["quota"],
                                   remount=False)]
        if m := _EXT4_REMOUNTED.match(text):
            mode = f" {m['mode']}" if m["mode"] else ""
            opts = m["opts"] if m["opts"] not in (None, "(null)") else None
            return [self._fs_event(raw, "FS_MOUNTED", "info", dev, f"ext4 re-mounted{mode}", "ext4", m["uuid"],
                                   mode=m["mode"], options=opts, quota_mode=m["quota"], remount=True)]
        if m := _EXT4_UNMOUNTING.match(text):
            return [self._fs_event(raw, "FS_UNMOUNTED", "info", dev, "ext4 unmounted", "ext4", m["uuid"])]
        if text.startswith("Remounting filesystem read-only"):
            return [self._fs_event(raw, "FS_REMOUNT_READ_ONLY", "error", dev, "ext4 remounted read-only after an error",
                                   "ext4", mode="ro")]
        if m := _EXT4_SHUTDOWN.match(text):
            flags = int(m["flags"])
            how = {0: "default", 1: "logflush", 2: "nologflush"}.get(flags)
            return [self._fs_event(raw, "FS_SHUTDOWN", "error", dev, f"ext4 shut down ({how or flags})", "ext4",
                                   reason="shut down requested", flags=flags, shutdown_mode=how)]
        if m := _EXT4_SB_IO.match(text):
            return [self._fs_event(raw, "FS_IO_ERROR", "error", dev, f"ext4 {m['reason']}", "ext4", reason=m["reason"])]
        if m := _EXT4_DALLOC.match(text):
            return self._dalloc(dev, m, raw)
        if text.startswith(_EXT4_DATA_LOST):
            group = self.groups.close(("ext4-dalloc", self.sysfs.kernel_name(dev)))
            if group is not None:
                return [self._dalloc_event(group, data_lost=True)]
            return [self._fs_event(raw, "FS_ERROR", "error", dev, "ext4 data will be lost", "ext4",
                                   reason=_EXT4_DATA_LOST, data_lost=True)]
        if m := _EXT4_CONVERT.match(text):
            return [self._fs_event(raw, "FS_ERROR", "error", dev,
                                   f"ext4 failed to convert unwritten extents of inode {m['inode']}", "ext4",
                                   reason="failed to convert unwritten extents -- potential data loss",
                                   inode=int(m["inode"]), error=int(m["error"]), data_lost=True)]
        if text.startswith(_EXT4_WITH_ERRORS):
            return [self._fs_event(raw, "FS_ERROR", "warn", dev, "ext4 mounted with errors, e2fsck recommended", "ext4",
                                   reason="mounting fs with errors, running e2fsck is recommended")]
        return None

    def _ext4_error(self, m: re.Match[str], raw: Event) -> Event:
        fields: dict[str, Any] = {}
        rest = m["rest"]
        while (f := _EXT4_ERROR_FIELD.match(rest)) is not None:
            for key, value in f.groupdict().items():
                if value is not None:
                    fields["inode" if key == "inode2" else key] = value if key in ("comm", "path") else int(value)
            rest = rest[f.end():]
        reason = rest.strip() or None
        where = f"{m['function']}:{m['line']}" if m["line"] else m["function"]
        inode = f" (inode {fields['inode']})" if "inode" in fields else ""
        return self._fs_event(raw, "FS_ERROR", "error", m["dev"], f"ext4 error in {where}{inode}: {reason or 'error'}",
                              "ext4", function=m["function"], line=_int(m["line"]), reason=reason, **fields)

    def _dalloc(self, dev: str, m: re.Match[str], raw: Event) -> list[Event] | None:
        """A failed delayed allocation; the kernel's next line says data will be lost: one event for both."""
        key = ("ext4-dalloc", self.sysfs.kernel_name(dev))
        previous = self.groups.close(key)
        self._group(key, raw, dev=dev, inode=int(m["inode"]), offset=int(m["offset"]), blocks=int(m["blocks"]),
                    error=int(m["error"]))
        return [self._dalloc_event(previous, data_lost=False)] if previous is not None else None

    def _dalloc_event(self, group: Group, *, data_lost: bool) -> Event:
        f = group.fields
        what = f"ext4 delayed block allocation failed for inode {f['inode']} (error {f['error']})"
        if data_lost:
            what += ": data will be lost"
        return self._fs_event(group.first, "FS_ERROR", "error", f["dev"], what, "ext4",
                              reason="delayed block allocation failed", inode=f["inode"], offset=f["offset"],
                              blocks=f["blocks"], error=f["error"], data_lost=data_lost)

    def _jbd2(self, line: str, raw: Event) -> list[Event] | None:
        if (m := _JBD2.match(line)) is None:
            return None
        journal = m["flush"] or m["sb"] or m["abort"]
        dev, inode = _journal_device(journal)
        common: dict[str, Any] = {"journal": True, "journal_device": journal, "journal_inode": inode}
        if m["abort"]:
            return [self._fs_event(raw, "FS_ERROR", "error", dev, "ext4 journal aborted", "ext4",
                                   reason="journal aborted", **common)]
        error = _int(m["error"] or m["error2"])
        if m["flush"]:
            what, reason = "jbd2 I/O errors while flushing file data", "detected IO errors while flushing file data"
        else:
            what, reason = "jbd2 I/O error updating the journal superblock", "I/O error when updating journal superblock"
        return [self._fs_event(raw, "FS_IO_ERROR", "error", dev, what, "ext4", reason=reason, error=error, **common)]

    # --- XFS ----------------------------------------------------------------------------

    def _xfs(self, line: str, raw: Event) -> list[Event] | None:
        if m := _XFS_OLD_MOUNT.match(line):
            return [self._xfs_mounted(m["dev"], raw, recovery="recovery" in line)]
        if (m := _XFS_MSG.match(line)) is None:
            return None
        dev, text = m["dev"] or m["old"], m["text"]
        if m := _XFS_MOUNTING.match(text):
            kname = self.sysfs.kernel_name(dev)
            self._remember(kname, m["uuid"])
            if len(self.xfs_mounting) >= _MEMORY:
                self.xfs_mounting.clear()
            self.xfs_mounting[kname] = {"version": _int(m["version"])}
            if m["norecovery"]:  # no "Ending ..." line follows a no-recovery mount
                return [self._xfs_mounted(dev, raw, recovery=False, norecovery=True)]
            return None
        if m := _XFS_ENDING.match(text):
            return [self._xfs_mounted(dev, raw, recovery=m["logdev"] is not None, logdev=m["logdev"])]
        if m := _XFS_UNMOUNTING.match(text):
            return [self._fs_event(raw, "FS_UNMOUNTED", "info", dev, "xfs unmounted", "xfs", m["uuid"])]
        return self._xfs_incident(dev, text, raw)

    def _xfs_mounted(self, dev: str, raw: Event, *, recovery: bool, norecovery: bool = False,
                     logdev: str | None = None) -> Event:
        info = self.xfs_mounting.pop(self.sysfs.kernel_name(dev), {})
        what = "xfs mounted" + (" after log recovery" if recovery else "") + (" without log recovery" if norecovery else "")
        return self._fs_event(raw, "FS_MOUNTED", "info", dev, what, "xfs", version=info.get("version"),
                              recovery=recovery, norecovery=norecovery or None, logdev=logdev,
                              mode="ro" if norecovery else None)

    def _xfs_incident(self, dev: str, text: str, raw: Event) -> list[Event] | None:
        """Collect the lines of one XFS incident of ``dev``: a shutdown, its cause and what follows."""
        key = ("xfs", self.sysfs.kernel_name(dev))
        group = self.groups.get(key)
        out: list[Event] = []
        rank, update = self._xfs_line(text)
        if rank is None or update is None:
            if group is not None and update is not None:  # "Please umount" adds nothing; other details are kept
                group.fields["details"].append(text)
            return None
        if group is not None and update.get("reason") and group.fields.get("reason"):
            # a second shutdown reason is a second shutdown
            self.groups.close(key)
            event = self._xfs_event(group)
            if event is not None:
                out.append(event)
            group = None
        if group is None:
            group = self._group(key, raw, dev=dev, rank=rank, details=[], io_errors=0)
        f = group.fields
        f["rank"] = max(f["rank"], rank)
        f["details"].append(text)
        if update.pop("io", False):
            f["io_errors"] += 1
        for name, value in update.items():
            if value is not None and f.get(name) is None:
                f[name] = value
        return out or None

    def _xfs_line(self, text: str) -> tuple[int | None, dict[str, Any] | None]:
        """Classify an XFS line: (rank, what it tells); rank ``None`` for a detail (update ``None``: ignore)."""
        if m := _XFS_REASON.match(text):
            return _XFS_SHUTDOWN, {"reason": m["reason"], "flags": m["flags"], "file": m["file"],
                                   "line": _int(m["line"]), "return_address": m["addr"]}
        if m := _XFS_CALLED.match(text):
            return _XFS_SHUTDOWN, {"flags": m["flags"], "file": m["file"], "line": int(m["line"]),
                                   "return_address": m["addr"]}
        if m := _XFS_LOG_SHUTDOWN.match(text):
            return _XFS_SHUTDOWN, {"reason": "Log error", "flags": m["flags"]}
        if text.startswith(_XFS_USER):
            return _XFS_SHUTDOWN, {"user": True}
        if m := _XFS_META_IO.match(text):
            error = int(m["error"] or m["error2"])
            # EFSCORRUPTED (117) and EFSBADCRC (74) are a verifier's verdict, not a failed I/O
            rank = _XFS_ERROR if abs(error) in (74, 117) else _XFS_IO
            return rank, {"io": True, "error": error, "daddr": m["daddr"] or m["daddr2"],
                          "function": _function(m["func"] or m["func2"])}
        if m := _XFS_LOG_IO.match(text):
            return _XFS_IO, {"io": True, "error": int(m["error"]), "log": True}
        if m := _XFS_CORRUPT.match(text):
            return _XFS_ERROR, {"file": m["file"], "line": _int(m["line"]),
                                "function": _function(m["addr"] or m["caller"] or "")}
        if m := _XFS_MOUNT_FAILED.match(text):
            return _XFS_ERROR, {"error": _int(m["error"])}
        if _XFS_PLEASE.match(text):
            return None, None
        if _XFS_LOG_FORCE.match(text):
            return None, {}
        return None, None

    def _xfs_event(self, group: Group) -> Event | None:
        f = group.fields
        kname = group.key[1]
        flags = int(f["flags"], 16) if f.get("flags") else 0
        if f["rank"] == _XFS_SHUTDOWN:
            if not f.get("reason") and not f.get("user") and kname in self.xfs_down:
                return None  # a repeated shutdown call on a filesystem already reported down
            user = bool(f.get("user")) or bool(flags & 0x4)
            reason = "User initiated shutdown" if user else f.get("reason") or self._flag_reason(flags)
            event_type, severity = "FS_SHUTDOWN", "warn" if user else "error"
            what = f"xfs shut down: {reason}"
            if f["io_errors"]:
                what += f" after {'a log' if f.get('log') else 'a metadata'} I/O error {f.get('error')}"
        elif f["rank"] == _XFS_ERROR:
            reason = f["details"][0]
            event_type, severity, what = "FS_ERROR", "error", f"xfs error: {reason}"
        else:
            reason = "log I/O error" if f.get("log") else "metadata I/O error"
            event_type, severity = "FS_IO_ERROR", "error"
            what = f"xfs {reason} {f.get('error')}" + (f" ({f['io_errors']} lines)" if f["io_errors"] > 1 else "")
        called_from = f"{f['file']}:{f['line']}" if f.get("file") and f.get("line") else None
        if called_from and event_type == "FS_SHUTDOWN":
            what += f" (called from {called_from})"
        address = f.get("return_address") or ""
        event = self._fs_event(group.first, event_type, severity, f["dev"], what, "xfs", reason=reason,
                               flags=f.get("flags"), called_from=called_from, file=f.get("file"), line=f.get("line"),
                               function=f.get("function") or _function(address) or None,
                               return_address=address or None, error=f.get("error"), daddr=f.get("daddr"),
                               io_errors=f["io_errors"] or None, user=True if severity == "warn" else None,
                               details=f["details"])
        if event_type == "FS_SHUTDOWN":
            if len(self.xfs_down) >= _MEMORY:
                self.xfs_down.clear()
            self.xfs_down.add(kname)
        return event

    @staticmethod
    def _flag_reason(flags: int) -> str:
        return next((why for bit, why in sorted(_XFS_FLAGS.items(), reverse=True) if flags & bit), "forced shutdown")

    # --- btrfs --------------------------------------------------------------------------

    def _btrfs(self, line: str, raw: Event) -> list[Event] | None:
        if m := _BTRFS_PANIC.search(line):
            return [self._fs_event(raw, "FS_PANIC", "error", m["dev"], f"btrfs panic in {m['function']}: {m['reason']}",
                                   "btrfs", function=m["function"], line=int(m["line"]), reason=m["reason"],
                                   error=_int(m["errno"]), state=m["state"])]
        if m := _BTRFS_FS_ERROR.match(line):
            reason = m["reason"] or m["errstr"]
            return [self._fs_event(raw, "FS_ERROR", "error", m["dev"],
                                   f"btrfs error in {m['function']}:{m['line']}: errno={m['errno']} {m['errstr']}"
                                   + (f" ({m['reason']})" if m["reason"] else ""), "btrfs",
                                   function=m["function"], line=int(m["line"]), error=int(m["errno"]),
                                   error_name=m["errstr"] or None, reason=reason, state=m["state"])]
        if m := _BTRFS_SCANNED.match(line):
            # remembered for the mount that follows; a scan alone is no event
            self._remember(self.sysfs.kernel_name(m["path"]), m["uuid"])
            return None
        if (m := _BTRFS_MSG.match(line)) is None:
            return None
        level, dev, text, state = m["level"], m["dev"], m["text"], m["state"]
        if text == "forced readonly":
            return [self._fs_event(raw, "FS_REMOUNT_READ_ONLY", "error", dev, "btrfs forced read-only after an error",
                                   "btrfs", mode="ro", state=state)]
        if m := _BTRFS_LAST_UNMOUNT.match(text):
            return [self._fs_event(raw, "FS_UNMOUNTED", "info", dev, "btrfs unmounted", "btrfs", m["uuid"])]
        if level == "info":
            return self._btrfs_info(dev, text, raw)
        if level not in ("error", "critical", "alert", "emergency", "warning"):
            return None
        if m := _BTRFS_BDEV_ERRS.match(text):
            errors = {k: int(m[k]) for k in ("wr", "rd", "flush", "corrupt", "gen")}
            counts = ", ".join(f"{k} {v}" for k, v in errors.items())
            return [self._fs_event(raw, "FS_IO_ERROR", "error", m["bdev"], f"btrfs I/O errors ({counts})", "btrfs",
                                   errors=errors, member=m["bdev"], fs_device=dev, state=state)]
        if m := _BTRFS_IO.match(text):
            return [self._fs_event(raw, "FS_IO_ERROR", "error", m["bdev"] or dev, f"btrfs {text}", "btrfs", reason=text,
                                   error=_int(m["error"]), devid=_int(m["devid"]), state=state)]
        if level == "warning":
            if m := _BTRFS_CSUM.match(text):
                return [self._fs_event(raw, "FS_ERROR", "error", dev, f"btrfs checksum error, inode {m['inode']}",
                                       "btrfs", reason=text, inode=int(m["inode"]), offset=int(m["offset"]),
                                       root=int(m["root"]), state=state)]
            return None
        if text.startswith("Transaction aborted"):
            return None  # the "error (device X) in f:l: errno=" line that follows says it better
        if text.startswith("open_ctree failed"):
            self._btrfs_failed_mount(dev)
        if m := _BTRFS_PANIC_CRIT.match(text):
            return [self._fs_event(raw, "FS_PANIC", "error", dev, f"btrfs panic in {m['function']}: {m['reason']}",
                                   "btrfs", function=m["function"], line=int(m["line"]), reason=m["reason"], state=state)]
        return [self._fs_event(raw, "FS_ERROR", "error", dev, f"btrfs {level}: {text}", "btrfs", reason=text,
                               state=state)]

    def _btrfs_info(self, dev: str, text: str, raw: Event) -> list[Event] | None:
        """Mount-time info lines of one device make one mount (its window slides while they come)."""
        key = ("btrfs-mount", self.sysfs.kernel_name(dev))
        group = self.groups.get(key)
        first = _BTRFS_FIRST_MOUNT.match(text)
        if first is None and _BTRFS_MOUNT_INFO.match(text) is None:
            if group is not None and (m := _BTRFS_BDEV_ERRS.match(text)):  # error counters kept since mkfs
                group.fields["device_errors"][m["bdev"]] = {k: int(m[k]) for k in ("wr", "rd", "flush", "corrupt", "gen")}
            return None
        out: list[Event] = []
        if group is not None and first is not None:  # a new mount while the last one is still collected
            self.groups.close(key)
            if (event := self._btrfs_mount_event(group)) is not None:
                out.append(event)
            group = None
        if group is None:
            group = self._group(key, raw, dev=dev, options=[], device_errors={}, failed=False)
        if first is not None:
            group.fields["uuid"] = first["uuid"]
        else:
            group.fields["options"].append(text)
        group.expires = time.monotonic() + self.groups.window
        return out or None

    def _btrfs_failed_mount(self, dev: str) -> None:
        group = self.groups.get(("btrfs-mount", self.sysfs.kernel_name(dev)))
        if group is not None:
            group.fields["failed"] = True

    def _btrfs_mount_event(self, group: Group) -> Event | None:
        f = group.fields
        if f["failed"]:
            return None  # the errors went out on their own; the filesystem is not mounted
        return self._fs_event(group.first, "FS_MOUNTED", "info", f["dev"], "btrfs mounted", "btrfs", f.get("uuid"),
                              options=", ".join(f["options"]) or None, device_errors=f["device_errors"] or None)


FILTER = kernel_filter(Fs)


if __name__ == "__main__":
    run(Fs)

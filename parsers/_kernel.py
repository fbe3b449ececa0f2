"""What the kernel-log parsers share: clean lines, device names and WWIDs from sysfs, correlation.

A kernel parser (``scsi``, ``block``, ``multipath``, ``fs``, ``mdraid``, ``lvm``) is a
:class:`KernelParser`: it declares ``KEYWORDS`` (plain substrings, one of which every line it
understands contains: the cheap prefilter that runs before any regular expression) and implements
:meth:`KernelParser.parse_line`. Input is any raw event whose ``msg`` holds kernel log text: a
``kmsg`` record (possibly several lines), a ``dmesg`` line with its ``[ seconds.usec]`` prefix, or
a syslog line (``Apr 26 10:25:44 host kernel: ...``).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from bus.config import Option
from bus.event import Event
from bus.plugin import Parser, derive_id

KERNEL_OPTIONS = {
    "sysfs_root": Option(str, "/sys", "where sysfs is mounted (tests point it at a fake tree)"),
    "dev_root": Option(str, "/dev", "where /dev is (for /dev/disk/by-uuid and by-id)"),
}



def check_kernel_options(options: dict[str, Any]) -> None:
    """Check the options of a kernel parser at configuration time (a module's ``check_options``).

    Raises:
        ValueError: ``correlation_window`` is not a positive number of seconds (0 would hold the
            inputs of a correlation group forever, as no tick would ever close it).
    """
    window = options.get("correlation_window")
    if window is not None and not window > 0:
        raise ValueError(f"correlation_window: must be more than 0 seconds, not {window}")


_PREFIX = re.compile(
    r"^\s*(?:<\d{1,3}>)?"                                   # a printk level
    r"(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d(?:\.\d+)? \S+ "  # syslog: "Apr 26 10:25:44 host "
    r"|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)? \S+ )?"  # "2024-05-02T11:20:31.1+02:00 host "
    r"(?:kernel: )?"
    r"(?:\[\s*\+?\d+\.\d+\]\s?"                               # dmesg: "[ 6458.186093] ", -d: "[  +0.000658] "
    r"|\[[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}\]\s?)?")  # dmesg -T: "[Mon Apr 26 10:25:44 2021] "
_CACHE_SECONDS = 30.0


def kernel_lines(text: str) -> Iterator[str]:
    """Yield the lines of a kernel message without dmesg/syslog prefixes or surrounding blanks."""
    for line in text.split("\n"):
        line = _PREFIX.sub("", line, count=1).strip()
        if line:
            yield line


_LVM_UUID = re.compile(r"LVM-[A-Za-z0-9]{64}(?:-(?P<layer>[\w.]+))?")


def lvm_name(dm_name: str, uuid: str = "") -> str:
    """Return ``vg/lv`` for an LVM device-mapper name (``vg-lv``, every ``-`` inside a name doubled).

    A layer device (dm uuid ``LVM-<vg><lv>-tpool``, name ``vg-pool-tpool``) is named after its LV
    (``vg/pool``). ``""`` when ``dm_name`` is not an LVM name.
    """
    match = _LVM_UUID.fullmatch(uuid) if uuid else None
    layer = match["layer"] if match else None
    if layer and dm_name.endswith("-" + layer):
        dm_name = dm_name[: -len(layer) - 1]
    parts = re.split(r"(?<!-)-(?!-)", dm_name, maxsplit=1)
    if len(parts) != 2 or not all(parts):
        return ""
    vg, lv = parts
    return f"{vg.replace('--', '-')}/{lv.replace('--', '-')}"


class Sysfs:
    """Resolves kernel device names to what people and programs use; unknown is ``""``, never an error.

    Lookups are cached for a short time: a flood of errors on one disk reads sysfs once.
    """

    def __init__(self, sysfs_root: str = "/sys", dev_root: str = "/dev") -> None:
        self.sys = Path(sysfs_root)
        self.dev = Path(dev_root)
        self._cache: dict[tuple[str, str], tuple[float, str]] = {}

    def _cached(self, what: str, key: str, compute: Any) -> str:
        now = time.monotonic()
        hit = self._cache.get((what, key))
        if hit is not None and now - hit[0] < _CACHE_SECONDS:
            return hit[1]
        try:
            value = str(compute(key))
        except (OSError, ValueError):
            value = ""
        if len(self._cache) > 4096:
            self._cache.clear()
        self._cache[(what, key)] = (now, value)
        return value

    def _read(self, *parts: str) -> str:
        return " ".join(self.sys.joinpath(*parts).read_text(errors="replace").split())

    def kernel_name(self, dev: str) -> str:
        """Return the kernel name (``sdb``, ``dm-3``) of ``8:16``, ``/dev/sdb``, ``mpatha`` or ``sdb`` itself."""
        return self._cached("kname", dev, self._kernel_name)

    def _kernel_name(self, dev: str) -> str:
        dev = dev.removeprefix("/dev/").removeprefix("mapper/")
        if re.fullmatch(r"\d+:\d+", dev):
            return os.path.basename(os.readlink(self.sys / "dev" / "block" / dev))
        if (self.sys / "class" / "block" / dev).exists() or (self.sys / "block" / dev).exists():
            return dev
        for dm in self._dm_devices():
            if self._read("block", dm, "dm", "name") == dev:
                return dm
        return dev

    def _dm_devices(self) -> list[str]:
        try:
            return sorted(p.name for p in (self.sys / "block").iterdir() if p.name.startswith("dm-"))
        except OSError:
            return []

    def name(self, dev: str) -> str:
        """Return the name a person types: ``sdb``, ``sdb1``, ``mpatha``, ``vg/lv``, ``md0``."""
        return self._cached("name", dev, self._name)

    def _name(self, dev: str) -> str:
        kname = self.kernel_name(dev)
        if not kname.startswith("dm-"):
            return kname
        try:
            dm_name = self._read("block", kname, "dm", "name")
        except OSError:
            return kname
        uuid = self._dm_uuid(kname)
        if uuid.startswith("LVM-"):
            return lvm_name(dm_name, uuid) or dm_name or kname
        return dm_name or kname

    def _dm_uuid(self, kname: str) -> str:
        try:
            return self._read("block", kname, "dm", "uuid")
        except OSError:
            return ""

    def wwid(self, dev: str) -> str:
        """Return a stable id: SCSI ``device/wwid`` (``-partN`` for partitions), ``dm/uuid``, md UUID."""
        return self._cached("wwid", dev, self._wwid)

    def _wwid(self, dev: str) -> str:
        kname = self.kernel_name(dev)
        if kname.startswith("dm-"):
            return self._dm_uuid(kname)
        if kname.startswith("md"):
            return self._by_link("by-id", kname, "md-uuid-")
        block = self.sys / "class" / "block" / kname
        if (block / "partition").exists():
            number = (block / "partition").read_text().strip()
            parent = Path(os.path.realpath(block)).parent.name
            base = self.wwid(parent)
            return f"{base}-part{number}" if base else ""
        for candidate in (self.sys / "block" / kname / "device" / "wwid", block / "device" / "wwid"):
            if candidate.exists():
                return " ".join(candidate.read_text(errors="replace").split())
        return ""

    def slaves(self, dev: str) -> list[str]:
        """Return the kernel names of the devices under ``dev`` (``/sys/block/dm-0/slaves``), sorted."""
        try:
            return sorted(p.name for p in (self.sys / "block" / self.kernel_name(dev) / "slaves").iterdir())
        except OSError:
            return []

    def holder(self, dev: str) -> str:
        """Return the kernel name of the device-mapper device that has ``dev`` among its slaves.

        A multipath map (``dm/uuid`` ``mpath-...``) is preferred over other holders.
        """
        return self._cached("holder", dev, self._holder)

    def _holder(self, dev: str) -> str:
        kname = self.kernel_name(dev)
        found = [dm for dm in self._dm_devices() if kname and (self.sys / "block" / dm / "slaves" / kname).exists()]
        found.sort(key=lambda dm: not self._dm_uuid(dm).startswith("mpath-"))
        return found[0] if found else ""

    def scsi_disk(self, hctl: str) -> str:
        """Return the kernel name of the disk of SCSI device ``H:C:T:L`` (``/sys/bus/scsi/devices/H:C:T:L/block``)."""
        return self._cached("scsi_disk", hctl,
                            lambda h: min(p.name for p in (self.sys / "bus" / "scsi" / "devices" / h / "block").iterdir()))

    def holders(self, dev: str) -> list[str]:
        """Return the kernel names of the devices stacked on ``dev`` (``/sys/class/block/X/holders``)."""
        try:
            return sorted(p.name for p in (self.sys / "class" / "block" / self.kernel_name(dev) / "holders").iterdir())
        except OSError:
            return []

    def fs_uuid(self, dev: str) -> str:
        """Return the UUID of the filesystem on ``dev`` (from ``/dev/disk/by-uuid``)."""
        return self._cached("fs_uuid", dev, lambda d: self._by_link("by-uuid", self.kernel_name(d), ""))

    def _by_link(self, folder: str, kname: str, prefix: str) -> str:
        base = self.dev / "disk" / folder
        for link in sorted(base.iterdir()):
            if link.name.startswith(prefix) and os.path.basename(os.readlink(link)) == kname:
                return link.name[len(prefix):]
        return ""


@dataclass
class Group:
    """Inputs that make one output (the lines of one failed SCSI command)."""

    key: tuple[str, ...]
    first: Event
    delivery: int
    expires: float
    fields: dict[str, Any] = field(default_factory=dict)
    lines: int = 0


class Correlator:
    """Open groups by key, with the delivery they started in (for :meth:`Parser.hold`) and a deadline."""

    def __init__(self, window: float) -> None:
        self.window = window
        self.groups: dict[tuple[str, ...], Group] = {}

    def get(self, key: tuple[str, ...]) -> Group | None:
        """Return the open group for ``key``."""
        return self.groups.get(key)

    def open(self, key: tuple[str, ...], first: Event, delivery: int) -> Group:
        """Start a group (the caller has closed any group of the same key before)."""
        group = self.groups[key] = Group(key, first, delivery, time.monotonic() + self.window)
        return group

    def close(self, key: tuple[str, ...]) -> Group | None:
        """Remove and return the group for ``key``."""
        return self.groups.pop(key, None)

    def expired(self) -> list[Group]:
        """Remove and return the groups whose window is over."""
        now = time.monotonic()
        done = [g for g in self.groups.values() if g.expires <= now]
        for g in done:
            del self.groups[g.key]
        return done

    def hold(self) -> int | None:
        """Return the oldest delivery an open group started in."""
        return min((g.delivery for g in self.groups.values()), default=None)


class KernelParser(Parser):
    """Base of the kernel-log parsers: prefilter, line splitting, device resolution, correlation."""

    SYSTEM: ClassVar[str] = ""
    """The ``system`` of this parser's events (``scsi``, ``fs``...)."""

    KEYWORDS: ClassVar[tuple[str, ...]] = ()
    """Every line the parser understands contains one of these (checked before any regex)."""

    window: ClassVar[int] = 20_000
    """Deliveries in flight: an open group holds back the acknowledgement of everything after it for
    up to ``correlation_window`` seconds, and the stream must not stop meanwhile."""

    correlation_window: ClassVar[float] = 0.0
    """Seconds a correlation group stays open (0: the parser does not correlate)."""

    def __init__(self, env: Any = None) -> None:
        super().__init__(env)
        self.sysfs = Sysfs(str(self.path(self.options.get("sysfs_root", "/sys"))),
                           str(self.path(self.options.get("dev_root", "/dev"))))
        # a parser that declares a "correlation_window" option lets the configuration change its default
        window = float(self.options.get("correlation_window", self.correlation_window))
        self.groups = Correlator(window)
        if window:
            self.tick_interval = min(0.25, window / 2)  # type: ignore[misc]

    def handle(self, event: Event) -> list[Event] | None:
        """Split the input into kernel lines and parse the ones that pass the prefilter."""
        text = event.get("msg")
        if not isinstance(text, str) or not any(k in text for k in self.KEYWORDS):
            return None
        out: list[Event] = []
        for line in kernel_lines(text):
            if any(k in line for k in self.KEYWORDS):
                result = self.parse_line(line, event)
                if result:
                    out.extend(result)
        return out or None

    def parse_line(self, line: str, raw: Event) -> list[Event] | None:
        """Return the events one clean kernel line gives (``raw`` is the event it came in)."""
        raise NotImplementedError

    def hold(self) -> int | None:
        """Keep the inputs of open groups unacknowledged."""
        return self.groups.hold()

    def tick(self, now: float) -> list[Event]:
        """Close the groups whose window is over; their ids derive from their first input."""
        out = []
        for group in self.groups.expired():
            event = self.close_group(group)
            if event is not None:
                event["event_id"] = derive_id(group.first.get("event_id", ""), self.name, 1_000_000)
                out.append(event)
        return out

    def close_group(self, group: Group) -> Event | None:
        """Return the event a finished group makes (parsers that correlate override this)."""
        return None

    def synth(self, raw: Event, event_type: str, severity: str, dev: str, msg: str, **extensions: Any) -> Event:
        """Build a synthetic event about kernel device ``dev`` (a name, ``M:m`` or ``""``) from ``raw``.

        ``dev_name`` and ``dev_wwid`` come from sysfs; ``extensions`` gets ``kernel_name``, the raw
        event's id and, for kmsg input, its ``seq``.
        """
        ext: dict[str, Any] = {"raw_event_id": raw.get("event_id", "")}
        raw_ext = raw.get("extensions")
        if isinstance(raw_ext, dict) and "seq" in raw_ext:
            ext["kmsg_seq"] = raw_ext["seq"]
        name = wwid = ""
        if dev:
            kname = self.sysfs.kernel_name(dev)
            if kname:
                ext["kernel_name"] = kname
            # a device sysfs does not know (gone, or a replayed log) keeps the name the kernel printed
            name, wwid = self.sysfs.name(dev) or dev, self.sysfs.wwid(dev)
        ext.update(extensions)
        return self.event(self.SYSTEM, event_type, msg, severity=severity, dev_name=name, dev_wwid=wwid,
                          timestamp=raw.get("timestamp", time.time()), extensions=ext)


def kernel_filter(parser: type[KernelParser], systems: tuple[str, ...] = ("kmsg",),
                  also: tuple[str, ...] = ()) -> dict[str, Any]:
    """Return a kernel parser's default filter: raw events of ``systems`` (the kmsg collector, or a
    replay of one) whose ``msg`` contains one of the parser's ``KEYWORDS`` (or of ``also``), so the
    broker does not route it the noise at all."""
    return {"system": list(systems), "kind": "raw", "contains": [*parser.KEYWORDS, *also]}

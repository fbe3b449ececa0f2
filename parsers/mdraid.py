"""Parser ``mdraid``: Linux software RAID (md) events from the kernel log.

Input: raw kernel log events (the default filter: ``system = "kmsg"``, ``kind = "raw"``).
Options: ``sysfs_root``, ``dev_root`` and ``correlation_window`` (seconds to wait for the second
line of a two-line report, default 1).

Output (``system = "mdraid"``):

======================  ========  ====================================================================
event_type              severity  kernel lines (drivers/md/md.c, raid1.c, raid5.c, raid10.c)
======================  ========  ====================================================================
``MD_DISK_FAILURE``     error     ``md/raid1:md0: Disk failure on sdb1, disabling device.`` with its
                                  ``Operation continuing on 1 devices.`` (or ``Cannot continue on N
                                  devices.``, raid5 since 5.19), whether both come in one kmsg record
                                  or as two lines: ONE event; alone, it goes out when the window ends.
                                  Also ``md: kicking non-fresh sdb1 from array!`` when no array start
                                  line follows (the array is then unknown)
``MD_DEGRADED``         warn      ``md/raid1:md0: active with 1 out of 2 mirrors``, ``md/raid:md0:
                                  raid level 5 active with 3 out of 4 devices, algorithm 2``,
                                  ``md/raid10:md0: active with 3 out of 4 devices`` with fewer active
                                  than total devices (the members kicked just before as ``kicked``)
``MD_RESYNC_STARTED``   info      ``md: resync of RAID array md0``
``MD_RESYNC_DONE``      info      ``md: md0: resync done.`` (``warn`` and ``result: interrupted`` for
                                  ``interrupted``)
``MD_RECOVERY_STARTED`` info      ``md: recovery of RAID array md127`` (``recover`` since 6.11)
``MD_RECOVERY_DONE``    info      ``md: md127: recovery done.`` (or interrupted, ``warn``)
``MD_CHECK_STARTED``    info      ``md: data-check of RAID array md1`` (``check`` since 6.11; a
                                  ``repair``/``requested-resync`` is a check too, ``action: repair``)
``MD_CHECK_DONE``       info      ``md: md1: data-check done.`` (or interrupted, ``warn``)
======================  ========  ====================================================================

A disk failure does not also give ``MD_DEGRADED``: the array is degraded by definition, and the
failure event says so (``degraded: true`` when the total is known from the array's start line,
``remaining_devices``, ``total_devices``). ``md: delaying data-check of md1 until md0 has
finished`` is not a start; reshapes, ``bind``/``unbind``/``export_rdev`` and capacity changes give
nothing.

``dev_name`` is the array (``md0``), ``dev_wwid`` its UUID (``/dev/disk/by-id/md-uuid-*``). An
LVM RAID LV (dm-raid prints ``mdX``) is found as the holder of its failed member (``vg/lv``).
Extensions: ``level`` (``raid1``, ``raid10``, ``raid5``, ``raid456``), ``member`` and
``member_wwid`` (the failed or kicked device), ``remaining_devices``, ``total_devices``,
``active_devices``, ``array_failed``, ``degraded``, ``kicked``, ``action`` (the kernel's word:
``resync``, ``data-check``, ``recovery``...), ``result`` (``done``/``interrupted``),
``kernel_name``, ``raw_event_id``, ``kmsg_seq``.
"""

from __future__ import annotations

import re
from typing import Any

from bus.config import Option
from bus.event import Event
from bus.plugin import run
from parsers._kernel import KERNEL_OPTIONS, Group, KernelParser, check_kernel_options, kernel_filter

OPTIONS = {
    **KERNEL_OPTIONS,
    "correlation_window": Option((int, float), 1.0, "seconds to wait for the second line of a two-line report"),
}
check_options = check_kernel_options

_PERSONALITY = r"md/raid(?P<level>\d*):(?P<array>[\w.-]+): "
_FAILURE = re.compile(rf"^{_PERSONALITY}Disk failure on (?P<member>\S+?), disabling device\.?$")
_CONTINUING = re.compile(rf"^{_PERSONALITY}(?P<verb>Operation continuing|Cannot continue) on (?P<n>\d+) devices\.?$")
_ACTIVE = re.compile(
    rf"^{_PERSONALITY}(?:raid level (?P<raid_level>\d+) )?active with (?P<active>\d+) out of (?P<total>\d+) "
    r"(?:mirrors|devices)")
_KICKING = re.compile(r"^md: kicking non-fresh (?P<member>\S+) from array!?$")
_SYNC_START = re.compile(r"^md: (?P<action>[\w-]+) of RAID array (?P<array>[\w.-]+)$")
_SYNC_END = re.compile(r"^md: (?P<array>[\w.-]+): (?P<action>[\w-]+) (?P<result>done|interrupted)\.?$")
_ACTIONS = {  # the kernel's word for a sync (md_do_sync's desc; action names since 6.11) -> event family
    "resync": "RESYNC", "sync": "RESYNC",
    "recovery": "RECOVERY", "recover": "RECOVERY",
    "data-check": "CHECK", "check": "CHECK", "requested-resync": "CHECK", "repair": "CHECK",
}
_MEMORY = 1024


class Mdraid(KernelParser):
    """md RAID kernel lines to ``MD_*`` events (see the module docstring)."""

    SYSTEM = "mdraid"
    KEYWORDS = ("md/raid", "md: ")
    correlation_window = 1.0

    def __init__(self, env: Any = None) -> None:
        super().__init__(env)
        self.raid_disks: dict[str, int] = {}
        """Devices of each array as its start line said (``active with 2 out of 2 mirrors``)."""

    def parse_line(self, line: str, raw: Event) -> list[Event] | None:
        """Match one md line; failures and kicks wait for the line that completes them."""
        if m := _FAILURE.match(line):
            return self._failure(m, raw)
        if m := _CONTINUING.match(line):
            group = self.groups.close(("failure", m["array"]))
            if group is None:
                return None  # its "Disk failure" line was never seen: nothing to add it to
            group.fields["remaining"] = int(m["n"])
            group.fields["array_failed"] = m["verb"] == "Cannot continue"
            return [self._failure_event(group)]
        if m := _ACTIVE.match(line):
            return self._active(m, raw)
        if m := _KICKING.match(line):
            group = self.groups.get(("kicked",)) or self._group(("kicked",), raw, members=[])
            group.fields["members"].append(m["member"])
            return None
        if m := _SYNC_START.match(line):
            family = _ACTIONS.get(m["action"])
            if family is None:
                return None  # a reshape
            return [self._md_event(raw, f"MD_{family}_STARTED", "info", m["array"], f"{m['action']} started",
                                   action=m["action"])]
        if m := _SYNC_END.match(line):
            family = _ACTIONS.get(m["action"])
            if family is None:
                return None
            interrupted = m["result"] == "interrupted"
            return [self._md_event(raw, f"MD_{family}_DONE", "warn" if interrupted else "info", m["array"],
                                   f"{m['action']} {m['result']}", action=m["action"], result=m["result"])]
        return None

    def _group(self, key: tuple[str, ...], raw: Event, **fields: Any) -> Group:
        group = self.groups.open(key, raw, self.delivery)
        group.fields.update(fields)
        return group

    def _array_device(self, array: str, member: str = "") -> str:
        """The array's device: ``md0`` itself, or for dm-raid's ``mdX`` the LV holding the member."""
        if array == "mdX" and member:
            holders = self.sysfs.holders(member)
            return holders[0] if holders else ""
        return array

    def _md_event(self, raw: Event, event_type: str, severity: str, array: str, what: str, member: str = "",
                  **extensions: Any) -> Event:
        dev = self._array_device(array, member)
        name = self.sysfs.name(dev) if dev else array
        ext = {k: v for k, v in extensions.items() if v is not None}
        if member:
            ext["member"] = self.sysfs.name(member)
            ext["member_wwid"] = self.sysfs.wwid(member)
        return self.synth(raw, event_type, severity, dev, f"{name}: {what}", **ext)

    def _failure(self, m: re.Match[str], raw: Event) -> list[Event] | None:
        key = ("failure", m["array"])
        previous = self.groups.close(key)  # a second failure before the first one's second line
        self._group(key, raw, array=m["array"], member=m["member"], level=self._level(m))
        return [self._failure_event(previous)] if previous is not None else None

    def _failure_event(self, group: Group) -> Event:
        """MD_DISK_FAILURE for a failed member (``remaining`` known when the second line came)."""
        f = group.fields
        remaining: int | None = f.get("remaining")
        total = self.raid_disks.get(f["array"])
        what = f"disk failure on {f['member']}"
        if f.get("array_failed"):
            what += f", array failed ({remaining} devices left)"
        elif remaining is not None:
            what += f", continuing on {remaining}" + (f" of {total}" if total else "") + " devices"
        return self._md_event(group.first, "MD_DISK_FAILURE", "error", f["array"], what, f["member"], level=f["level"],
                              remaining_devices=remaining, total_devices=total,
                              degraded=True if total and remaining is not None and remaining < total else None,
                              array_failed=True if f.get("array_failed") else None)

    def _active(self, m: re.Match[str], raw: Event) -> list[Event] | None:
        """An array started: MD_DEGRADED when it runs short of devices (with the members kicked before)."""
        array, active, total = m["array"], int(m["active"]), int(m["total"])
        if len(self.raid_disks) >= _MEMORY:
            self.raid_disks.clear()
        self.raid_disks[array] = total
        kicked = self.groups.close(("kicked",))
        if active >= total:
            return None
        members = kicked.fields["members"] if kicked is not None else []
        level = f"raid{m['raid_level']}" if m["raid_level"] else self._level(m)
        what = f"{level} degraded, active with {active} out of {total} devices"
        if members:
            what += f" (kicked non-fresh {', '.join(members)})"
        return [self._md_event(raw, "MD_DEGRADED", "warn", array, what, level=level, active_devices=active,
                               total_devices=total, kicked=[self.sysfs.name(k) for k in members] or None)]

    @staticmethod
    def _level(m: re.Match[str]) -> str:
        return f"raid{m['level']}" if m["level"] else "raid456"  # "md/raid:" is the raid4/5/6 personality

    def close_group(self, group: Group) -> Event | None:
        """A failure whose second line never came; kicked members no array start line claimed."""
        if group.key[0] == "failure":
            return self._failure_event(group)
        members = group.fields["members"]
        return self.synth(group.first, "MD_DISK_FAILURE", "error", "",
                          f"kicked non-fresh {', '.join(members)} from an array", member=self.sysfs.name(members[0]),
                          member_wwid=self.sysfs.wwid(members[0]), kicked=[self.sysfs.name(k) for k in members],
                          reason="non-fresh")


FILTER = kernel_filter(Mdraid)


if __name__ == "__main__":
    run(Mdraid)

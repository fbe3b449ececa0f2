"""Parser ``lvm``: LVM thin pool space and mirror log failures, from the kernel log and lvm2's dmeventd.

Input: raw events whose ``msg`` is a kernel log line (``system = "kmsg"``) or a syslog line
(``system = "syslog"``, e.g. ``lvm[1234]: WARNING: ...`` from dmeventd): the default filter takes
both. Options: ``sysfs_root``, ``dev_root`` and ``correlation_window`` (seconds to wait for the
line that completes an out-of-metadata-space report, default 1).

Output (``system = "lvm"``):

==========================  ========  ================================================================
event_type                  severity  lines
==========================  ========  ================================================================
``DM_THIN_POOL_LOW_WATER``  warn      ``device-mapper: thin: 253:2: reached low water mark for data
                                      device: sending event.`` (``... for metadata device ...``);
                                      dmeventd ``WARNING: Thin pool vg-pool-tpool data is now 80.00%
                                      full.`` (``metadata``) below 100 %
``DM_THIN_POOL_FULL``       error     ``switching pool to out-of-data-space (queue IO) mode`` / ``(error
                                      IO)`` (plain ``out-of-data-space mode`` before 3.15);
                                      ``no free data space available.`` (3.x); out of metadata space:
                                      ``No free metadata blocks`` / ``metadata operation '...' failed:
                                      error = -28`` / ``no free metadata space available.`` (3.x) and
                                      the ``switching pool to read-only mode`` that follows make ONE
                                      event; dmeventd ``... is now 100.00% full.``
``DM_DIRTY_LOG_FAILURE``    error     ``device-mapper: dirty region log: 253:3: Failed to read header on
                                      dirty region log device`` (``write``; ``mirror log device`` before
                                      2.6.31); ``device-mapper: raid1: log presuspend failed``
                                      (``postsuspend``, ``resume``); ``device-mapper: dm-log-userspace:
                                      Userspace log server not found.`` / ``Error trying to resume
                                      userspace log: N``; dmeventd ``Log device 253:3 has failed (D).``
                                      (``Log device, 253:3, has failed.`` in old lvm2)
==========================  ========  ================================================================

Where the strings come from: linux ``drivers/md/dm-thin.c`` (``check_low_water_mark``,
``metadata_low_callback``, ``notify_of_pool_mode_change``, ``check_for_metadata_space``,
``metadata_operation_failed``), ``drivers/md/dm-log.c`` (``DM_MSG_PREFIX "dirty region log"``,
``disk_resume``), ``drivers/md/dm-raid1.c`` (``mirror_presuspend``/``postsuspend``/``resume``),
``drivers/md/dm-log-userspace-base.c`` (``userspace_do_request``); lvm2
``daemons/dmeventd/plugins/thin/dmeventd_thin.c`` and ``.../mirror/dmeventd_mirror.c``.

A ``switching pool to read-only mode`` with no out-of-metadata-space line before it is not about
space (a metadata I/O error, or an administrator's choice) and gives nothing; nor do ``switching
pool to write mode`` (space was added) and mirror leg errors such as ``device-mapper: raid1:
Unable to read primary mirror during recovery`` (a failed mirror leg, not its dirty log).

``dev_name`` is the pool or mirror (``253:2`` or ``vg-pool-tpool`` through sysfs: ``vg/pool``; an
LVM name sysfs does not know is still shown as ``vg/lv``), ``dev_wwid`` its dm uuid
(``LVM-...-tpool``). Extensions: ``space`` (``data``/``metadata``), ``percent`` (dmeventd),
``io_mode`` (``queue``/``error``: what happens to writes of a full pool), ``pool_mode``
(``out-of-data-space``, ``read-only``), ``operation`` and ``error`` (a failed metadata operation),
``log_device``, ``reason``, ``source`` (``kernel`` or ``dmeventd``), ``kernel_name``,
``raw_event_id``, ``kmsg_seq``.
"""

from __future__ import annotations

import re
from typing import Any

from bus.config import Option
from bus.event import Event
from bus.plugin import run
from parsers._kernel import KERNEL_OPTIONS, Group, KernelParser, check_kernel_options, kernel_filter, lvm_name

OPTIONS = {
    **KERNEL_OPTIONS,
    "correlation_window": Option((int, float), 1.0, "seconds to wait for the line that completes a report"),
}
check_options = check_kernel_options

_THIN = re.compile(r"^device-mapper: thin: (?:(?P<dev>\d+:\d+): )?(?P<text>.*)$")
_LOW_WATER = re.compile(r"^reached low water mark for (?P<space>data|metadata) device")
_OODS = re.compile(r"^switching pool to out-of-data-space(?: \((?P<io>queue|error) IO\))? mode")
_NO_DATA = re.compile(r"^no free data space available")
_NO_METADATA = re.compile(r"^(?:no free metadata space available|No free metadata blocks|Could not get free metadata blocks)")
_METADATA_OP = re.compile(r"^metadata operation '(?P<op>[^']+)' failed: error = (?P<error>-?\d+)")
_READ_ONLY = re.compile(r"^switching pool to read-only mode")
_ENOSPC = -28
_DIRTY_LOG = re.compile(
    r"^device-mapper: (?:dirty region log: (?P<dev>\S+): Failed to (?P<op>read|write) header on (?:dirty region|mirror) "
    r"log device|raid1: log (?P<phase>presuspend|postsuspend|resume) failed|dm-log-userspace:\s+(?P<userspace>Userspace log "
    r"server not found|Error trying to resume userspace log: (?P<error>-?\d+)))")
_DMEVENTD_THIN = re.compile(
    r"WARNING: Thin pool (?P<pool>\S+) (?P<space>data|metadata) is now (?P<percent>\d+(?:\.\d+)?)% full\.?")
_DMEVENTD_LOG = re.compile(r"\bLog device,? (?P<dev>[^\s,]+),? has failed(?: \((?P<state>\w)\))?")


class Lvm(KernelParser):
    """dm-thin, dm-log, dm-raid1 and dmeventd lines to ``DM_*`` events (see the module docstring)."""

    SYSTEM = "lvm"
    KEYWORDS = ("device-mapper: thin", "device-mapper: dirty region log", "device-mapper: raid1: log",
                "device-mapper: dm-log-userspace", "Thin pool", "Log device")
    correlation_window = 1.0

    def parse_line(self, line: str, raw: Event) -> list[Event] | None:
        """Match one line of the kernel or of dmeventd."""
        if m := _THIN.match(line):
            return self._thin(m["dev"] or "", m["text"], raw)
        if m := _DIRTY_LOG.match(line):
            return [self._dirty_log(m, raw)]
        if m := _DMEVENTD_THIN.search(line):
            percent = float(m["percent"])
            full = percent >= 100
            return [self._lvm_event(raw, "DM_THIN_POOL_FULL" if full else "DM_THIN_POOL_LOW_WATER",
                                    "error" if full else "warn", m["pool"], f"thin pool {m['space']} {percent:.2f}% full",
                                    space=m["space"], percent=percent, source="dmeventd")]
        if m := _DMEVENTD_LOG.search(line):
            return [self._lvm_event(raw, "DM_DIRTY_LOG_FAILURE", "error", m["dev"], "mirror log device failed",
                                    log_device=m["dev"], state=m["state"], source="dmeventd")]
        return None

    def _lvm_event(self, raw: Event, event_type: str, severity: str, dev: str, what: str, **extensions: Any) -> Event:
        """An event about device ``dev`` (``253:2``, a dm name or ``""``); ``None`` extensions are left out."""
        extensions.setdefault("source", "kernel")
        event = self.synth(raw, event_type, severity, dev, what, **{k: v for k, v in extensions.items() if v is not None})
        if dev and not self.sysfs.kernel_name(dev).startswith("dm-") and not re.fullmatch(r"\d+:\d+", dev):
            # a dm name sysfs does not know (replayed logs, another host): still "vg/lv" when it is LVM's,
            # the pool itself for its "-tpool" layer (a '-' inside an LV name would be doubled)
            event["dev_name"] = lvm_name(re.sub(r"(?<!-)-tpool$", "", dev.removeprefix("/dev/mapper/"))) or event["dev_name"]
        if event["dev_name"]:
            event["msg"] = f"{event['dev_name']}: {what}"
        return event

    def _thin(self, dev: str, text: str, raw: Event) -> list[Event] | None:
        if m := _LOW_WATER.match(text):
            return [self._lvm_event(raw, "DM_THIN_POOL_LOW_WATER", "warn", dev,
                                    f"thin pool reached its {m['space']} low water mark", space=m["space"])]
        if m := _OODS.match(text):
            io = m["io"]
            what = "thin pool out of data space" + (f", {'queueing' if io == 'queue' else 'failing'} writes" if io else "")
            return [self._lvm_event(raw, "DM_THIN_POOL_FULL", "error", dev, what, space="data",
                                    pool_mode="out-of-data-space", io_mode=io)]
        if _NO_DATA.match(text):
            return [self._lvm_event(raw, "DM_THIN_POOL_FULL", "error", dev, "thin pool out of data space", space="data")]
        if _NO_METADATA.match(text):
            return self._metadata_full(dev, raw, reason=text.rstrip("."))
        if m := _METADATA_OP.match(text):
            if int(m["error"]) != _ENOSPC:
                return None  # a metadata I/O failure, not a full pool
            return self._metadata_full(dev, raw, operation=m["op"], error=int(m["error"]))
        if _READ_ONLY.match(text):
            group = self.groups.close(("metadata", dev)) or self.groups.close(("metadata", ""))
            if group is None:
                return None
            group.fields["pool_mode"] = "read-only"
            return [self._metadata_event(group, dev)]
        return None

    def _metadata_full(self, dev: str, raw: Event, **fields: Any) -> list[Event] | None:
        """Out of metadata space: wait for the pool's switch to read-only (it names the pool) to report it once."""
        key = ("metadata", dev)
        group = self.groups.get(key)
        if group is None:
            group = self.groups.open(key, raw, self.delivery)
        for name, value in fields.items():
            group.fields.setdefault(name, value)
        return None

    def _metadata_event(self, group: Group, dev: str = "") -> Event:
        f = group.fields
        what = "thin pool out of metadata space" + (", switched to read-only" if f.get("pool_mode") else "")
        return self._lvm_event(group.first, "DM_THIN_POOL_FULL", "error", dev or group.key[1], what, space="metadata",
                               pool_mode=f.get("pool_mode"), operation=f.get("operation"), error=f.get("error"),
                               reason=f.get("reason"))

    def close_group(self, group: Group) -> Event | None:
        """An out-of-metadata-space report no read-only switch followed (the pool may already be read-only)."""
        return self._metadata_event(group)

    def _dirty_log(self, m: re.Match[str], raw: Event) -> Event:
        if m["op"]:
            what = f"mirror log device failed ({m['op']} header)"
            return self._lvm_event(raw, "DM_DIRTY_LOG_FAILURE", "error", m["dev"], what, log_device=m["dev"],
                                   operation=f"{m['op']} header")
        if m["phase"]:
            return self._lvm_event(raw, "DM_DIRTY_LOG_FAILURE", "error", "", f"mirror log {m['phase']} failed",
                                   operation=m["phase"])
        return self._lvm_event(raw, "DM_DIRTY_LOG_FAILURE", "error", "", f"mirror userspace log: {m['userspace']}",
                               reason=m["userspace"], error=int(m["error"]) if m["error"] else None)


FILTER = kernel_filter(Lvm, ("kmsg", "syslog"))


if __name__ == "__main__":
    run(Lvm)

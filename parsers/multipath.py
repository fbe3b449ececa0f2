"""Parser ``multipath``: dm-multipath paths failing and coming back, and maps that lose every path.

Input (default filter: raw events of systems ``kmsg``, ``udev`` and ``syslog``):

- kernel lines: ``device-mapper: multipath: Failing path 8:48.`` and ``Reinstating path 8:48.``
  (newer kernels name the map: ``device-mapper: multipath: 253:0: Failing path 8:48.``);
- multipathd lines (syslog or journal text, with or without ``multipathd[pid]:``):
  ``checker failed path 8:16 in map mpatha``, ``sdb: mark as failed`` (older: ``8:16: mark as
  failed``), ``8:16: reinstated``, ``mpatha: remaining active paths: 0``, and the checkers' reports
  ``mpatha: sdb - tur checker reports path is down`` (older ``sdb: tur checker reports path is
  down``, ``sdb: checker msg is "tur checker reports path is down"``, ``mpatha: path sdb is down``);
- udev events of dm maps with ``DM_ACTION=PATH_FAILED|PATH_REINSTATED`` (``DM_PATH`` = the path's
  major:minor, ``DM_NAME`` = the map, ``DM_UUID``, ``DM_NR_VALID_PATHS``).

The path is resolved through sysfs (``8:48`` -> ``sdd``) and its map is found from
``/sys/block/dm-N/slaves/<path>`` when the input does not name it.

One failure is usually reported by several of those (the kernel line, its uevent, multipathd's
``checker failed path`` and ``mark as failed``). They give **one** event: a path's action is
dropped when the path's previous action was the same and less than ``dedup_window`` seconds
(default 2, by the inputs' timestamps) ago. The key is (path, action), the map being a function of
the path; a fail/reinstate/fail flap within the window still gives three events. The checkers'
``reports path is down/up`` lines repeat at every check while the state lasts, so they only give
an event when they change the path's known state (``up`` only after a failure).

Events (``system = "multipath"``):

| event_type | dev_name / dev_wwid | severity |
| --- | --- | --- |
| ``DM_MPATH_PATH_FAILED`` | the path (``sdd``, its SCSI WWID) | error |
| ``DM_MPATH_PATH_REINSTATED`` | the path | info |
| ``DM_MPATH_ALL_PATHS_DOWN`` | the map (``mpatha``, its ``dm/uuid``) | error |

``DM_MPATH_ALL_PATHS_DOWN`` is emitted when a map's active paths reach 0: multipathd's
``remaining active paths: 0``, a uevent's ``DM_NR_VALID_PATHS=0``, or every slave of the map
(sysfs) having failed. It is emitted once per outage: again only after a path of the map was
reinstated (or a count above 0 was reported).

``extensions``: ``path`` (kernel name, or major:minor when sysfs does not know it), ``path_devt``
(major:minor, when the input gives it), ``map`` (``"mpatha"``, ``""`` when unknown), ``map_wwid``
(the map's ``dm/uuid``, ``mpath-3600...``), ``action`` (``PATH_FAILED``/``PATH_REINSTATED``),
``source`` (``kernel``, ``multipathd`` or ``uevent``), ``valid_paths`` (when the input says),
``checker`` (checker reports); for ALL_PATHS_DOWN: ``map``, ``map_wwid``, ``source`` (``multipathd``,
``uevent`` or ``slaves``), ``failed_paths``; plus ``kernel_name``, ``raw_event_id``, ``kmsg_seq``.

Options: ``dedup_window``, ``sysfs_root``, ``dev_root``.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

from bus.config import Option
from bus.event import Event
from bus.plugin import run
from parsers._kernel import KERNEL_OPTIONS, KernelParser, kernel_filter

OPTIONS = {
    **KERNEL_OPTIONS,
    "dedup_window": Option(float, 2.0, "seconds within which reports of one path's failure or reinstatement "
                                       "from the kernel, its uevent and multipathd make one event"),
}


def check_options(options: dict[str, Any]) -> None:
    """Refuse a negative ``dedup_window``."""
    if options["dedup_window"] < 0:
        raise ValueError(f"dedup_window: must be 0 or more seconds, got {options['dedup_window']}")


FAILED, REINSTATED = "PATH_FAILED", "PATH_REINSTATED"
_KERNEL = re.compile(r"device-mapper: (?:dm-)?multipath: (?:(?P<map>\d+:\d+): )?"
                     r"(?P<action>Failing|Reinstating) path (?P<path>\d+:\d+)\.?")
_DAEMON = re.compile(r"(?:^|\s)multipathd(?:\[\d+\])?: ")
_CHECKER_FAILED = re.compile(r"checker failed path (?P<path>\S+) in map (?P<map>\S+)")
_MARKED = re.compile(r"(?P<path>[^\s:]+|\d+:\d+): (?P<what>mark as failed|reinstated)")
_REMAINING = re.compile(r"(?P<map>\S+): remaining active paths: (?P<count>\d+)")
_REPORT = re.compile(r"(?:(?P<map>[^\s:]+): )?(?P<path>[^\s:]+)(?: - |: |: checker msg is \")"
                     r"(?P<checker>\w+) checker reports path is (?P<state>up|down)\"?")
_DEVT = re.compile(r"\d+:\d+")
_PATH_IS = re.compile(r"(?P<map>[^\s:]+): path (?P<path>\S+) is (?P<state>up|down)")
_MAX_PATHS = 65536


class Multipath(KernelParser):
    """dm-multipath path failures and reinstatements, deduplicated across their sources."""

    SYSTEM = "multipath"
    KEYWORDS = ("ing path ", "checker ", "remaining active paths", "mark as failed", ": reinstated", " is down", " is up")

    def __init__(self, env: Any = None) -> None:
        super().__init__(env)
        self.dedup_window = float(self.options.get("dedup_window", 2.0))
        self.last: dict[str, tuple[str, float]] = {}
        """path -> (its last action, the timestamp of the input that reported it)."""
        self.failed: dict[str, set[str]] = {}
        """map -> its paths that failed and were not reinstated since."""
        self.down: set[str] = set()
        """Maps whose ALL_PATHS_DOWN was emitted and that have not had a path back since."""

    def handle(self, event: Event) -> list[Event] | None:
        """Handle a dm uevent with ``DM_ACTION``, or kernel/multipathd text."""
        ext = event.get("extensions")
        if isinstance(ext, dict) and "DM_ACTION" in ext:
            return self.uevent(event, ext)
        return super().handle(event)

    def uevent(self, raw: Event, props: dict[str, Any]) -> list[Event] | None:
        """``DM_ACTION=PATH_FAILED|PATH_REINSTATED`` uevent of a multipath map."""
        action, devt = props.get("DM_ACTION"), str(props.get("DM_PATH") or "")
        if action not in (FAILED, REINSTATED) or not devt:
            return None
        valid: int | None = None
        with contextlib.suppress(KeyError, TypeError, ValueError):
            valid = int(props["DM_NR_VALID_PATHS"])
        map_dev = str(props.get("DM_NAME") or props.get("DEVNAME") or "")
        out = self._path(raw, "uevent", action, devt, map_dev, primary=True, valid=valid,
                         map_wwid=str(props.get("DM_UUID") or ""))
        if valid is not None:
            out += self._count(raw, "uevent", self._map_of(devt, map_dev), valid, str(props.get("DM_UUID") or ""))
        return out or None

    def parse_line(self, line: str, raw: Event) -> list[Event] | None:
        """Parse one kernel or multipathd line."""
        if line.startswith("device-mapper:"):
            k = _KERNEL.fullmatch(line)
            if k is None:
                return None
            action = FAILED if k["action"] == "Failing" else REINSTATED
            return self._path(raw, "kernel", action, k["path"], k["map"] or "", primary=True) or None
        daemon = _DAEMON.search(line)
        text = line[daemon.end():] if daemon else line
        if m := _CHECKER_FAILED.fullmatch(text):
            return self._path(raw, "multipathd", FAILED, m["path"], m["map"], primary=True) or None
        if m := _MARKED.fullmatch(text):
            action = FAILED if m["what"] == "mark as failed" else REINSTATED
            return self._path(raw, "multipathd", action, m["path"], "", primary=True) or None
        if m := _REMAINING.fullmatch(text):
            return self._count(raw, "multipathd", m["map"], int(m["count"])) or None
        if m := _REPORT.fullmatch(text) or _PATH_IS.fullmatch(text):
            action = FAILED if m["state"] == "down" else REINSTATED
            checker = m.groupdict().get("checker") or ""
            return self._path(raw, "multipathd", action, m["path"], m["map"] or "", primary=False,
                              checker=checker) or None
        return None

    def _map_of(self, path: str, given: str) -> str:
        """Return the map's name: the one given (a name, ``253:0``, ``/dev/dm-0``) or the path's holder."""
        dm = self.sysfs.kernel_name(given) if given else self.sysfs.holder(path)
        return self.sysfs.name(dm) if dm else given

    def _path(self, raw: Event, source: str, action: str, path_token: str, map_given: str, *, primary: bool,
              valid: int | None = None, map_wwid: str = "", checker: str = "") -> list[Event]:
        """Record a path's action; return its event unless it repeats what is known, then any ALL_PATHS_DOWN."""
        path = self.sysfs.kernel_name(path_token) or path_token
        map_name = self._map_of(path, map_given)
        failed = self.failed.setdefault(map_name, set()) if map_name else set()
        if action == FAILED:
            failed.add(path)
        else:
            failed.discard(path)
            self.down.discard(map_name)
        now = float(raw.get("timestamp") or 0.0)
        last = self.last.get(path)
        if last is not None and last[0] == action and (not primary or now - last[1] < self.dedup_window):
            return self._all_failed(raw, map_name) if action == FAILED else []
        if last is None and not primary and action == REINSTATED:
            return []  # a checker saying "up" about a path never seen failing is no news
        if len(self.last) >= _MAX_PATHS:
            self.last.clear()
        self.last[path] = (action, now)
        map_wwid = map_wwid or (self.sysfs.wwid(map_name) if map_name else "")
        ext: dict[str, Any] = {"path": path, "map": map_name, "map_wwid": map_wwid, "action": action,
                               "source": source}
        if _DEVT.fullmatch(path_token):
            ext["path_devt"] = path_token
        if valid is not None:
            ext["valid_paths"] = valid
        if checker:
            ext["checker"] = checker
        in_map = f"in map {map_name} ({map_wwid})" if map_wwid else f"in map {map_name}" if map_name else "(map unknown)"
        if action == FAILED:
            event = self.synth(raw, "DM_MPATH_PATH_FAILED", "error", path, f"{path}: multipath path failed {in_map}", **ext)
            return [event, *self._all_failed(raw, map_name)]
        return [self.synth(raw, "DM_MPATH_PATH_REINSTATED", "info", path,
                           f"{path}: multipath path reinstated {in_map}", **ext)]

    def _all_failed(self, raw: Event, map_name: str) -> list[Event]:
        """ALL_PATHS_DOWN when every slave of the map (sysfs) has failed."""
        if not map_name:
            return []
        slaves = self.sysfs.slaves(map_name)
        if slaves and set(slaves) <= self.failed.get(map_name, set()):
            return self._count(raw, "slaves", map_name, 0)
        return []

    def _count(self, raw: Event, source: str, map_name: str, active: int, wwid: str = "") -> list[Event]:
        """A map's count of active paths: ALL_PATHS_DOWN at 0, once per outage."""
        if not map_name:
            return []
        if active > 0:
            self.down.discard(map_name)
            return []
        if map_name in self.down:
            return []
        self.down.add(map_name)
        wwid = self.sysfs.wwid(map_name) or wwid
        failed = sorted(self.failed.get(map_name, ()))
        msg = f"{map_name}: all multipath paths down" + (f" ({wwid})" if wwid else "")
        if failed:
            msg += f", failed: {', '.join(failed)}"
        event = self.synth(raw, "DM_MPATH_ALL_PATHS_DOWN", "error", map_name, msg,
                           map=map_name, map_wwid=wwid, source=source, failed_paths=failed)
        event["dev_wwid"] = event["dev_wwid"] or wwid  # a uevent's DM_UUID when sysfs does not know the map
        return [event]


# a dm uevent's msg is "ACTION /devices/virtual/block/dm-N"
FILTER = kernel_filter(Multipath, ("kmsg", "udev", "syslog"), also=("/block/dm-",))


if __name__ == "__main__":
    run(Multipath)

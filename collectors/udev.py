"""Collector ``udev``: device events (uevents) from the udev netlink monitor, one raw event each.

Options:

- ``subsystems`` (default ``["block", "scsi", "scsi_disk"]``): the device subsystems to listen to;
  an empty list means every subsystem.
- ``source`` (default ``"udev"``): ``udev`` for events as udevd processed them (with its
  properties, e.g. ``DM_NAME``, ``ID_SERIAL``), ``kernel`` for the kernel's raw uevents (where no
  udevd runs).
- ``replay`` (default empty): a JSON Lines file of uevent property maps, one object per line (e.g.
  ``{"ACTION": "change", "DEVPATH": "/devices/virtual/block/dm-0", "SUBSYSTEM": "block", ...}``),
  replayed once instead of listening (for tests and demos); maps whose ``SUBSYSTEM`` is not in
  ``subsystems`` are skipped like the monitor would; bad lines are skipped, counted by kind in
  ``busctl status`` and the first of each kind logged (``bad_input``) with its file and line. A
  relative path is relative to the configuration file.

Each uevent becomes an event: system ``udev``, event_type ``UEVENT``, severity ``info``, ``msg``
``"ACTION DEVPATH"``, ``dev_name`` the base name of ``DEVNAME`` (``sdb``, ``dm-0``) or empty, and
``extensions`` every uevent property as a string (``ACTION``, ``DEVPATH``, ``SUBSYSTEM``,
``DEVNAME``, ``DEVTYPE``, ``MAJOR``, ``MINOR``, ``SEQNUM``, ``DM_*``, ...).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from typing import Any

import pyudev

from bus.config import Option
from bus.event import Event
from bus.exceptions import BadInput
from bus.plugin import Collector, run
from collectors._io import readable

OPTIONS = {
    "subsystems": Option(list, ["block", "scsi", "scsi_disk"], "device subsystems to listen to (empty: all)"),
    "source": Option(str, "udev", "udev (events processed by udevd) or kernel (raw kernel uevents)",
                     ("udev", "kernel")),
    "replay": Option(str, "", "JSON Lines file of uevent property maps to replay instead of listening (tests)"),
}

REQUIRED = ("ACTION", "DEVPATH", "SUBSYSTEM")
"""Properties every uevent has; a replayed map without one of them is refused."""


def check_options(options: dict[str, Any]) -> None:
    """Refuse a ``subsystems`` list that holds anything but non-empty names."""
    for item in options["subsystems"]:
        if not isinstance(item, str) or not item or item != item.strip():
            raise ValueError(f"subsystems: {item!r} is not a subsystem name")


def properties_from_json(line: str) -> dict[str, str]:
    """Parse one replay line into a uevent property map (numbers become strings).

    Raises:
        BadInput: ``not_json``, ``not_object``, ``bad_property`` (not a string or a number) or
            ``missing_property`` (ACTION, DEVPATH or SUBSYSTEM).
    """
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadInput("not_json", f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise BadInput("not_json", "JSON nested too deeply") from None
    except ValueError as exc:  # not a JSONDecodeError: a number of more than 4300 digits
        raise BadInput("not_json", f"a number too long to read ({str(exc)[:60]})") from None
    if not isinstance(obj, dict):
        raise BadInput("not_object", f"must be a JSON object of uevent properties, not {type(obj).__name__}")
    props: dict[str, str] = {}
    for key, value in obj.items():
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise BadInput("bad_property", f"property {key}: must be a string or a number, "
                                           f"not {json.dumps(value)[:80]}")
        props[key] = str(value)
    missing = [k for k in REQUIRED if not props.get(k)]
    if missing:
        raise BadInput("missing_property", f"missing {', '.join(missing)}")
    return props


class Udev(Collector):
    """Emit one raw ``UEVENT`` per device event of the configured subsystems."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__(env)
        self.subsystems = frozenset(self.options["subsystems"])

    def wanted(self, props: Mapping[str, str]) -> bool:
        """Return whether a uevent is of a configured subsystem."""
        return not self.subsystems or props.get("SUBSYSTEM", "") in self.subsystems

    def uevent_event(self, props: Mapping[str, str]) -> Event:
        """Return the raw ``UEVENT`` event of a uevent's properties."""
        devname = props.get("DEVNAME", "")
        return self.event("udev", "UEVENT", f"{props.get('ACTION', '')} {props.get('DEVPATH', '')}",
                          dev_name=os.path.basename(devname) if devname else "", extensions=dict(props))

    async def run(self) -> None:
        """Replay the configured file, or listen to the netlink monitor forever."""
        if not self.options["replay"]:
            await self.listen()
            return
        await self.replay(str(self.path(self.options["replay"])))
        await asyncio.Event().wait()

    async def replay(self, path: str) -> None:
        """Emit the property maps of a JSON Lines file, skipping bad lines and other subsystems."""
        try:
            f = open(path, encoding="utf-8", errors="replace")
        except OSError as exc:
            self.log.error("replay_unreadable", path=path, error=str(exc))
            return
        emitted = 0
        with f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    props = properties_from_json(line)
                except BadInput as exc:
                    self.bad_input(exc.kind, exc.detail, path=path, line=number)
                    continue
                if self.wanted(props):
                    await self.emit(self.uevent_event(props))
                    emitted += 1
        self.log.info("replay_done", path=path, events=emitted)

    async def listen(self) -> None:
        """Read the netlink monitor from the event loop, draining it each time its socket is readable."""
        monitor = pyudev.Monitor.from_netlink(pyudev.Context(), source=self.options["source"])
        for subsystem in sorted(self.subsystems):
            monitor.filter_by(subsystem)
        monitor.start()
        self.log.info("udev_listening", source=self.options["source"], subsystems=sorted(self.subsystems))
        while True:
            await readable(monitor.fileno())
            while True:
                try:
                    device = monitor.poll(timeout=0)
                except OSError as exc:  # e.g. ENOBUFS: the kernel dropped uevents while busd held us back
                    self.log.warning("udev_receive_failed", error=str(exc))
                    break
                if device is None:
                    break
                props = {str(k): str(v) for k, v in device.properties.items()}
                if self.wanted(props):
                    await self.emit(self.uevent_event(props))


if __name__ == "__main__":
    run(Udev)

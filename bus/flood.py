"""Flood control for receivers: repeats of one (event_type, device) within a window become one summary.

The SDK's :class:`bus.plugin.Receiver` uses :class:`FloodControl` when a receiver's table sets
``flood_window`` (seconds). The first event of a key is handed on at once; its repeats within the
window are only counted; when the window ends, one summary event says how many were suppressed.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bus.event import Event, new_event, severity_rank

__all__ = ["FloodControl", "flood_key"]

NEVER_COLLAPSED = frozenset({"BUS_EVENTS_LOST"})
"""Event types always handed on: each one tells something distinct."""


def flood_key(event: Event) -> tuple[str, str]:
    """Return the key repeats are counted under: ``(event_type, dev_wwid or dev_name)``."""
    return event.get("event_type", ""), event.get("dev_wwid") or event.get("dev_name") or ""


@dataclass(slots=True)
class _Window:
    """One key's open window: its first event, and what was suppressed since."""

    end: float
    first: Event
    count: int = 0
    last: Event | None = None
    first_ts: float = 0.0
    severity: str = "info"


class FloodControl:
    """Collapse repeats of ``(event_type, device)`` within ``window`` seconds into one summary.

    :meth:`offer` returns what to hand on now; :meth:`expire` returns the summaries of windows that
    ended, and should be called by a timer at :meth:`next_deadline` so a summary goes out even when
    no further event arrives. Windows are kept in the order they opened, which is also the order
    they end in, so both calls are O(1) per event; a window is forgotten when it ends, and at most
    ``max_keys`` are open at once (beyond, the oldest is closed early), which bounds memory.

    Args:
        window: seconds a window lasts, from the first event of its key.
        clock: a monotonic clock in seconds (injectable for tests).
        max_keys: most windows open at once.
    """

    def __init__(self, window: float, clock: Callable[[], float] = time.monotonic, max_keys: int = 10_000) -> None:
        if window <= 0:
            raise ValueError(f"flood_window: must be positive, got {window}")
        self.window = float(window)
        self.clock = clock
        self.max_keys = max_keys
        self.windows: OrderedDict[tuple[str, str], _Window] = OrderedDict()
        self.suppressed = 0
        self.summaries = 0

    def offer(self, event: Event) -> list[Event]:
        """Take one event; return the events to hand on now, in order (possibly none)."""
        now = self.clock()
        out = self.expire(now) if self.windows and next(iter(self.windows.values())).end <= now else []
        if event.get("event_type") in NEVER_COLLAPSED:
            out.append(event)
            return out
        key = flood_key(event)
        win = self.windows.get(key)
        if win is None:
            if len(self.windows) >= self.max_keys:
                out += self._close(self.windows.popitem(last=False)[1])
            self.windows[key] = _Window(now + self.window, event)
            out.append(event)
            return out
        if win.count == 0:
            win.first_ts = event.get("timestamp", 0.0)
        win.count += 1
        win.last = event
        severity = event.get("severity", "info")
        if severity != win.severity and severity_rank(severity) > severity_rank(win.severity):
            win.severity = severity
        self.suppressed += 1
        return out

    def expire(self, now: float | None = None) -> list[Event]:
        """Close the windows that ended by ``now``; return their summaries (repeats only)."""
        now = self.clock() if now is None else now
        out: list[Event] = []
        windows = self.windows
        while windows:
            win = next(iter(windows.values()))
            if win.end > now:
                break
            windows.popitem(last=False)
            out += self._close(win)
        return out

    def flush(self) -> list[Event]:
        """Close every window now (at shutdown); return the summaries."""
        out: list[Event] = []
        while self.windows:
            out += self._close(self.windows.popitem(last=False)[1])
        return out

    def next_deadline(self) -> float | None:
        """Return when the oldest open window ends (``None``: none is open)."""
        return next(iter(self.windows.values())).end if self.windows else None

    def _close(self, win: _Window) -> list[Event]:
        if not win.count or win.last is None:
            return []
        self.summaries += 1
        return [self.summary(win)]

    def summary(self, win: _Window) -> Event:
        """Return the summary event of a window with repeats."""
        first, last = win.first, win.last
        assert last is not None
        event_type = first.get("event_type", "")
        dev = first.get("dev_name") or first.get("dev_wwid") or "no device"
        extensions: dict[str, Any] = dict(last.get("extensions") or {})
        extensions.update(flood_count=win.count, flood_first=win.first_ts, flood_last=last.get("timestamp", 0.0),
                          flood_summary=True)
        event = new_event(
            first.get("system", ""), event_type,
            f"{win.count} more {event_type} on {dev} in {self.window:g} s (flood control)",
            severity=win.severity, kind=first.get("kind", "synthetic"), dev_name=first.get("dev_name", ""),
            dev_wwid=first.get("dev_wwid", ""), extensions=extensions, hostname=first.get("hostname") or None)
        event["source"] = first.get("source", "")
        return event

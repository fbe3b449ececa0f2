"""What a query over past events asks for: the filter words of ``bus-tail`` plus time, device and host.

One :class:`Query` serves every reader of the past: the local history database (:mod:`bus.history`,
``busctl query``, ``bus-tail --since``) and the fleet's JetStream stream (:mod:`bus.fleet`,
``--fleet``). Each reader narrows with what it can index and calls :meth:`Query.match` for the rest,
so every source answers the same words the same way.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from bus.event import Event
from bus.filter import Filter

__all__ = ["Query", "QueryError", "parse_time"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_AGO = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*(?:ago)?\s*$")


class QueryError(ValueError):
    """A query word is wrong; the message names the option and what was given."""


def parse_time(text: str, *, now: float | None = None, what: str = "--since") -> float:
    """Return the epoch seconds ``text`` names.

    Accepted: a duration back from now (``30s``, ``10m``, ``1h``, ``2d``, ``1w``), ``now``, an ISO 8601
    date or time (``2026-12-01``, ``2026-12-01T10:00``, ``2026-12-01 10:00:05+01:00``; UTC unless it
    says otherwise) or epoch seconds (``1764583200``).

    Raises:
        QueryError: nothing of the above, naming ``what``.
    """
    now = time.time() if now is None else now
    text = text.strip()
    if text == "now":
        return now
    ago = _AGO.match(text)
    if ago:
        return now - float(ago.group(1)) * _UNITS[ago.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        stamp = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise QueryError(f"{what} {text!r}: expected a duration (10m, 1h, 2d), an ISO time "
                         "(2026-12-01T10:00) or epoch seconds") from None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=UTC)
    return stamp.timestamp()


@dataclass(frozen=True, slots=True)
class Query:
    """Which past events to return.

    Attributes:
        filter: the ``bus-tail`` filter words (system, kind, severity, event_type).
        since: oldest timestamp included (epoch seconds), ``None`` for no bound.
        until: newest timestamp excluded, ``None`` for no bound.
        devs: device names or WWIDs; an event matches if its ``dev_name`` or ``dev_wwid`` is one.
        hosts: host names; an event matches if its ``hostname`` is one (empty: any host).
        limit: at most this many events, the newest ones, still returned oldest first.
    """

    filter: Filter
    since: float | None = None
    until: float | None = None
    devs: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    limit: int | None = None

    def match(self, event: Event) -> bool:
        """Return whether ``event`` is one this query asks for (``limit`` aside)."""
        ts = event.get("timestamp", 0.0)
        if self.since is not None and ts < self.since:
            return False
        if self.until is not None and ts >= self.until:
            return False
        if self.devs and event.get("dev_name") not in self.devs and event.get("dev_wwid") not in self.devs:
            return False
        if self.hosts and event.get("hostname") not in self.hosts:
            return False
        return self.filter.match(event)

"""Event filters: the one matcher used by the broker's routing, the SDK's receivers and ``bus-tail``.

A filter is a map whose keys are ANDed; a list inside a key is ORed:

``system``      names of systems (``scsi``, ``drbd``...)
``kind``        ``raw``, ``synthetic`` or ``all``
``severity``    the minimum severity (``warn`` means warn and error)
``event_type``  event types; an entry may end in ``*`` to match a prefix
``contains``    plain substrings, one of which the event's ``msg`` must contain (a cheap prefilter:
                the kernel parsers use it so the broker routes them only the lines they may know)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bus.event import KINDS, SEVERITIES, Event, severity_rank

__all__ = ["FILTER_KEYS", "Filter", "FilterError"]

FILTER_KEYS = ("system", "kind", "severity", "event_type", "contains")


class FilterError(ValueError):
    """A filter specification is wrong; the message names the key."""


def _str_list(spec: Mapping[str, Any], key: str) -> tuple[str, ...] | None:
    value = spec.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise FilterError(f"filter.{key}: must be a non-empty string or list of non-empty strings")
    return tuple(value)


@dataclass(frozen=True, slots=True)
class Filter:
    """A compiled filter. ``Filter.parse({})`` matches everything."""

    systems: frozenset[str] | None = None
    kinds: frozenset[str] | None = None
    min_severity: int = 0
    exact_types: frozenset[str] | None = None
    type_prefixes: tuple[str, ...] = ()
    contains: tuple[str, ...] | None = None

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | None, *, default_kinds: tuple[str, ...] | None = None) -> Filter:
        """Compile a filter map.

        Args:
            spec: the map from the configuration (or ``None``).
            default_kinds: kinds to match when the spec has no ``kind`` key (``None``: any).

        Raises:
            FilterError: an unknown key or a bad value, naming the key.
        """
        spec = spec or {}
        if not isinstance(spec, Mapping):
            raise FilterError(f"filter: must be a table, not {type(spec).__name__}")
        for key in spec:
            if key not in FILTER_KEYS:
                raise FilterError(f"filter.{key}: unknown key (allowed: {', '.join(FILTER_KEYS)})")
        systems = _str_list(spec, "system")
        kinds = _str_list(spec, "kind") or default_kinds
        if kinds is not None:
            for kind in kinds:
                if kind not in (*KINDS, "all"):
                    raise FilterError(f"filter.kind: {kind!r} is not one of raw, synthetic, all")
            if "all" in kinds:
                kinds = None
        sev = spec.get("severity", "info")
        if not isinstance(sev, str) or sev not in SEVERITIES:
            raise FilterError(f"filter.severity: {sev!r} is not one of {', '.join(SEVERITIES)}")
        types = _str_list(spec, "event_type")
        exact = prefixes = None
        if types is not None:
            exact = frozenset(t for t in types if not t.endswith("*"))
            prefixes = tuple(t[:-1] for t in types if t.endswith("*"))
        return cls(
            systems=frozenset(systems) if systems is not None else None,
            kinds=frozenset(kinds) if kinds is not None else None,
            min_severity=severity_rank(sev),
            exact_types=exact,
            type_prefixes=prefixes or (),
            contains=_str_list(spec, "contains"),
        )

    def match_fields(self, kind: str, system: str, severity: str, event_type: str) -> bool:
        """Return whether an event with these four fields passes the filter."""
        if self.kinds is not None and kind not in self.kinds:
            return False
        if self.systems is not None and system not in self.systems:
            return False
        if self.min_severity and severity_rank(severity) < self.min_severity:
            return False
        if self.exact_types is not None:
            if event_type in self.exact_types:
                return True
            return any(event_type.startswith(p) for p in self.type_prefixes)
        return True

    def match_text(self, msg: str) -> bool:
        """Return whether ``msg`` passes the ``contains`` part of the filter."""
        return self.contains is None or any(s in msg for s in self.contains)

    def match(self, event: Event) -> bool:
        """Return whether a (validated) event passes the filter."""
        return (self.match_fields(event["kind"], event["system"], event["severity"], event["event_type"])
                and (self.contains is None or self.match_text(event["msg"])))

    def wants(self, event: Event) -> bool:
        """Return whether a subscriber hands ``event`` on: it passes, or it is a ``BUS_EVENTS_LOST``
        notice (the subscriber's own report of a loss passes any filter)."""
        return self.match(event) or event.get("event_type") == "BUS_EVENTS_LOST"

    def select(self, events: list[Event]) -> list[Event]:
        """Return the events of a subscribed kind that :meth:`wants`, in order.

        A filter that names only kinds passes the list itself: the subscription chose them.
        """
        if self.kinds_only():
            return events
        wants = self.wants
        return [e for e in events if wants(e)]

    def kinds_only(self) -> bool:
        """Return whether the filter says nothing but which kinds pass (what a subscription already selects)."""
        return (self.systems is None and not self.min_severity and self.exact_types is None
                and self.contains is None)

    def wants_kind(self, kind: str) -> bool:
        """Return whether events of ``kind`` can pass at all (used to pick subscriptions)."""
        return self.kinds is None or kind in self.kinds

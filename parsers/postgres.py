"""Parser ``postgres``: the role of every PostgreSQL node, the believed primary, lag and split brain.

Input: the raw events of the ``postgres`` collectors of this busd (default filter: system
``postgres``, kind raw), one collector per node, told apart by ``extensions.node_name``. The parser
keeps the last state of each node and emits synthetic events (system ``postgres``) only when
something meaningful changed:

============================== ======== =============================================================
event_type                     severity when
============================== ======== =============================================================
``PG_UP``                      info     a node is seen up for the first time, or again after down
``PG_DOWN``                    error    a node's collector reports ``POSTGRES_DOWN`` (once per
                                        outage), or no report came for ``stale_after`` s (``reason``
                                        ``stale``)
``PG_PROMOTED``                warn     a node last seen as a standby now runs as primary
``PG_DEMOTED``                 warn     a node last seen as primary now runs as a standby
``PG_PRIMARY_CHANGED``         info or  ``primary`` (below) changed: info when there was none before,
                               warn     warn when a primary is replaced or there is none any more
``PG_SPLIT_BRAIN``             error    two or more nodes claim to be primary (``primaries``)
``PG_SPLIT_BRAIN_RESOLVED``    info     no node or one node claims it any more
``PG_STANDBY_LAG``             warn     a standby's lag reaches ``lag_threshold`` seconds or
                                        ``lag_threshold_bytes`` bytes
``PG_STANDBY_LAG_CLEARED``     info     it is back under both (not emitted when the node goes down or
                                        is promoted: ``PG_DOWN``/``PG_PROMOTED`` say so)
``PG_REPMGR_EVENT``            info or  a new row of ``repmgr.events`` (warn when not ``successful``);
                               warn     the same row reported by several nodes is emitted once
============================== ======== =============================================================

One input gives its events in this order: ``PG_UP``/``PG_DOWN``, ``PG_PROMOTED``/``PG_DEMOTED``,
``PG_STANDBY_LAG[_CLEARED]``, ``PG_REPMGR_EVENT``, ``PG_SPLIT_BRAIN[_RESOLVED]``, ``PG_PRIMARY_CHANGED``;
every one carries the view after that input. A raw event without ``extensions.node_name`` (or
``dev_name``), or a ``POSTGRES_STATE`` without a boolean ``in_recovery``, is logged (``bad_event``)
and skipped: a state without its role must not count as a primary.

``dev_name`` is the node the event is about: the node itself; for ``PG_REPMGR_EVENT`` the node the
repmgr event names; for ``PG_PRIMARY_CHANGED`` the new primary (the previous one when there is
none now); for the split-brain events the node whose report changed the set. ``dev_wwid`` is
``<system_identifier>:<repmgr node id>`` of that node (the node name when repmgr does not know it,
``""`` before its system identifier is known).

Who is primary:

- split brain: the nodes up whose own state is primary (not in recovery) are two or more, or the
  ``repmgr.nodes`` of a node up list two or more active primaries. ``primary`` is then ``""``:
  nobody is believed primary.
- otherwise the one node up that is primary by its own state (``primary_source`` ``polled``);
- otherwise, when no node up is primary, the single active primary in the freshest ``repmgr.nodes``
  seen that is not known down (``primary_source`` ``repmgr``): a busd watching only a standby
  believes what repmgr says;
- otherwise ``""`` (``primary_source`` ``""``).

Lag of a standby: its own ``lag_seconds`` and ``lag_bytes`` (see the collector), raised to what the
primary's ``pg_stat_replication`` says for it (``application_name`` = node name, as repmgr sets it):
``replay_lag`` seconds and ``replay_lag_bytes``. A threshold of 0 is off.

Every event's ``extensions`` carry the full current view:

- about the node (``dev_name``): ``node``, ``role`` (``primary``, ``standby`` or ``down``;
  ``unknown`` for a node only named by a repmgr event),
  ``up`` (bool), ``timeline`` (int or null), ``lsn`` (text or null), ``lag_seconds``,
  ``lag_bytes`` (numbers, null on a primary or when unknown), ``lagging`` (bool), ``streaming``
  (bool), ``upstream`` (a standby's upstream: repmgr's ``upstream_node_name``, else the WAL
  receiver's ``host:port``; ``""`` for a primary), ``node_id`` (repmgr id or null),
  ``system_identifier`` (text, ``""`` when unknown);
- about the cluster: ``primary`` (name or ``""``), ``primary_source`` (``polled``, ``repmgr`` or
  ``""``), ``primaries`` (the names claiming primary, sorted), ``split_brain`` (bool),
  ``repmgr_nodes`` (the freshest ``repmgr.nodes`` list, as in the collector), ``last_seen`` (node
  name to the epoch time of its last report), ``nodes`` (node name to a map with ``role``, ``up``,
  ``timeline``, ``lsn``, ``lag_seconds``, ``lag_bytes``, ``lagging``, ``upstream``, ``node_id``,
  ``last_seen``).

And per type: ``PG_UP``: ``first`` (bool: first report of the node since the parser started);
``PG_DOWN``: ``reason`` (``unreachable``, ``timeout``, ``query_failed``, ``stale``), ``error``;
``PG_PROMOTED``/``PG_DEMOTED``: ``previous_role``, ``previous_timeline``; ``PG_PRIMARY_CHANGED``:
``previous_primary``; split brain: ``source`` (``polled`` or ``repmgr``, ``""`` when resolved),
``previous_primaries``; lag: ``lag_threshold``, ``lag_threshold_bytes``; ``PG_REPMGR_EVENT``:
``event``, ``event_node_id``, ``event_node_name``, ``successful``, ``event_timestamp``,
``event_time``, ``details``, ``reported_by``.

The state lives in memory: a restarted parser learns every node again from its next report (within
one poll interval), announcing each with ``PG_UP`` (``first`` true) and the primary with
``PG_PRIMARY_CHANGED`` from ``""``.

Options: ``lag_threshold`` (seconds, default 30), ``lag_threshold_bytes`` (default 16 MiB),
``stale_after`` (seconds without any report from a node before it counts as down, never less than
three of its poll intervals; 0: never).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from bus.config import Option
from bus.event import Event
from bus.exceptions import BadInput
from bus.plugin import Parser, derive_id, run

OPTIONS = {
    "lag_threshold": Option(float, 30.0, "seconds of replay lag from which a standby lags (0: off)"),
    "lag_threshold_bytes": Option(int, 16 * 1024 * 1024, "bytes of replay lag from which a standby lags (0: off)"),
    "stale_after": Option(float, 10.0, "seconds without a report before a node counts as down (0: never)"),
}
FILTER = {"system": ["postgres"], "kind": "raw"}
REPMGR_SEEN_MAX = 1000
"""repmgr events remembered to report a row seen through several nodes once."""


def check_options(options: dict[str, Any]) -> None:
    """Refuse negative thresholds."""
    for key in OPTIONS:
        if options[key] < 0:
            raise ValueError(f"{key}: must not be negative")


@dataclass
class Node:
    """What the parser knows about one node."""

    name: str
    status: str = ""
    """``up``, ``down``, or ``""`` before its first report."""
    role: str = ""
    """The role it last ran with (kept while down): ``primary``, ``standby``, ``""`` before any state."""
    timeline: int | None = None
    lsn: str | None = None
    lag_seconds: float | None = None
    lag_bytes: int | None = None
    lagging: bool = False
    streaming: bool = False
    upstream: str = ""
    node_id: int | None = None
    system_identifier: str = ""
    last_seen: float = 0.0
    last_event_id: str = ""
    interval: float = 0.0
    repmgr_nodes: list[dict[str, Any]] = field(default_factory=list)
    replication: list[dict[str, Any]] = field(default_factory=list)

    @property
    def up(self) -> bool:
        """Whether its last report said it is up."""
        return self.status == "up"

    @property
    def wwid(self) -> str:
        """``<system_identifier>:<node id or name>``, ``""`` when the system identifier is unknown."""
        if not self.system_identifier:
            return ""
        return f"{self.system_identifier}:{self.node_id if self.node_id is not None else self.name}"

    @property
    def shown_role(self) -> str:
        """``primary`` or ``standby`` while up, else ``down`` (``unknown`` before its first report)."""
        return self.role if self.up else self.status or "unknown"

    def summary(self) -> dict[str, Any]:
        """This node in the ``nodes`` map of the view."""
        return {"role": self.shown_role, "up": self.up, "timeline": self.timeline, "lsn": self.lsn,
                "lag_seconds": self.lag_seconds, "lag_bytes": self.lag_bytes, "lagging": self.lagging,
                "upstream": self.upstream, "node_id": self.node_id, "last_seen": self.last_seen}


@dataclass(frozen=True)
class Pending:
    """An event to emit once the input is fully taken in (so it carries the view after the input)."""

    node: Node
    event_type: str
    severity: str
    msg: str
    extra: dict[str, Any]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_extensions(kind: str, name: str, ext: dict[str, Any]) -> None:
    """Refuse a raw event whose extensions the parser computes with, but of the wrong type.

    The collector always sends numbers (or null) for ``interval`` and the lags, lists of maps for
    ``repmgr_nodes`` and ``replication`` (their lags numbers too) and a map for ``wal_receiver``.

    Raises:
        BadInput: ``bad_extension``, naming the key and the node.
    """
    def refuse(key: str, want: str, value: Any) -> BadInput:
        return BadInput("bad_extension", f"{kind} of {name!r}: extensions.{key} must be {want}, "
                                         f"not {str(value)[:40]!r}")

    checks: list[tuple[str, str, Any]] = [("interval", "a number", ext.get("interval"))]
    if kind == "POSTGRES_STATE":
        checks += [("lag_seconds", "a number", ext.get("lag_seconds")), ("lag_bytes", "a number", ext.get("lag_bytes"))]
        for key in ("repmgr_nodes", "replication"):
            rows = ext.get(key)
            if rows is not None and (not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows)):
                raise refuse(key, "a list of maps", rows)
        for i, row in enumerate(ext.get("replication") or []):
            checks += [(f"replication[{i}].{k}", "a number", row.get(k)) for k in ("replay_lag", "replay_lag_bytes")]
        receiver = ext.get("wal_receiver")
        if receiver is not None and not isinstance(receiver, dict):
            raise refuse("wal_receiver", "a map", receiver)
    for key, want, value in checks:
        if value is not None and not _is_number(value):
            raise refuse(key, want, value)


def _max(*values: float | None) -> Any:
    known = [v for v in values if v is not None]
    return max(known) if known else None


class PostgresParser(Parser):
    """Track every node's role and lag; report promotions, the primary, split brain and repmgr events."""

    tick_interval = 1.0

    async def setup(self) -> None:
        """Start with no node known."""
        self.nodes: dict[str, Node] = {}
        self.primary = ""
        self.primary_source = ""
        self.primaries: list[str] = []
        self.split_source = ""
        self.repmgr_seen: OrderedDict[str, None] = OrderedDict()

    def node(self, name: str) -> Node:
        """Return the node called ``name``, known from now on."""
        if name not in self.nodes:
            self.nodes[name] = Node(name)
        return self.nodes[name]

    def named(self, name: str, system_identifier: str = "") -> Node:
        """Return the node called ``name``; for a node no collector reports on, a stand-in (not kept)
        with its repmgr id and the cluster's system identifier, so events about it get a ``dev_wwid``."""
        if name in self.nodes:
            return self.nodes[name]
        node_id = next((r.get("node_id") for r in self.repmgr_nodes() if r.get("node_name") == name), None)
        sysid = system_identifier or next((n.system_identifier for n in self.nodes.values() if n.system_identifier), "")
        return Node(name, node_id=node_id, system_identifier=sysid)

    # -- input -----------------------------------------------------------------------------------

    def handle(self, event: Event) -> list[Event] | None:
        """Update the node the raw event is from; return what meaningfully changed."""
        ext = event.get("extensions") or {}
        name = str(ext.get("node_name") or event.get("dev_name") or "")
        kind = event.get("event_type")
        if kind not in ("POSTGRES_STATE", "POSTGRES_DOWN", "POSTGRES_REPMGR_EVENT"):
            return None
        if not name:
            raise BadInput("no_node_name", f"{kind} from {event.get('source')!r} names no node")
        if kind == "POSTGRES_STATE" and not isinstance(ext.get("in_recovery"), bool):
            # a state without its role must not count as a primary (nor as anything else)
            raise BadInput("no_in_recovery", f"POSTGRES_STATE of {name!r} from {event.get('source')!r} has no "
                           "boolean in_recovery")
        check_extensions(kind, name, ext)
        node = self.node(name)
        ts = float(event.get("timestamp") or 0.0)
        node.last_seen = max(node.last_seen, ts)
        node.last_event_id = str(event.get("event_id", ""))
        node.interval = float(ext.get("interval") or node.interval)
        if kind == "POSTGRES_STATE":
            pending = self.on_state(node, ext)
        elif kind == "POSTGRES_DOWN":
            node.system_identifier = node.system_identifier or str(ext.get("system_identifier") or "")
            pending = self.on_down(node, str(ext.get("reason") or "unreachable"), str(ext.get("error") or ""))
        else:
            pending = self.on_repmgr_event(node, ext)
        pending += self.cluster_changes(node)
        return [self.synth(p, ts) for p in pending] or None

    def on_state(self, node: Node, ext: dict[str, Any]) -> list[Pending]:
        """A successful poll: role changes, coming up, lag."""
        out: list[Pending] = []
        role = "standby" if ext.get("in_recovery") else "primary"
        previous_status, previous_role, previous_timeline = node.status, node.role, node.timeline
        node.status = "up"
        node.role = role
        node.timeline = ext.get("timeline")
        node.lsn = ext.get("lsn")
        node.system_identifier = str(ext.get("system_identifier") or node.system_identifier)
        node.node_id = ext.get("node_id", node.node_id)
        node.streaming = bool(ext.get("streaming"))
        node.repmgr_nodes = list(ext.get("repmgr_nodes") or [])
        node.replication = list(ext.get("replication") or [])
        node.upstream = self.upstream_of(node, ext) if role == "standby" else ""
        if role == "standby":
            seen_by_primary = self.primary_view(node)
            node.lag_seconds = _max(ext.get("lag_seconds"), seen_by_primary.get("replay_lag"))
            node.lag_bytes = _max(ext.get("lag_bytes"), seen_by_primary.get("replay_lag_bytes"))
        else:
            node.lag_seconds = node.lag_bytes = None
        if previous_status != "up":
            out.append(Pending(node, "PG_UP", "info", f"{node.name} is up ({role}, timeline {node.timeline})",
                               {"first": previous_status == ""}))
        changed = {"previous_role": previous_role, "previous_timeline": previous_timeline}
        if previous_role == "standby" and role == "primary":
            out.append(Pending(node, "PG_PROMOTED", "warn", f"{node.name} was promoted to primary "
                               f"(timeline {previous_timeline} -> {node.timeline})", changed))
        elif previous_role == "primary" and role == "standby":
            out.append(Pending(node, "PG_DEMOTED", "warn", f"{node.name} now runs as a standby (was primary)", changed))
        out += self.lag_changes(node)
        return out

    def on_down(self, node: Node, reason: str, error: str) -> list[Pending]:
        """The node's collector cannot poll it (or stopped reporting): ``PG_DOWN`` once per outage."""
        node.lagging = node.streaming = False
        if node.status == "down":
            return []
        node.status = "down"
        return [Pending(node, "PG_DOWN", "error", f"{node.name} is down ({reason}: {error})",
                        {"reason": reason, "error": error})]

    def on_repmgr_event(self, node: Node, ext: dict[str, Any]) -> list[Pending]:
        """A new ``repmgr.events`` row: ``PG_REPMGR_EVENT``, once however many nodes report it."""
        key = "/".join(str(ext.get(k)) for k in ("system_identifier", "event_node_id", "event", "event_time", "details"))
        if key in self.repmgr_seen:
            return []
        self.repmgr_seen[key] = None
        if len(self.repmgr_seen) > REPMGR_SEEN_MAX:
            self.repmgr_seen.popitem(last=False)
        about = next((n for n in self.nodes.values() if ext.get("event_node_id") is not None
                      and n.node_id == ext.get("event_node_id")), None)
        if about is None and ext.get("event_node_name"):
            about = self.named(str(ext["event_node_name"]), str(ext.get("system_identifier") or ""))
            about.node_id = ext.get("event_node_id") if about.node_id is None else about.node_id
        about = about or node
        successful = bool(ext.get("successful"))
        fields = {k: ext.get(k) for k in ("event", "event_node_id", "event_node_name", "successful",
                                          "event_timestamp", "event_time", "details")}
        msg = f"repmgr {ext.get('event')} on {about.name}{'' if successful else ' (failed)'}: {ext.get('details') or ''}"
        return [Pending(about, "PG_REPMGR_EVENT", "info" if successful else "warn", msg.rstrip(": "),
                        {"reported_by": node.name, **fields})]

    def tick(self, now: float) -> list[Event] | None:
        """Count as down a node whose collector has been silent for ``stale_after`` seconds."""
        limit = self.options["stale_after"]
        if not limit:
            return None
        out: list[Event] = []
        for node in list(self.nodes.values()):
            silent = now - node.last_seen
            if not node.up or not node.last_event_id or silent < max(limit, 3 * node.interval):
                continue
            pending = self.on_down(node, "stale", f"no report for {silent:.1f} s")
            events = [self.synth(p, now) for p in pending + self.cluster_changes(node)]
            for index, event in enumerate(events):
                event["event_id"] = derive_id(node.last_event_id, f"{self.name}/stale", index)
            out += events
        return out or None

    # -- derived state ---------------------------------------------------------------------------

    def upstream_of(self, node: Node, ext: dict[str, Any]) -> str:
        """Return a standby's upstream: repmgr's name for it, else the WAL receiver's ``host:port``."""
        mine = next((n for n in node.repmgr_nodes if n.get("node_name") == node.name), None)
        if mine and mine.get("upstream_node_name"):
            return str(mine["upstream_node_name"])
        receiver = ext.get("wal_receiver") or {}
        return f"{receiver.get('sender_host')}:{receiver.get('sender_port')}" if receiver.get("sender_host") else ""

    def primary_view(self, standby: Node) -> dict[str, Any]:
        """Return the ``pg_stat_replication`` row of ``standby`` on the primary up (``{}`` if none)."""
        for node in self.nodes.values():
            if node.up and node.role == "primary":
                for row in node.replication:
                    if row.get("application_name") == standby.name:
                        return row
        return {}

    def lag_changes(self, node: Node) -> list[Pending]:
        """Report a standby crossing a lag threshold, either way."""
        opts = self.options
        secs, size = opts["lag_threshold"], opts["lag_threshold_bytes"]
        lagging = node.role == "standby" and (
            bool(secs and node.lag_seconds is not None and node.lag_seconds >= secs)
            or bool(size and node.lag_bytes is not None and node.lag_bytes >= size))
        if lagging == node.lagging:
            return []
        node.lagging = lagging
        limits = {"lag_threshold": secs, "lag_threshold_bytes": size}
        if node.role != "standby":
            return []  # promoted while lagging: PG_PROMOTED says it all
        if lagging:
            return [Pending(node, "PG_STANDBY_LAG", "warn", f"standby {node.name} lags {node.lag_seconds} s / "
                            f"{node.lag_bytes} B (thresholds {secs:g} s / {size} B)", limits)]
        return [Pending(node, "PG_STANDBY_LAG_CLEARED", "info",
                        f"standby {node.name} caught up: lag {node.lag_seconds} s / {node.lag_bytes} B", limits)]

    def claims(self) -> tuple[list[str], str]:
        """Return the nodes claiming primary when they are two or more, and how that is known."""
        polled = sorted(n.name for n in self.nodes.values() if n.up and n.role == "primary")
        if len(polled) >= 2:
            return polled, "polled"
        for node in self.nodes.values():
            if node.up:
                listed = sorted(str(r.get("node_name")) for r in node.repmgr_nodes
                                if r.get("type") == "primary" and r.get("active"))
                if len(listed) >= 2:
                    return listed, "repmgr"
        return [], ""

    def believed_primary(self) -> tuple[str, str]:
        """Return the node believed primary and whence (``polled``, ``repmgr``), or ``("", "")``."""
        if self.primaries:
            return "", ""
        polled = [n.name for n in self.nodes.values() if n.up and n.role == "primary"]
        if polled:
            return polled[0], "polled"
        up = sorted((n for n in self.nodes.values() if n.up and n.repmgr_nodes), key=lambda n: n.last_seen)
        if up:
            listed = [str(r.get("node_name")) for r in up[-1].repmgr_nodes if r.get("type") == "primary" and r.get("active")]
            alive = [name for name in listed if name not in self.nodes or self.nodes[name].up]
            if len(alive) == 1:
                return alive[0], "repmgr"
        return "", ""

    def repmgr_nodes(self) -> list[dict[str, Any]]:
        """Return the freshest ``repmgr.nodes``: the primary's, else the last reported by a node up."""
        if self.primary and self.primary in self.nodes and self.nodes[self.primary].repmgr_nodes:
            return self.nodes[self.primary].repmgr_nodes
        up = sorted((n for n in self.nodes.values() if n.up and n.repmgr_nodes), key=lambda n: n.last_seen)
        return up[-1].repmgr_nodes if up else []

    def cluster_changes(self, node: Node) -> list[Pending]:
        """Report a split brain appearing, changing or ending, then a change of the believed primary."""
        out: list[Pending] = []
        claims, source = self.claims()
        if claims != self.primaries:
            previous, self.primaries, self.split_source = self.primaries, claims, source
            if claims:
                out.append(Pending(node, "PG_SPLIT_BRAIN", "error", f"split brain: {', '.join(claims)} all claim "
                                   f"to be primary ({source})", {"source": source, "previous_primaries": previous}))
            else:
                out.append(Pending(node, "PG_SPLIT_BRAIN_RESOLVED", "info", f"split brain over: {', '.join(previous)} "
                                   "no longer all claim primary", {"source": "", "previous_primaries": previous}))
        primary, primary_source = self.believed_primary()
        if primary != self.primary:
            previous_primary, self.primary, self.primary_source = self.primary, primary, primary_source
            about = self.named(primary or previous_primary)
            if primary:
                msg = f"primary is now {primary} (was {previous_primary or 'none'}; {primary_source})"
            else:
                msg = f"no primary{' (split brain)' if self.primaries else ''} (was {previous_primary})"
            severity = "info" if not previous_primary else "warn"
            out.append(Pending(about, "PG_PRIMARY_CHANGED", severity, msg, {"previous_primary": previous_primary}))
        else:
            self.primary_source = primary_source
        return out

    # -- output ----------------------------------------------------------------------------------

    def view(self, node: Node) -> dict[str, Any]:
        """Return the ``extensions`` every event carries: ``node``'s state and the cluster's."""
        return {
            "node": node.name, "role": node.shown_role, "up": node.up, "timeline": node.timeline,
            "lsn": node.lsn, "lag_seconds": node.lag_seconds, "lag_bytes": node.lag_bytes, "lagging": node.lagging,
            "streaming": node.streaming, "upstream": node.upstream, "node_id": node.node_id,
            "system_identifier": node.system_identifier,
            "primary": self.primary, "primary_source": self.primary_source, "primaries": list(self.primaries),
            "split_brain": bool(self.primaries), "repmgr_nodes": self.repmgr_nodes(),
            "last_seen": {n.name: n.last_seen for n in self.nodes.values()},
            "nodes": {n.name: n.summary() for n in self.nodes.values()},
        }

    def synth(self, p: Pending, ts: float) -> Event:
        """Build one synthetic event about ``p.node`` with the full current view in its extensions."""
        return self.event("postgres", p.event_type, p.msg, severity=p.severity, dev_name=p.node.name,
                          dev_wwid=p.node.wwid, timestamp=ts, extensions={**self.view(p.node), **p.extra})


if __name__ == "__main__":
    run(PostgresParser)

"""Parser ``drbd``: keeps the state of every DRBD resource and reports what meaningfully changed.

Input: the raw ``DRBD_EVENTS2`` events of the ``drbd`` collector, one line each, and its
``DRBD_EVENTS2_BATCH`` events, a run of lines each (``extensions.lines``), handled line by line in
order with exactly the outcome of the same lines one by one (default filter: system ``drbd``, kind
raw). Events caused by a line of a batch have that line's time (else the batch's) and ``raw_line``,
its index in the batch; statistics lines that match the template of an earlier line of their object
are not parsed field by field (see :meth:`DrbdParser.handle_batch`).

The parser keeps every resource with its devices, connections, peer devices and paths,
like ``drbdsetup status --json``, and emits synthetic events (system ``drbd``) only when something
meaningful changed; statistics (``read``, ``written``, ``sent``, ``received``, ``out-of-sync``,
``pending``, ``unacked``, ``done``, ``al-writes``, ...) update the state silently.

Event types (``dev_name`` ``res`` or ``res/volume``, ``dev_wwid`` ``drbd:res`` or ``drbd:res/volume``):

- resource: ``DRBD_RESOURCE_CREATED``, ``DRBD_RESOURCE_DESTROYED``, ``DRBD_ROLE_CHANGED``,
  ``DRBD_MAY_PROMOTE_CHANGED``, ``DRBD_RESOURCE_CHANGED`` (promotion score, suspended, write
  ordering, force-io-failures);
- device: ``DRBD_DISK_STATE_CHANGED``, ``DRBD_QUORUM_LOST``, ``DRBD_QUORUM_REGAINED``,
  ``DRBD_DEVICE_CHANGED`` (client, open, size, backing device), ``DRBD_DEVICE_CREATED``/``_DESTROYED``;
- connection: ``DRBD_CONNECTION_STATE_CHANGED``, ``DRBD_PEER_ROLE_CHANGED``, ``DRBD_CONNECTION_CHANGED``
  (congested, name), ``DRBD_CONNECTION_CREATED``/``_DESTROYED``;
- peer device: ``DRBD_REPLICATION_STATE_CHANGED``, ``DRBD_PEER_DISK_STATE_CHANGED``, ``DRBD_RESYNC_DONE``
  (SyncSource/SyncTarget to Established with ``done`` at 100 or the peer disk UpToDate),
  ``DRBD_PEER_DEVICE_CHANGED`` (peer client, resync suspended), ``DRBD_PEER_DEVICE_CREATED``/``_DESTROYED``;
- path: ``DRBD_PATH_CHANGED`` (established), ``DRBD_PATH_CREATED``/``_DESTROYED``;
- helpers: ``DRBD_SPLIT_BRAIN`` (``call helper`` of ``split-brain`` or ``initial-split-brain``),
  ``DRBD_HELPER_CALLED`` (every other call, and every response, with its ``status``);
- ``DRBD_INITIAL_STATE``: one per resource when a dump of ``exists`` lines ends.

One line changing several properties gives one event per type, in the order above. Extensions:
``resource``, ``volume``, ``minor``, ``peer_node_id``, ``conn_name`` (where they apply), ``object``,
``action`` (the events2 action), ``old`` and ``new`` (the object's properties before and after, with
drbd-reactor's snake_case names: a property never reported is absent; ``old`` of a created and
``new`` of a destroyed object are empty), ``state`` (the whole resource as ``drbdsetup status
--json`` prints it), ``raw_event_id``, and for helpers ``helper`` and ``status``.

Severity: error for a local disk going Failed or Diskless other than from Detaching (or Failed),
quorum lost, split brain; warn for a connection leaving Connected, a peer disk going
Outdated/Inconsistent/DUnknown, a helper answering a non-zero status; info otherwise.

Dumps and restarts: every start of drbdsetup prints the whole state as ``exists`` lines ended by
``exists -``; the collector marks each start with a new ``run`` id. Objects first seen in a dump are
reported by ``DRBD_INITIAL_STATE``; objects known from before the dump that changed meanwhile get
their usual change events (action ``exists``); known objects missing from the dump are reported
destroyed. So a restarted drbdsetup (or busd) reconciles instead of starting blind. A ``change``
for an object the parser does not know adopts it silently (only ``key:old->new`` fields report).

The state survives a restart of the parser alone: after each delivery that changed it, it is
written (with the boot id) to ``$BUS_RUNTIME_DIR/state/NAME.json`` before the delivery is
acknowledged, together with what that delivery emitted, so the events of a delivery handled but not
acknowledged before a crash are emitted again with the same ids (busd drops them as duplicates).
State saved during another boot is ignored.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bus.event import Event
from bus.exceptions import BadInput
from bus.plugin import Parser, run, write_atomic
from collectors.drbd import BATCH_TYPE, Line, Template, Templates, line_from_extensions, parse_line, parse_timestamp
from collectors.kmsg import boot_id

FILTER = {"system": ["drbd"], "kind": "raw"}
OPTIONS: dict[str, Any] = {}


def to_bool(value: str) -> bool:
    """events2 booleans: anything but ``no``/``false`` is true (``suspended:user`` is true)."""
    return value not in ("no", "false")


# events2 key -> (property, converter, statistic?). Properties are drbd-reactor's snake_case names;
# statistics keep the names drbdsetup status --json uses.
FIELDS: dict[str, dict[str, tuple[str, Callable[[str], Any], bool]]] = {
    "resource": {
        "role": ("role", str, False), "suspended": ("suspended", to_bool, False),
        "write-ordering": ("write_ordering", str, False), "may_promote": ("may_promote", to_bool, False),
        "promotion_score": ("promotion_score", int, False),
        "force-io-failures": ("force_io_failures", to_bool, False),
    },
    "device": {
        "disk": ("disk_state", str, False), "client": ("client", to_bool, False),
        "quorum": ("quorum", to_bool, False), "open": ("open", to_bool, False), "size": ("size", int, False),
        "backing_dev": ("backing_dev", str, False), "minor": ("minor", int, True),
        **{k: (k, int, True) for k in ("read", "written", "al-writes", "bm-writes", "upper-pending", "lower-pending")},
        "al-suspended": ("al-suspended", to_bool, True), "blocked": ("blocked", str, True),
    },
    "connection": {
        "connection": ("conn_state", str, False), "role": ("peer_role", str, False),
        "congested": ("congested", to_bool, False), "conn-name": ("conn_name", str, False),
        "ap-in-flight": ("ap-in-flight", int, True), "rs-in-flight": ("rs-in-flight", int, True),
    },
    "peer-device": {
        "replication": ("replication_state", str, False), "peer-disk": ("peer_disk_state", str, False),
        "peer-client": ("peer_client", to_bool, False), "resync-suspended": ("resync_suspended", to_bool, False),
        **{k: (k, int, True) for k in ("received", "sent", "out-of-sync", "pending", "unacked")},
        "done": ("done", float, True),
    },
    "path": {"established": ("established", to_bool, False)},
}

DEFAULTS: dict[str, dict[str, Any]] = {
    "resource": {"role": "Unknown", "suspended": False, "write_ordering": "", "may_promote": False,
                 "promotion_score": 0, "force_io_failures": False},
    "device": {"disk_state": "DUnknown", "client": False, "quorum": False, "open": False, "size": 0,
               "backing_dev": "none"},
    "connection": {"conn_state": "StandAlone", "peer_role": "Unknown", "congested": False, "conn_name": ""},
    "peer-device": {"replication_state": "Off", "peer_disk_state": "DUnknown", "peer_client": False,
                    "resync_suspended": False},
    "path": {"established": False, "local": "", "peer": ""},
}
"""drbd-reactor's values for properties never reported (what its ``Default`` gives)."""

_UNSET = object()
SYNC_STATES = frozenset({"SyncSource", "SyncTarget", "PausedSyncS", "PausedSyncT"})
SPLIT_BRAIN_HELPERS = frozenset({"split-brain", "initial-split-brain"})
_OBJECT_TYPE = {"resource": "RESOURCE", "device": "DEVICE", "connection": "CONNECTION",
                "peer-device": "PEER_DEVICE", "path": "PATH"}

STAT_KEYS = {kind: frozenset(k for k, (_, _, is_stat) in spec.items() if is_stat) for kind, spec in FIELDS.items()}
"""The events2 keys of each kind that are statistics (they change the state silently)."""

Obj = dict[str, Any]
"""One object of the state: ``{"props": {...}, "stats": {...}}`` plus its children."""
Key = tuple[Any, ...]


def new_object(kind: str) -> Obj:
    """Return an empty object of a kind, with its child maps."""
    obj: Obj = {"props": {}, "stats": {}}
    if kind == "resource":
        obj.update(devices={}, connections={})
    elif kind == "connection":
        obj.update(peer_devices={}, paths={})
    return obj


def shown(kind: str, obj: Obj) -> dict[str, Any]:
    """Return the properties an event shows in ``old``/``new`` (peer devices add their progress)."""
    props = dict(obj["props"])
    if kind == "peer-device":
        for stat, name in (("done", "done"), ("percent-in-sync", "percent_in_sync")):
            if stat in obj["stats"]:
                props[name] = obj["stats"][stat]
    return props


def _address(text: str) -> dict[str, Any]:
    """``ipv4:10.0.0.1:7000`` -> ``{"address", "port", "family"}`` (as drbdsetup status --json)."""
    family, _, rest = text.partition(":")
    address, _, port = rest.rpartition(":")
    return {"address": address.strip("[]"), "port": int(port) if port.isdigit() else port, "family": family}


STATE_KEYS: dict[str, dict[str, str]] = {
    "resource": {"role": "role", "suspended": "suspended", "write_ordering": "write-ordering",
                 "may_promote": "may_promote", "promotion_score": "promotion_score",
                 "force_io_failures": "force-io-failures"},
    "device": {"disk_state": "disk-state", "client": "client", "quorum": "quorum", "open": "open", "size": "size",
               "backing_dev": "backing-dev"},
    "connection": {"conn_name": "name", "conn_state": "connection-state", "congested": "congested",
                   "peer_role": "peer-role"},
    "peer-device": {"replication_state": "replication-state", "peer_disk_state": "peer-disk-state",
                    "peer_client": "peer-client", "resync_suspended": "resync-suspended"},
}
"""Property name -> its key in ``drbdsetup status --json`` (the ``state`` extension)."""


def status_json(name: str, res: Obj | None) -> dict[str, Any]:
    """Return one resource as ``drbdsetup status --json`` prints it (defaults for what is unknown)."""
    res = res or new_object("resource")

    def props(kind: str, obj: Obj) -> dict[str, Any]:
        return {key: obj["props"].get(prop, DEFAULTS[kind][prop]) for prop, key in STATE_KEYS[kind].items()}

    def stats(obj: Obj, *keys: str) -> dict[str, Any]:
        return {k: obj["stats"].get(k, 0) for k in keys}

    devices = [{"volume": volume, "minor": dev["stats"].get("minor", 0), **props("device", dev),
                **stats(dev, "read", "written", "al-writes", "bm-writes", "upper-pending", "lower-pending")}
               for volume, dev in sorted(res["devices"].items())]
    connections = []
    for peer, conn in sorted(res["connections"].items()):
        paths = [{"this_host": _address(p["props"]["local"]), "remote_host": _address(p["props"]["peer"]),
                  "established": p["props"].get("established", False)} for p in conn["paths"].values()]
        peer_devices = [{"volume": volume, **props("peer-device", pd),
                         **stats(pd, "received", "sent", "out-of-sync", "pending", "unacked"),
                         "percent-in-sync": pd["stats"].get("percent-in-sync")}
                        for volume, pd in sorted(conn["peer_devices"].items())]
        connections.append({"peer-node-id": peer, **props("connection", conn), **stats(conn, "ap-in-flight", "rs-in-flight"),
                            "paths": paths, "peer_devices": peer_devices})
    return {"name": name, **props("resource", res), "devices": devices, "connections": connections}


def props_from_state(kind: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Return the properties of one ``state`` entry (the resource, a device, connection or peer device)."""
    return {prop: entry[key] for prop, key in STATE_KEYS[kind].items() if key in entry}


def _int(fields: dict[str, str], key: str) -> int | None:
    value = fields.get(key)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


@dataclass(slots=True)
class _Statistics:
    """An object a :class:`Template` of one of its statistics lines updates, and the values waiting."""

    res: Obj
    obj: Obj
    kind: str
    fields: dict[str, str]
    """The fields of the template's line (the same keys as every line that matches it)."""
    converters: list[tuple[str, str, Callable[[str], Any]]]
    """``(events2 key, statistic, converter)`` of each varying value, in the template's order."""
    pending: list[tuple[str, ...]] = field(default_factory=list)
    """The varying values of the lines that matched since the last :meth:`DrbdParser.flush`."""


class DrbdParser(Parser):
    """Track DRBD resources from events2 lines; emit events for meaningful changes."""

    window = 512
    """Events delivered and not acknowledged: a batch holds up to 128 lines, so this bounds memory too."""

    def __init__(self, env: Any = None) -> None:
        super().__init__(env)
        self.templates = Templates()
        self._touched: list[_Statistics] = []
        self._dirty = False
        self.resources: dict[str, Obj] = {}
        self.run_id: str | None = None
        self.dumping = False
        self.seen: set[Key] = set()
        self.delivery_outputs: dict[str, list[Event]] = {}
        self.replay: dict[str, list[Event]] = {}
        self.state_path = self.state_file()
        self.boot = boot_id()
        self._warned: set[str] = set()

    @property
    def dirty(self) -> bool:
        """Whether the state changed since it was last saved (statistics alone do not count)."""
        return self._dirty

    @dirty.setter
    def dirty(self, value: bool) -> None:
        if value:  # objects or properties changed: no line is known to leave them alone any more
            self.templates.clear()
        self._dirty = value

    # -- persistence ----------------------------------------------------------------------------

    async def setup(self) -> None:
        """Load the state saved by a previous run of this parser (same boot only)."""
        if self.state_path is None:
            return
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            self.log.warning("state_unreadable", path=str(self.state_path), error=str(exc))
            return
        if not isinstance(data, dict) or data.get("boot_id") != self.boot:
            self.log.info("state_ignored", path=str(self.state_path), reason="saved during another boot")
            return
        try:
            self.resources = {name: _decode(res) for name, res in data["resources"].items()}
            self.run_id = data.get("run")
            self.dumping = bool(data.get("dumping"))
            self.seen = {tuple(k) for k in data.get("seen", [])}
            self.replay = dict(data.get("outputs") or {})
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            self.resources, self.replay = {}, {}
            self.log.warning("state_unreadable", path=str(self.state_path), error=repr(exc))
            return
        self.log.info("state_loaded", path=str(self.state_path), resources=len(self.resources))

    def save_state(self) -> None:
        """Write the state and this delivery's outputs atomically."""
        if self.state_path is None:
            return
        data = {"boot_id": self.boot, "run": self.run_id, "dumping": self.dumping, "seen": sorted(self.seen, key=str),
                "resources": self.resources, "outputs": self.delivery_outputs}
        try:
            write_atomic(self.state_path, json.dumps(data, default=str))
        except OSError as exc:
            self.warn_once("state_write_failed", path=str(self.state_path), error=str(exc))

    def hold(self) -> int | None:
        """Save the state before the delivery just handled is acknowledged; hold nothing."""
        if self.dirty:
            self.save_state()
            self.dirty = False
        self.delivery_outputs = {}
        return None

    def warn_once(self, what: str, **info: Any) -> None:
        """Log a problem once per kind (the input goes on)."""
        if what not in self._warned:
            self._warned.add(what)
            self.log.warning(what, **info)

    # -- input ----------------------------------------------------------------------------------

    def handle(self, event: Event) -> list[Event]:
        """Apply one events2 line to the state; return the events it causes.

        Raises:
            BadInput: the event's extensions are not an events2 line (see :func:`line_from_extensions`).
        """
        eid = str(event.get("event_id", ""))
        if self.replay:
            saved = self.replay.pop(eid, None)
            if saved is not None:
                self.delivery_outputs[eid] = saved
                self.dirty = True
                return [dict(e) for e in saved]
            self.replay = {}  # the delivery that was not acknowledged before a crash is behind us
        ext = event.get("extensions") or {}
        if event.get("event_type") == BATCH_TYPE:
            out = self.handle_batch(event, eid, ext)
            if out:
                self._dirty = True  # for the saved outputs; handle_batch already dropped what was stale
            self.delivery_outputs[eid] = out
            return out
        if ext.get("action") is None or ext.get("object") is None:
            self.warn_once("not_an_events2_event", event_id=eid, event_type=event.get("event_type"))
            return []
        line = line_from_extensions(ext)  # a line's fields of the wrong type: BadInput, not a TypeError deep inside
        out = self._apply(event, line.action, line.object, line.fields, line.old, ext.get("run"))
        if out:
            self.dirty = True
        self.delivery_outputs[eid] = out
        return out

    def handle_batch(self, event: Event, eid: str, ext: dict[str, Any]) -> list[Event]:
        """Apply every line of a ``DRBD_EVENTS2_BATCH`` event in order; return the events they cause.

        The events are those the lines would give one by one, each with the time of its own line
        (else of the batch) and ``raw_line``, its line's index in ``lines``. A line that only
        updates the statistics of an object in a way already seen (it matches the :class:`Template`
        of an earlier line of that object, made while the object has not changed since) is not
        parsed field by field: its values wait in :attr:`_touched` and only the latest are stored,
        before any other line is applied and at the end of the batch.
        """
        lines = ext.get("lines")
        if not isinstance(lines, list):
            self.warn_once("not_an_events2_batch", event_id=eid)
            return []
        run_id = ext.get("run")
        if run_id is not None and run_id != self.run_id:
            self.templates.clear()  # a new drbdsetup: its first line goes the whole way (new run)
        out: list[Event] = []
        find = self.templates.find
        touched = self._touched
        batch_time = event.get("timestamp")
        for index, text in enumerate(lines):
            if type(text) is not str:
                self.warn_once("bad_batch_line", event_id=eid, index=index, line=repr(text)[:300])
                continue
            found = find(text)
            if found is not None:
                stats = found[0].owner
                if not stats.pending:
                    touched.append(stats)
                stats.pending.append(found[1].groups())
                continue
            if touched:
                self.flush()
            try:
                line = parse_line(text)
            except BadInput as exc:
                self.warn_once("bad_batch_line", event_id=eid, index=index, kind=exc.kind, line=text[:300])
                continue
            when = parse_timestamp(line.timestamp) if line.timestamp is not None else None
            raw = {"event_id": eid, "msg": text, "timestamp": batch_time if when is None else when}
            produced = self._apply(raw, line.action, line.object, line.fields, line.old, run_id)
            for e in produced:
                e["extensions"]["raw_line"] = index
            out += produced
            if produced:
                self.dirty = True
            self.remember(text, line)
        if touched:
            self.flush()
        return out

    def remember(self, text: str, line: Line) -> None:
        """Keep the template of a statistics ``change`` line just applied to an existing object."""
        kind = line.object
        if line.action != "change" or kind not in ("device", "connection", "peer-device") or self.dumping:
            return
        fields = line.fields
        res = self.resources.get(fields.get("name", ""))
        where = self.locate(kind, res, fields, create=False) if res is not None else None
        obj = where[0].get(where[1]) if where is not None else None
        if obj is None:
            return
        template = Template.of(text, line, STAT_KEYS[kind])
        if template is None:
            return
        spec = FIELDS[kind]
        template.owner = _Statistics(res, obj, kind, fields,  # type: ignore[arg-type]
                                     [(key, spec[key][0], spec[key][1]) for key in template.keys])
        self.templates.add(template)

    def flush(self) -> None:
        """Store the latest statistics of the lines that matched a template (see :meth:`handle_batch`)."""
        for stats in self._touched:
            values = stats.obj["stats"]
            pending = stats.pending
            last = pending[-1]
            for i, (key, name, convert) in enumerate(stats.converters):
                try:
                    values[name] = convert(last[i])
                except ValueError:  # as line by line: the latest value that converts (if any) stays
                    self.warn_once(f"bad_value_{key}", key=key, value=last[i], object=stats.kind)
                    for earlier in reversed(pending[:-1]):
                        try:
                            values[name] = convert(earlier[i])
                        except ValueError:
                            continue
                        break
            if stats.kind == "peer-device":
                self.progress(stats.res, stats.obj, stats.fields)
            pending.clear()
        self._touched.clear()

    def _apply(self, raw: Event, action: str, kind: str, fields: dict[str, str], line_old: dict[str, str],
               run_id: str | None) -> list[Event]:
        out: list[Event] = []
        new_run = run_id is not None and run_id != self.run_id
        if action == "exists" and (new_run or (run_id is None and not self.dumping)):
            # a new drbdsetup prints everything again (even if the last one died in the middle of its dump)
            self.dumping, self.seen, self.dirty = True, set(), True
        elif self.dumping and action != "exists":
            self.warn_once("dump_unterminated", line=raw.get("msg", ""),
                           note="a dump of exists lines ended without 'exists -'")
            out += self.end_dump(raw)
        if new_run:
            self.run_id, self.dirty = run_id, True
        if kind == "-":
            if self.dumping:
                out += self.end_dump(raw)
        elif kind == "helper":
            out += self.helper(raw, action, fields)
        elif kind == "resource":
            out += self.apply_resource(raw, action, fields, line_old)
        elif kind in FIELDS:
            out += self.apply_object(raw, kind, action, fields, line_old)
        else:
            self.warn_once("unknown_object", object=kind, line=raw.get("msg", ""))
        return out

    # -- objects --------------------------------------------------------------------------------

    def update(self, kind: str, obj: Obj, fields: dict[str, str], line_old: dict[str, str],
               old: dict[str, Any]) -> None:
        """Store a line's values into ``obj``; ``key:old->new`` fills ``old`` for unknown properties."""
        spec = FIELDS[kind]
        for key, value in fields.items():
            entry = spec.get(key)
            if entry is None:
                continue  # identity keys and keys this parser does not know
            name, convert, is_stat = entry
            try:
                converted = convert(value)
                previous = convert(line_old[key]) if key in line_old else None
            except ValueError:
                self.warn_once(f"bad_value_{key}", key=key, value=value, object=kind)
                continue
            if is_stat:
                obj["stats"][name] = converted
                continue
            if previous is not None and name not in old:
                old[name] = previous
            if obj["props"].get(name, _UNSET) != converted:
                obj["props"][name] = converted
                self.dirty = True  # statistics alone are not worth a write: the next poll refreshes them

    def apply_resource(self, raw: Event, action: str, fields: dict[str, str], line_old: dict[str, str]) -> list[Event]:
        """A resource line."""
        name = fields.get("name", "")
        res = self.resources.get(name)
        if action == "destroy":
            if res is None:
                return []
            state = status_json(name, res)
            del self.resources[name]
            return [self.out(raw, "DRBD_RESOURCE_DESTROYED", "info", f"{name}: resource destroyed", name, "resource",
                             action, shown("resource", res), {}, state=state)]
        created = res is None
        if res is None:
            res = self.resources[name] = new_object("resource")
            self.dirty = True
        old = {} if created else shown("resource", res)
        self.update("resource", res, fields, line_old, old)
        if self.dumping:
            self.seen.add(("resource", name))
        if created and action == "create":
            return [self.out(raw, "DRBD_RESOURCE_CREATED", "info", f"{name}: resource created", name, "resource",
                             action, {}, shown("resource", res))]
        return self.changes(raw, "resource", action, name, old, shown("resource", res))

    def locate(self, kind: str, res: Obj, fields: dict[str, str], create: bool) -> tuple[dict[Any, Obj], Any] | None:
        """Return the map that holds the object of a line and its key (``None``: no such parent)."""
        if kind == "device":
            return res["devices"], _int(fields, "volume")
        peer = _int(fields, "peer-node-id")
        if kind == "connection":
            return res["connections"], peer
        conn = res["connections"].get(peer)
        if conn is None:
            if not create:
                return None
            conn = res["connections"][peer] = new_object("connection")
            self.dirty = True
            if fields.get("conn-name"):
                conn["props"]["conn_name"] = fields["conn-name"]
        if kind == "peer-device":
            return conn["peer_devices"], _int(fields, "volume")
        return conn["paths"], f"{fields.get('local', '')} {fields.get('peer', '')}"

    def apply_object(self, raw: Event, kind: str, action: str, fields: dict[str, str],
                     line_old: dict[str, str]) -> list[Event]:
        """A device, connection, peer-device or path line."""
        name = fields.get("name", "")
        res = self.resources.get(name)
        label = _OBJECT_TYPE[kind]
        if action == "destroy":
            where = self.locate(kind, res, fields, create=False) if res is not None else None
            if where is None or where[1] not in where[0]:
                return []
            obj = where[0].pop(where[1])
            return [self.out(raw, f"DRBD_{label}_DESTROYED", "info", f"{self.where(kind, name, fields)}: "
                             f"{kind} destroyed", name, kind, action, shown(kind, obj), {}, fields=fields)]
        if res is None:
            res = self.resources[name] = new_object("resource")
            self.dirty = True
            if self.dumping:
                self.seen.add(("resource", name))
        where = self.locate(kind, res, fields, create=True)
        assert where is not None
        container, key = where
        found = container.get(key)
        created = found is None
        obj = container[key] = new_object(kind) if found is None else found
        if created:
            self.dirty = True
            if kind == "path":
                obj["props"].update(local=fields.get("local", ""), peer=fields.get("peer", ""))
        old = {} if created else shown(kind, obj)
        self.update(kind, obj, fields, line_old, old)
        if kind == "peer-device":
            self.progress(res, obj, fields)
        if self.dumping:
            self.seen.add(self.key(kind, name, fields))
            if kind != "device":
                self.seen.add(("connection", name, _int(fields, "peer-node-id")))
        if created and action == "create":
            return [self.out(raw, f"DRBD_{label}_CREATED", "info", f"{self.where(kind, name, fields)}: {kind} created",
                             name, kind, action, {}, shown(kind, obj), fields=fields)]
        return self.changes(raw, kind, action, name, old, shown(kind, obj), fields)

    def progress(self, res: Obj, pd: Obj, fields: dict[str, str]) -> None:
        """Keep ``percent-in-sync``: ``done`` during a resync, else from out-of-sync and the size."""
        stats = pd["stats"]
        if "done" in fields and "done" in stats:
            stats["percent-in-sync"] = stats["done"]
            return
        if "out-of-sync" in fields and "out-of-sync" in stats:
            dev = res["devices"].get(_int(fields, "volume"))
            size = dev["props"].get("size") if dev else None
            if size:
                stats["percent-in-sync"] = round(max(0.0, 100.0 * (1 - stats["out-of-sync"] / size)), 2)

    @staticmethod
    def key(kind: str, name: str, fields: dict[str, str]) -> Key:
        """Return the identity of an object in the state."""
        if kind == "device":
            return (kind, name, _int(fields, "volume"))
        if kind == "connection":
            return (kind, name, _int(fields, "peer-node-id"))
        if kind == "peer-device":
            return (kind, name, _int(fields, "peer-node-id"), _int(fields, "volume"))
        return (kind, name, _int(fields, "peer-node-id"), f"{fields.get('local', '')} {fields.get('peer', '')}")

    # -- what changed ---------------------------------------------------------------------------

    def changes(self, raw: Event, kind: str, action: str, name: str, old: dict[str, Any], new: dict[str, Any],
                fields: dict[str, str] | None = None) -> list[Event]:
        """Return one event per kind of meaningful change between ``old`` and ``new``."""
        fields = fields or {}
        diff = {k for k in new if k in old and old[k] != new[k] and k not in ("done", "percent_in_sync")}
        if not diff:
            return []
        where = self.where(kind, name, fields)
        out: list[Event] = []

        def emit(event_type: str, severity: str, msg: str, **extra: Any) -> None:
            out.append(self.out(raw, event_type, severity, f"{where}: {msg}", name, kind, action, old, new,
                                fields=fields, **extra))

        def moved(key: str) -> str:
            return f"{old[key]} -> {new[key]}"

        if kind == "resource":
            if "role" in diff:
                emit("DRBD_ROLE_CHANGED", "info", f"role {moved('role')}")
            if "may_promote" in diff:
                emit("DRBD_MAY_PROMOTE_CHANGED", "info", f"may promote {moved('may_promote')}")
            rest = sorted(diff - {"role", "may_promote"})
        elif kind == "device":
            if "disk_state" in diff:
                failed = new["disk_state"] in ("Failed", "Diskless") and old["disk_state"] not in ("Detaching", "Failed")
                emit("DRBD_DISK_STATE_CHANGED", "error" if failed else "info", f"disk {moved('disk_state')}")
            if "quorum" in diff:
                if new["quorum"]:
                    emit("DRBD_QUORUM_REGAINED", "info", "quorum regained")
                else:
                    emit("DRBD_QUORUM_LOST", "error", "quorum lost")
            rest = sorted(diff - {"disk_state", "quorum"})
        elif kind == "connection":
            if "conn_state" in diff:
                left = old["conn_state"] == "Connected"
                emit("DRBD_CONNECTION_STATE_CHANGED", "warn" if left else "info", f"connection {moved('conn_state')}")
            if "peer_role" in diff:
                emit("DRBD_PEER_ROLE_CHANGED", "info", f"peer role {moved('peer_role')}")
            rest = sorted(diff - {"conn_state", "peer_role"})
        elif kind == "peer-device":
            if "replication_state" in diff:
                emit("DRBD_REPLICATION_STATE_CHANGED", "info", f"replication {moved('replication_state')}")
            if "peer_disk_state" in diff:
                bad = new["peer_disk_state"] in ("Outdated", "Inconsistent", "DUnknown")
                emit("DRBD_PEER_DISK_STATE_CHANGED", "warn" if bad else "info", f"peer disk {moved('peer_disk_state')}")
            if ("replication_state" in diff and old["replication_state"] in SYNC_STATES
                    and new["replication_state"] == "Established"
                    and (new.get("done", 0) >= 100 or new.get("peer_disk_state") == "UpToDate")):
                direction = "source" if old["replication_state"] in ("SyncSource", "PausedSyncS") else "target"
                emit("DRBD_RESYNC_DONE", "info", f"resync done (this node was the sync {direction})",
                     direction=direction)
            rest = sorted(diff - {"replication_state", "peer_disk_state"})
        else:
            rest = sorted(diff)
        if rest:
            emit(f"DRBD_{_OBJECT_TYPE[kind]}_CHANGED", "info", ", ".join(f"{k} {moved(k)}" for k in rest))
        return out

    def helper(self, raw: Event, action: str, fields: dict[str, str]) -> list[Event]:
        """A ``call helper`` or ``response helper`` line."""
        name, helper = fields.get("name", ""), fields.get("helper", "")
        where = self.where("helper", name, fields)
        extra: dict[str, Any] = {"helper": helper}
        if action == "call" and helper in SPLIT_BRAIN_HELPERS:
            return [self.out(raw, "DRBD_SPLIT_BRAIN", "error", f"{where}: split brain detected (helper {helper})",
                             name, "helper", action, {}, {}, fields=fields, **extra)]
        if action == "call":
            return [self.out(raw, "DRBD_HELPER_CALLED", "info", f"{where}: helper {helper} called", name, "helper",
                             action, {}, {}, fields=fields, **extra)]
        status = _int(fields, "status")
        extra["status"] = status
        return [self.out(raw, "DRBD_HELPER_CALLED", "warn" if status else "info",
                         f"{where}: helper {helper} returned {status}", name, "helper", action, {}, {}, fields=fields,
                         **extra)]

    def end_dump(self, raw: Event) -> list[Event]:
        """Close a dump: report known objects it did not list as destroyed, then each resource's state."""
        out: list[Event] = []
        self.dumping, self.dirty = False, True
        for name in list(self.resources):
            res = self.resources[name]
            if ("resource", name) not in self.seen:
                state = status_json(name, res)
                del self.resources[name]
                out.append(self.out(raw, "DRBD_RESOURCE_DESTROYED", "info", f"{name}: resource gone (not in the dump)",
                                    name, "resource", "exists", shown("resource", res), {}, state=state))
                continue
            out += self._prune(raw, name, res)
        for name, res in self.resources.items():
            out.append(self.out(raw, "DRBD_INITIAL_STATE", "info", f"{name}: {summary(name, res)}", name, "resource",
                                "exists", {}, shown("resource", res)))
        self.seen = set()
        return out

    def _prune(self, raw: Event, name: str, res: Obj) -> list[Event]:
        """Destroy the objects of a listed resource that the dump did not list."""
        gone: list[tuple[str, dict[str, str], Obj]] = []
        for volume in list(res["devices"]):
            if ("device", name, volume) not in self.seen:
                gone.append(("device", {"volume": str(volume)}, res["devices"].pop(volume)))
        for peer in list(res["connections"]):
            conn = res["connections"][peer]
            ids = {"peer-node-id": str(peer)}
            if ("connection", name, peer) not in self.seen:
                gone.append(("connection", ids, res["connections"].pop(peer)))
                continue
            for volume in list(conn["peer_devices"]):
                if ("peer-device", name, peer, volume) not in self.seen:
                    gone.append(("peer-device", {**ids, "volume": str(volume)}, conn["peer_devices"].pop(volume)))
            for path_key in list(conn["paths"]):
                if ("path", name, peer, path_key) not in self.seen:
                    path = conn["paths"].pop(path_key)
                    gone.append(("path", {**ids, "local": path["props"]["local"], "peer": path["props"]["peer"]}, path))
        return [self.out(raw, f"DRBD_{_OBJECT_TYPE[kind]}_DESTROYED", "info",
                         f"{self.where(kind, name, ids)}: {kind} gone (not in the dump)", name, kind, "exists",
                         shown(kind, obj), {}, fields=ids) for kind, ids, obj in gone]

    # -- output ---------------------------------------------------------------------------------

    def where(self, kind: str, name: str, fields: dict[str, str]) -> str:
        """Return a readable place: ``r0``, ``r0/0``, ``r0 peer alpha (node 1)``..."""
        text = name
        volume = _int(fields, "volume")
        if volume is not None:
            text += f"/{volume}"
        peer = _int(fields, "peer-node-id")
        if peer is not None:
            conn_name = self.conn_name(name, peer, fields)
            text += f" peer {conn_name} (node {peer})" if conn_name else f" peer node {peer}"
        return text

    def conn_name(self, name: str, peer: int, fields: dict[str, str]) -> str:
        """Return the connection's name from the state, else from the line."""
        conn = self.resources.get(name, {}).get("connections", {}).get(peer)
        return str(conn["props"].get("conn_name", "")) if conn else fields.get("conn-name", "")

    def out(self, raw: Event, event_type: str, severity: str, msg: str, name: str, kind: str, action: str,
            old: dict[str, Any], new: dict[str, Any], *, fields: dict[str, str] | None = None,
            state: dict[str, Any] | None = None, **extra: Any) -> Event:
        """Build one synthetic event."""
        fields = fields or {}
        res = self.resources.get(name)
        ext: dict[str, Any] = {"resource": name}
        volume, peer = _int(fields, "volume"), _int(fields, "peer-node-id")
        if volume is not None:
            ext["volume"] = volume
            dev = res["devices"].get(volume) if res else None
            minor = dev["stats"].get("minor") if dev else _int(fields, "minor")
            if minor is not None:
                ext["minor"] = minor
        if peer is not None:
            ext["peer_node_id"] = peer
            conn_name = self.conn_name(name, peer, fields)
            if conn_name:
                ext["conn_name"] = conn_name
        ext.update(object=kind, action=action, old=old, new=new,
                   state=state if state is not None else status_json(name, res),
                   raw_event_id=raw.get("event_id", ""), **extra)
        dev_name = f"{name}/{volume}" if volume is not None else name
        return self.event("drbd", event_type, msg, severity=severity, dev_name=dev_name, dev_wwid=f"drbd:{dev_name}",
                          timestamp=raw.get("timestamp"), extensions=ext)


def summary(name: str, res: Obj) -> str:
    """Return a one-line summary of a resource for ``DRBD_INITIAL_STATE``."""
    state = status_json(name, res)
    parts = [f"role {state['role']}"]
    if state["devices"]:
        parts.append("disks " + ", ".join(f"{d['volume']}:{d['disk-state']}" for d in state["devices"]))
    if state["connections"]:
        parts.append("peers " + ", ".join(f"{c['name'] or c['peer-node-id']}:{c['connection-state']}"
                                          for c in state["connections"]))
    return "; ".join(parts)


def _decode(res: Obj) -> Obj:
    """Turn a resource read back from JSON into the in-memory form (integer keys)."""
    res["devices"] = {int(k): v for k, v in res["devices"].items()}
    conns = {}
    for k, conn in res["connections"].items():
        conn["peer_devices"] = {int(v): pd for v, pd in conn["peer_devices"].items()}
        conns[int(k)] = conn
    res["connections"] = conns
    return res


if __name__ == "__main__":
    run(DrbdParser)

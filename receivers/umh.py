"""Receiver ``umh``: user mode helpers, a command run through ``sh -c`` when an event matches a rule.

Two kinds of rules, any number of each; every rule that matches runs its command (so one event may
run several).

**Bus rules** (``rules = [...]``) match any event the receiver gets (its ``filter``: by default
synthetic events). Keys: ``system``, ``event_type``, ``dev_name``, ``dev_wwid``, ``severity``,
``kind``, ``hostname``, ``source``, and ``old``/``new`` tables whose keys are compared with the
event's ``extensions.old``/``extensions.new`` (``new.role = "Primary"``); plus ``command`` (required),
``name`` (for the logs) and ``env`` (extra variables). A key not set means "don't care". A value is
compared for equality; a list matches any of its values; a string ending in ``*`` matches a prefix
(``event_type = "DRBD_*"``); ``{ operator = "NotEquals", value = ... }`` inverts (``Equals`` is the
default operator). ``severity`` is compared for equality too (``["warn", "error"]`` for both).

**drbd-reactor rules**: drbd-reactor's umh tables translate one to one: its ``[[umh.resource]]``,
``[[umh.device]]``, ``[[umh.peerdevice]]`` and ``[[umh.connection]]`` become ``resource``,
``device``, ``peerdevice`` and ``connection`` arrays of tables of this receiver
(``[[plugins.umh.resource]]``), with the same keys (``name``, ``command``, ``env``, ``resource-name``,
``event-type`` = ``Exists``/``Create``/``Change``/``Destroy``, ``volume``, ``peer-node-id``,
``old.X``/``new.X`` with drbd-reactor's field names such as ``disk-state`` or ``may-promote``, plain
or ``{ operator, value }``). They see the events of the ``drbd`` parser as drbd-reactor would: one
update per events2 line that changed one of drbd-reactor's fields of a resource, device, peer device
or connection (not one per event type), fields never reported at drbd-reactor's defaults, and an
``Exists`` update for every object of a ``DRBD_INITIAL_STATE``. Values are checked at start
(``device[0].new.disk-state: 'Uptodate' is not one of ...``).

**Environment**: the command runs with a cleared environment plus ``HOME=/``, ``TERM=Linux``,
``PATH=/sbin:/usr/sbin:/bin:/usr/bin`` (as drbd-reactor), every key of the event as ``BUS_<KEY>``
(``BUS_EVENT_TYPE``, ``BUS_DEV_NAME``, ``BUS_SEVERITY``, ``BUS_MSG``...) and its extensions as
``BUS_EXT_<KEY>``, maps flattened (``BUS_EXT_NEW_ROLE``), lists as JSON, booleans ``true``/``false``;
for DRBD events also drbd-reactor's variables: ``DRBD_RES_NAME``; devices ``DRBD_MINOR``,
``DRBD_MINOR_<vol>``, ``DRBD_VOLUME``, ``DRBD_BACKING_DEV``, ``DRBD_BACKING_DEV_<vol>``,
``DRBD_{OLD,NEW}_{DISK_STATE,CLIENT,QUORUM,OPEN}``; peer devices the minor, volume and backing device
ones plus ``DRBD_PEER_NODE_ID``, ``DRBD_{OLD,NEW}_PEER_{DISK_STATE,CLIENT,RESYNC_SUSPENDED,REPLICATION_STATE}``;
connections ``DRBD_PEER_NODE_ID``, ``DRBD_CSTATE``, ``DRBD_{OLD,NEW}_{CONN_NAME,CONN_STATE,PEER_ROLE,CONGESTED}``;
resources ``DRBD_{OLD,NEW}_{ROLE,MAY_PROMOTE}``; a rule's ``env`` comes last and wins.

**Running**: at most ``max_concurrent`` commands run at once (further matches wait, and so do the
events behind them, in busd's replay buffer); a command still running after ``timeout`` seconds is
killed with its whole process group (SIGTERM, SIGKILL 1 s later). Each command's exit status,
duration and output (stdout and stderr, up to 4 KiB each) are logged (``command_done``, a warning
when the status is not 0; ``command_timeout``); ``busctl status`` shows the counters
``commands_started``, ``commands_failed`` and ``commands_timed_out``. Commands still running when
the receiver stops get 0.5 s, then are killed.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from dataclasses import dataclass, field
from typing import Any

from bus.config import Option
from bus.event import SEVERITIES, Event
from bus.plugin import Receiver, run, stop_process
from parsers.drbd import DEFAULTS, props_from_state

OPTIONS = {
    "rules": Option(list, [], "bus rules: tables of system, event_type, dev_name, severity, old, new, command, ..."),
    "resource": Option(list, [], "drbd-reactor resource rules ([[umh.resource]])"),
    "device": Option(list, [], "drbd-reactor device rules ([[umh.device]])"),
    "peerdevice": Option(list, [], "drbd-reactor peer device rules ([[umh.peerdevice]])"),
    "connection": Option(list, [], "drbd-reactor connection rules ([[umh.connection]])"),
    "max_concurrent": Option(int, 8, "commands running at once; further matches wait"),
    "timeout": Option(float, 60.0, "seconds before a command's process group is killed (0: never)"),
}

COMMON_ENV = {"HOME": "/", "TERM": "Linux", "PATH": "/sbin:/usr/sbin:/bin:/usr/bin"}
OUTPUT_LIMIT = 4096
KILL_GRACE = 1.0
EXIT_GRACE = 0.5
OPERATORS = ("Equals", "NotEquals")

ROLES = ("Unknown", "Primary", "Secondary")
DISK_STATES = ("Diskless", "Attaching", "Detaching", "Failed", "Negotiating", "Inconsistent", "Outdated", "DUnknown",
               "Consistent", "UpToDate")
REPLICATION_STATES = ("Off", "Established", "StartingSyncS", "StartingSyncT", "WFBitMapS", "WFBitMapT", "WFSyncUUID",
                      "SyncSource", "SyncTarget", "VerifyS", "VerifyT", "PausedSyncS", "PausedSyncT", "Ahead", "Behind")
CONNECTION_STATES = ("StandAlone", "Disconnecting", "Unconnected", "Timeout", "BrokenPipe", "NetworkFailure",
                     "ProtocolError", "TearDown", "Connecting", "Connected")
EVENT_TYPES = {"Exists": "exists", "Create": "create", "Change": "change", "Destroy": "destroy"}

_STR, _INT, _BOOL = (str,), (int,), (bool,)
# drbd-reactor rule type -> (parser object, identity keys, state fields: name -> (property, types, choices))
REACTOR: dict[str, tuple[str, dict[str, tuple[type, ...]], dict[str, tuple[str, tuple[type, ...], tuple[str, ...]]]]] = {
    "resource": ("resource", {}, {
        "role": ("role", _STR, ROLES), "may-promote": ("may_promote", _BOOL, ()),
        "promotion-score": ("promotion_score", _INT, ())}),
    "device": ("device", {"volume": _INT}, {
        "disk-state": ("disk_state", _STR, DISK_STATES), "client": ("client", _BOOL, ()),
        "quorum": ("quorum", _BOOL, ()), "size": ("size", _INT, ()), "open": ("open", _BOOL, ())}),
    "peerdevice": ("peer-device", {"volume": _INT, "peer-node-id": _INT}, {
        "replication-state": ("replication_state", _STR, REPLICATION_STATES),
        "peer-disk-state": ("peer_disk_state", _STR, DISK_STATES), "peer-client": ("peer_client", _BOOL, ()),
        "resync-suspended": ("resync_suspended", _BOOL, ())}),
    "connection": ("connection", {"peer-node-id": _INT}, {
        "conn-name": ("conn_name", _STR, ()), "connection-state": ("conn_state", _STR, CONNECTION_STATES),
        "peer-role": ("peer_role", _STR, ROLES), "congested": ("congested", _BOOL, ())}),
}
_REACTOR_BY_OBJECT = {obj: rtype for rtype, (obj, _, _) in REACTOR.items()}
_BUS_KEYS = ("system", "event_type", "dev_name", "dev_wwid", "severity", "kind", "hostname", "source")
_COMMON_KEYS = ("command", "name", "env")
_MISSING: Any = object()
_NOT_NAME = re.compile(r"[^A-Z0-9_]")


# -- matching ---------------------------------------------------------------------------------

def _same(a: Any, b: Any) -> bool:
    """Equality that keeps booleans apart from numbers (``True`` is not ``1``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


@dataclass(frozen=True)
class Test:
    """One field test: the value at ``path`` equals one of ``values`` (or none, for NotEquals)."""

    path: tuple[str, ...]
    values: tuple[Any, ...]
    negate: bool = False

    def matches(self, data: dict[str, Any]) -> bool:
        """Apply the test to a map (an event, or a drbd-reactor update)."""
        value: Any = data
        for key in self.path:
            value = value.get(key, _MISSING) if isinstance(value, dict) else _MISSING
        hit = value is not _MISSING and any(
            value.startswith(v[:-1]) if isinstance(v, str) and v.endswith("*") and isinstance(value, str) else _same(value, v)
            for v in self.values)
        return hit != self.negate


@dataclass(frozen=True)
class Rule:
    """A compiled rule: where it came from, what it runs, and its tests."""

    where: str
    name: str
    command: str
    env: dict[str, str]
    tests: tuple[Test, ...]
    reactor: str | None = None
    """The drbd-reactor rule type (``resource``, ``device``, ``peerdevice``, ``connection``), else None."""

    def matches(self, data: dict[str, Any]) -> bool:
        """True when every test passes."""
        return all(t.matches(data) for t in self.tests)


def _pattern(where: str, value: Any, types: tuple[type, ...] | None = None, choices: tuple[str, ...] = (),
             many: bool = False) -> tuple[tuple[Any, ...], bool]:
    """Check one rule value (plain, a list when ``many``, or ``{operator, value}``) -> (values, negate)."""
    negate = False
    if isinstance(value, dict):
        unknown = set(value) - {"operator", "value"}
        if unknown:
            raise ValueError(f"{where}.{sorted(unknown)[0]}: unknown key (allowed: operator, value)")
        if "value" not in value:
            raise ValueError(f"{where}: a table needs 'value' (and optionally 'operator')")
        operator = value.get("operator", "Equals")
        if operator not in OPERATORS:
            raise ValueError(f"{where}.operator: {operator!r} is not one of {', '.join(OPERATORS)}")
        negate, value = operator == "NotEquals", value["value"]
    values = value if many and isinstance(value, list) else [value]
    if not values:
        raise ValueError(f"{where}: an empty list matches nothing")
    for v in values:
        if types is not None:
            if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
                names = " or ".join({str: "a string", int: "an integer", bool: "a boolean"}[t] for t in types)
                raise ValueError(f"{where}: must be {names}, not {v!r}")
        elif not isinstance(v, (str, int, float, bool)):
            raise ValueError(f"{where}: must be a string, number or boolean, not {type(v).__name__}")
        if choices and v not in choices:
            raise ValueError(f"{where}: {v!r} is not one of {', '.join(choices)}")
    return tuple(values), negate


def _common(where: str, rule: Any, allowed: tuple[str, ...]) -> tuple[str, str, dict[str, str]]:
    if not isinstance(rule, dict):
        raise ValueError(f"{where}: must be a table")
    unknown = [k for k in rule if k not in allowed]
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key (allowed: {', '.join(allowed)})")
    command = rule.get("command")
    if not isinstance(command, str) or not command.strip():
        raise ValueError(f"{where}.command: is required (a non-empty string, run with sh -c)")
    name = rule.get("name", "")
    if not isinstance(name, str):
        raise ValueError(f"{where}.name: must be a string")
    env = rule.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise ValueError(f"{where}.env: must be a table of strings")
    return command, name or where, env


def compile_bus_rule(where: str, rule: Any) -> Rule:
    """Compile one ``rules`` entry.

    Raises:
        ValueError: naming the key (``rules[2].command``) and the reason.
    """
    command, name, env = _common(where, rule, (*_COMMON_KEYS, *_BUS_KEYS, "old", "new"))
    tests = []
    for key in _BUS_KEYS:
        if key in rule:
            values, negate = _pattern(f"{where}.{key}", rule[key], _STR, SEVERITIES if key == "severity" else (),
                                      many=True)
            tests.append(Test((key,), values, negate))
    for side in ("old", "new"):
        table = rule.get(side, {})
        if not isinstance(table, dict):
            raise ValueError(f"{where}.{side}: must be a table of fields")
        for key, value in table.items():
            values, negate = _pattern(f"{where}.{side}.{key}", value, many=True)
            tests.append(Test(("extensions", side, key), values, negate))
    return Rule(where, name, command, env, tuple(tests))


def compile_reactor_rule(rtype: str, where: str, rule: Any) -> Rule:
    """Compile one drbd-reactor rule of type ``resource``, ``device``, ``peerdevice`` or ``connection``.

    Raises:
        ValueError: naming the key (``device[0].new.disk-state``) and the reason.
    """
    _, ids, fields = REACTOR[rtype]
    command, name, env = _common(where, rule, (*_COMMON_KEYS, "event-type", "resource-name", *ids, "old", "new"))
    tests = []
    if "event-type" in rule:
        values, negate = _pattern(f"{where}.event-type", rule["event-type"], _STR, tuple(EVENT_TYPES))
        tests.append(Test(("event_type",), values, negate))
    if "resource-name" in rule:
        values, negate = _pattern(f"{where}.resource-name", rule["resource-name"], _STR)
        tests.append(Test(("resource_name",), values, negate))
    for key, types in ids.items():
        if key in rule:
            values, negate = _pattern(f"{where}.{key}", rule[key], types)
            tests.append(Test((key.replace("-", "_"),), values, negate))
    for side in ("old", "new"):
        table = rule.get(side, {})
        if not isinstance(table, dict):
            raise ValueError(f"{where}.{side}: must be a table of fields")
        for key, value in table.items():
            if key not in fields:
                raise ValueError(f"{where}.{side}.{key}: unknown field of a {rtype} rule "
                                 f"(allowed: {', '.join(fields)})")
            prop, types, choices = fields[key]
            values, negate = _pattern(f"{where}.{side}.{key}", value, types, choices)
            tests.append(Test((side, prop), values, negate))
    return Rule(where, name, command, env, tuple(tests), reactor=rtype)


def compile_rules(options: dict[str, Any]) -> list[Rule]:
    """Compile every rule of the options (bus rules first, then drbd-reactor's, in their order)."""
    rules = [compile_bus_rule(f"rules[{i}]", r) for i, r in enumerate(options["rules"])]
    for rtype in REACTOR:
        rules += [compile_reactor_rule(rtype, f"{rtype}[{i}]", r) for i, r in enumerate(options[rtype])]
    return rules


def check_options(options: dict[str, Any]) -> None:
    """Validate the rules and limits at configuration time."""
    rules = compile_rules(options)
    if not rules:
        raise ValueError("rules: no rule at all (give rules, resource, device, peerdevice or connection)")
    if options["max_concurrent"] < 1:
        raise ValueError(f"max_concurrent: must be at least 1, got {options['max_concurrent']}")
    if options["timeout"] < 0:
        raise ValueError(f"timeout: must be 0 (no limit) or more, got {options['timeout']}")


# -- environment ------------------------------------------------------------------------------

def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value).replace("\0", "")


def _var(name: str) -> str:
    return _NOT_NAME.sub("_", name.upper())


def bus_env(event: Event) -> dict[str, str]:
    """Return ``BUS_<KEY>`` for every key of the event and ``BUS_EXT_<KEY>`` for its extensions."""
    env = {f"BUS_{_var(k)}": _text(v) for k, v in event.items() if k != "extensions"}

    def flatten(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                flatten(f"{prefix}_{_var(str(k))}", v)
        else:
            env[prefix] = _text(value)

    for key, value in (event.get("extensions") or {}).items():
        flatten(f"BUS_EXT_{_var(key)}", value)
    return env


@dataclass
class Update:
    """An update as drbd-reactor's plugins see it: one object, old and new with every field set."""

    rtype: str
    event_type: str
    resource_name: str
    old: dict[str, Any]
    new: dict[str, Any]
    state: dict[str, Any]
    volume: int | None = None
    peer_node_id: int | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data = {"event_type": self.event_type, "resource_name": self.resource_name, "volume": self.volume,
                     "peer_node_id": self.peer_node_id, "old": self.old, "new": self.new}


def _full(kind: str, props: dict[str, Any]) -> dict[str, Any]:
    return {**DEFAULTS[kind], **props}


def drbd_env(kind: str, name: str, old: dict[str, Any], new: dict[str, Any], state: dict[str, Any],
             volume: int | None, peer: int | None) -> dict[str, str]:
    """Return drbd-reactor's ``DRBD_*`` variables for one object's change (``old``/``new`` complete)."""
    env = {"DRBD_RES_NAME": name}
    if kind in ("device", "peer-device", "helper") and volume is not None:
        env["DRBD_VOLUME"] = str(volume)
        device = next((d for d in state.get("devices", []) if d.get("volume") == volume), None)
        if device is not None:
            env["DRBD_MINOR"] = env[f"DRBD_MINOR_{volume}"] = str(device.get("minor", ""))
            backing = str(device.get("backing-dev", "none"))
            env["DRBD_BACKING_DEV"] = env[f"DRBD_BACKING_DEV_{volume}"] = backing
    if peer is not None and kind != "resource":
        env["DRBD_PEER_NODE_ID"] = str(peer)
    names: dict[str, str] = {
        "resource": {"role": "ROLE", "may_promote": "MAY_PROMOTE"},
        "device": {"disk_state": "DISK_STATE", "client": "CLIENT", "quorum": "QUORUM", "open": "OPEN"},
        "peer-device": {"peer_disk_state": "PEER_DISK_STATE", "peer_client": "PEER_CLIENT",
                        "resync_suspended": "PEER_RESYNC_SUSPENDED", "replication_state": "PEER_REPLICATION_STATE"},
        "connection": {"conn_name": "CONN_NAME", "conn_state": "CONN_STATE", "peer_role": "PEER_ROLE",
                       "congested": "CONGESTED"},
    }.get(kind, {})
    for prop, var in names.items():
        env[f"DRBD_OLD_{var}"] = _text(old.get(prop))
        env[f"DRBD_NEW_{var}"] = _text(new.get(prop))
    if kind == "connection":
        env["DRBD_CSTATE"] = _text(new.get("conn_state"))
    return env


def event_drbd_env(event: Event) -> dict[str, str]:
    """Return the ``DRBD_*`` variables of a synthetic DRBD event (empty for other events)."""
    ext = event.get("extensions") or {}
    kind, name = ext.get("object"), ext.get("resource")
    if event.get("system") != "drbd" or event.get("kind") != "synthetic" or not isinstance(name, str):
        return {}
    old, new = ext.get("old") or {}, ext.get("new") or {}
    if kind in DEFAULTS:
        old, new = _full(kind, old), _full(kind, new)
    return drbd_env(str(kind), name, old, new, ext.get("state") or {}, ext.get("volume"), ext.get("peer_node_id"))


def initial_updates(event: Event) -> list[Update]:
    """Expand a ``DRBD_INITIAL_STATE`` into drbd-reactor's ``Exists`` updates, one per object."""
    ext = event["extensions"]
    state, name = ext.get("state") or {}, ext.get("resource", "")
    updates = []

    def add(kind: str, props: dict[str, Any], volume: int | None = None, peer: int | None = None) -> None:
        new = _full(kind, props)
        if new != DEFAULTS[kind]:  # drbd-reactor reports only what differs from its defaults
            updates.append(Update(_REACTOR_BY_OBJECT[kind], "Exists", name, dict(DEFAULTS[kind]), new, state,
                                  volume, peer))

    add("resource", props_from_state("resource", state))
    for dev in state.get("devices", []):
        add("device", props_from_state("device", dev), volume=dev.get("volume"))
    for conn in state.get("connections", []):
        peer = conn.get("peer-node-id")
        add("connection", props_from_state("connection", conn), peer=peer)
        for pd in conn.get("peer_devices", []):
            add("peer-device", props_from_state("peer-device", pd), volume=pd.get("volume"), peer=peer)
    return updates


def reactor_fields(kind: str, props: dict[str, Any]) -> dict[str, Any]:
    """Return only the fields drbd-reactor compares for an object kind."""
    wanted = {prop for prop, _, _ in REACTOR[_REACTOR_BY_OBJECT[kind]][2].values()}
    return {k: v for k, v in props.items() if k in wanted}


# -- the receiver -----------------------------------------------------------------------------

class Umh(Receiver):
    """Run the commands of the rules an event matches."""

    async def setup(self) -> None:
        """Compile the rules and prepare the concurrency limit."""
        self.rules = compile_rules(self.options)
        self.bus_rules = [r for r in self.rules if r.reactor is None]
        self.reactor_rules = [r for r in self.rules if r.reactor is not None]
        self.slots = asyncio.Semaphore(self.options["max_concurrent"])
        self.running: dict[asyncio.Task[None], int | None] = {}
        self.last_line: tuple[Any, Any] | None = None
        self.log.info("umh_rules", bus_rules=len(self.bus_rules), reactor_rules=len(self.reactor_rules))

    def reactor_updates(self, event: Event) -> list[Update]:
        """Return the drbd-reactor updates an event stands for (most events: none or one)."""
        ext = event.get("extensions") or {}
        if event.get("system") != "drbd" or event.get("kind") != "synthetic" or not isinstance(ext, dict):
            return []
        if event.get("event_type") == "DRBD_INITIAL_STATE":
            return initial_updates(event)
        kind, action = ext.get("object"), ext.get("action")
        if kind not in _REACTOR_BY_OBJECT or action not in ("create", "change", "destroy"):
            return []  # an exists outside the dump is part of a reconciliation: DRBD_INITIAL_STATE stands for it
        line = (ext.get("raw_event_id"), kind)
        if line == self.last_line:
            return []  # one events2 line gives several events but one drbd-reactor update
        self.last_line = line
        old, new = _full(kind, ext.get("old") or {}), _full(kind, ext.get("new") or {})
        if action == "change" and reactor_fields(kind, old) == reactor_fields(kind, new):
            return []
        return [Update(_REACTOR_BY_OBJECT[kind], action.capitalize(), str(ext.get("resource", "")), old, new,
                       ext.get("state") or {}, ext.get("volume"), ext.get("peer_node_id"))]

    async def handle(self, event: Event) -> None:
        """Start the command of every rule the event matches (waiting for a free slot)."""
        base: dict[str, str] | None = None
        for rule in self.bus_rules:
            if rule.matches(event):
                base = base if base is not None else {**bus_env(event), **event_drbd_env(event)}
                await self.start(rule, {**base, **rule.env}, event)
        if not self.reactor_rules:
            return
        for update in self.reactor_updates(event):
            for rule in self.reactor_rules:
                if rule.reactor == update.rtype and rule.matches(update.data):
                    kind = REACTOR[update.rtype][0]
                    env = {**bus_env(event), **drbd_env(kind, update.resource_name, update.old, update.new,
                                                        update.state, update.volume, update.peer_node_id)}
                    await self.start(rule, {**env, **rule.env}, event)

    async def start(self, rule: Rule, env: dict[str, str], event: Event) -> None:
        """Run a rule's command once a slot is free (the event loop goes on meanwhile)."""
        await self.slots.acquire()
        task = asyncio.create_task(self.execute(rule, {**COMMON_ENV, **env}, event))
        self.running[task] = None
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.running.pop(task, None)
        self.slots.release()

    async def execute(self, rule: Rule, env: dict[str, str], event: Event) -> None:
        """Run ``sh -c COMMAND`` in its own process group; log its end and output."""
        log = self.log.bind(rule=rule.name, event_id=event.get("event_id"), event_type=event.get("event_type"))
        task = asyncio.current_task()
        started = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", rule.command, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            self.count("commands_failed")
            log.error("command_failed_to_start", command=rule.command, error=str(exc))
            return
        if task is not None:
            self.running[task] = proc.pid
        self.count("commands_started")
        log.info("command_started", command=rule.command, pid=proc.pid)
        assert proc.stdout is not None and proc.stderr is not None
        outputs = [asyncio.create_task(_collect(proc.stdout)), asyncio.create_task(_collect(proc.stderr))]
        timeout = self.options["timeout"] or None
        try:
            async with asyncio.timeout(timeout):
                status = await proc.wait()
        except (TimeoutError, asyncio.CancelledError) as exc:
            await stop_process(proc, group=True, grace=KILL_GRACE, reap_timeout=KILL_GRACE)
            if isinstance(exc, asyncio.CancelledError):
                raise
            self.count("commands_timed_out")
            self.count("commands_failed")
            log.warning("command_timeout", command=rule.command, pid=proc.pid, timeout=timeout,
                        **await _outputs(outputs))
            return
        took = round(time.monotonic() - started, 3)
        info = {"command": rule.command, "pid": proc.pid, "status": status, "seconds": took, **await _outputs(outputs)}
        if status < 0:
            info["signal"] = signal.Signals(-status).name
        if status == 0:
            log.info("command_done", **info)
        else:
            self.count("commands_failed")
            log.warning("command_done", **info)

    async def teardown(self) -> None:
        """Give running commands a moment, then kill them."""
        if not self.running:
            return
        tasks = list(self.running)
        _, pending = await asyncio.wait(tasks, timeout=EXIT_GRACE)
        for task in pending:
            self.log.warning("command_killed_at_exit", pid=self.running.get(task))
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=KILL_GRACE + 0.5)


async def _collect(stream: asyncio.StreamReader) -> bytes:
    """Read a pipe to its end, keeping the first ``OUTPUT_LIMIT`` bytes."""
    kept = b""
    while chunk := await stream.read(65536):
        if len(kept) < OUTPUT_LIMIT:
            kept += chunk[: OUTPUT_LIMIT - len(kept)]
    return kept


async def _outputs(tasks: list[asyncio.Task[bytes]]) -> dict[str, str]:
    """Return what the command wrote (a child that escaped its group may hold a pipe: don't wait long)."""
    done, pending = await asyncio.wait(tasks, timeout=0.5)
    for task in pending:
        task.cancel()
    texts = [t.result().decode("utf-8", "backslashreplace").rstrip() if t in done and not t.exception() else ""
             for t in tasks]
    return {"stdout": texts[0], "stderr": texts[1]}


if __name__ == "__main__":
    run(Umh)

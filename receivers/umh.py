"""Receiver ``umh``: user mode helpers, a command run when an event matches a rule.

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

**Shell or not**: a ``command`` given as a list of strings is the argv itself, executed without a
shell (``command = ["/usr/local/bin/notify", "--now"]``; a ``"$BUS_MSG"`` in it stays those eight
characters: the event is in the environment). A command string is executed without a shell too, split
like the shell would split it (:func:`shlex.split`), when the shell would do nothing else with
it: none of the characters ``| & ; < > ( ) $ ` \\ * ? [ ] { } ~ # ! ^``, no second line, quotes
that close, and a first word that is neither an assignment (``X=1 cmd``) nor a reserved word or
a builtin of the shell's own (``exit``, ``cd``, ``.``, ``export``, ``trap``, ``wait``, ``if``...:
:data:`SHELL_WORDS`; builtins that are also programs, ``true``, ``echo``, ``test``, ``kill``, run
as the program). So ``/usr/local/bin/promote.sh 'web east'`` is ``execve`` of the script with one
argument, and every other string runs as ``/bin/sh -c COMMAND``, as before (the rule is
:func:`exec_argv`). A program without a ``/`` is looked up in the command's own ``PATH``; one not
found fails to start (``command_failed_to_start``, counted in ``commands_failed``) instead of
giving a shell's exit status 127. Commands are started with ``posix_spawn`` (no fork of the
receiver), in their own session, with stdin on ``/dev/null``, every signal at its default and no
descriptor of the receiver's.

**Order**: the commands of one resource run one after another, in event order (and, for one event,
in rule order): a DRBD resource (the ``drbd`` parser's ``extensions.resource``; drbd-reactor
rules: the update's resource) for DRBD events, else the event's ``dev_name`` (events without one
share one queue). Different resources run side by side, at most ``max_concurrent`` commands at
once; a resource whose turn comes goes behind the resources that were waiting already. At most
``max_queued`` matched commands wait to start; beyond that the receiver takes no further event
(they wait in busd's replay buffer).

**Running**: a command still running after ``timeout`` seconds is killed with its whole process
group (SIGTERM, SIGKILL 1 s later; the group gets SIGKILL even when the command exits on SIGTERM).
Each command's exit status, duration and output (stdout and stderr, up to 4 KiB each) are logged
(``command_done``, a warning when the status is not 0; ``command_timeout``); ``busctl status``
shows the counters ``commands_started``, ``commands_failed`` and ``commands_timed_out``. When the
receiver stops (SIGTERM; it is done in about 1 s, within busd's default ``stop_timeout`` of 1.5 s),
queued commands are not started (``commands_not_run``, with their count and the first event ids:
their events were handed over already, so a restart does not run them either), running ones get
0.5 s to end, then SIGTERM to their group and SIGKILL 0.25 s later (``command_killed_at_exit``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from bus.config import Option
from bus.event import SEVERITIES, Event
from bus.plugin import Receiver, run
from parsers.drbd import DEFAULTS, props_from_state

OPTIONS = {
    "rules": Option(list, [], "bus rules: tables of system, event_type, dev_name, severity, old, new, command, ..."),
    "resource": Option(list, [], "drbd-reactor resource rules ([[umh.resource]])"),
    "device": Option(list, [], "drbd-reactor device rules ([[umh.device]])"),
    "peerdevice": Option(list, [], "drbd-reactor peer device rules ([[umh.peerdevice]])"),
    "connection": Option(list, [], "drbd-reactor connection rules ([[umh.connection]])"),
    "max_concurrent": Option(int, 8, "commands running at once (of different resources); further matches wait"),
    "max_queued": Option(int, 32, "matched commands waiting to run; further events wait in busd's replay buffer"),
    "timeout": Option(float, 60.0, "seconds before a command's process group is killed (0: never)"),
}

COMMON_ENV = {"HOME": "/", "TERM": "Linux", "PATH": "/sbin:/usr/sbin:/bin:/usr/bin"}
OUTPUT_LIMIT = 4096
KILL_GRACE = 1.0
"""After a timeout: seconds from SIGTERM to SIGKILL, and from SIGKILL to giving up on the process."""
OUTPUT_GRACE = 0.5
"""Seconds the output of an exited command is waited for (a process that escaped its group may hold a pipe)."""
EXIT_GRACE = 0.5
EXIT_KILL_GRACE = 0.25
"""When the receiver stops: seconds running commands get, then SIGTERM, SIGKILL ``EXIT_KILL_GRACE`` later."""
SHELL_CHARS = frozenset("|&;<>()$`\\*?[]{}~#!^\n\r")
"""A command string holding one of these needs ``/bin/sh -c``."""
SHELL_WORDS = frozenset((
    # reserved words
    "if", "then", "else", "elif", "fi", "case", "esac", "for", "while", "until", "do", "done", "in", "function",
    "select", "time", "[[", "]]",
    # builtins that are no program of their own, or act on the shell itself
    ".", ":", "alias", "bg", "break", "cd", "chdir", "command", "continue", "declare", "eval", "exec", "exit",
    "export", "fc", "fg", "getopts", "hash", "jobs", "let", "local", "popd", "pushd", "read", "readonly", "return",
    "set", "shift", "source", "times", "trap", "type", "typeset", "ulimit", "umask", "unalias", "unset", "wait"))
"""A command string starting with one of these words needs ``/bin/sh -c``."""
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
    """The command as configured (an argv list joined as a shell would read it), for the logs."""
    env: dict[str, str]
    tests: tuple[Test, ...]
    reactor: str | None = None
    """The drbd-reactor rule type (``resource``, ``device``, ``peerdevice``, ``connection``), else None."""
    argv: tuple[str, ...] | None = None
    """What is executed without a shell; ``None``: ``/bin/sh -c command`` (see :func:`exec_argv`)."""

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


def exec_argv(command: str | list[str]) -> tuple[str, ...] | None:
    """Return the argv that runs ``command`` without a shell, or ``None`` when it needs ``/bin/sh -c``.

    A list is the argv itself. A string is split like the shell would (:func:`shlex.split`) when the
    shell would do nothing else with it: no character of :data:`SHELL_CHARS` (no expansion,
    redirection, pipe, list, glob, comment, escape or second line), quotes that close, and a first
    word that is neither an assignment (``X=1 cmd``) nor one of :data:`SHELL_WORDS`.
    """
    if isinstance(command, list):
        return tuple(command)
    if not SHELL_CHARS.isdisjoint(command):
        return None
    try:
        words = shlex.split(command)
    except ValueError:  # an unclosed quote: the shell reports it
        return None
    if not words or "=" in words[0] or words[0] in SHELL_WORDS:
        return None
    return tuple(words)


def _common(where: str, rule: Any, allowed: tuple[str, ...]) -> tuple[str, tuple[str, ...] | None, str, dict[str, str]]:
    if not isinstance(rule, dict):
        raise ValueError(f"{where}: must be a table")
    unknown = [k for k in rule if k not in allowed]
    if unknown:
        raise ValueError(f"{where}.{unknown[0]}: unknown key (allowed: {', '.join(allowed)})")
    command = rule.get("command")
    if isinstance(command, list):
        if not command or not all(isinstance(w, str) and "\0" not in w for w in command) or not command[0]:
            raise ValueError(f"{where}.command: an argv list must be strings without NUL, the first not empty")
    elif not isinstance(command, str) or not command.strip():
        raise ValueError(f"{where}.command: is required (a non-empty string, or an argv list run without a shell)")
    elif "\0" in command:
        raise ValueError(f"{where}.command: must not hold a NUL character")
    name = rule.get("name", "")
    if not isinstance(name, str):
        raise ValueError(f"{where}.name: must be a string")
    env = rule.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) and "\0" not in v for v in env.values()):
        raise ValueError(f"{where}.env: must be a table of strings")
    bad = next((k for k in env if not k or "=" in k or "\0" in k), None)
    if bad is not None:
        raise ValueError(f"{where}.env: {bad!r} is no variable name (empty, or with '=')")
    text = shlex.join(command) if isinstance(command, list) else command
    return text, exec_argv(command), name or where, env


def compile_bus_rule(where: str, rule: Any) -> Rule:
    """Compile one ``rules`` entry.

    Raises:
        ValueError: naming the key (``rules[2].command``) and the reason.
    """
    command, argv, name, env = _common(where, rule, (*_COMMON_KEYS, *_BUS_KEYS, "old", "new"))
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
    return Rule(where, name, command, env, tuple(tests), argv=argv)


def compile_reactor_rule(rtype: str, where: str, rule: Any) -> Rule:
    """Compile one drbd-reactor rule of type ``resource``, ``device``, ``peerdevice`` or ``connection``.

    Raises:
        ValueError: naming the key (``device[0].new.disk-state``) and the reason.
    """
    _, ids, fields = REACTOR[rtype]
    command, argv, name, env = _common(where, rule, (*_COMMON_KEYS, "event-type", "resource-name", *ids, "old", "new"))
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
    return Rule(where, name, command, env, tuple(tests), reactor=rtype, argv=argv)


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
    if options["max_queued"] < 1:
        raise ValueError(f"max_queued: must be at least 1, got {options['max_queued']}")
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


# -- running commands -------------------------------------------------------------------------

_DEFAULT_SIGNALS = tuple(s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))
"""Reset to their default action in the command, as a fork of the shell would leave them (Python ignores SIGPIPE)."""


def program_path(name: str, path: str) -> str:
    """Return the executable ``name`` found in ``path`` (the command's ``PATH``), or ``name`` itself.

    A name with a ``/`` is used as it is; one not found is returned unchanged, so that spawning
    it fails with the usual "No such file or directory".
    """
    if "/" in name:
        return name
    return shutil.which(name, path=path) or name


def close_inherited_fds() -> None:
    """Make every descriptor above 2 that this process inherited close-on-exec.

    ``posix_spawn`` closes nothing else (unlike ``subprocess``'s ``close_fds``): a command gets
    the descriptors without ``FD_CLOEXEC``. Everything the receiver opens itself has it (Python,
    libzmq and libuv open descriptors so); what it inherited may not (a plugin started by busd has
    copies of its stdin, stdout and stderr above 2), and this makes them so once, at start.
    """
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):  # the listing's own descriptor, closed by now
                if os.get_inheritable(fd):
                    os.set_inheritable(fd, False)


class Command:
    """One command started with ``posix_spawn`` in its own session; the event loop watches it.

    Its exit comes from a pidfd, its stdout and stderr from two pipes (the first ``OUTPUT_LIMIT``
    bytes of each are kept): no asyncio subprocess transport, no child watcher, no reader task.
    :attr:`done` is set once the command has exited and both pipes are closed, or ``OUTPUT_GRACE``
    seconds after the exit when a process that escaped the group still holds a pipe, or when it
    outlived SIGKILL by ``KILL_GRACE`` (a process in uninterruptible sleep: it is reaped later).
    """

    def __init__(self, argv: list[str], env: dict[str, str], devnull: int) -> None:
        self.loop = asyncio.get_running_loop()
        self.status: int | None = None
        self.timed_out = False
        self.stopping = False
        self.output = [b"", b""]
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            self.pid = os.posix_spawn(argv[0], argv, env, setsid=True, setsigmask=(), setsigdef=_DEFAULT_SIGNALS,
                                      file_actions=[(os.POSIX_SPAWN_DUP2, devnull, 0),
                                                    (os.POSIX_SPAWN_DUP2, out_w, 1),
                                                    (os.POSIX_SPAWN_DUP2, err_w, 2)])
        except BaseException:
            os.close(out_r)
            os.close(err_r)
            raise
        finally:
            os.close(out_w)
            os.close(err_w)
        self.done: asyncio.Future[None] = self.loop.create_future()
        self.fds = [out_r, err_r]
        for i, fd in enumerate(self.fds):
            os.set_blocking(fd, False)
            self.loop.add_reader(fd, self._read, i)
        self.timers: list[asyncio.TimerHandle] = []
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except OSError:  # a kernel before 5.3: one thread waits for the exit
            self.pidfd = -1
            waiter = self.loop.run_in_executor(None, os.waitpid, self.pid, 0)
            waiter.add_done_callback(lambda f: self._exited(f.result()[1]) if not f.exception() else None)
        else:
            self.loop.add_reader(self.pidfd, self._reap)

    def _read(self, i: int) -> None:
        if self._drain(i) == 0:
            self._close(i)
            if self.status is not None and self.fds == [-1, -1]:
                self._finish()

    def _drain(self, i: int) -> int | None:
        """Read what a pipe holds: the bytes read, 0 at its end, None when nothing is there now."""
        try:
            chunk = os.read(self.fds[i], 65536)
        except BlockingIOError:
            return None
        except OSError:
            return 0
        kept = self.output[i]
        if len(kept) < OUTPUT_LIMIT:
            self.output[i] = kept + chunk[: OUTPUT_LIMIT - len(kept)]
        return len(chunk)

    def _close(self, i: int) -> None:
        fd = self.fds[i]
        if fd >= 0:
            self.loop.remove_reader(fd)
            os.close(fd)
            self.fds[i] = -1

    def _reap(self) -> None:
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid, status = self.pid, 255 << 8  # reaped by someone else: its status is lost
        if pid == 0:
            return
        self.loop.remove_reader(self.pidfd)
        os.close(self.pidfd)
        self.pidfd = -1
        self._exited(status)

    def _exited(self, wait_status: int) -> None:
        self.status = os.waitstatus_to_exitcode(wait_status)
        if self.stopping:
            self.signal(signal.SIGKILL)  # what it started goes too, even when it exited on SIGTERM
        if self.fds == [-1, -1]:
            self._finish()
        else:
            self.timers.append(self.loop.call_later(OUTPUT_GRACE, self._finish))

    def _finish(self) -> None:
        for i in (0, 1):
            if self.fds[i] >= 0:
                self._drain(i)  # what is buffered still counts; a writer that escaped the group is not waited for
                self._close(i)
        for timer in self.timers:
            timer.cancel()
        if not self.done.done():
            self.done.set_result(None)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the command's process group."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def expire(self) -> None:
        """The command ran out of time: stop it (its group gets SIGKILL even if it exits on SIGTERM)."""
        self.timed_out = True
        self.stop(KILL_GRACE)

    def stop(self, grace: float) -> None:
        """SIGTERM to the group, SIGKILL ``grace`` seconds later (or at the exit); give up ``grace`` s after that."""
        self.stopping = True
        self.signal(signal.SIGTERM)
        self.timers.append(self.loop.call_later(grace, self._kill, grace))

    def _kill(self, grace: float) -> None:
        if self.status is None:
            self.signal(signal.SIGKILL)
            self.timers.append(self.loop.call_later(grace, self._give_up))

    def _give_up(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def text(self, i: int) -> str:
        """stdout (0) or stderr (1) as text."""
        return self.output[i].decode("utf-8", "backslashreplace").rstrip()


@dataclass
class Action:
    """A rule's command to run for one event, with its environment."""

    rule: Rule
    env: dict[str, str]
    event: Event


def resource_key(event: Event) -> str:
    """The queue of an event's actions: its DRBD resource, else its device (one queue for events without)."""
    ext = event.get("extensions")
    resource = ext.get("resource") if isinstance(ext, dict) else None
    if event.get("system") == "drbd" and isinstance(resource, str):
        return "drbd:" + resource
    return "dev:" + str(event.get("dev_name", ""))


# -- the receiver -----------------------------------------------------------------------------

class Umh(Receiver):
    """Run the commands of the rules an event matches, in order per resource."""

    async def setup(self) -> None:
        """Compile the rules, open /dev/null and start the workers."""
        self.rules = compile_rules(self.options)
        self.bus_rules = [r for r in self.rules if r.reactor is None]
        self.reactor_rules = [r for r in self.rules if r.reactor is not None]
        self.last_line: tuple[Any, Any] | None = None
        self.devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        close_inherited_fds()
        self.queues: dict[str, deque[Action]] = {}
        """Actions not started yet, per resource; a resource is a key while it has one queued or running."""
        self.ready: asyncio.Queue[str] = asyncio.Queue()
        """Resources with an action queued and none running, in the order they became ready."""
        self.room = asyncio.Semaphore(self.options["max_queued"])
        self.running: dict[int, Command] = {}
        self.stopping = False
        self.workers = [asyncio.create_task(self._worker(), name=f"umh-worker-{i}")
                        for i in range(self.options["max_concurrent"])]
        self.log.info("umh_rules", bus_rules=len(self.bus_rules), reactor_rules=len(self.reactor_rules),
                      without_shell=sum(r.argv is not None for r in self.rules))

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
        """Queue the command of every rule the event matches (waiting while ``max_queued`` wait already)."""
        base: dict[str, str] | None = None
        key = ""
        for rule in self.bus_rules:
            if rule.matches(event):
                if base is None:
                    base, key = {**COMMON_ENV, **bus_env(event), **event_drbd_env(event)}, resource_key(event)
                await self.submit(key, Action(rule, {**base, **rule.env}, event))
        if not self.reactor_rules:
            return
        for update in self.reactor_updates(event):
            for rule in self.reactor_rules:
                if rule.reactor == update.rtype and rule.matches(update.data):
                    kind = REACTOR[update.rtype][0]
                    env = {**COMMON_ENV, **bus_env(event), **drbd_env(
                        kind, update.resource_name, update.old, update.new, update.state, update.volume,
                        update.peer_node_id)}
                    await self.submit("drbd:" + update.resource_name, Action(rule, {**env, **rule.env}, event))

    async def submit(self, key: str, action: Action) -> None:
        """Queue an action behind the earlier ones of its resource (the event loop goes on meanwhile)."""
        await self.room.acquire()
        queue = self.queues.get(key)
        if queue is None:
            self.queues[key] = deque((action,))
            self.ready.put_nowait(key)
        else:
            queue.append(action)  # the resource is queued or running already: its worker takes it next

    async def _worker(self) -> None:
        """Run the next action of a ready resource; then hand the resource back if more wait."""
        while True:
            key = await self.ready.get()
            if self.stopping:
                return
            queue = self.queues[key]
            action = queue.popleft()
            self.room.release()
            try:
                await self.execute(action)
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("command_error", rule=action.rule.name)
            if self.stopping:
                return
            if queue:
                self.ready.put_nowait(key)  # behind the resources that waited meanwhile
            else:
                del self.queues[key]

    async def execute(self, action: Action) -> None:
        """Run one command (without a shell when its rule allows) in its own session; log its end and output."""
        rule, event = action.rule, action.event
        if rule.argv is not None:
            argv = [program_path(rule.argv[0], action.env.get("PATH", "")), *rule.argv[1:]]
        else:
            argv = ["/bin/sh", "-c", rule.command]
        started = time.monotonic()
        try:
            cmd = Command(argv, action.env, self.devnull)
        except (OSError, ValueError) as exc:
            self.count("commands_failed")
            self.log.error("command_failed_to_start", rule=rule.name, event_id=event.get("event_id"),
                           event_type=event.get("event_type"), command=rule.command, error=str(exc))
            return
        self.running[cmd.pid] = cmd
        self.count("commands_started")
        self.log.debug("command_started", rule=rule.name, event_id=event.get("event_id"), command=rule.command,
                       pid=cmd.pid)
        timeout = self.options["timeout"]
        if timeout:
            cmd.timers.append(cmd.loop.call_later(timeout, cmd.expire))
        try:
            await cmd.done
        finally:
            del self.running[cmd.pid]
        info = {"rule": rule.name, "event_id": event.get("event_id"), "event_type": event.get("event_type"),
                "command": rule.command, "pid": cmd.pid, "stdout": cmd.text(0), "stderr": cmd.text(1)}
        if cmd.timed_out:
            self.count("commands_timed_out")
            self.count("commands_failed")
            self.log.warning("command_timeout", timeout=timeout, **info)
            return
        status = cmd.status
        info.update(status=status, seconds=round(time.monotonic() - started, 3))
        if status is not None and status < 0:
            info["signal"] = signal.Signals(-status).name
        if status == 0:
            self.log.info("command_done", **info)
        else:
            self.count("commands_failed")
            self.log.warning("command_done", **info)

    async def teardown(self) -> None:
        """Start nothing more; give running commands ``EXIT_GRACE``, then stop them (about 1 s in all)."""
        if not hasattr(self, "workers"):
            return  # setup did not get that far
        self.stopping = True
        not_run = [a for queue in self.queues.values() for a in queue]
        if not_run:
            self.log.warning("commands_not_run", commands=len(not_run),
                             event_ids=[a.event.get("event_id") for a in not_run[:10]])
        for queue in self.queues.values():
            queue.clear()
        if self.running:
            _, pending = await asyncio.wait([c.done for c in self.running.values()], timeout=EXIT_GRACE)
            if pending:
                for cmd in list(self.running.values()):
                    if not cmd.done.done():
                        self.log.warning("command_killed_at_exit", pid=cmd.pid)
                        cmd.stop(EXIT_KILL_GRACE)
                await asyncio.wait(pending, timeout=2 * EXIT_KILL_GRACE)
        for worker in self.workers:
            worker.cancel()
        await asyncio.gather(*self.workers, return_exceptions=True)
        os.close(self.devnull)


if __name__ == "__main__":
    run(Umh)

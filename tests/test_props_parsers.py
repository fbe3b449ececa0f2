"""Property tests (hypothesis) on the built-in parsers' ``handle()``, driven in process as busd's
parser loop drives it (:meth:`bus.plugin.Parser.main`): an event as the broker delivers it (valid
for :func:`bus.event.normalize`) in, events out.

Garbage (random text in ``msg``, real kernel, DRBD, GlusterFS and PostgreSQL events mangled, with
extensions of the wrong type or missing) gives valid events or :class:`BadInput`; any other
exception would be counted as ``handle_failed``. The same for ``tick()`` after each. And the good input
after the garbage gives (at least) the events it gives a fresh parser.

Every parser is driven in process: the kernel parsers on a fake sysfs, the others with ``setup()``
run as busd runs it (no state files: no ``BUS_RUNTIME_DIR``).
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import tomllib
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fakesys import FakeSys
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from kernel_input import kmsg_events, line_events, make, sample, uevent
from test_props_sources import DRBD_LINES, GLUSTER_LINES, mutated

from bus.event import normalize
from bus.exceptions import BadInput, EventError
from bus.plugin import Parser
from collectors.drbd import BATCH_TYPE, Drbd, parse_line
from parsers.block import Block
from parsers.drbd import DrbdParser
from parsers.fs import Fs
from parsers.gluster import Gluster
from parsers.lvm import Lvm
from parsers.mdraid import Mdraid
from parsers.multipath import Multipath
from parsers.pattern import Pattern
from parsers.postgres import PostgresParser
from parsers.scsi import Scsi

ROOT = Path(__file__).resolve().parent.parent
LVM_TEXT = """\
[92841.221] device-mapper: thin: 253:2: reached low water mark for data device: sending event.
Dec 04 17:23:53 pve kernel: device-mapper: thin: 253:2: switching pool to out-of-data-space (queue IO) mode
device-mapper: thin: 253:2: no free data space available.
"""
"""Thin pool lines in the forms tests/test_lvm.py uses (the samples hold none)."""
KERNEL_TEXT = "\n".join([*(sample(n) for n in ("dmesg-fs.txt", "dmesg-md.txt", "dmesg-multipath.txt",
                                               "dmesg-scsi-medium.txt")), LVM_TEXT])
KERNEL_SEEDS = [ln for ln in KERNEL_TEXT.splitlines() if ln.strip()] + \
    [ln for ln in sample("kmsg-scsi-cascade.kmsg").splitlines() if ";" in ln]


def pattern_rules() -> list[dict[str, Any]]:
    """The example rules of the ``pattern`` parser in conf/busd.toml."""
    text = (ROOT / "conf" / "busd.toml").read_text()
    start = text.index("builtin = \"pattern\"")
    block = text[start:text.index("\n]\n", start) + 3]
    rules: list[dict[str, Any]] = tomllib.loads(block.split("\n", 2)[2])["rules"]
    return rules


def env(builtin: str, **options: Any) -> dict[str, str]:
    """The environment busd gives a built-in plugin (outside busd: no sockets, no state files)."""
    return {"BUS_PLUGIN": builtin, "BUS_HOSTNAME": "testhost",
            "BUS_PLUGIN_CONFIG": json.dumps({"builtin": builtin, **options})}


@pytest.fixture(scope="module", name="fake")
def fixture_fake(tmp_path_factory: pytest.TempPathFactory) -> FakeSys:
    """A sysfs with the devices of the samples (a disk, a partition, a multipath map, an md array, a thin pool)."""
    fake = FakeSys(tmp_path_factory.mktemp("sys"))
    fake.disk("sdf", "8:80", wwid="naa.6001405f1e2d3c4b", hctl="6:0:0:0")
    fake.disk("sdc", "8:32", wwid="naa.5000c500a1b2c3d4", hctl="18:0:0:0")
    fake.partition("sdc", 1, "8:33", fs_uuid="0b1e0f6c-0000-4000-8000-000000000001")
    fake.disk("sdd", "8:48", wwid="naa.5000c500a1b2c3d5", hctl="3:0:0:0")
    fake.dm("dm-0", "253:0", name="mpatha", uuid="mpath-36001405f1e2d3c4b")
    fake.slaves("dm-0", "sdd")
    fake.dm("dm-2", "253:2", name="vg-pool-tpool", uuid="LVM-" + "a" * 64 + "-tpool")
    fake.md("md0", "9:0", "c5f9d2f3:1e5c8a40:aa0f3b14:0f1e2d3c")
    return fake


Factory = Callable[[], Parser]


def factories(fake: FakeSys) -> dict[str, Factory]:
    """Every built-in parser, built as busd starts it (setup done), with its defaults or its test options."""
    def setup(parser: Parser) -> Parser:
        asyncio.run(parser.setup())
        return parser

    # a correlation window of a nanosecond: the groups garbage opens are closed by the next tick(), whose
    # events (made of what the garbage left in the group) are checked too
    window = 1e-9
    return {
        "block": lambda: make(Block, "block", fake),
        "scsi": lambda: make(Scsi, "scsi", fake, correlation_window=window),
        "fs": lambda: make(Fs, "fs", fake, correlation_window=window),
        "mdraid": lambda: make(Mdraid, "mdraid", fake, correlation_window=window),
        "lvm": lambda: make(Lvm, "lvm", fake, correlation_window=window),
        "multipath": lambda: make(Multipath, "multipath", fake),
        "drbd": lambda: setup(DrbdParser(env("drbd"))),
        "gluster": lambda: setup(Gluster(env("gluster"))),
        "pattern": lambda: setup(Pattern(env("pattern", rules=pattern_rules()))),
        "postgres": lambda: setup(PostgresParser(env("postgres"))),
    }


# -- the inputs: real events of each source, then mangled ----------------------------------------


def drbd_events() -> list[dict[str, Any]]:
    """The drbd collector's raw events of the sample lines, and one batch of them."""
    collector = Drbd(env("drbd"))
    collector.run_id = "run-1"
    out = []
    for text in DRBD_LINES:
        try:
            out.append(collector.line_event(text, parse_line(text)))
        except BadInput:
            continue
    out.append(collector.event("drbd", BATCH_TYPE, f"{len(DRBD_LINES)} events2 lines",
                               extensions={"lines": DRBD_LINES[:40], "run": "run-1"}))
    return out


def gluster_events() -> list[dict[str, Any]]:
    """Raw ``GLUSTER_EVENT`` events as the gluster collector makes them from the sample datagrams."""
    out = []
    for text in GLUSTER_LINES:
        ts, index, message = text.split(" ", 2)
        out.append({"system": "gluster", "event_type": "GLUSTER_EVENT", "msg": text, "timestamp": float(ts),
                    "extensions": {"index": int(index), "message": message, "ts": int(ts),
                                   "nodeid": "95cd599c-5d87-43c1-8fba-b12821fd41b6", "sender": "10.0.0.1"}})
    return out


def postgres_events() -> list[dict[str, Any]]:
    """The postgres collector's three kinds of raw events (a primary, a standby, down, a repmgr row)."""
    repmgr = [{"node_id": 1, "node_name": "node1", "type": "primary", "active": True, "upstream_node_id": None}]
    base = {"interval": 0.5, "system_identifier": "7000000000000000001", "timeline": 1, "lsn": "0/3000060",
            "repmgr_nodes": repmgr, "replication": [], "node_id": 1}
    return [
        {"system": "postgres", "event_type": "POSTGRES_STATE", "dev_name": "node1",
         "extensions": {**base, "node_name": "node1", "role": "primary", "in_recovery": False, "streaming": False,
                        "lag_seconds": None, "lag_bytes": None,
                        "replication": [{"application_name": "node2", "replay_lag": 0.5, "replay_lag_bytes": 10}]}},
        {"system": "postgres", "event_type": "POSTGRES_STATE", "dev_name": "node2",
         "extensions": {**base, "node_name": "node2", "role": "standby", "in_recovery": True, "streaming": True,
                        "lag_seconds": 1.5, "lag_bytes": 100, "node_id": 2,
                        "wal_receiver": {"status": "streaming", "sender_host": "127.0.0.1", "sender_port": 5432}}},
        {"system": "postgres", "event_type": "POSTGRES_DOWN", "dev_name": "node2",
         "extensions": {"node_name": "node2", "reason": "unreachable", "error": "timeout", "interval": 0.5}},
        {"system": "postgres", "event_type": "POSTGRES_REPMGR_EVENT", "dev_name": "node1",
         "extensions": {"node_name": "node1", "event": "standby_promote", "event_node_id": 2,
                        "event_node_name": "node2", "successful": True, "event_time": "2024-05-02 10:00:00",
                        "details": "promoted", "system_identifier": "7000000000000000001"}},
    ]


KERNEL_EVENTS = [*kmsg_events(sample("kmsg-scsi-cascade.kmsg")), *line_events(KERNEL_TEXT)]
UEVENTS = [
    uevent({"ACTION": "change", "DEVPATH": "/devices/virtual/block/dm-0", "SUBSYSTEM": "block", "DM_ACTION":
            "PATH_FAILED", "DM_PATH": "8:48", "DM_NR_VALID_PATHS": "0", "DM_NAME": "mpatha", "DEVNAME": "/dev/dm-0",
            "DM_UUID": "mpath-36001405f1e2d3c4b"}),
]
OWN_SEEDS = {"drbd": drbd_events(), "gluster": gluster_events(), "postgres": postgres_events(),
             "multipath": KERNEL_EVENTS + UEVENTS}
SEEDS: list[dict[str, Any]] = [*KERNEL_EVENTS, *UEVENTS, *OWN_SEEDS["drbd"], *OWN_SEEDS["gluster"],
                               *OWN_SEEDS["postgres"]]

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
           | st.text(max_size=10))
any_value = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                         | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
EXTENSION_KEYS = ("seq", "level", "action", "object", "fields", "old", "run", "lines", "index", "message", "ts",
                  "nodeid", "sender", "node_name", "in_recovery", "timeline", "lag_seconds", "lag_bytes",
                  "repmgr_nodes", "replication", "interval", "node_id", "event_node_id", "event_node_name", "successful",
                  "wal_receiver", "DM_ACTION", "DM_PATH", "DM_NR_VALID_PATHS", "DM_NAME", "DM_UUID", "DEVNAME", "line")
EVENT_TYPES = ("KMSG", "LINE", "UEVENT", "DRBD_EVENTS2", BATCH_TYPE, "GLUSTER_EVENT", "POSTGRES_STATE",
               "POSTGRES_DOWN", "POSTGRES_REPMGR_EVENT")


@st.composite
def garbage(draw: st.DrawFn, own: list[dict[str, Any]]) -> dict[str, Any]:
    """A real raw event (mostly one of the parser's own sources) mangled: its msg random or a mutated real
    line, extensions (or values nested in them: ``fields.name``, ``replication[0].replay_lag``) replaced
    by any value or removed, unknown keys added, its type swapped."""
    event = copy.deepcopy(draw(st.sampled_from(own) if draw(st.integers(0, 4)) else st.sampled_from(SEEDS)))
    ext = event.setdefault("extensions", {})
    for _ in range(draw(st.integers(0, 4))):
        what = draw(st.sampled_from(["msg", "type", "set", "set", "drop", "nested", "nested"]))
        if what == "msg":
            event["msg"] = draw(st.text(max_size=60) | mutated(KERNEL_SEEDS).map(lambda b: b.decode("utf-8", "replace"))
                                | mutated(DRBD_LINES).map(lambda b: b.decode("utf-8", "replace")))
        elif what == "type":
            event["event_type"] = draw(st.sampled_from(EVENT_TYPES))
        elif what == "set":
            ext[draw(st.sampled_from(sorted(ext) or ["x"]) | st.sampled_from(EXTENSION_KEYS) | st.text(max_size=5))] = \
                draw(any_value)
        elif what == "drop" and ext:
            del ext[draw(st.sampled_from(sorted(ext)))]
        else:  # down one or two levels into a map or a list, and replace what is there
            target: Any = ext
            for _ in range(draw(st.integers(1, 2))):
                inner = [v for v in (target.values() if isinstance(target, dict) else target)
                         if isinstance(v, (dict, list)) and v]
                if not inner:
                    break
                target = draw(st.sampled_from(inner))
            if target is not ext and target:
                key = draw(st.sampled_from(sorted(target) if isinstance(target, dict) else range(len(target))))
                target[key] = draw(any_value)
    event["event_id"] = "00000000-0000-4000-8000-0000000000aa"
    try:
        return normalize(event, hostname="testhost", source=event["system"])
    except EventError:  # the broker would not deliver it
        assume(False)
        raise


def outputs(result: Any) -> list[dict[str, Any]]:
    """What handle() returned, as busd's parser loop collects it: None, one event or an iterable of them."""
    if result is None:
        return []
    return [result] if isinstance(result, dict) else list(result)


def accepted(parser: Parser, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check outputs as busd's parser loop sends them: each one the broker accepts (else the test fails)."""
    for out in events:
        out = dict(out, kind="synthetic", source=parser.name, event_id="00000000-0000-4000-8000-0000000000bb")
        out.setdefault("hostname", parser.hostname)
        normalize(out, hostname="testhost")
    return events


def delivered(parser: Parser, event: dict[str, Any]) -> list[dict[str, Any]]:
    """Handle one event as busd's parser loop does; return its outputs, each one the broker accepts.

    Raises:
        BadInput: what handle() refused the event with.
    """
    parser.delivery += 1
    events = outputs(parser.handle(copy.deepcopy(event)))
    parser.hold()
    return accepted(parser, events)


def ticked(parser: Parser) -> list[dict[str, Any]]:
    """Call tick() an hour from now (open groups time out, silent nodes are stale); its outputs are accepted."""
    return accepted(parser, outputs(parser.tick(time.time() + 3600)))


def handled(parser: Parser, event: dict[str, Any]) -> bool:
    """Whether handle() took the event (valid outputs) rather than refusing it (a BadInput naming the defect)."""
    try:
        delivered(parser, event)
    except BadInput as exc:
        assert exc.kind and exc.detail, exc
        return False
    return True


# -- the good input after the garbage ------------------------------------------------------------


def good_input(name: str) -> dict[str, Any]:
    """An event each parser turns into events at once, about a device no sample names."""
    kernel = {
        "block": "print_req_error: I/O error, dev sdq, sector 9984",
        "scsi": "\n".join(sample("dmesg-scsi-medium.txt").replace("sdc", "sdq").replace("18:0:0:0", "19:0:0:0")
                          .splitlines()[:5]),
        "fs": "EXT4-fs (dm-9): mounted filesystem with ordered data mode. Opts: (null)",
        "mdraid": "[73913.109074] md: md9: resync done.",
        "lvm": "device-mapper: thin: 253:9: reached low water mark for data device: sending event.",
        "multipath": "device-mapper: multipath: Failing path 8:240.",
        "pattern": "device-mapper: multipath: Failing path 8:240",
    }
    event: dict[str, Any]
    if name in kernel:
        event = line_events(kernel[name])[0] if name != "scsi" else \
            {"system": "kmsg", "event_type": "KMSG", "msg": kernel[name], "extensions": {"seq": 1}}
    elif name == "drbd":
        event = drbd_events()[0] | {"msg": "create resource name:goodres role:Secondary"}
        event["extensions"] = {"action": "create", "object": "resource", "fields": {"name": "goodres",
                                                                                      "role": "Secondary"},
                               "run": "run-1"}
    elif name == "gluster":
        event = gluster_events()[0] | {"msg": "1468303352 2 name=goodvol"}
        event["extensions"] = {"index": 2, "message": "name=goodvol", "ts": 1468303352, "sender": "10.0.0.9"}
    else:  # a node going down: what the other nodes' garbage did to the cluster view cannot change it
        event = postgres_events()[2]
        event["extensions"] = dict(event["extensions"], node_name="goodnode")
        event["dev_name"] = "goodnode"
    event["event_id"] = "00000000-0000-4000-8000-0000000000cc"
    return normalize(event, hostname="testhost", source=event["system"])


def summaries(events: list[dict[str, Any]]) -> Counter[tuple[str, str, str]]:
    return Counter((e["event_type"], e["severity"], e["dev_name"]) for e in events)


PARSERS = ("block", "scsi", "fs", "mdraid", "lvm", "multipath", "drbd", "gluster", "pattern", "postgres")


@pytest.mark.parametrize("name", PARSERS)
def test_each_parser_has_a_good_input(fake: FakeSys, name: str) -> None:
    """The good input of the properties below does give events (else they would prove nothing)."""
    assert delivered(factories(fake)[name](), good_input(name))


@pytest.mark.parametrize("name", PARSERS)
def test_the_real_events_of_each_source_are_handled(fake: FakeSys, name: str) -> None:
    """Unmangled, every seed event is handled without a refusal by every parser (they are what collectors
    send), and the parser's own seeds give it events to emit (so the garbage made of them reaches its code)."""
    parser = factories(fake)[name]()
    produced = []
    for event in SEEDS:
        event = normalize(dict(event, event_id="00000000-0000-4000-8000-0000000000dd"), hostname="testhost",
                          source=event["system"])
        produced += delivered(parser, event) + ticked(parser)
    assert produced


_expected: dict[str, Counter[tuple[str, str, str]]] = {}


@pytest.mark.parametrize("name", PARSERS)
@settings(max_examples=60, suppress_health_check=[HealthCheck.filter_too_much])
@given(data=st.data())
def test_garbage_gives_valid_events_or_bad_input_and_the_next_good_input_is_handled(
        fake: FakeSys, name: str, data: st.DataObject) -> None:
    """For each parser: mangled events of every source give events the broker accepts or raise BadInput,
    never another exception, and so does the tick() after each; the good input after them gives at least
    what it gives a fresh parser."""
    make_parser = factories(fake)[name]
    good = good_input(name)
    if name not in _expected:
        _expected[name] = summaries(delivered(make_parser(), good))
    parser = make_parser()
    for event in data.draw(st.lists(garbage(OWN_SEEDS.get(name, KERNEL_EVENTS)), min_size=1, max_size=4)):
        handled(parser, event)
        ticked(parser)
    got = summaries(delivered(parser, good))
    assert not _expected[name] - got, (_expected[name], got)


def _with(seed: dict[str, Any], **ext: Any) -> dict[str, Any]:
    event = copy.deepcopy(seed)
    event["extensions"].update(ext)
    event["event_id"] = "00000000-0000-4000-8000-0000000000ee"
    return normalize(event, hostname="testhost", source=event["system"])


DRBD_HELPER = next(e for e in OWN_SEEDS["drbd"] if e["extensions"].get("object") == "helper")
PG_PRIMARY, PG_STANDBY = OWN_SEEDS["postgres"][:2]


@pytest.mark.parametrize(("name", "event"), [
    # found by the property above: each was a TypeError/ValueError/AttributeError, counted as handle_failed
    ("drbd", _with(DRBD_HELPER, fields={"name": [], "peer-node-id": "2", "helper": "disconnected"})),
    ("drbd", _with(DRBD_HELPER, action=["call"])),
    ("drbd", _with(DRBD_HELPER, old="x")),
    ("postgres", _with(PG_STANDBY, interval="abc")),
    ("postgres", _with(PG_STANDBY, lag_seconds="x")),
    ("postgres", _with(PG_STANDBY, repmgr_nodes=[None])),
    ("postgres", _with(PG_STANDBY, wal_receiver=True)),
    ("postgres", _with(PG_PRIMARY, replication=[{"application_name": "node2", "replay_lag": "1 s"}])),
])
def test_regressions_are_refused_with_bad_input(fake: FakeSys, name: str, event: dict[str, Any]) -> None:
    """Extensions of the wrong type are refused as BadInput, and the parser takes its good input after."""
    parser = factories(fake)[name]()
    assert not handled(parser, event)
    assert summaries(delivered(parser, good_input(name))) == summaries(delivered(factories(fake)[name](),
                                                                                 good_input(name)))

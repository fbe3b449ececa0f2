"""DRBD: the events2 line parser, the ``drbd`` collector and the state-tracking ``drbd`` parser.

End-to-end tests run a real busd whose ``drbd`` collector runs ``tests/plugins/drbd_replay.py`` (a
stand-in for ``drbdsetup events2 --poll``) on the shared samples and on the scenarios in
``tests/data/drbd/``, and assert the exact synthetic events.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Bus, plugin_cmd, read_lines, wait_for

from bus.config import load
from bus.event import Event
from bus.exceptions import BadInput, ConfigError
from collectors.drbd import Drbd, Line, parse_line, parse_timestamp
from parsers.drbd import DrbdParser, status_json

SAMPLES = ROOT.parent / "shared" / "samples"
DATA = Path(__file__).resolve().parent / "data" / "drbd"
END = ("DRBD_HELPER_CALLED", "info", "END")
"""The last event of every scenario (``call helper name:END``): nothing unexpected came before it."""


def env(builtin: str, **options: Any) -> dict[str, str]:
    return {"BUS_PLUGIN": "drbd", "BUS_PLUGIN_CONFIG": json.dumps({"builtin": builtin, **options})}


def feed(parser: DrbdParser, lines: list[str], run: str = "run-1") -> list[Event]:
    """Turn lines into the collector's raw events and hand them to the parser; return its events."""
    collector = Drbd(env("drbd"))
    collector.run_id = run
    out: list[Event] = []
    for text in lines:
        if text.strip() and not text.startswith("#"):
            out += parser.handle(collector.line_event(text, parse_line(text)))
    return out


def brief(events: list[Event]) -> list[tuple[str, str, str]]:
    return [(e["event_type"], e["severity"], e["dev_name"]) for e in events]


# -- the line parser ---------------------------------------------------------------------------

def test_every_object_and_action() -> None:
    line = parse_line("exists resource name:foo role:Primary suspended:yes write-ordering:foo may_promote:yes "
                      "promotion_score:23")
    assert (line.action, line.object, line.timestamp, line.old) == ("exists", "resource", None, {})
    assert line.fields == {"name": "foo", "role": "Primary", "suspended": "yes", "write-ordering": "foo",
                           "may_promote": "yes", "promotion_score": "23"}
    device = parse_line("change device name:foo volume:1 minor:1 disk:Attaching backing_dev:/dev/sda1 client:no")
    assert (device.object, device.fields["backing_dev"], device.dev_name()) == ("device", "/dev/sda1", "foo/1")
    conn = parse_line("create connection name:test peer-node-id:0 conn-name:K14BoxThree connection:StandAlone role:Unknown")
    assert (conn.action, conn.object, conn.fields["conn-name"]) == ("create", "connection", "K14BoxThree")
    assert conn.dev_name() == "test"
    pd = parse_line("destroy peer-device name:test peer-node-id:0 conn-name:K14BoxThree volume:0")
    assert (pd.action, pd.object, pd.dev_name()) == ("destroy", "peer-device", "test/0")
    assert parse_line("exists -") == Line("exists", "-")
    call = parse_line("call helper name:r peer-node-id:1 helper:split-brain")
    response = parse_line("response helper name:t peer-node-id:2 conn-name:d helper:disconnected status:0")
    assert (call.action, call.object, call.fields["helper"]) == ("call", "helper", "split-brain")
    assert (response.action, response.fields["status"]) == ("response", "0")


def test_values_with_colons_timestamps_old_new_and_unknown_keys() -> None:
    path = parse_line("change path name:foo peer-node-id:3 conn-name:bar local:ipv4:1.2.3.4:7020 "
                      "peer:ipv6:[fd00::5]:7020 established:yes")
    assert path.fields["local"] == "ipv4:1.2.3.4:7020" and path.fields["peer"] == "ipv6:[fd00::5]:7020"
    stamped = parse_line("2026-09-29T14:15:14.414179+08:00 change connection name:r peer-node-id:2 connection:Connecting")
    assert stamped.timestamp == "2026-09-29T14:15:14.414179+08:00" and stamped.fields["connection"] == "Connecting"
    utc = datetime(2026, 9, 29, 6, 15, 14, 414179, tzinfo=UTC).timestamp()
    assert parse_timestamp(stamped.timestamp) == pytest.approx(utc, abs=1e-6)
    assert parse_timestamp("2026-09-29T06:15:14,414179Z") == pytest.approx(utc, abs=1e-6)
    assert parse_timestamp("2026-13-45T99:99:99") is None
    arrow = parse_line("change resource name:r0 role:Secondary->Primary may_promote:yes->no")
    assert arrow.fields == {"name": "r0", "role": "Primary", "may_promote": "no"}
    assert arrow.old == {"role": "Secondary", "may_promote": "yes"}
    unknown = parse_line("exists resource xxx:bla name:foo future-key:1:2 empty:")
    assert unknown.fields == {"xxx": "bla", "name": "foo", "future-key": "1:2", "empty": ""}


@pytest.mark.parametrize(("text", "kind"), [
    ("hello world", "unknown_action"),
    ("2026-09-29T14:15:14+08:00", "unknown_action"),
    ("", "unknown_action"),
    ("change", "unknown_object"),
    ("change disk name:r0", "unknown_object"),
    ("change - name:r0", "unknown_object"),
    ("call resource name:r0", "unknown_object"),
    ("change helper name:r0 helper:x", "unknown_object"),
    ("change resource name:r0 role", "bad_field"),
    ("change resource name:r0 :Primary", "bad_field"),
    ("change resource role:Primary", "missing_key"),
    ("change device name:r0 disk:UpToDate", "missing_key"),
    ("change peer-device name:r0 volume:0", "missing_key"),
    ("change path name:r0 peer-node-id:1 local:ipv4:1.2.3.4:7000", "missing_key"),
    ("call helper name:r0", "missing_key"),
    ("change device name:r0 volume:zero", "bad_integer"),
    ("change device name:r0 volume:0 minor:x", "bad_integer"),
    ("response helper name:r0 helper:fence-peer status:ok", "bad_integer"),
])
def test_garbage_is_refused_with_its_kind(text: str, kind: str) -> None:
    with pytest.raises(BadInput) as exc:
        parse_line(text)
    assert exc.value.kind == kind


def test_raw_event_shape() -> None:
    collector = Drbd(env("drbd"))
    collector.run_id = "abc-1"
    text = "2024-05-02T10:00:00.5+00:00 change connection name:r0 peer-node-id:1 connection:Connected->TearDown"
    event = collector.line_event(text, parse_line(text))
    assert (event["system"], event["kind"], event["event_type"], event["severity"]) == ("drbd", "raw", "DRBD_EVENTS2", "info")
    assert (event["msg"], event["dev_name"], event["dev_wwid"]) == (text, "r0", "drbd:r0")
    assert event["timestamp"] == pytest.approx(datetime(2024, 5, 2, 10, 0, 0, 500000, tzinfo=UTC).timestamp())
    assert event["extensions"] == {"action": "change", "object": "connection", "run": "abc-1",
                                   "timestamp": "2024-05-02T10:00:00.5+00:00", "old": {"connection": "Connected"},
                                   "fields": {"name": "r0", "peer-node-id": "1", "connection": "TearDown"}}
    end = collector.line_event("exists -", parse_line("exists -"))
    assert end["extensions"] == {"action": "exists", "object": "-", "fields": {}, "run": "abc-1"}
    assert (end["dev_name"], end["dev_wwid"]) == ("", "")


def test_collector_options_are_checked(tmp_path: Path) -> None:
    for table, message in ((' command = []', "plugins.c.command: must be a non-empty array"),
                           (' statistics_poll_interval = -1', "statistics_poll_interval: must be 0 or more"),
                           (' restart_delay = 0', "restart_delay: must be positive"),
                           (' poll = 3', "unknown key for built-in collector 'drbd'")):
        conf = tmp_path / "busd.toml"
        conf.write_text(f'[plugins.c]\ntype = "collector"\nbuiltin = "drbd"\n{table}\n')
        with pytest.raises(ConfigError, match=message):
            load(conf)
    conf.write_text('[plugins.c]\ntype = "collector"\nbuiltin = "drbd"\n[plugins.p]\ntype = "parser"\nbuiltin = "drbd"\n')
    cfg = load(conf)
    assert cfg.plugins["p"].filter.systems == frozenset({"drbd"}) and cfg.plugins["p"].filter.kinds == frozenset({"raw"})


def test_a_command_that_cannot_start_is_logged_and_retried_later() -> None:
    collector = Drbd(env("drbd", command=["/nonexistent/drbdsetup", "events2"]))
    asyncio.run(collector.run_once())
    assert collector.last_exit is not None and "No such file" in collector.last_exit["error"]
    assert (collector.runs, collector.pid) == (1, None)


# -- the parser, in process --------------------------------------------------------------------

DUMP = [
    "exists resource name:r0 role:Secondary suspended:no force-io-failures:no may_promote:no promotion_score:10101",
    "exists connection name:r0 peer-node-id:1 conn-name:beta connection:Connected role:Primary congested:no",
    "exists device name:r0 volume:0 minor:7 backing_dev:/dev/sdb disk:UpToDate client:no quorum:yes open:no size:1000",
    "exists peer-device name:r0 peer-node-id:1 conn-name:beta volume:0 replication:Established peer-disk:UpToDate "
    "peer-client:no resync-suspended:no received:0 sent:0 out-of-sync:0 pending:0 unacked:0",
    "exists path name:r0 peer-node-id:1 conn-name:beta local:ipv4:10.0.0.1:7000 peer:ipv4:10.0.0.2:7000 established:yes",
    "exists -",
]


def test_dump_gives_one_initial_state_and_statistics_give_nothing() -> None:
    parser = DrbdParser(env("drbd"))
    events = feed(parser, DUMP)
    assert brief(events) == [("DRBD_INITIAL_STATE", "info", "r0")]
    ext = events[0]["extensions"]
    assert (ext["object"], ext["action"], ext["old"], ext["resource"]) == ("resource", "exists", {}, "r0")
    assert ext["new"] == {"role": "Secondary", "suspended": False, "force_io_failures": False, "may_promote": False,
                          "promotion_score": 10101}
    stats = ["change device name:r0 volume:0 minor:7 disk:UpToDate read:10 written:20 al-writes:1 bm-writes:2 "
             "upper-pending:0 lower-pending:1 al-suspended:no blocked:no",
             "change peer-device name:r0 peer-node-id:1 conn-name:beta volume:0 replication:Established "
             "received:5 sent:6 out-of-sync:250 pending:1 unacked:2",
             "change connection name:r0 peer-node-id:1 conn-name:beta connection:Connected ap-in-flight:3 rs-in-flight:4"]
    assert feed(parser, stats) == []
    state = status_json("r0", parser.resources["r0"])
    assert state["devices"][0] == {"volume": 0, "minor": 7, "disk-state": "UpToDate", "client": False, "quorum": True,
                                   "open": False, "size": 1000, "backing-dev": "/dev/sdb", "read": 10, "written": 20,
                                   "al-writes": 1, "bm-writes": 2, "upper-pending": 0, "lower-pending": 1}
    conn = state["connections"][0]
    assert (conn["name"], conn["connection-state"], conn["peer-role"]) == ("beta", "Connected", "Primary")
    assert conn["ap-in-flight"] == 3
    assert conn["paths"] == [{"this_host": {"address": "10.0.0.1", "port": 7000, "family": "ipv4"},
                              "remote_host": {"address": "10.0.0.2", "port": 7000, "family": "ipv4"}, "established": True}]
    assert conn["peer_devices"][0]["out-of-sync"] == 250 and conn["peer_devices"][0]["percent-in-sync"] == 75.0


def test_severities() -> None:
    parser = DrbdParser(env("drbd"))
    feed(parser, DUMP)
    failure = feed(parser, ["change device name:r0 volume:0 disk:Failed", "change device name:r0 volume:0 disk:Diskless"])
    assert brief(failure) == [("DRBD_DISK_STATE_CHANGED", "error", "r0/0"), ("DRBD_DISK_STATE_CHANGED", "info", "r0/0")]
    assert failure[0]["extensions"]["minor"] == 7 and failure[0]["dev_wwid"] == "drbd:r0/0"
    planned = feed(parser, ["change device name:r0 volume:0 disk:Attaching", "change device name:r0 volume:0 disk:Diskless",
                            "change device name:r0 volume:0 disk:UpToDate", "change device name:r0 volume:0 disk:Detaching",
                            "change device name:r0 volume:0 disk:Diskless"])
    assert [e["severity"] for e in planned] == ["info", "error", "info", "info", "info"]  # a failed attach is an error
    peer = feed(parser, ["change peer-device name:r0 peer-node-id:1 volume:0 peer-disk:Outdated",
                         "change peer-device name:r0 peer-node-id:1 volume:0 peer-disk:UpToDate",
                         "change connection name:r0 peer-node-id:1 connection:Unconnected",
                         "change connection name:r0 peer-node-id:1 connection:Connecting",
                         "response helper name:r0 peer-node-id:1 helper:fence-peer status:5"])
    assert brief(peer) == [("DRBD_PEER_DISK_STATE_CHANGED", "warn", "r0/0"), ("DRBD_PEER_DISK_STATE_CHANGED", "info", "r0/0"),
                           ("DRBD_CONNECTION_STATE_CHANGED", "warn", "r0"), ("DRBD_CONNECTION_STATE_CHANGED", "info", "r0"),
                           ("DRBD_HELPER_CALLED", "warn", "r0")]
    assert (peer[2]["extensions"]["peer_node_id"], peer[2]["extensions"]["conn_name"]) == (1, "beta")
    assert (peer[4]["extensions"]["helper"], peer[4]["extensions"]["status"]) == ("fence-peer", 5)


def test_resync_done_needs_established_after_sync() -> None:
    parser = DrbdParser(env("drbd"))
    feed(parser, DUMP)
    start = "change peer-device name:r0 peer-node-id:1 volume:0 replication:SyncSource peer-disk:Inconsistent done:0.00"
    aborted = feed(parser, [start, "change peer-device name:r0 peer-node-id:1 volume:0 done:40.5",
                            "change peer-device name:r0 peer-node-id:1 volume:0 replication:Off peer-disk:DUnknown"])
    assert [e["event_type"] for e in aborted] == ["DRBD_REPLICATION_STATE_CHANGED", "DRBD_PEER_DISK_STATE_CHANGED"] * 2
    assert aborted[0]["extensions"]["new"]["done"] == 0.0 and aborted[2]["extensions"]["old"]["percent_in_sync"] == 40.5
    done = feed(parser, [start, "change peer-device name:r0 peer-node-id:1 volume:0 replication:Established "
                                "peer-disk:UpToDate done:100.00"])
    assert [e["event_type"] for e in done][-1] == "DRBD_RESYNC_DONE"
    assert done[-1]["extensions"]["direction"] == "source"
    assert done[-1]["extensions"]["state"]["connections"][0]["peer_devices"][0]["percent-in-sync"] == 100.0


def test_a_new_dump_reconciles() -> None:
    """drbdsetup restarted: changes made meanwhile are reported, objects gone are destroyed."""
    parser = DrbdParser(env("drbd"))
    feed(parser, [*DUMP[:-1], "exists resource name:r9 role:Secondary", "exists -"])
    again = feed(parser, [DUMP[0].replace("Secondary", "Primary"), DUMP[2], "exists -"], run="run-2")
    assert brief(again) == [("DRBD_ROLE_CHANGED", "info", "r0"), ("DRBD_CONNECTION_DESTROYED", "info", "r0"),
                            ("DRBD_RESOURCE_DESTROYED", "info", "r9"), ("DRBD_INITIAL_STATE", "info", "r0")]
    assert again[0]["extensions"]["action"] == "exists"
    assert again[1]["extensions"]["old"]["conn_state"] == "Connected"
    assert again[3]["extensions"]["state"]["connections"] == []
    # the same run printing an exists line later is not a new dump
    assert feed(parser, [DUMP[0].replace("Secondary", "Primary")], run="run-2") == []
    # a run that died in the middle of its dump: the next run's dump starts afresh
    assert feed(parser, [DUMP[0].replace("Secondary", "Primary"), "exists resource name:r5"], run="run-3") == []
    restarted = feed(parser, ["exists resource name:r5", "exists -"], run="run-4")
    assert brief(restarted) == [("DRBD_RESOURCE_DESTROYED", "info", "r0"), ("DRBD_INITIAL_STATE", "info", "r5")]


def test_unknown_objects_are_adopted_and_old_new_fields_report() -> None:
    parser = DrbdParser(env("drbd"))
    feed(parser, ["exists resource name:z role:Secondary", "exists -"])
    bad_values = feed(parser, ["change device name:z volume:0 size:huge disk:UpToDate",
                               "change resource name:z promotion_score:high role:Primary"])
    assert brief(bad_values) == [("DRBD_ROLE_CHANGED", "info", "z")]  # the bad value is skipped, the rest applied
    assert "size" not in parser.resources["z"]["devices"][0]["props"]
    assert feed(parser, ["change connection name:x peer-node-id:2 connection:Connecting"]) == []
    events = feed(parser, ["change resource name:y role:Secondary->Primary"])
    assert brief(events) == [("DRBD_ROLE_CHANGED", "info", "y")]
    assert (events[0]["extensions"]["old"], events[0]["extensions"]["new"]) == ({"role": "Secondary"}, {"role": "Primary"})
    assert status_json("x", parser.resources["x"])["connections"][0]["connection-state"] == "Connecting"


def test_state_survives_a_parser_restart_and_redelivery_repeats_the_same_events(tmp_path: Path) -> None:
    environ = {**env("drbd"), "BUS_RUNTIME_DIR": str(tmp_path)}
    first = DrbdParser(environ)
    feed(first, DUMP)
    first.hold()  # end of a delivery: the state is written before its acknowledgement
    collector = Drbd(env("drbd"))
    collector.run_id = "run-1"
    line = "change resource name:r0 role:Primary"
    raw = collector.line_event(line, parse_line(line))
    emitted = first.handle(raw)
    first.hold()
    assert brief(emitted) == [("DRBD_ROLE_CHANGED", "info", "r0")]
    saved = json.loads((tmp_path / "state" / "drbd.json").read_text())
    assert saved["resources"]["r0"]["props"]["role"] == "Primary" and raw["event_id"] in saved["outputs"]

    second = DrbdParser(environ)  # crashed before the acknowledgement: the delivery comes again
    asyncio.run(second.setup())
    assert second.handle(raw) == emitted
    assert brief(feed(second, ["change resource name:r0 role:Secondary"])) == [("DRBD_ROLE_CHANGED", "info", "r0")]
    stale = json.loads((tmp_path / "state" / "drbd.json").read_text())
    stale["boot_id"] = "another-boot"
    (tmp_path / "state" / "drbd.json").write_text(json.dumps(stale))
    third = DrbdParser(environ)
    asyncio.run(third.setup())
    assert third.resources == {}


# -- end to end through busd -------------------------------------------------------------------

def start_drbd(bus: Bus, *scripts: Path, record: Path | None = None, on_n: tuple[str, ...] = (),
               chain: bool = False, **collector: Any) -> None:
    """busd with the drbd collector replaying ``scripts`` and the drbd parser."""
    args = ["--record", str(record)] if record else []
    for line in on_n:
        args += ["--on-n", line]
    if chain:
        args.append("--chain")
    command = plugin_cmd("drbd_replay", *args, *map(str, scripts))
    bus.write({"drbd-events": {"type": "collector", "builtin": "drbd", "command": command, "restart_delay": 0.05,
                               "restart_delay_max": 0.1, **collector},
               "drbd": {"type": "parser", "builtin": "drbd"}})
    bus.start()


def with_end(path: Path, tmp_path: Path) -> Path:
    """A copy of a sample with the END line appended (samples are not edited)."""
    copy = tmp_path / path.name
    copy.write_text(path.read_text() + "call helper name:END helper:end-of-scenario\n")
    return copy


def segments(events: list[Event]) -> list[list[Event]]:
    """Split events at each END event (included)."""
    out: list[list[Event]] = [[]]
    for event in events:
        out[-1].append(event)
        if event["dev_name"] == "END":
            out.append([])
    return out[:-1]


def gone(name: str) -> tuple[str, str, str]:
    """A resource the next run's dump no longer lists."""
    return ("DRBD_RESOURCE_DESTROYED", "info", name)


LIFECYCLE = [
    ("DRBD_RESOURCE_CREATED", "info", "test"), ("DRBD_CONNECTION_CREATED", "info", "test"),
    ("DRBD_PEER_DEVICE_CREATED", "info", "test/0"), ("DRBD_DEVICE_CREATED", "info", "test/0"),
    ("DRBD_PATH_CREATED", "info", "test"), ("DRBD_PEER_DEVICE_DESTROYED", "info", "test/0"),
    ("DRBD_CONNECTION_DESTROYED", "info", "test"), ("DRBD_RESOURCE_DESTROYED", "info", "test"),
    ("DRBD_SPLIT_BRAIN", "error", "r")]
LEOPARD = "testdrbd.root.vol.reliable-leopard"
PEER_BOUNCE = [
    ("DRBD_INITIAL_STATE", "info", LEOPARD), ("DRBD_RESOURCE_CHANGED", "info", LEOPARD),
    ("DRBD_HELPER_CALLED", "info", LEOPARD), ("DRBD_HELPER_CALLED", "info", LEOPARD),
    ("DRBD_CONNECTION_STATE_CHANGED", "info", LEOPARD), ("DRBD_PEER_ROLE_CHANGED", "info", LEOPARD),
    ("DRBD_REPLICATION_STATE_CHANGED", "info", f"{LEOPARD}/0"), ("DRBD_PEER_DISK_STATE_CHANGED", "info", f"{LEOPARD}/0")]
EVENTS2 = [("DRBD_INITIAL_STATE", "info", "foo"), ("DRBD_DEVICE_CHANGED", "info", "foo/1")]
FAILOVER = [
    ("DRBD_INITIAL_STATE", "info", "web"),
    ("DRBD_CONNECTION_STATE_CHANGED", "warn", "web"), ("DRBD_PEER_ROLE_CHANGED", "info", "web"),
    ("DRBD_REPLICATION_STATE_CHANGED", "info", "web/0"), ("DRBD_PEER_DISK_STATE_CHANGED", "warn", "web/0"),
    ("DRBD_PATH_CHANGED", "info", "web"),
    ("DRBD_CONNECTION_STATE_CHANGED", "info", "web"), ("DRBD_CONNECTION_STATE_CHANGED", "info", "web"),
    ("DRBD_MAY_PROMOTE_CHANGED", "info", "web"),
    ("DRBD_ROLE_CHANGED", "info", "web"), ("DRBD_MAY_PROMOTE_CHANGED", "info", "web"),
    ("DRBD_RESOURCE_CHANGED", "info", "web"), ("DRBD_DEVICE_CHANGED", "info", "web/0"),
    ("DRBD_CONNECTION_STATE_CHANGED", "info", "web"), ("DRBD_PEER_ROLE_CHANGED", "info", "web"),
    ("DRBD_PATH_CHANGED", "info", "web"),
    ("DRBD_REPLICATION_STATE_CHANGED", "info", "web/0"), ("DRBD_PEER_DISK_STATE_CHANGED", "warn", "web/0"),
    ("DRBD_REPLICATION_STATE_CHANGED", "info", "web/0"), ("DRBD_PEER_DISK_STATE_CHANGED", "info", "web/0"),
    ("DRBD_RESYNC_DONE", "info", "web/0")]
QUORUM = [
    ("DRBD_INITIAL_STATE", "info", "db"),
    ("DRBD_CONNECTION_STATE_CHANGED", "warn", "db"), ("DRBD_PEER_ROLE_CHANGED", "info", "db"),
    ("DRBD_REPLICATION_STATE_CHANGED", "info", "db/0"), ("DRBD_PEER_DISK_STATE_CHANGED", "warn", "db/0"),
    ("DRBD_CONNECTION_STATE_CHANGED", "warn", "db"), ("DRBD_PEER_ROLE_CHANGED", "info", "db"),
    ("DRBD_REPLICATION_STATE_CHANGED", "info", "db/0"), ("DRBD_PEER_DISK_STATE_CHANGED", "warn", "db/0"),
    ("DRBD_QUORUM_LOST", "error", "db/0"), ("DRBD_RESOURCE_CHANGED", "info", "db"),
    ("DRBD_CONNECTION_STATE_CHANGED", "info", "db"),
    ("DRBD_CONNECTION_STATE_CHANGED", "info", "db"), ("DRBD_PEER_ROLE_CHANGED", "info", "db"),
    ("DRBD_REPLICATION_STATE_CHANGED", "info", "db/0"), ("DRBD_PEER_DISK_STATE_CHANGED", "info", "db/0"),
    ("DRBD_QUORUM_REGAINED", "info", "db/0"), ("DRBD_RESOURCE_CHANGED", "info", "db")]
SPLIT_BRAIN = [
    ("DRBD_INITIAL_STATE", "info", "data"),
    ("DRBD_SPLIT_BRAIN", "error", "data/0"), ("DRBD_HELPER_CALLED", "info", "data/0"),
    ("DRBD_SPLIT_BRAIN", "error", "data/0"), ("DRBD_HELPER_CALLED", "info", "data/0"),
    ("DRBD_CONNECTION_STATE_CHANGED", "info", "data"), ("DRBD_CONNECTION_STATE_CHANGED", "info", "data"),
    ("DRBD_CONNECTION_STATE_CHANGED", "info", "data")]
DISK_FAILURE = [
    ("DRBD_INITIAL_STATE", "info", "r0"),
    ("DRBD_DISK_STATE_CHANGED", "error", "r0/0"), ("DRBD_HELPER_CALLED", "info", "r0/0"),
    ("DRBD_HELPER_CALLED", "warn", "r0/0"),
    ("DRBD_DISK_STATE_CHANGED", "info", "r0/0"), ("DRBD_DEVICE_CHANGED", "info", "r0/0"),
    ("DRBD_DISK_STATE_CHANGED", "info", "r0/0"), ("DRBD_DEVICE_CHANGED", "info", "r0/0"),
    ("DRBD_DISK_STATE_CHANGED", "info", "r0/0"),
    ("DRBD_REPLICATION_STATE_CHANGED", "info", "r0/0"),
    ("DRBD_REPLICATION_STATE_CHANGED", "info", "r0/0"), ("DRBD_RESYNC_DONE", "info", "r0/0"),
    ("DRBD_DISK_STATE_CHANGED", "info", "r0/0"),
    ("DRBD_DISK_STATE_CHANGED", "info", "r0/0"),
    ("DRBD_DISK_STATE_CHANGED", "info", "r0/0"), ("DRBD_DEVICE_CHANGED", "info", "r0/0")]
RESTART_1 = [("DRBD_INITIAL_STATE", "info", "app"), ("DRBD_INITIAL_STATE", "info", "tmp")]
RESTART_2 = [("DRBD_ROLE_CHANGED", "info", "app"), ("DRBD_MAY_PROMOTE_CHANGED", "info", "app"),
             ("DRBD_RESOURCE_CHANGED", "info", "app"), ("DRBD_DEVICE_CHANGED", "info", "app/0"),
             gone("tmp"), ("DRBD_INITIAL_STATE", "info", "app")]

# One drbdsetup run per script: each dump also reports the previous script's resources as gone.
CHAIN: list[tuple[Path, list[tuple[str, str, str]]]] = [
    (SAMPLES / "drbd-events2-lifecycle.txt", LIFECYCLE),
    (SAMPLES / "drbd-events2-peer-bounce.txt", [gone("r"), *PEER_BOUNCE]),
    (SAMPLES / "drbd-events2.txt", [gone(LEOPARD), *EVENTS2]),
    (DATA / "failover.txt", [gone("foo"), *FAILOVER]),
    (DATA / "quorum.txt", [gone("web"), *QUORUM]),
    (DATA / "split-brain.txt", [gone("db"), *SPLIT_BRAIN]),
    (DATA / "disk-failure.txt", [gone("data"), *DISK_FAILURE]),
    (DATA / "restart-1.txt", [gone("r0"), *RESTART_1]),
    (DATA / "restart-2.txt", RESTART_2),
]


def test_samples_and_scenarios_through_busd(bus: Bus, tmp_path: Path) -> None:
    """The shared samples, then failover, quorum loss, split brain, disk failure and resync, and a
    drbdsetup that dies and comes back with a different state: the exact synthetic events."""
    record = tmp_path / "record"
    scripts = [with_end(path, tmp_path) if path.parent == SAMPLES else path for path, _ in CHAIN]
    start_drbd(bus, *scripts, record=record, chain=True)
    total = sum(len(expected) + 1 for _, expected in CHAIN)
    events = bus.tail(total, "--system", "drbd")
    got = segments(events)
    assert len(got) == len(CHAIN)
    for (path, expected), segment in zip(CHAIN, got, strict=True):
        assert brief(segment) == [*expected, END], path.name
    assert all(e["kind"] == "synthetic" and e["source"] == "drbd" for e in events)
    lifecycle, _, _, failover, quorum, split, _, _, restart = [[e["extensions"] for e in s] for s in got]

    created = lifecycle[3]
    assert (created["volume"], created["minor"], created["new"]) == (0, 100, {"disk_state": "Diskless"})
    assert (lifecycle[8]["helper"], lifecycle[8]["peer_node_id"]) == ("split-brain", 1)
    assert got[0][8]["timestamp"] == pytest.approx(parse_timestamp("2026-09-29T14:15:14.414179+08:00"))
    destroyed = lifecycle[7]
    assert destroyed["old"] == {"role": "Secondary", "suspended": False} and destroyed["new"] == {}
    assert [d["minor"] for d in destroyed["state"]["devices"]] == [100]  # the state just before it went

    promoted = failover[10]
    assert (promoted["old"]["role"], promoted["new"]["role"], promoted["state"]["role"]) == ("Secondary", "Primary", "Primary")
    assert got[3][10]["timestamp"] == pytest.approx(parse_timestamp("2024-05-02T10:01:02+00:00"))
    assert promoted["raw_event_id"] == failover[11]["raw_event_id"] == failover[12]["raw_event_id"]  # one line
    assert failover[13]["state"]["devices"][0]["written"] == 2048  # the statistics poll came later
    assert failover[14]["state"]["devices"][0]["written"] == 4096
    done = failover[21]
    assert (done["resource"], done["volume"], done["minor"]) == ("web", 0, 1000)
    assert (done["peer_node_id"], done["conn_name"]) == (1, "beta")
    assert done["old"]["replication_state"] == "SyncSource" and done["new"]["percent_in_sync"] == 100.0

    lost = quorum[10]
    assert (lost["object"], lost["action"], lost["old"]["quorum"], lost["new"]["quorum"]) == ("device", "change", True, False)
    assert [c["connection-state"] for c in lost["state"]["connections"]] == ["BrokenPipe", "NetworkFailure"]

    assert split[2]["helper"] == "initial-split-brain" and split[4]["helper"] == "split-brain"
    assert (split[5]["status"], split[5]["minor"]) == (0, 1002)
    assert (split[8]["old"]["conn_state"], split[8]["new"]["conn_state"]) == ("StandAlone", "Connecting")

    assert restart[0]["action"] == "exists" and restart[5]["state"]["role"] == "Primary"
    assert [line.split()[:2] for line in read_lines(record)] == [["start", str(i)] for i in range(1, len(CHAIN) + 1)]
    exits = [r for r in bus.log_records() if r.get("event") == "command_exited"]
    assert [r["status"] for r in exits] == [0] * 7 + [3]
    assert exits[7]["stderr"] == ["events2: lost connection to the kernel (test)"]
    status = wait_for(lambda: _status(bus, "drbd-events").get("runs") == len(CHAIN) and _status(bus, "drbd-events"))
    assert status["bad_lines"] == {} and status["last_exit"]["status"] == 3 and status["pid"]


def _status(bus: Bus, name: str) -> dict[str, Any]:
    path = bus.runtime_dir / "status" / f"{name}.json"
    return dict(json.loads(path.read_text())) if path.exists() else {}


def test_restart_backoff_doubles(bus: Bus, tmp_path: Path) -> None:
    script = tmp_path / "dies.txt"
    script.write_text("# stderr drbdsetup: cannot talk to the kernel\n# exit 20\n")
    record = tmp_path / "record"
    start_drbd(bus, script, record=record, restart_delay=0.1, restart_delay_max=0.4)
    restarts = wait_for(lambda: (r := [x for x in bus.log_records() if x.get("event") == "command_restarting"])
                        and len(r) >= 5 and r, what="five restarts")
    assert [r["delay"] for r in restarts[:5]] == [0.1, 0.2, 0.4, 0.4, 0.4]
    starts = [float(line.split()[2]) for line in read_lines(record)]
    assert len(starts) >= 4 and all(b - a >= d for a, b, d in zip(starts, starts[1:], (0.1, 0.2, 0.4), strict=False))
    exits = [r for r in bus.log_records() if r.get("event") == "command_exited"]
    assert exits[0]["status"] == 20 and exits[0]["stderr"] == ["drbdsetup: cannot talk to the kernel"]


def test_statistics_poll_and_garbage_lines(bus: Bus, tmp_path: Path) -> None:
    script = tmp_path / "poll.txt"
    script.write_text("\n".join([
        *DUMP,
        "#raw this is not an events2 line",
        "change resource name:r0 role",
        "#raw delete resource name:r0",
        "change device name:r0 volume:x",
        "#hex 6368616e6765207265736f75726365206e616d653a72ff",
        "#raw another garbage line",
        "# wait-n",
        "# wait-n",
        "change resource name:r0 role:Primary",
        "call helper name:END helper:end-of-scenario",
    ]) + "\n")
    record = tmp_path / "record"
    stats_line = ("change device name:r0 volume:0 minor:7 disk:UpToDate read:99 written:77 al-writes:1 bm-writes:0 "
                  "upper-pending:0 lower-pending:0")
    start_drbd(bus, script, record=record, on_n=(stats_line,), statistics_poll_interval=0.2)
    events = bus.tail(3, "--system", "drbd")
    assert brief(events) == [("DRBD_INITIAL_STATE", "info", "r0"), ("DRBD_ROLE_CHANGED", "info", "r0"), END]
    assert events[1]["extensions"]["state"]["devices"][0]["written"] == 77  # the poll's answer, silently applied
    assert [line.split()[0] for line in read_lines(record)][:3] == ["start", "n", "n"]
    raw = bus.tail(len(DUMP) + 2, "--kind", "raw", "--system", "drbd", last=100)
    assert [e["msg"] for e in raw[:len(DUMP)]] == DUMP and "role" not in raw[len(DUMP)]["msg"]
    status = wait_for(lambda: _status(bus, "drbd-events").get("bad_lines", {}).get("unknown_action") == 3
                      and _status(bus, "drbd-events"))
    assert status["bad_lines"] == {"unknown_action": 3, "bad_field": 1, "bad_integer": 1, "invalid_utf8": 1}
    assert status["bad_input"] == status["bad_lines"]
    logged = [r for r in bus.log_records() if r.get("event") == "bad_input"]
    assert sorted(r["kind"] for r in logged) == ["bad_field", "bad_integer", "invalid_utf8", "unknown_action"]
    assert next(r for r in logged if r["kind"] == "bad_field")["line"] == "change resource name:r0 role"
    assert bus.plugin("drbd-events")["state"] == "running"


def test_parser_killed_keeps_its_state(bus: Bus, tmp_path: Path) -> None:
    go_on = tmp_path / "go-on"
    script = tmp_path / "kill.txt"
    script.write_text("\n".join([*DUMP, "change resource name:r0 role:Primary", f"# wait-file {go_on}",
                                 "change resource name:r0 role:Secondary",
                                 "call helper name:END helper:end-of-scenario"]) + "\n")
    start_drbd(bus, script)
    assert brief(bus.tail(2, "--system", "drbd")) == [("DRBD_INITIAL_STATE", "info", "r0"), ("DRBD_ROLE_CHANGED", "info", "r0")]
    victim = bus.plugin("drbd")
    os.kill(victim["pid"], signal.SIGKILL)
    go_on.touch()  # the next line waits for the restarted parser in busd's queue
    events = bus.tail(4, "--system", "drbd")
    assert brief(events[2:]) == [("DRBD_ROLE_CHANGED", "info", "r0"), END]
    assert (events[2]["extensions"]["old"]["role"], events[2]["extensions"]["new"]["role"]) == ("Primary", "Secondary")
    assert bus.plugin("drbd")["restarts"] == victim["restarts"] + 1

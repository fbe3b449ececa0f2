"""Receiver ``umh``: rules, environment, drbd-reactor compatibility, and real commands under busd."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import ROOT, Bus, ev, plugin_cmd, shipped_example, toml_value, wait_for

from bus.config import load
from bus.event import Event, new_event
from bus.exceptions import ConfigError
from collectors.drbd import Drbd, parse_line
from parsers.drbd import DrbdParser
from receivers.umh import Umh, bus_env, compile_bus_rule, compile_reactor_rule, event_drbd_env

DATA = Path(__file__).resolve().parent / "data" / "drbd"
ALLOWED_EXTRA = {"PWD", "SHLVL", "_", "OLDPWD"}
"""Variables the shell itself may add to the cleared environment."""


def umh(**options: Any) -> Umh:
    plugin = Umh({"BUS_PLUGIN": "umh", "BUS_PLUGIN_CONFIG": json.dumps({"builtin": "umh", **options})})
    asyncio.run(plugin.setup())
    return plugin


def drbd_events(lines: list[str]) -> list[Event]:
    """Synthetic events of the drbd parser for events2 lines (as they come out of busd)."""
    collector = Drbd({"BUS_PLUGIN": "c", "BUS_PLUGIN_CONFIG": json.dumps({"builtin": "drbd"})})
    collector.run_id = "run"
    parser = DrbdParser({"BUS_PLUGIN": "drbd", "BUS_PLUGIN_CONFIG": json.dumps({"builtin": "drbd"})})
    out = []
    for text in lines:
        if text.strip() and not text.startswith("#"):
            raw = collector.line_event(text, parse_line(text))
            for i, event in enumerate(parser.handle(raw)):
                event["event_id"] = f"{raw['event_id']}-{i}"
                out.append(event)
    return out


# -- rules --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("table", "message"), [
    ('rules = [{ system = "drbd", command = "true" }, { event_type = "X", command = "true" }, { system = "x" }]',
     "plugins.umh.rules[2].command: is required (a non-empty string, or an argv list run without a shell)"),
    ('rules = [{ system = "drbd", command = "true", colour = "red" }]', "plugins.umh.rules[0].colour: unknown key"),
    ('rules = [{ severity = "fatal", command = "true" }]', "plugins.umh.rules[0].severity: 'fatal' is not one of"),
    ('rules = [{ new.role = { operator = "Like", value = "P" }, command = "true" }]',
     "plugins.umh.rules[0].new.role.operator: 'Like' is not one of Equals, NotEquals"),
    ('rules = [{ new.role = { operator = "NotEquals" }, command = "true" }]',
     "plugins.umh.rules[0].new.role: a table needs 'value'"),
    ('rules = [{ system = [], command = "true" }]', "plugins.umh.rules[0].system: an empty list matches nothing"),
    ('rules = [{ system = "x", command = "true", env = { A = 1 } }]', "plugins.umh.rules[0].env: must be a table of strings"),
    ('[[plugins.umh.device]]\ncommand = "true"\nnew.disk-state = "Uptodate"',
     "plugins.umh.device[0].new.disk-state: 'Uptodate' is not one of Diskless, Attaching"),
    ('[[plugins.umh.resource]]\ncommand = "true"\nnew.may-promote = "yes"',
     "plugins.umh.resource[0].new.may-promote: must be a boolean, not 'yes'"),
    ('[[plugins.umh.resource]]\ncommand = "true"\nold.disk-state = "UpToDate"',
     "plugins.umh.resource[0].old.disk-state: unknown field of a resource rule (allowed: role, may-promote"),
    ('[[plugins.umh.peerdevice]]\ncommand = "true"\nevent-type = "Changed"',
     "plugins.umh.peerdevice[0].event-type: 'Changed' is not one of Exists, Create, Change, Destroy"),
    ('[[plugins.umh.connection]]\ncommand = "true"\nvolume = 0', "plugins.umh.connection[0].volume: unknown key"),
    ('[[plugins.umh.peerdevice]]\ncommand = "true"\npeer-node-id = "1"',
     "plugins.umh.peerdevice[0].peer-node-id: must be an integer"),
    ('[[plugins.umh.connection]]\nname = "no command"', "plugins.umh.connection[0].command: is required"),
    ("max_concurrent = 2", "plugins.umh.rules: no rule at all"),
    ('max_concurrent = 0\nrules = [{ system = "x", command = "true" }]', "plugins.umh.max_concurrent: must be at least 1"),
    ('timeout = -1.0\nrules = [{ system = "x", command = "true" }]', "plugins.umh.timeout: must be 0 (no limit) or more"),
])
def test_bad_rules_are_refused_at_start(tmp_path: Path, table: str, message: str) -> None:
    conf = tmp_path / "busd.toml"
    conf.write_text(f'[plugins.umh]\ntype = "receiver"\nbuiltin = "umh"\n{table}\n')
    with pytest.raises(ConfigError) as exc:
        load(conf)
    assert message in str(exc.value)


def test_matching_equals_not_equals_lists_prefixes_and_types() -> None:
    rule = compile_bus_rule("r", {"system": ["drbd", "md"], "event_type": "DRBD_*", "severity": ["warn", "error"],
                                  "old": {"role": {"operator": "NotEquals", "value": "Primary"}},
                                  "new": {"role": "Primary", "may_promote": False}, "command": "true"})

    def event(**kw: Any) -> Event:
        base = {"system": "drbd", "event_type": "DRBD_ROLE_CHANGED", "severity": "warn",
                "extensions": {"old": {"role": "Secondary"}, "new": {"role": "Primary", "may_promote": False}}}
        return {**base, **kw}

    assert rule.matches(event())
    assert not rule.matches(event(system="kmsg"))
    assert not rule.matches(event(event_type="MD_DISK_FAILURE"))
    assert not rule.matches(event(severity="info"))
    assert not rule.matches(event(extensions={"old": {"role": "Primary"}, "new": {"role": "Primary", "may_promote": False}}))
    assert not rule.matches(event(extensions={"old": {}, "new": {"role": "Primary", "may_promote": 0}}))  # 0 is not false
    assert rule.matches(event(extensions={"old": {}, "new": {"role": "Primary", "may_promote": False}}))  # absent != Primary
    assert not rule.matches(event(extensions={}))
    assert compile_bus_rule("r", {"command": "true"}).matches({"system": "anything"})  # nothing set: don't care
    number = compile_bus_rule("r", {"new": {"percent_in_sync": 100}, "command": "true"})
    assert number.matches({"extensions": {"new": {"percent_in_sync": 100.0}}})


def test_environment_of_an_event() -> None:
    event = new_event("scsi", "SCSI_MEDIUM_ERROR", "Medium Error on sdb", severity="error", dev_name="sdb",
                      kind="synthetic", extensions={"sense": {"key": 3, "asc": "0x11"}, "lbas": [1, 2],
                                                    "retry": False, "odd-key": None})
    env = bus_env(event)
    assert env["BUS_EVENT_TYPE"] == "SCSI_MEDIUM_ERROR" and env["BUS_SEVERITY"] == "error"
    assert env["BUS_DEV_NAME"] == "sdb" and env["BUS_MSG"] == "Medium Error on sdb" and env["BUS_V"] == "1"
    assert env["BUS_TIMESTAMP"] == str(event["timestamp"]) and env["BUS_EVENT_ID"] == event["event_id"]
    assert env["BUS_EXT_SENSE_KEY"] == "3" and env["BUS_EXT_SENSE_ASC"] == "0x11"
    assert env["BUS_EXT_LBAS"] == "[1,2]" and env["BUS_EXT_RETRY"] == "false" and env["BUS_EXT_ODD_KEY"] == ""
    assert "BUS_EXTENSIONS" not in env and event_drbd_env(event) == {}


def test_drbd_variables_of_drbd_events() -> None:
    events = {e["event_type"]: e for e in drbd_events((DATA / "failover.txt").read_text().splitlines())}
    role = event_drbd_env(events["DRBD_ROLE_CHANGED"])
    assert role == {"DRBD_RES_NAME": "web", "DRBD_OLD_ROLE": "Secondary", "DRBD_NEW_ROLE": "Primary",
                    "DRBD_OLD_MAY_PROMOTE": "true", "DRBD_NEW_MAY_PROMOTE": "false"}
    pd = event_drbd_env(events["DRBD_RESYNC_DONE"])
    assert pd == {"DRBD_RES_NAME": "web", "DRBD_VOLUME": "0", "DRBD_MINOR": "1000", "DRBD_MINOR_0": "1000",
                  "DRBD_BACKING_DEV": "/dev/vg0/web", "DRBD_BACKING_DEV_0": "/dev/vg0/web", "DRBD_PEER_NODE_ID": "1",
                  "DRBD_OLD_PEER_DISK_STATE": "Inconsistent", "DRBD_NEW_PEER_DISK_STATE": "UpToDate",
                  "DRBD_OLD_PEER_CLIENT": "false", "DRBD_NEW_PEER_CLIENT": "false",
                  "DRBD_OLD_PEER_RESYNC_SUSPENDED": "false", "DRBD_NEW_PEER_RESYNC_SUSPENDED": "false",
                  "DRBD_OLD_PEER_REPLICATION_STATE": "SyncSource", "DRBD_NEW_PEER_REPLICATION_STATE": "Established"}
    conn = event_drbd_env(events["DRBD_PEER_ROLE_CHANGED"])  # the last one: beta back as Secondary
    assert conn["DRBD_CSTATE"] == "Connected" and conn["DRBD_OLD_CONN_STATE"] == "Connecting"
    assert (conn["DRBD_OLD_PEER_ROLE"], conn["DRBD_NEW_PEER_ROLE"]) == ("Unknown", "Secondary")
    assert conn["DRBD_NEW_CONN_NAME"] == "beta"
    assert (conn["DRBD_PEER_NODE_ID"], conn["DRBD_NEW_CONGESTED"]) == ("1", "false")
    dev = event_drbd_env(events["DRBD_DEVICE_CHANGED"])
    assert (dev["DRBD_OLD_OPEN"], dev["DRBD_NEW_OPEN"], dev["DRBD_NEW_DISK_STATE"], dev["DRBD_NEW_QUORUM"]) == (
        "false", "true", "UpToDate", "true")


def test_drbd_reactor_view_one_update_per_line_and_exists_for_the_dump() -> None:
    plugin = umh(resource=[{"command": "true"}])
    updates = []
    for event in drbd_events((DATA / "failover.txt").read_text().splitlines()):
        updates += [(u.rtype, u.event_type, u.old, u.new) for u in plugin.reactor_updates(event)]
    exists = [u for u in updates if u[1] == "Exists"]
    assert [u[0] for u in exists] == ["resource", "device", "connection", "peerdevice"]
    assert exists[0][2]["role"] == "Unknown" and exists[0][3]["role"] == "Secondary"  # old: drbd-reactor's defaults
    changes = [(u[0], u[1]) for u in updates[4:]]
    # connection x4 (lost, Unconnected, Connecting, back), peer device x3, resource x2, device (open); paths: none
    assert changes.count(("connection", "Change")) == 4 and changes.count(("peerdevice", "Change")) == 3
    assert changes.count(("resource", "Change")) == 2 and changes.count(("device", "Change")) == 1
    assert len(changes) == 10
    promoted = next(u for u in updates if u[0] == "resource" and u[3]["role"] == "Primary")
    assert (promoted[2]["may_promote"], promoted[3]["may_promote"], promoted[3]["promotion_score"]) == (True, False, 10102)
    # drbd-reactor ignores changes of fields it does not compare: suspended alone is no update
    quorum = drbd_events((DATA / "quorum.txt").read_text().splitlines())
    suspended = [e for e in quorum if e["event_type"] == "DRBD_RESOURCE_CHANGED"]
    assert suspended and all(plugin.reactor_updates(e) == [] for e in suspended)
    destroyed = drbd_events(["create resource name:t role:Secondary", "destroy resource name:t"])[-1]
    [update] = plugin.reactor_updates(destroyed)
    assert (update.event_type, update.old["role"], update.new["role"]) == ("Destroy", "Secondary", "Unknown")


def test_reactor_rule_fields() -> None:
    rule = compile_reactor_rule("peerdevice", "peerdevice[0]", {
        "command": "true", "resource-name": "web", "volume": 0, "peer-node-id": {"operator": "NotEquals", "value": 2},
        "event-type": "Change", "new": {"replication-state": "Established"},
        "old": {"replication-state": {"operator": "NotEquals", "value": "Established"}}})
    data = {"event_type": "Change", "resource_name": "web", "volume": 0, "peer_node_id": 1,
            "old": {"replication_state": "SyncSource"}, "new": {"replication_state": "Established"}}
    assert rule.matches(data)
    assert not rule.matches({**data, "peer_node_id": 2})
    assert not rule.matches({**data, "old": {"replication_state": "Established"}})
    assert not rule.matches({**data, "event_type": "Exists"})
    assert not rule.matches({**data, "resource_name": "db"})
    conn = compile_reactor_rule("connection", "c", {"command": "true", "old": {"connection-state": "Connected"}})
    assert conn.matches({"old": {"conn_state": "Connected"}})


# -- through busd ---------------------------------------------------------------------------------

def read_env(path: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def outputs(directory: Path, prefix: str) -> list[dict[str, str]]:
    """The environments the commands of a rule wrote, in event order."""
    envs = [read_env(p) for p in directory.glob(f"{prefix}.*") if not p.name.endswith(".tmp")]
    return sorted(envs, key=lambda e: (float(e["BUS_TIMESTAMP"]), e["BUS_EVENT_ID"]))


def dump_env(directory: Path, prefix: str) -> str:
    """A command writing its whole environment to its own file (renamed when complete)."""
    target = f"{directory}/{prefix}.$BUS_EVENT_ID.$$"
    return f"env > {target}.tmp && mv {target}.tmp {target}"


DRBD_REACTOR_SNIPPET = """\
[[umh]]
[[umh.resource]]
name = "resource now primary"
command = "{primary}"
resource-name = "web"
old.role = "Secondary"
new.role = "Primary"

[[umh.peerdevice]]
command = "{synced}"
new.replication-state = "Established"
old.replication-state = {{ operator = "NotEquals", value = "Established" }}

[[umh.connection]]
command = "{connected}"
event-type = "Change"
new.connection-state = "Connected"
env = {{ EXTRA = "from the rule" }}
"""


def test_drbd_events_run_bus_and_drbd_reactor_rules(bus: Bus, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    snippet = DRBD_REACTOR_SNIPPET.format(primary=dump_env(out, "primary"), synced=dump_env(out, "synced"),
                                          connected=dump_env(out, "connected"))
    # drbd-reactor's [[umh]] tables become this receiver's table, key for key
    translated = (snippet.replace("[[umh]]", '[plugins.umh]\ntype = "receiver"\nbuiltin = "umh"\n'
                                             f'rules = [{{ system = "drbd", event_type = "DRBD_ROLE_CHANGED", '
                                             f'new.role = "Primary", command = "{dump_env(out, "bus")}" }}]')
                  .replace("[[umh.", "[[plugins.umh."))
    bus.write({"drbd-events": {"type": "collector", "builtin": "drbd",
                               "command": plugin_cmd("drbd_replay", str(DATA / "failover.txt"))},
               "drbd": {"type": "parser", "builtin": "drbd"}}, extra=translated)
    bus.start()
    wait_for(lambda: len(list(out.glob("*.*.*"))) >= 5 and all(not p.name.endswith(".tmp") for p in out.iterdir()),
             what="five commands")

    [generic] = outputs(out, "bus")
    assert (generic["BUS_EVENT_TYPE"], generic["BUS_SYSTEM"], generic["BUS_DEV_NAME"]) == ("DRBD_ROLE_CHANGED", "drbd", "web")
    assert (generic["BUS_EXT_OLD_ROLE"], generic["BUS_EXT_NEW_ROLE"]) == ("Secondary", "Primary")
    assert generic["BUS_EXT_STATE_ROLE"] == "Primary"
    assert json.loads(generic["BUS_EXT_STATE_DEVICES"])[0]["minor"] == 1000
    assert (generic["DRBD_RES_NAME"], generic["DRBD_OLD_ROLE"], generic["DRBD_NEW_ROLE"]) == ("web", "Secondary", "Primary")
    assert generic["BUS_SOURCE"] == "drbd" and generic["BUS_KIND"] == "synthetic"
    # cleared: only the event, drbd-reactor's variables and its fixed HOME/TERM/PATH (not busd's BUS_PLUGIN...)
    assert (generic["HOME"], generic["TERM"], generic["PATH"]) == ("/", "Linux", "/sbin:/usr/sbin:/bin:/usr/bin")
    extra = {k for k in generic if not k.startswith(("BUS_", "DRBD_"))} - {"HOME", "TERM", "PATH"}
    assert extra <= ALLOWED_EXTRA
    assert not {"BUS_PLUGIN", "BUS_EVENTS", "BUS_CONTROL", "BUS_PLUGIN_CONFIG", "VIRTUAL_ENV"} & set(generic)

    [primary] = outputs(out, "primary")
    assert (primary["DRBD_RES_NAME"], primary["DRBD_OLD_ROLE"], primary["DRBD_NEW_ROLE"]) == ("web", "Secondary", "Primary")
    assert primary["BUS_EVENT_ID"] == generic["BUS_EVENT_ID"]

    synced = outputs(out, "synced")  # the dump's Exists (from drbd-reactor's default Off) and the resync's end
    assert [(e["BUS_EVENT_TYPE"], e["DRBD_OLD_PEER_REPLICATION_STATE"], e["DRBD_NEW_PEER_REPLICATION_STATE"])
            for e in synced] == [("DRBD_INITIAL_STATE", "Off", "Established"),
                                 ("DRBD_REPLICATION_STATE_CHANGED", "SyncSource", "Established")]
    assert all((e["DRBD_MINOR"], e["DRBD_VOLUME"], e["DRBD_PEER_NODE_ID"], e["DRBD_BACKING_DEV_0"])
               == ("1000", "0", "1", "/dev/vg0/web") for e in synced)
    assert synced[1]["DRBD_OLD_PEER_DISK_STATE"] == "Inconsistent"

    [connected] = outputs(out, "connected")  # one line changed state and peer role: one command
    assert (connected["DRBD_CSTATE"], connected["DRBD_OLD_CONN_STATE"], connected["DRBD_NEW_PEER_ROLE"]) == (
        "Connected", "Connecting", "Secondary")
    assert connected["EXTRA"] == "from the rule" and connected["DRBD_PEER_NODE_ID"] == "1"
    counters = wait_for(lambda: bus.plugin("umh").get("counters", {}).get("commands_started") == 5
                        and bus.plugin("umh")["counters"])
    assert "commands_failed" not in counters
    done = [r for r in bus.log_records() if r.get("event") == "command_done" and r.get("plugin") == "umh"]
    assert len(done) == 5 and {r["status"] for r in done} == {0}
    assert {r["rule"] for r in done} == {"rules[0]", "resource now primary", "peerdevice[0]", "connection[0]"}


def test_limits_timeouts_exit_status_and_old_new(bus: Bus, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    log = out / "slow.log"
    rules = [
        {"name": "slow", "event_type": "SLOW",
         "command": f'echo "start $BUS_MSG $(date +%s.%N)" >> {log}; sleep 0.4; echo "end $BUS_MSG $(date +%s.%N)" >> {log}'},
        {"name": "hang", "event_type": "HANG", "command": f"sleep 60 & echo $! > {out}/child.pid; wait"},
        {"name": "fails", "event_type": "FAIL", "command": "echo to stdout; echo to stderr >&2; exit 3"},
        {"name": "good again", "system": "test", "event_type": "STATE",
         "old": {"state": {"operator": "NotEquals", "value": "good"}}, "new": {"state": "good"},
         "command": dump_env(out, "good")},
    ]
    table = {"type": "receiver", "builtin": "umh", "max_concurrent": 2, "timeout": 1.5,
             "filter": {"system": "test", "kind": "all"}}
    bus.write({}, extra="[plugins.umh]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in table.items())
              + "rules = [" + ", ".join(toml_value(r) for r in rules) + "]\n")
    bus.start()
    bus.wait_running("umh")
    states = [("bad", "good"), ("good", "good"), ("bad", "bad"), (None, "good")]
    bus.emit([ev("test", "SLOW", f"s{i}", dev_name=f"d{i}") for i in range(4)]  # four resources: two at a time
             + [ev("test", "HANG"), ev("test", "FAIL")]
             + [ev("test", "STATE", f"{old}->{new}", extensions={"old": {} if old is None else {"state": old},
                                                                   "new": {"state": new}}) for old, new in states])
    records = wait_for(lambda: (r := [x for x in bus.log_records() if x.get("plugin") == "umh" and x.get("event") in
                                      ("command_done", "command_timeout")]) and len(r) == 8 and r, timeout=30,
                       what="eight commands to end")

    lines = [line.split() for line in log.read_text().splitlines()]
    assert sorted(m for kind, m, _ in lines if kind == "start") == ["s0", "s1", "s2", "s3"]
    running, peak = 0, 0
    for kind, _, _ in sorted(lines, key=lambda x: float(x[2])):
        running += 1 if kind == "start" else -1
        peak = max(peak, running)
    assert peak == 2  # two at once, never three

    [timeout] = [r for r in records if r["event"] == "command_timeout"]
    assert timeout["rule"] == "hang" and timeout["timeout"] == 1.5
    child = int((out / "child.pid").read_text())
    wait_for(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE,
             what="the command's background child killed with its group")

    [failed] = [r for r in records if r.get("rule") == "fails"]
    assert (failed["status"], failed["stdout"], failed["stderr"], failed["level"]) == (3, "to stdout", "to stderr", "warning")
    good = outputs(out, "good")
    assert [e["BUS_MSG"] for e in good] == ["bad->good", "None->good"]  # absent old is not "good"
    assert good[0]["BUS_EXT_OLD_STATE"] == "bad" and "DRBD_RES_NAME" not in good[0]
    # counters reach busctl with the receiver's next progress report: wait for them, do not read once
    want = {"commands_started": 8, "commands_failed": 2, "commands_timed_out": 1}
    wait_for(lambda: bus.plugin("umh").get("counters") == want, what=f"counters {want} in busctl status")


def test_shipped_examples_are_valid(tmp_path: Path) -> None:
    """The commented DRBD tables of conf/busd.toml and the umh example of docs/operators.md load."""
    config = shipped_example(tmp_path, "drbd-events", "drbd", "umh")
    assert [config.plugins[n].builtin for n in ("drbd-events", "drbd", "umh")] == ["drbd", "drbd", "umh"]
    assert len(config.plugins["umh"].table["rules"]) == 2 and len(config.plugins["umh"].table["device"]) == 1
    docs = (ROOT / "docs" / "operators.md").read_text()
    conf = tmp_path / "docs.toml"
    example = next(b for b in re.findall(r"```toml\n(.*?)```", docs, re.S) if 'builtin = "umh"' in b)
    conf.write_text(example)
    umh_table = load(conf).plugins["umh"].table
    assert umh_table["resource"][0]["old"] == {"role": "Secondary"} and len(umh_table["rules"]) == 3

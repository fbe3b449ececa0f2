"""Receiver ``promoter`` against fake drbdadm/drbdsetup/systemctl that record their calls.

Synthetic DRBD events come from ``drbd_events`` (shaped like the drbd parser's contract); most
tests drive the plugin class on an event loop, one runs it under a real busd with ``bus-emit``.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Bus, async_wait_for, shipped_example, wait_for
from drbd_events import changed, connection, device, drbd_event, may_promote, peer_device, quorum, resource, role
from fakecmd import FakeTools

from bus.config import load
from bus.ctl_promoter import format_status
from bus.exceptions import ConfigError
from receivers.promoter import Promoter, ResourceConfig, check_options, sleep_before_promote

UNITS = ["a.service", "b.service", "c.service"]


def make(tmp_path: Path, tools: FakeTools, resources: dict[str, Any], *, hostname: str = "node1",
         name: str = "promoter", **options: Any) -> Promoter:
    """A promoter instance as busd would start it (status files under tmp_path/run)."""
    table = {"type": "receiver", "builtin": "promoter", "resources": resources, "monitor_interval": 0,
             **tools.options(), **options}
    return Promoter({"BUS_PLUGIN": name, "BUS_HOSTNAME": hostname, "BUS_PLUGIN_CONFIG": json.dumps(table),
                     "BUS_RUNTIME_DIR": str(tmp_path / "run")})


def res(**table: Any) -> dict[str, Any]:
    """A resource table with three units and no ``drbdadm adjust`` at start (unless given)."""
    return {"start": UNITS, "adjust-resource-on-start": False, **table}


def scenario(plugins: list[Promoter], body: Callable[[], Awaitable[None]]) -> None:
    """Run ``body`` with the plugins set up, then tear them down."""
    async def main() -> None:
        for p in plugins:
            await p.setup()
        try:
            await body()
        finally:
            for p in plugins:
                async with asyncio.timeout(20):  # a lost cancellation fails here, not at pytest's 120 s
                    await p.teardown()
    asyncio.run(main())


def promoted(p: Promoter, st: dict[str, Any]) -> dict[str, Any]:
    """Feed the initial Secondary state and may_promote; return the state after the role change."""
    p.handle(drbd_event("DRBD_INITIAL_STATE", st, action="exists"))
    event, st = may_promote(st)
    p.handle(event)
    return st


def status_of(tmp_path: Path, name: str = "promoter") -> dict[str, Any]:
    return dict(json.loads((tmp_path / "run" / "status" / f"{name}.json").read_text()))


async def recorded(tmp_path: Path, action: str, resource: str = "r0", name: str = "promoter") -> dict[str, Any]:
    """Await the resource's last action becoming ``action`` (its commands ran before); return the resource."""
    def done() -> dict[str, Any] | None:
        entry: dict[str, Any] = status_of(tmp_path, name)["resources"][resource]
        return entry if (entry["last_action"] or {}).get("action") == action and not entry["busy"] else None
    return dict(await async_wait_for(done, what=f"action {action} of {resource}"))


def test_may_promote_promotes_then_starts_units_in_order(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "bin")
    p = make(tmp_path, tools, {"r0": res(**{"adjust-resource-on-start": True})})

    async def body() -> None:
        await async_wait_for(lambda: tools.calls() == ["drbdadm adjust r0"], what="adjust at start")
        st = resource("r0")
        p.handle(drbd_event("DRBD_INITIAL_STATE", st, action="exists"))
        p.handle(drbd_event("DRBD_PEER_ROLE_CHANGED", changed(st, promotion_score=1)))  # not promotable: nothing
        await asyncio.sleep(0.1)
        assert tools.calls() == ["drbdadm adjust r0"]
        event, st = may_promote(st)
        p.handle(event)
        await async_wait_for(lambda: len(tools.calls()) == 5, what="promote and three starts")
        assert tools.calls() == ["drbdadm adjust r0", "drbdadm primary r0", "systemctl start a.service",
                                 "systemctl start b.service", "systemctl start c.service"]
        await recorded(tmp_path, "promote")
        event, st = role(st, "Primary")
        p.handle(event)
        p.handle(event)  # delivered twice (at least once): no second start
        await asyncio.sleep(0.1)
        assert len(tools.calls()) == 5
        r0 = status_of(tmp_path)["resources"]["r0"]
        assert r0["role"] == "Primary" and r0["may_promote"] is False and r0["active"] is True
        assert r0["services"] == [{"name": u, "state": "started"} for u in UNITS]
        assert r0["last_action"]["action"] == "promote" and r0["last_action"]["ok"] is True
        assert r0["last_action"]["reason"] == "may promote"

    scenario([p], body)


def test_quorum_lost_stops_in_reverse_then_demotes(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "bin")
    p = make(tmp_path, tools, {"r0": res()})

    async def body() -> None:
        st = promoted(p, resource("r0"))
        await async_wait_for(lambda: len(tools.calls()) == 4, what="started")
        event, st = role(st, "Primary")
        p.handle(event)
        event, st = quorum(st, False)
        assert event["event_type"] == "DRBD_QUORUM_LOST"
        p.handle(event)
        r0 = await recorded(tmp_path, "quorum-lost")
        assert tools.calls()[4:] == ["systemctl stop c.service", "systemctl stop b.service",
                                     "systemctl stop a.service", "drbdadm secondary r0"]
        assert r0["last_action"]["action"] == "quorum-lost" and r0["last_action"]["ok"] is True
        assert r0["last_action"]["reason"] == "volume 0 lost quorum"
        assert {s["state"] for s in r0["services"]} == {"stopped"} and r0["quorum"] is False

    scenario([p], body)


def test_quorum_lost_on_a_secondary_does_nothing(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "bin")
    p = make(tmp_path, tools, {"r0": res()})

    async def body() -> None:
        st = resource("r0", connections=[connection("node2", peer_role="Primary")])
        p.handle(drbd_event("DRBD_INITIAL_STATE", st, action="exists"))
        p.handle(quorum(st, False)[0])
        await async_wait_for(lambda: (status_of(tmp_path)["resources"]["r0"]["last_action"] or {}).get("action"))
        assert status_of(tmp_path)["resources"]["r0"]["last_action"]["detail"] == "nothing runs here"
        assert tools.calls() == []

    scenario([p], body)


def test_primary_at_start_is_adopted(tmp_path: Path) -> None:
    """busd restarted while r0 is Primary here: the units are started again (a no-op if active), then managed."""
    tools = FakeTools(tmp_path / "bin")
    p = make(tmp_path, tools, {"r0": res()})

    async def body() -> None:
        st = resource("r0", "Primary")
        p.handle(drbd_event("DRBD_INITIAL_STATE", st, action="exists"))
        r0 = await recorded(tmp_path, "adopt")
        assert tools.calls() == [f"systemctl start {u}" for u in UNITS]
        assert r0["active"] is True and r0["last_action"]["reason"] == "Primary when the promoter started"
        p.handle(quorum(st, False)[0])
        await recorded(tmp_path, "quorum-lost")
        assert tools.calls()[3:] == [*(f"systemctl stop {u}" for u in reversed(UNITS)), "drbdadm secondary r0"]

    scenario([p], body)


def test_start_failure_rolls_back_and_demotes(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "bin")
    tools.fail("systemctl start c.service")
    p = make(tmp_path, tools, {"r0": res()})

    async def body() -> None:
        promoted(p, resource("r0"))
        r0 = await recorded(tmp_path, "start")
        assert tools.calls() == ["drbdadm primary r0", "systemctl start a.service", "systemctl start b.service",
                                 "systemctl start c.service", "systemctl stop b.service",
                                 "systemctl stop a.service", "drbdadm secondary r0"]
        assert r0["last_action"]["ok"] is False and "start of c.service failed" in r0["last_action"]["detail"]
        assert [s["state"] for s in r0["services"]] == ["stopped", "stopped", "failed"]
        assert r0["active"] is False

    scenario([p], body)


def test_demote_failure_forces_then_escalates(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "bin")
    tools.fail("drbdadm secondary r0", "drbdsetup secondary --force r0")
    p = make(tmp_path, tools, {"r0": res(start=["a.service"], **{"on-drbd-demote-failure": "reboot-immediate"})})

    async def body() -> None:
        st = promoted(p, resource("r0"))
        await async_wait_for(lambda: len(tools.calls()) == 2)
        p.handle(role(st, "Primary")[0])
        st = role(st, "Primary")[1]
        p.handle(quorum(st, False)[0])
        history = (await recorded(tmp_path, "quorum-lost"))["history"]
        assert tools.calls()[2:] == ["systemctl stop a.service", "drbdadm secondary r0",
                                     "drbdsetup secondary --force r0", "systemctl reboot --force --force"]
        assert [h["action"] for h in history[-2:]] == ["on-drbd-demote-failure", "quorum-lost"]
        assert history[-1]["ok"] is False and history[-1]["detail"].endswith("demote failed")

    scenario([p], body)


def test_sleep_before_promote_by_disk_state_and_factor(tmp_path: Path) -> None:
    cfg = ResourceConfig.from_table("r0", {"sleep-before-promote-factor": 2})
    states = {"Diskless": 6, "Attaching": 6, "Detaching": 6, "Failed": 6, "Negotiating": 6, "DUnknown": 6,
              "Inconsistent": 3, "Outdated": 2, "Consistent": 1, "UpToDate": 0}
    for disk, seconds in states.items():
        st = resource(devices=[device(0, "UpToDate"), device(1, disk)])  # the worst volume counts
        assert sleep_before_promote(st, cfg, "node1") == seconds * 2, disk
    preferred = ResourceConfig.from_table("r0", {"preferred-nodes": ["n1", "n2", "n3"]})
    st = resource(devices=[device(0, "Outdated")])
    assert [sleep_before_promote(st, preferred, h) for h in ("n1", "n2", "n3", "other")] == [2, 3, 4, 5]
    freeze = ResourceConfig.from_table("r0", {"on-quorum-loss": "freeze"})
    assert sleep_before_promote(st, freeze, "node1") == 2 + 2

    tools = FakeTools(tmp_path / "bin")
    p = make(tmp_path, tools, {"r0": res(start=["a.service"], **{"sleep-before-promote-factor": 0.1}),
                               "r1": res(start=["b.service"], **{"sleep-before-promote-factor": 0.1})})

    async def body() -> None:
        started = time.time()
        promoted(p, resource("r0", devices=[device(0, "Inconsistent")]))  # 3 s x 0.1
        promoted(p, resource("r1"))  # UpToDate: at once
        await async_wait_for(lambda: len(tools.calls()) == 4)
        times = {call: t - started for t, call in tools.timed_calls()}
        assert times["drbdadm primary r1"] < 0.25
        assert times["drbdadm primary r0"] >= 0.3
        assert tools.calls().index("drbdadm primary r1") < tools.calls().index("drbdadm primary r0")

    scenario([p], body)


def test_no_promotion_when_no_longer_promotable_after_the_sleep(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "bin")
    p = make(tmp_path, tools, {"r0": res(**{"sleep-before-promote-factor": 0.1})})

    async def body() -> None:
        st = promoted(p, resource("r0", devices=[device(0, "Outdated")]))  # waits 0.2 s
        await async_wait_for(lambda: "waiting" in status_of(tmp_path)["resources"]["r0"]["busy"], what="busy waiting")
        p.handle(may_promote(st, False)[0])  # a peer won meanwhile
        await async_wait_for(lambda: status_of(tmp_path)["resources"]["r0"]["last_action"], what="an action")
        last = status_of(tmp_path)["resources"]["r0"]["last_action"]
        assert last["ok"] is False and last["detail"].startswith("skipped: no longer promotable")
        assert tools.calls() == []

    scenario([p], body)


def test_preferred_node_wins_and_hands_back(tmp_path: Path) -> None:
    """node1 (preferred) promotes at once; node2 would wait 1 s x factor and sees node1 Primary first."""
    t1, t2 = FakeTools(tmp_path / "n1"), FakeTools(tmp_path / "n2")
    table = res(start=["a.service"], **{"preferred-nodes": ["node1", "node2"], "sleep-before-promote-factor": 0.3})
    n1 = make(tmp_path, t1, {"r0": table}, hostname="node1", name="p1")
    n2 = make(tmp_path, t2, {"r0": table}, hostname="node2", name="p2")

    async def body() -> None:
        started = time.time()
        promoted(n1, resource("r0", connections=[connection("node2")]))
        st2 = promoted(n2, resource("r0", connections=[connection("node1")]))
        await async_wait_for(lambda: t1.calls() == ["drbdadm primary r0", "systemctl start a.service"], what="node1")
        assert t1.timed_calls()[0][0] - started < 0.25
        # DRBD on node2 sees node1 Primary: no longer promotable, before node2's 0.3 s are over
        n2.handle(drbd_event("DRBD_MAY_PROMOTE_CHANGED", changed(st2, may_promote=False), before=st2))
        await async_wait_for(lambda: status_of(tmp_path, "p2")["resources"]["r0"]["last_action"], what="node2 gives up")
        assert t2.calls() == []
        assert "skipped" in status_of(tmp_path, "p2")["resources"]["r0"]["last_action"]["detail"]

        # policy "always": when node1 fails, node2 takes over; once node1 is back UpToDate, node2 hands back
        st2 = changed(st2, may_promote=True)
        n2.handle(drbd_event("DRBD_MAY_PROMOTE_CHANGED", st2, before=changed(st2, may_promote=False)))
        await async_wait_for(lambda: len(t2.calls()) == 2, what="node2 promotes")
        assert time.time() - started >= 0.3  # node2 waited its 1 s x 0.3
        back = resource("r0", "Primary", connections=[connection("node1", state="Connecting",
                                                                 peer_devices=[peer_device(0, "DUnknown")])])
        n2.handle(drbd_event("DRBD_ROLE_CHANGED", back, before=st2))
        n2.handle(drbd_event("DRBD_PEER_DISK_STATE_CHANGED", resource("r0", "Primary", connections=[connection("node1")]),
                             before=back,
                             object="peer-device", volume=0, peer_node_id=1, conn_name="node1"))
        last = (await recorded(tmp_path, "hand-over", name="p2"))["last_action"]
        assert t2.calls()[2:] == ["systemctl stop a.service", "drbdadm secondary r0"]
        assert last["action"] == "hand-over" and last["reason"] == "more preferred node node1 is UpToDate"

    scenario([n1, n2], body)


def test_second_resource_is_independent(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "bin")
    p = make(tmp_path, tools, {"r0": res(**{"sleep-before-promote-factor": 0.5}),
                               "r1": res(start=["x.service", "y.service"])})

    async def body() -> None:
        promoted(p, resource("r0", devices=[device(0, "Consistent")]))  # r0 waits 0.5 s
        s1 = promoted(p, resource("r1"))  # r1 goes on meanwhile
        await async_wait_for(lambda: "systemctl start y.service" in tools.calls(), what="r1 started")
        assert "drbdadm primary r0" not in tools.calls()
        p.handle(quorum(role(s1, "Primary")[1], False)[0])
        await recorded(tmp_path, "quorum-lost", "r1")
        await recorded(tmp_path, "promote", "r0")
        calls = tools.calls()
        assert [c for c in calls if "r0" in c or c.split()[-1] in UNITS] == [
            "drbdadm primary r0", "systemctl start a.service", "systemctl start b.service", "systemctl start c.service"]
        assert [c for c in calls if "r1" in c or c.split()[-1] in ("x.service", "y.service")] == [
            "drbdadm primary r1", "systemctl start x.service", "systemctl start y.service",
            "systemctl stop y.service", "systemctl stop x.service", "drbdadm secondary r1"]
        status = status_of(tmp_path)["resources"]
        assert status["r0"]["active"] is True and status["r1"]["active"] is False
        p.handle(drbd_event("DRBD_EVENT_OF_AN_UNCONFIGURED_RESOURCE", resource("other", may_promote=True)))
        await asyncio.sleep(0.05)
        assert not any("other" in c for c in tools.calls())

    scenario([p], body)


def test_freeze_on_quorum_loss_thaw_and_forced_secondary(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "bin")
    p = make(tmp_path, tools, {"r0": res(start=["data.mount", "a.service", "b.service"],
                                         **{"on-quorum-loss": "freeze", "sleep-before-promote-factor": 0})})

    async def body() -> None:
        st = promoted(p, resource("r0"))
        await async_wait_for(lambda: len(tools.calls()) == 4)
        event, st = role(st, "Primary")
        p.handle(event)
        event, st = quorum(st, False)
        p.handle(event)
        await async_wait_for(lambda: len(tools.calls()) == 6, what="freeze")
        assert tools.calls()[4:] == ["systemctl freeze b.service", "systemctl freeze a.service"]  # not the mount
        event, st = quorum(st, True)
        p.handle(event)
        await async_wait_for(lambda: len(tools.calls()) == 8, what="thaw")
        assert tools.calls()[6:] == ["systemctl thaw a.service", "systemctl thaw b.service"]
        event, st = quorum(st, False)
        p.handle(event)
        await async_wait_for(lambda: len(tools.calls()) == 10, what="frozen again")
        p.handle(role(st, "Secondary")[0])  # on-suspended-primary-outdated force-secondary
        await async_wait_for(lambda: len(tools.calls()) == 13, what="stopped")
        assert tools.calls()[10:] == ["systemctl stop b.service", "systemctl stop a.service",
                                      "systemctl stop data.mount"]
        assert "drbdadm secondary r0" not in tools.calls()

    scenario([p], body)


def test_failed_service_stops_and_demotes(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "bin")
    p = make(tmp_path, tools, {"r0": res()}, monitor_interval=0.1)

    async def body() -> None:
        st = promoted(p, resource("r0"))
        await async_wait_for(lambda: len(tools.calls()) == 4)
        p.handle(role(st, "Primary")[0])
        await async_wait_for(lambda: "systemctl is-active c.service" in tools.calls(skip=()), what="a monitor round")
        assert len(tools.calls()) == 4
        tools.fail("systemctl is-active b.service")
        last = (await recorded(tmp_path, "service-failed"))["last_action"]
        assert tools.calls()[4:] == ["systemctl stop c.service", "systemctl stop b.service",
                                     "systemctl stop a.service", "drbdadm secondary r0"]
        assert last["action"] == "service-failed" and last["reason"].startswith("b.service is not active")

    scenario([p], body)


def test_shell_runner_and_stop_on_exit(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "bin")
    out = tmp_path / "out"
    table = {"runner": "shell", "adjust-resource-on-start": False, "stop-services-on-exit": True,
             "start": [f"echo start1 >> {out}", f"echo start2 >> {out}"], "stop": [f"echo stop >> {out}"]}
    p = make(tmp_path, tools, {"r0": table})

    async def body() -> None:
        st = promoted(p, resource("r0"))
        await async_wait_for(lambda: out.exists() and out.read_text() == "start1\nstart2\n", what="shell starts")
        p.handle(role(st, "Primary")[0])

    scenario([p], body)
    assert out.read_text() == "start1\nstart2\nstop\n"  # teardown stopped and demoted
    assert tools.calls() == ["drbdadm primary r0", "drbdadm secondary r0"]


def test_malformed_state_is_counted_and_skipped(tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "bin")
    p = make(tmp_path, tools, {"r0": res()})

    async def body() -> None:
        p.handle(drbd_event("DRBD_MAY_PROMOTE_CHANGED", {**resource("r0", may_promote=True), "devices": "sdb"}))
        event = drbd_event("DRBD_MAY_PROMOTE_CHANGED", resource("r0", may_promote=True))
        event["extensions"]["state"] = "not a map"
        p.handle(event)
        assert p.counters == {"bad_state": 2}
        promoted(p, resource("r0"))  # good states still work
        await recorded(tmp_path, "promote")

    scenario([p], body)


@pytest.mark.parametrize(("table", "message"), [
    ({"strat": ["a.service"]}, "resources.r0.strat: unknown key"),
    ({"start": "a.service"}, "resources.r0.start: must be an array"),
    ({"runner": "shell", "start": ["true"]}, "resources.r0.stop: required with runner"),
    ({"start": ["ocf:heartbeat:IPaddr2 ip ip=1.2.3.4"]}, "OCF resource agents"),
    ({"runner": "shell", "start": ["true"], "stop": ["true"], "on-quorum-loss": "freeze"}, "freeze needs runner"),
    ({"on-quorum-loss": "panic"}, "'panic' is not one of shutdown, freeze"),
    ({"on-drbd-demote-failure": "explode"}, "is not one of none, reboot"),
    ({"sleep-before-promote-factor": -1}, "must not be negative"),
])
def test_bad_resource_tables(tmp_path: Path, table: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_options({"resources": {"r0": table}, "command_timeout": 1, "retry_interval": 1, "monitor_interval": 0})
    conf = tmp_path / "busd.toml"
    conf.write_text('[plugins.p]\ntype = "receiver"\nbuiltin = "promoter"\n[plugins.p.resources.r0]\n'
                    + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()))
    with pytest.raises(ConfigError, match=r"plugins\.p\.resources\.r0\."):
        load(conf)


def test_drbd_reactor_table_translates(tmp_path: Path) -> None:
    conf = tmp_path / "busd.toml"
    conf.write_text("""
[plugins.promoter]
type = "receiver"
builtin = "promoter"
[plugins.promoter.resources.foo]
start = ["foo.mount", "foo.service"]
dependencies-as = "Requires"
target-as = "Wants"
on-drbd-demote-failure = "reboot"
sleep-before-promote-factor = 2
preferred-nodes = ["alpha", "beta"]
secondary-force = false
""")
    plugin = load(conf).plugins["promoter"]
    assert plugin.filter.match_fields("synthetic", "drbd", "info", "DRBD_ROLE_CHANGED")
    assert not plugin.filter.match_fields("synthetic", "scsi", "info", "SCSI_ERROR")
    p = Promoter({"BUS_PLUGIN": "promoter", "BUS_PLUGIN_CONFIG": plugin.table_json()})
    assert p.filter == plugin.filter  # the SDK applies the built-in's default filter as busd does


def test_format_status() -> None:
    entry = {"plugin": "promoter", "hostname": "node1", "updated": 100.0, "resources": {"r0": {
        "role": "Primary", "may_promote": False, "quorum": True, "disk_states": ["UpToDate"], "runner": "systemd",
        "busy": "", "services": [{"name": "a.service", "state": "started"}],
        "last_action": {"time": 90.0, "action": "promote", "ok": True, "reason": "may promote",
                        "detail": "promoted after 0 s, started 1 services"}}}}
    text = format_status(entry, now=103.0)
    assert "promoter on node1 (status of 3 s ago)" in text
    assert "r0: Primary, may promote: no, quorum: yes, disks: UpToDate" in text
    assert "services (systemd): a.service started" in text
    assert "promote ok (may promote): promoted after 0 s" in text


def test_status_of_an_instance_that_wrote_none_yet(bus: Bus, tmp_path: Path) -> None:
    """busctl shows an instance without a status file as such (one line, the same for every built-in)."""
    tools = FakeTools(tmp_path / "bin")
    bus.write({"promoter": {"type": "receiver", "builtin": "promoter", **tools.options()}},
              extra='\n[plugins.promoter.resources.r0]\nstart = ["a.service"]\n')
    shown = bus.run("busctl", "promoter", "status").stdout
    assert shown == "promoter: no status yet (is busd running it?)\n"
    assert json.loads(bus.run("busctl", "promoter", "status", "--json").stdout) == [
        {"plugin": "promoter", "missing": True}]


def test_end_to_end_through_busd(bus: Bus, tmp_path: Path) -> None:
    """Events pushed with bus-emit reach the promoter; busctl promoter status shows the outcome."""
    tools = FakeTools(tmp_path / "bin")
    bus.write({"promoter": {"type": "receiver", "builtin": "promoter", **tools.options()}},
              extra='\n[plugins.promoter.resources.r0]\nstart = ["a.service", "b.service"]\n'
                    'adjust-resource-on-start = false\n')
    bus.start()
    bus.wait_running("promoter")
    st = resource("r0")
    event, st = may_promote(st)
    noise = {"system": "scsi", "event_type": "SCSI_ERROR", "kind": "synthetic", "dev_name": "sdb"}
    bus.emit([noise, drbd_event("DRBD_INITIAL_STATE", resource("r0"), action="exists"), event])
    wait_for(lambda: len(tools.calls()) == 3, what="promote and starts")
    event, st = role(st, "Primary")
    bus.emit([event, quorum(st, False)[0]])

    def status() -> list[dict[str, Any]]:
        return list(json.loads(bus.run("busctl", "promoter", "status", "--json").stdout))

    out = wait_for(lambda: (s := status()) and len(s[0]["resources"]["r0"]["history"]) == 2 and s,
                   what="two actions in busctl promoter status")
    assert tools.calls() == ["drbdadm primary r0", "systemctl start a.service", "systemctl start b.service",
                             "systemctl stop b.service", "systemctl stop a.service", "drbdadm secondary r0"]
    assert bus.plugin("promoter")["dropped"] == {}  # no handle() failed, the scsi event included
    r0 = out[0]["resources"]["r0"]
    assert out[0]["plugin"] == "promoter" and out[0]["hostname"] == "testhost"
    assert [h["action"] for h in r0["history"]] == ["promote", "quorum-lost"]
    assert r0["services"] == [{"name": "a.service", "state": "stopped"}, {"name": "b.service", "state": "stopped"}]
    text = bus.run("busctl", "promoter", "status").stdout
    assert "r0: Primary, may promote: no, quorum: no" in text
    assert "quorum-lost ok (volume 0 lost quorum): stopped services, demoted" in text


def test_example_tables_load(tmp_path: Path) -> None:
    """The commented promoter and prometheus tables of conf/busd.toml and docs/operators.md load."""
    config = shipped_example(tmp_path, "promoter", "prometheus")
    assert config.plugins["promoter"].table["resources"]["r0"]["preferred-nodes"] == ["alpha", "beta"]
    assert config.plugins["prometheus"].builtin == "prometheus"
    docs = (ROOT / "docs" / "operators.md").read_text()
    conf = tmp_path / "docs.toml"
    for name in ("promoter", "prometheus"):
        block = re.search(rf"```toml\n(\[plugins\.{name}\]\n.*?)```", docs, re.S)
        assert block, name
        conf.write_text(block.group(1))
        assert load(conf).plugins[name].builtin == name

"""Receiver ``pgcluster``: the agreement rule, the cluster view, the CURVE inquiry, keygen, and busd end to end."""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import zmq.asyncio
from conftest import BIN, ROOT, shipped_example, wait_for
from pgbus import Buses, Peers, make_keys
from pgcluster import free_port
from test_postgres import REPMGR_NODES
from test_postgres import down as pg_down
from test_postgres import parser as pg_parser
from test_postgres import state as pg_state

from bus.config import load, plugin_options
from receivers._inquiry import InquiryClient, InquiryError, InquiryServer, load_keys, load_public_key
from receivers.pgcluster import Answer, ClusterView, PgCluster, check_options, consult

# -- the rule ------------------------------------------------------------------------------------


def view(node: str, role: str, primary: str, primaries: list[str] | None = None) -> dict[str, Any]:
    """A view as a peer answers it."""
    if primaries is None:
        primaries = [primary] if primary and (role == "primary" or role == "witness") else []
        if role == "primary":
            primaries = [node]
    return {"node": node, "role": role, "primary": primary, "primaries": primaries,
            "split_brain": len(primaries) > 1, "standbys": [], "down": [], "witness": "w", "nodes": {}}


def decide(local: dict[str, Any], peers: dict[str, dict[str, Any] | None], neighbours: list[str],
           witness: str = "w") -> tuple[Any, list[str]]:
    """Run the rule; ``peers[name]`` is its view, or ``None`` when it is unreachable. Returns (decision, asked)."""
    asked: list[str] = []

    async def ask(name: str) -> Answer:
        asked.append(name)
        kind = "witness" if name == witness else "neighbour"
        answer = peers.get(name)
        if answer is None:
            return Answer(name, kind, f"tcp://{name}", False, error=f"{name}: no answer within 0.3 s")
        return Answer(name, kind, f"tcp://{name}", True, view=answer)

    return asyncio.run(consult(local, neighbours, witness, ask)), asked


def test_neighbour_agrees_so_the_primary_takes_writes_and_the_witness_is_not_asked() -> None:
    d, asked = decide(view("node1", "primary", "node1"), {"node2": view("node2", "standby", "node1")}, ["node2"])
    assert (d.outcome, d.allow_reads, d.primary, d.rule, d.severity()) == ("allow_writes", True, "node1",
                                                                           "neighbour_agrees", "info")
    assert asked == ["node2"] and d.answers[0]["agrees"] is True and d.answers[0]["primary"] == "node1"


def test_an_agreeing_standby_denies_writes_but_serves_reads() -> None:
    d, _ = decide(view("node2", "standby", "node1"), {"node1": view("node1", "primary", "node1")}, ["node1"])
    assert (d.outcome, d.allow_reads, d.primary, d.rule) == ("deny_writes", True, "node1", "neighbour_agrees")


def test_unreachable_neighbour_then_witness() -> None:
    local = view("node2", "primary", "node2")
    d, asked = decide(local, {"node1": None, "w": view("w", "witness", "node2", ["node2"])}, ["node1"])
    assert (d.outcome, d.rule, asked) == ("allow_writes", "witness_agrees", ["node1", "w"])
    assert d.answers[0] == {"peer": "node1", "kind": "neighbour", "endpoint": "tcp://node1", "ok": False,
                            "error": "node1: no answer within 0.3 s", "agrees": False}
    # an unreachable neighbour is skipped: the next one may agree, and then the witness is not asked
    d, asked = decide(local, {"node1": None, "node3": view("node3", "standby", "node2")}, ["node1", "node3"])
    assert (d.rule, asked) == ("neighbour_agrees", ["node1", "node3"])


def test_a_disagreeing_neighbour_sends_us_to_the_witness_at_once() -> None:
    local = view("node2", "primary", "node2")
    peers = {"node1": view("node1", "down", ""), "node3": view("node3", "standby", "node2"),
             "w": view("w", "witness", "node2", ["node2"])}
    d, asked = decide(local, peers, ["node1", "node3"])
    assert (d.outcome, d.rule, asked) == ("allow_writes", "witness_agrees", ["node1", "w"])
    assert d.answers[0]["agrees"] is False


@pytest.mark.parametrize(("witness_view", "rule"), [(None, "witness_unreachable"),
                                                    (view("w", "witness", "node1", ["node1"]), "witness_disagrees"),
                                                    (view("w", "witness", "", []), "witness_disagrees")])
def test_no_agreement_denies_writes_and_reads(witness_view: dict[str, Any] | None, rule: str) -> None:
    d, asked = decide(view("node2", "primary", "node2"), {"node1": None, "w": witness_view}, ["node1"])
    assert (d.outcome, d.allow_reads, d.primary, d.rule, d.severity()) == ("deny_writes", False, "", rule, "warn")
    assert asked == ["node1", "w"] and not d.split_brain


def test_no_witness_configured() -> None:
    d, asked = decide(view("node1", "primary", "node1"), {"node2": None}, ["node2"], witness="")
    assert (d.outcome, d.rule, asked) == ("deny_writes", "no_witness", ["node2"])


def test_a_view_without_primary_asks_nobody() -> None:
    d, asked = decide(view("node1", "down", ""), {}, ["node2"])
    assert (d.outcome, d.allow_reads, d.rule, asked) == ("deny_writes", False, "local_unknown", [])


def test_split_brain_two_nodes_claim_primary() -> None:
    # the old primary came back as a primary: its neighbour (a primary too) disagrees; the witness agrees
    # with us because it has not seen node1 yet, but node1's own claim is enough
    local = view("node2", "primary", "node2")
    d, _ = decide(local, {"node1": view("node1", "primary", "node1"), "w": view("w", "witness", "node2", ["node2"])},
                  ["node1"])
    assert (d.outcome, d.allow_reads, d.rule, d.split_brain, d.primaries, d.severity()) == (
        "deny_writes", False, "split_brain", True, ["node1", "node2"], "error")
    assert "node1 and node2 claim primary" in d.reason
    # the witness sees both
    d, _ = decide(local, {"node1": None, "w": view("w", "witness", "", ["node1", "node2"])}, ["node1"])
    assert (d.outcome, d.rule, d.split_brain) == ("deny_writes", "split_brain", True)
    # our own view sees both: nobody is asked
    d, asked = decide(view("node2", "primary", "", ["node1", "node2"]), {}, ["node1"])
    assert (d.rule, d.split_brain, asked) == ("split_brain", True, [])


def test_only_a_neighbours_claim_about_itself_counts() -> None:
    # node3's view of node1 is old; it is not node1's claim
    local = view("node2", "primary", "node2")
    stale = view("node3", "standby", "node1", ["node1"])
    d, _ = decide(local, {"node3": stale, "w": view("w", "witness", "node2", ["node2"])}, ["node3"])
    assert (d.outcome, d.rule, d.split_brain) == ("allow_writes", "witness_agrees", False)


def test_options() -> None:
    base = {"listen": "tcp://127.0.0.1:1", "secret_key": "k"}
    check_options(plugin_options("receiver", "pgcluster", base))
    for bad, match in [({"listen": "ipc:///x"}, "listen"), ({"neighbours": [{"name": "a"}]}, r"neighbours\[0\]"),
                       ({"witness": {"name": "w", "endpoint": "udp://x", "public_key": "k"}}, "witness.endpoint"),
                       ({"neighbours": [{"name": "a", "endpoint": "tcp://x:1", "public_key": "k", "x": 1}]}, "x"),
                       ({"timeout": 0}, "timeout")]:
        with pytest.raises(ValueError, match=match):
            check_options(plugin_options("receiver", "pgcluster", {**base, **bad}))


# -- the view ------------------------------------------------------------------------------------


def pg(event_type: str, node: str, role: str, primary: str, nodes: dict[str, str]) -> dict[str, Any]:
    """A synthetic event of the postgres parser, with the view it carries (``nodes``: name to role)."""
    primaries = sorted(n for n, r in nodes.items() if r == "primary")
    summary = {n: {"role": r, "up": r != "down", "timeline": 1, "lsn": "0/3000060", "last_seen": 1000.0}
               for n, r in nodes.items()}
    return {"system": "postgres", "event_type": event_type, "dev_name": node, "dev_wwid": f"7300:{node}",
            "extensions": {"node": node, "role": role, "primary": primary, "primary_source": "polled",
                           "primaries": primaries if len(primaries) > 1 else [], "split_brain": len(primaries) > 1,
                           "repmgr_nodes": [], "nodes": summary}}


def test_view_from_the_postgres_parser() -> None:
    p = pg_parser()
    v = ClusterView()

    def feed(raw: dict[str, Any]) -> bool:
        changed = False
        for event in p.handle(raw) or []:
            changed = v.observe(event) or changed
        return changed

    with_witness = [*REPMGR_NODES, {"node_id": 3, "node_name": "w", "type": "witness", "active": True}]
    assert feed(pg_state("node1", "primary", repmgr=with_witness))
    assert feed(pg_state("node2", "standby", repmgr=with_witness))
    snap = v.snapshot("node2", "node", "host2")
    assert (snap["role"], snap["primary"], snap["primaries"], snap["standbys"], snap["witness"], snap["split_brain"]) == (
        "standby", "node1", ["node1"], ["node2"], "w", False)
    assert snap["nodes"]["node1"]["timeline"] == 1 and v.wwids["node1"].endswith(":1")
    assert not feed(pg_state("node2", "standby", repmgr=with_witness))  # nothing new: the parser says nothing
    assert not v.observe({"event_type": "PG_ROUTING_DECISION", "dev_name": "node2", "extensions": {"nodes": {}}})
    assert not v.observe({"event_type": "PG_UP", "dev_name": "node2", "extensions": {"role": "primary"}})
    # the primary stops, the standby is promoted
    assert feed(pg_down("node1"))
    assert v.snapshot("node2", "node", "h")["primary"] == ""
    assert feed(pg_state("node2", "primary", timeline=2))
    snap = v.snapshot("node2", "node", "h")
    assert (snap["role"], snap["primary"], snap["primaries"], snap["down"]) == ("primary", "node2", ["node2"], ["node1"])
    # the old primary is back as a primary: split brain, no primary
    assert feed(pg_state("node1", "primary"))
    snap = v.snapshot("w", "witness", "h")
    assert (snap["role"], snap["primary"], snap["primaries"], snap["split_brain"]) == (
        "witness", "", ["node1", "node2"], True)
    assert ClusterView.load(json.loads(json.dumps(v.dump()))) == v
    # a busd that polls only a standby believes repmgr for the primary
    v2 = ClusterView()
    p2 = pg_parser()
    for raw in (pg_state("node2", "standby"), pg_state("node2", "standby", lag_bytes=8)):
        for event in p2.handle(raw) or []:  # the second poll too: a primary only named by repmgr is not down
            v2.observe(event)
    snap = v2.snapshot("node2", "node", "h")
    assert (snap["role"], snap["primary"], snap["primary_source"], snap["primaries"]) == (
        "standby", "node1", "repmgr", [])


# -- the inquiry transport -----------------------------------------------------------------------


@pytest.fixture(name="keys")
def fixture_keys(tmp_path: Path) -> Path:
    make_keys(tmp_path, ["a", "b", "stranger"])
    return tmp_path


def test_curve_inquiry_accepts_only_configured_keys(keys: Path) -> None:
    port = free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    ap, asec = load_keys(keys / "a.key_secret")
    bp, bsec = load_keys(keys / "b.key_secret")
    sp, ssec = load_keys(keys / "stranger.key_secret")
    assert load_public_key(keys / "a.key") == ap
    with pytest.raises(ValueError, match="no secret key"):
        load_keys(keys / "a.key")
    with pytest.raises(ValueError, match="cannot read"):
        load_keys(keys / "missing")
    os.chmod(keys / "stranger.key_secret", 0o640)  # group-readable: others could pass for this node
    with pytest.raises(ValueError, match=r"readable by its owner only \(mode 0640\): chmod 600"):
        load_keys(keys / "stranger.key_secret")
    os.chmod(keys / "stranger.key_secret", 0o600)
    asked: list[tuple[str, Any]] = []

    async def answer(peer: str, request: dict[str, Any]) -> dict[str, Any]:
        asked.append((peer, request["from"]))
        return {"node": "a", "primary": "a"}

    async def main() -> None:
        ctx = zmq.asyncio.Context.instance()
        server = InquiryServer(ctx, endpoint, ap, asec, {bp: "b"}, answer, structlog.get_logger())
        server.start()
        good = InquiryClient(ctx, "a", endpoint, ap, bp, bsec)
        stranger = InquiryClient(ctx, "a", endpoint, ap, sp, ssec)
        wrong_server_key = InquiryClient(ctx, "a", endpoint, sp, bp, bsec)
        try:
            assert await good.ask({"from": "b"}, 2.0) == {"node": "a", "primary": "a"}
            assert asked == [("b", "b")]  # the peer is named from its authenticated key
            with pytest.raises(InquiryError, match="authentication refused"):
                await stranger.ask({"from": "stranger"}, 0.5)
            with pytest.raises(InquiryError, match="handshake failed"):
                await wrong_server_key.ask({"from": "b"}, 0.5)
            assert asked == [("b", "b")] and server.denied >= 1
            # lazy pirate: the server goes away, the inquiry times out, the socket is renewed...
            server.close()
            with pytest.raises(InquiryError, match=r"no answer within 0\.3 s"):
                await good.ask({"from": "b"}, 0.3)
            assert good.sock is None
            # ...and the next inquiry reaches the server once it is back
            server = InquiryServer(ctx, endpoint, ap, asec, {bp: "b"}, answer, structlog.get_logger())
            server.start()
            assert (await good.ask({"from": "b"}, 2.0))["node"] == "a"
        finally:
            server.close()
            for c in (good, stranger, wrong_server_key):
                c.close()

    asyncio.run(main())


def test_keygen_writes_a_key_pair(tmp_path: Path) -> None:
    d = tmp_path / "keys"
    res = subprocess.run([str(BIN / "busctl"), "keygen", "--dir", str(d), "--name", "node1"],
                         capture_output=True, text=True, check=True)
    assert "node1.key_secret" in res.stdout
    public, secret = load_keys(d / "node1.key_secret")
    assert load_public_key(d / "node1.key") == public and len(secret) == 40
    assert stat.S_IMODE(os.stat(d / "node1.key_secret").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(d / "node1.key").st_mode) == 0o644
    again = subprocess.run([str(BIN / "busctl"), "keygen", "--dir", str(d), "--name", "node1"],
                           capture_output=True, text=True)
    assert again.returncode == 1 and "refusing to overwrite" in again.stderr
    assert load_keys(d / "node1.key_secret") == (public, secret)
    subprocess.run([str(BIN / "busctl"), "keygen", "--dir", str(d), "--name", "node1", "--force"], check=True,
                   capture_output=True)
    assert load_keys(d / "node1.key_secret") != (public, secret)


# -- end to end: three busd instances, events from bus-emit ---------------------------------------


@pytest.fixture(name="buses")
def fixture_buses() -> Iterator[tuple[Buses, Peers]]:
    names = ["node1", "node2", "w"]
    buses = Buses(names)
    try:
        yield buses, Peers(buses.base / "keys", names)
    finally:
        buses.close()


def emit(bus: Any, *events: dict[str, Any]) -> None:
    bus.emit([{**e, "kind": "synthetic"} for e in events])


def test_three_busd_agree_then_lose_neighbour_and_witness(buses: tuple[Buses, Peers]) -> None:
    b, peers = buses
    b.write("node1", {"pgc": peers.table("node1", neighbours=("node2",), witness="w")})
    b.write("node2", {"pgc": peers.table("node2", neighbours=("node1",), witness="w")})
    b.write("w", {"pgc": peers.table("w", role="witness", neighbours=("node1", "node2"))})
    for name in ("w", "node1", "node2"):
        b[name].start()
    emit(b["node1"], pg("PG_UP", "node1", "primary", "node1", {"node1": "primary"}))
    emit(b["node2"], pg("PG_UP", "node2", "standby", "node1", {"node2": "standby"}))
    emit(b["w"], pg("PG_UP", "node2", "standby", "node1", {"node1": "primary", "node2": "standby"}))
    wait_for(lambda: b.decision("node1").get("outcome") == "allow_writes", 20, "node1 allowed writes")
    d1 = b.decision("node1")
    assert (d1["rule"], d1["primary"], d1["allow_reads"]) == ("neighbour_agrees", "node1", True)
    wait_for(lambda: b.decision("node2").get("rule") == "neighbour_agrees", 20, "node2 agreed")
    assert (b.decision("node2")["outcome"], b.decision("node2")["allow_reads"]) == ("deny_writes", True)

    text = b["node1"].run("busctl", "pg", "status").stdout
    assert "local view: node1 (primary): primary node1" in text
    assert "neighbour node2" in text and "node2 (standby): primary node1" in text
    assert "decision" in text and "allow_writes" in text and "neighbour_agrees" in text
    rows = json.loads(b["node1"].run("busctl", "pg", "status", "--json").stdout)
    assert rows[0]["peers"]["node2"]["view"]["role"] == "standby" and rows[0]["told"]["node2"]["view"]["node"] == "node2"

    # the neighbour's busd stops: the witness still agrees
    b["node2"].stop()
    wait_for(lambda: b.decision("node1").get("rule") == "witness_agrees", 20, "node1 asks the witness")
    assert b.decision("node1")["outcome"] == "allow_writes"
    # and the witness's busd too: this node must refuse writes
    b["w"].stop()
    wait_for(lambda: b.decision("node1").get("rule") == "witness_unreachable", 20, "witness unreachable")
    d1 = b.decision("node1")
    assert (d1["outcome"], d1["allow_reads"]) == ("deny_writes", False)
    assert [a["ok"] for a in d1["answers"]] == [False, False]
    assert "no answer within 0.3 s" in d1["answers"][1]["error"]
    text = b["node1"].run("busctl", "pg", "status").stdout
    assert "UNREACHABLE" in text

    events = b["node1"].tail(3, "--event-type", "PG_ROUTING_DECISION", last=3)
    assert [(e["extensions"]["rule"], e["extensions"]["outcome"], e["severity"]) for e in events] == [
        ("neighbour_agrees", "allow_writes", "info"), ("witness_agrees", "allow_writes", "info"),
        ("witness_unreachable", "deny_writes", "warn")]
    last = events[-1]
    assert (last["system"], last["dev_name"], last["dev_wwid"], last["hostname"]) == ("postgres", "node1",
                                                                                      "7300:node1", "node1")
    assert set(last["extensions"]) >= {"node", "role", "outcome", "allow_reads", "primary", "rule", "reason",
                                       "split_brain", "primaries", "local", "answers", "took_ms"}
    # the view survives a restart of busd (the state file), so the first decision after it is informed
    b["node1"].stop()
    b["w"].start()
    b["node1"].start()
    wait_for(lambda: b.decision("node1").get("rule") == "witness_agrees", 20, "node1 after restart")


def test_unusable_keys_are_logged_and_nothing_is_served(tmp_path: Path) -> None:
    make_keys(tmp_path, ["w", "node1"])
    peers = [{"name": "node1", "endpoint": "tcp://127.0.0.1:1", "public_key": str(tmp_path / "node1.key")},
             {"name": "node2", "endpoint": "tcp://127.0.0.1:2", "public_key": str(tmp_path / "node2.key")}]

    def witness(secret: str) -> PgCluster:
        config = {"type": "receiver", "builtin": "pgcluster", "role": "witness", "neighbours": peers,
                  "listen": f"tcp://127.0.0.1:{free_port()}", "secret_key": str(tmp_path / secret)}
        return PgCluster({"BUS_PLUGIN": "pgc", "BUS_PLUGIN_CONFIG": json.dumps(config), "BUS_RUNTIME_DIR": str(tmp_path)})

    async def main() -> None:
        p = witness("missing.key_secret")
        await p.setup()
        try:
            assert p.server is None and p.clients == {}
            status = json.loads((tmp_path / "status" / "pgc.json").read_text())
            assert status["serving"] is False and status["view"]["role"] == "witness"
        finally:
            await p.teardown()
        p = witness("w.key_secret")  # node2's public key is missing: only node1 may ask
        await p.setup()
        try:
            assert p.server is not None and list(p.server.allowed.values()) == ["node1"]
        finally:
            await p.teardown()

    asyncio.run(main())


def test_shipped_examples_load(tmp_path: Path) -> None:
    """The commented switch-over tables of conf/busd.toml and the example of docs/operators.md load."""
    config = shipped_example(tmp_path, "pgcluster")
    assert config.plugins["pgcluster"].table["neighbours"][0]["name"] == "node2"
    assert config.plugins["haproxy"].table["servers"] == {"node1": "pg1", "node2": "pg2"}
    assert config.plugins["pg_hba"].filter.match_fields("synthetic", "postgres", "info", "PG_ROUTING_DECISION")
    assert not config.plugins["pg_hba"].filter.match_fields("synthetic", "postgres", "info", "PG_UP")
    docs = (ROOT / "docs" / "operators.md").read_text()
    conf = tmp_path / "docs.toml"
    example = next(b for b in re.findall(r"```toml\n(.*?)```", docs, re.S) if 'builtin = "pgcluster"' in b)
    conf.write_text(example)
    config = load(conf)
    assert config.plugins["pgcluster"].table["witness"]["name"] == "witness"
    assert {p.builtin for p in config.plugins.values()} == {"pgcluster", "pg_hba", "haproxy"}

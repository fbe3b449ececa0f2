"""The ``postgres`` collector and parser: the parser's state machine on synthetic raw events, the
collector against real PostgreSQL 15 servers (the ``pg_cluster`` fixture), and both through a real
busd: normal state, standby lag, the primary stopping, the standby promoted with repmgr, and the old
primary coming back as a second primary (split brain)."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import ROOT, Bus, plugin_cmd, read_lines, shipped_example, wait_for
from pgcluster import PgCluster, free_port

from bus.config import load
from bus.event import Event, new_event
from bus.exceptions import BadInput, ConfigError
from collectors.postgres import Postgres, behind, lsn_bytes, safe_dsn
from collectors.postgres import check_options as collector_check
from parsers.postgres import PostgresParser
from parsers.postgres import check_options as parser_check

SYSID = "7312345678901234567"
REPMGR_NODES = [
    {"node_id": 1, "node_name": "node1", "type": "primary", "active": True, "upstream_node_id": None,
     "upstream_node_name": None, "priority": 100, "location": "default"},
    {"node_id": 2, "node_name": "node2", "type": "standby", "active": True, "upstream_node_id": 1,
     "upstream_node_name": "node1", "priority": 100, "location": "default"},
]


def env(builtin: str, **options: Any) -> dict[str, str]:
    """The environment busd gives a built-in plugin (outside busd: no sockets are opened)."""
    return {"BUS_PLUGIN": f"t-{builtin}", "BUS_HOSTNAME": "testhost",
            "BUS_PLUGIN_CONFIG": json.dumps({"builtin": builtin, **options})}


def parser(**options: Any) -> PostgresParser:
    """A postgres parser with its setup done."""
    p = PostgresParser(env("postgres", **options))
    asyncio.run(p.setup())
    return p


def state(node: str, role: str, *, timeline: int = 1, lag_seconds: float | None = 0.0, lag_bytes: int | None = 0,
          repmgr: list[dict[str, Any]] | None = None, replication: list[dict[str, Any]] | None = None,
          ts: float | None = None) -> Event:
    """A ``POSTGRES_STATE`` raw event as the collector builds it."""
    standby = role == "standby"
    ext = {"node_name": node, "interval": 0.5, "role": role, "in_recovery": standby, "system_identifier": SYSID,
           "timeline": timeline, "lsn": "0/3000060", "lag_seconds": lag_seconds if standby else None,
           "lag_bytes": lag_bytes if standby else None, "streaming": standby,
           "wal_receiver": {"status": "streaming", "sender_host": "127.0.0.1", "sender_port": 5432,
                            "received_tli": timeline} if standby else None,
           "replication": replication or [], "repmgr": True,
           "repmgr_nodes": REPMGR_NODES if repmgr is None else repmgr, "node_id": int(node[-1])}
    return new_event("postgres", "POSTGRES_STATE", f"{node}: {role}", kind="raw", dev_name=node, extensions=ext,
                     timestamp=time.time() if ts is None else ts)


def down(node: str, reason: str = "unreachable") -> Event:
    """A ``POSTGRES_DOWN`` raw event."""
    return new_event("postgres", "POSTGRES_DOWN", f"{node} down", kind="raw", severity="error", dev_name=node,
                     extensions={"node_name": node, "interval": 0.5, "reason": reason, "error": "connection refused",
                                 "down_since": time.time(), "system_identifier": SYSID, "node_id": int(node[-1])})


def repmgr_event(reporter: str, event: str, node_id: int, successful: bool = True, at: float = 1000.0) -> Event:
    """A ``POSTGRES_REPMGR_EVENT`` raw event."""
    return new_event("postgres", "POSTGRES_REPMGR_EVENT", event, kind="raw", dev_name=reporter, extensions={
        "node_name": reporter, "system_identifier": SYSID, "event": event, "event_node_id": node_id,
        "event_node_name": f"node{node_id}", "successful": successful, "event_timestamp": "2026-01-01T00:00:00+00:00",
        "event_time": at, "details": f"{event} details"})


def brief(events: list[Event] | None) -> list[tuple[str, str, str]]:
    """``(event_type, dev_name, severity)`` of each event."""
    return [(e["event_type"], e["dev_name"], e["severity"]) for e in events or []]


def healthy(p: PostgresParser) -> None:
    """Feed node1 primary and node2 standby."""
    p.handle(state("node1", "primary"))
    p.handle(state("node2", "standby"))


# -- the parser's state machine ------------------------------------------------------------------


def test_first_reports_announce_nodes_and_primary_then_nothing_while_unchanged() -> None:
    p = parser()
    out = p.handle(state("node1", "primary"))
    assert brief(out) == [("PG_UP", "node1", "info"), ("PG_PRIMARY_CHANGED", "node1", "info")]
    assert out is not None
    up, changed = out
    assert up["system"] == "postgres" and up["kind"] == "synthetic"
    assert up["dev_wwid"] == f"{SYSID}:1"
    assert up["extensions"]["first"] is True and up["extensions"]["role"] == "primary"
    assert changed["extensions"]["primary"] == "node1" and changed["extensions"]["previous_primary"] == ""
    assert changed["extensions"]["primary_source"] == "polled"
    out = p.handle(state("node2", "standby"))
    assert brief(out) == [("PG_UP", "node2", "info")]
    assert out is not None
    view = out[0]["extensions"]
    assert view["role"] == "standby" and view["upstream"] == "node1" and view["lag_bytes"] == 0
    assert view["nodes"]["node1"]["role"] == "primary" and view["nodes"]["node2"]["role"] == "standby"
    assert set(view["last_seen"]) == {"node1", "node2"} and view["repmgr_nodes"] == REPMGR_NODES
    assert view["primary"] == "node1" and view["split_brain"] is False and view["primaries"] == []
    for _ in range(3):
        assert p.handle(state("node1", "primary")) is None
        assert p.handle(state("node2", "standby")) is None


def test_down_once_per_outage_and_no_primary_while_the_primary_is_down() -> None:
    p = parser()
    healthy(p)
    out = p.handle(down("node1"))
    assert brief(out) == [("PG_DOWN", "node1", "error"), ("PG_PRIMARY_CHANGED", "node1", "warn")]
    assert out is not None
    assert out[0]["extensions"]["reason"] == "unreachable" and out[0]["extensions"]["role"] == "down"
    assert out[1]["extensions"]["primary"] == "" and out[1]["extensions"]["previous_primary"] == "node1"
    # node2's repmgr.nodes still name node1 primary, but node1 is known down: nobody is believed primary
    assert p.handle(state("node2", "standby")) is None
    assert p.handle(down("node1")) is None
    out = p.handle(state("node1", "primary"))
    assert brief(out) == [("PG_UP", "node1", "info"), ("PG_PRIMARY_CHANGED", "node1", "info")]
    assert out is not None and out[0]["extensions"]["first"] is False


def test_promotion_then_old_primary_back_is_split_brain_then_demoted_resolves() -> None:
    p = parser()
    healthy(p)
    p.handle(down("node1"))
    promoted_nodes = [dict(REPMGR_NODES[0], type="primary", active=False),
                      dict(REPMGR_NODES[1], type="primary", upstream_node_id=None, upstream_node_name=None)]
    out = p.handle(state("node2", "primary", timeline=2, repmgr=promoted_nodes))
    assert brief(out) == [("PG_PROMOTED", "node2", "warn"), ("PG_PRIMARY_CHANGED", "node2", "info")]
    assert out is not None
    # every event carries the view after the input: the promotion already shows the new primary
    assert out[0]["extensions"]["primary"] == "node2" and out[0]["extensions"]["previous_timeline"] == 1
    assert out[0]["extensions"]["timeline"] == 2 and out[0]["extensions"]["upstream"] == ""
    out = p.handle(state("node1", "primary"))
    assert brief(out) == [("PG_UP", "node1", "info"), ("PG_SPLIT_BRAIN", "node1", "error"),
                          ("PG_PRIMARY_CHANGED", "node2", "warn")]
    assert out is not None
    split = out[1]["extensions"]
    assert split["primaries"] == ["node1", "node2"] and split["source"] == "polled" and split["split_brain"] is True
    assert split["primary"] == "" and out[2]["extensions"]["previous_primary"] == "node2"
    assert p.handle(state("node2", "primary", timeline=2, repmgr=promoted_nodes)) is None
    out = p.handle(state("node1", "standby", timeline=2, repmgr=promoted_nodes))
    assert brief(out) == [("PG_DEMOTED", "node1", "warn"), ("PG_SPLIT_BRAIN_RESOLVED", "node1", "info"),
                          ("PG_PRIMARY_CHANGED", "node2", "info")]
    assert out is not None and out[2]["extensions"]["primary"] == "node2"


def test_split_brain_from_repmgr_nodes_listing_two_active_primaries() -> None:
    p = parser()
    two = [dict(REPMGR_NODES[0]), dict(REPMGR_NODES[1], type="primary", upstream_node_id=None)]
    out = p.handle(state("node2", "standby", repmgr=two))
    assert brief(out) == [("PG_UP", "node2", "info"), ("PG_SPLIT_BRAIN", "node2", "error")]
    assert out is not None and out[1]["extensions"]["source"] == "repmgr"
    assert out[1]["extensions"]["primaries"] == ["node1", "node2"]


def test_standby_only_believes_repmgr_for_the_primary() -> None:
    p = parser()
    out = p.handle(state("node2", "standby"))
    assert brief(out) == [("PG_UP", "node2", "info"), ("PG_PRIMARY_CHANGED", "node1", "info")]
    assert out is not None and out[1]["extensions"]["primary_source"] == "repmgr"
    # node1 is known from repmgr only: its id from repmgr.nodes, the system identifier of the cluster
    assert out[1]["dev_wwid"] == f"{SYSID}:1" and "node1" not in out[1]["extensions"]["nodes"]


def test_lag_crossing_both_ways_in_seconds_and_bytes() -> None:
    p = parser(lag_threshold=5.0, lag_threshold_bytes=1000)
    healthy(p)
    out = p.handle(state("node2", "standby", lag_seconds=6.0, lag_bytes=0))
    assert brief(out) == [("PG_STANDBY_LAG", "node2", "warn")]
    assert out is not None
    assert out[0]["extensions"]["lagging"] is True and out[0]["extensions"]["lag_threshold"] == 5.0
    assert p.handle(state("node2", "standby", lag_seconds=7.0, lag_bytes=5000)) is None
    out = p.handle(state("node2", "standby", lag_seconds=1.0, lag_bytes=10))
    assert brief(out) == [("PG_STANDBY_LAG_CLEARED", "node2", "info")]
    assert out is not None and out[0]["extensions"]["lagging"] is False
    assert brief(p.handle(state("node2", "standby", lag_seconds=0.0, lag_bytes=1000))) == [
        ("PG_STANDBY_LAG", "node2", "warn")]
    # the primary's pg_stat_replication raises what the standby measures itself
    p = parser(lag_threshold=5.0, lag_threshold_bytes=1000)
    p.handle(state("node1", "primary", replication=[{"application_name": "node2", "replay_lag": 9.5,
                                                      "replay_lag_bytes": 10}]))
    out = p.handle(state("node2", "standby", lag_seconds=0.0, lag_bytes=0))
    assert brief(out) == [("PG_UP", "node2", "info"), ("PG_STANDBY_LAG", "node2", "warn")]
    assert out is not None and out[1]["extensions"]["lag_seconds"] == 9.5


def test_lag_threshold_zero_is_off_and_promotion_clears_lag_silently() -> None:
    p = parser(lag_threshold=0, lag_threshold_bytes=0)
    healthy(p)
    assert p.handle(state("node2", "standby", lag_seconds=1e6, lag_bytes=10**12)) is None
    p = parser(lag_threshold=1.0)
    healthy(p)
    assert brief(p.handle(state("node2", "standby", lag_seconds=3.0))) == [("PG_STANDBY_LAG", "node2", "warn")]
    out = p.handle(state("node2", "primary", timeline=2))
    assert [t for t, _, _ in brief(out)] == ["PG_PROMOTED", "PG_SPLIT_BRAIN", "PG_PRIMARY_CHANGED"]
    assert out is not None and out[0]["extensions"]["lagging"] is False


def test_repmgr_events_once_whoever_reports_them() -> None:
    p = parser()
    healthy(p)
    out = p.handle(repmgr_event("node2", "standby_promote", 2))
    assert brief(out) == [("PG_REPMGR_EVENT", "node2", "info")]
    assert out is not None
    ext = out[0]["extensions"]
    assert ext["event"] == "standby_promote" and ext["event_node_id"] == 2 and ext["reported_by"] == "node2"
    assert ext["details"] == "standby_promote details" and ext["successful"] is True
    assert out[0]["dev_wwid"] == f"{SYSID}:2"
    assert p.handle(repmgr_event("node1", "standby_promote", 2)) is None  # replicated to node1 too
    out = p.handle(repmgr_event("node1", "standby_switchover", 3, successful=False, at=1001.0))
    assert brief(out) == [("PG_REPMGR_EVENT", "node3", "warn")]
    assert out is not None and out[0]["extensions"]["role"] == "unknown" and out[0]["dev_wwid"] == f"{SYSID}:3"
    assert "node3" not in out[0]["extensions"]["nodes"]


def test_silent_collector_counts_as_down_with_stable_ids() -> None:
    ids = []
    for _ in range(2):
        p = parser(stale_after=5.0)
        first = state("node1", "primary", ts=1000.0)
        first["event_id"] = "00000000-0000-4000-8000-000000000001"
        p.handle(first)
        assert p.tick(1004.0) is None
        out = p.tick(1006.0)
        assert brief(out) == [("PG_DOWN", "node1", "error"), ("PG_PRIMARY_CHANGED", "node1", "warn")]
        assert out is not None and out[0]["extensions"]["reason"] == "stale"
        assert p.tick(1010.0) is None
        ids.append([e["event_id"] for e in out])
    assert ids[0] == ids[1]  # a parser handling the same input again after a crash emits the same ids
    p = parser(stale_after=0)
    p.handle(state("node1", "primary", ts=1000.0))
    assert p.tick(10**9) is None


def test_inputs_that_are_not_postgres_states_are_ignored() -> None:
    p = parser()
    assert p.handle(new_event("postgres", "SOMETHING_ELSE", "x", kind="raw", extensions={"node_name": "n"})) is None
    with pytest.raises(BadInput, match=r"no_node_name: POSTGRES_STATE from .* names no node"):
        p.handle(new_event("postgres", "POSTGRES_STATE", "no node name", kind="raw"))
    with pytest.raises(BadInput, match=r"no_in_recovery: POSTGRES_STATE of 'n1' .* no boolean in_recovery"):
        p.handle(new_event("postgres", "POSTGRES_STATE", "no role", kind="raw", dev_name="n1",
                           extensions={"node_name": "n1", "in_recovery": "yes"}))
    assert p.nodes == {}


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="lag_threshold: must not be negative"):
        parser_check({"lag_threshold": -1, "lag_threshold_bytes": 0, "stale_after": 0})
    base = {"dsn": "host=x", "interval": 1.0, "query_timeout": 1.0, "connect_timeout": 1.0, "down_repeat": 1.0,
            "repmgr_events_backlog": 0}
    collector_check(base)
    with pytest.raises(ValueError, match="dsn: not a valid libpq connection string"):
        collector_check({**base, "dsn": "host='unterminated"})
    with pytest.raises(ValueError, match="interval: must be positive"):
        collector_check({**base, "interval": 0})


def test_busd_refuses_bad_options_and_sets_the_default_filter(tmp_path: Path) -> None:
    conf = tmp_path / "busd.toml"
    conf.write_text('[plugins.c]\ntype = "collector"\nbuiltin = "postgres"\ndsn = "port=\'x"\n')
    with pytest.raises(ConfigError, match="dsn"):
        load(conf)
    conf.write_text('[plugins.c]\ntype = "collector"\nbuiltin = "postgres"\nsdn = "x"\n')
    with pytest.raises(ConfigError, match="sdn"):
        load(conf)
    conf.write_text('[plugins.c]\ntype = "collector"\nbuiltin = "postgres"\n'
                    '[plugins.p]\ntype = "parser"\nbuiltin = "postgres"\n')
    cfg = load(conf)
    assert cfg.plugins["p"].filter.systems == frozenset({"postgres"})
    assert cfg.plugins["p"].filter.kinds == frozenset({"raw"})


def test_shipped_examples_load(tmp_path: Path) -> None:
    """The commented postgres tables of conf/busd.toml and the example of docs/operators.md load."""
    config = shipped_example(tmp_path, "postgres")  # both tables: one comment block
    assert config.plugins["postgres"].table["node_name"] == "node1"
    assert config.plugins["postgres-state"].table["lag_threshold_bytes"] == 16 * 1024 * 1024
    docs = (ROOT / "docs" / "operators.md").read_text()
    conf = tmp_path / "docs.toml"
    example = next(b for b in re.findall(r"```toml\n(.*?)```", docs, re.S) if 'builtin = "postgres"' in b)
    conf.write_text(example)
    config = load(conf)
    assert config.plugins["postgres"].builtin == "postgres" and config.plugins["postgres-state"].type == "parser"


def test_lsn_helpers() -> None:
    assert lsn_bytes("16/B374D848") == (0x16 << 32) | 0xB374D848
    assert lsn_bytes(None) is None
    assert behind("0/3000100", "0/3000000") == 0x100
    assert behind("0/3000000", "0/3000100") == 0
    assert behind(None, "0/1") is None
    assert "password" not in safe_dsn("host=h password=secret user=u") and "user=u" in safe_dsn("host=h user=u")


# -- the collector against real and unresponsive servers -------------------------------------------


class Captured(Postgres):
    """The real collector; what it emits is kept in a list instead of going to a busd."""

    async def emit(self, event: Event) -> None:
        self.out.append(event)


async def collector(tmp: Path, **options: Any) -> Captured:
    c = Captured({**env("postgres", **options), "BUS_RUNTIME_DIR": str(tmp)})
    c.out = []
    await c.setup()
    return c


def types(c: Captured) -> list[str]:
    return [e["event_type"] for e in c.out]


def test_unreachable_server_is_an_event_once_then_every_down_repeat(tmp_path: Path) -> None:
    async def scenario() -> None:
        dsn = f"host=127.0.0.1 port={free_port()} user=nobody password=hunter2"
        c = await collector(tmp_path, dsn=dsn, node_name="ghost", down_repeat=0.3, connect_timeout=2.0)
        for _ in range(3):
            await c.poll_once()
        assert types(c) == ["POSTGRES_DOWN"]
        event = c.out[0]
        assert event["severity"] == "error" and event["dev_name"] == "ghost"
        assert event["extensions"]["reason"] == "unreachable" and "refused" in event["extensions"]["error"].lower()
        assert "hunter2" not in json.dumps(event) and "password" not in event["extensions"]["dsn"]
        await asyncio.sleep(0.35)  # the repeat period itself is what is tested
        await c.poll_once()
        assert types(c) == ["POSTGRES_DOWN", "POSTGRES_DOWN"]
        assert c.out[1]["extensions"]["down_since"] == event["extensions"]["down_since"]
        status = json.loads((tmp_path / "status" / "t-postgres.json").read_text())
        assert status["up"] is False and status["reason"] == "unreachable" and status["failures"] >= 1

    asyncio.run(scenario())


def test_server_that_never_answers_times_out(tmp_path: Path) -> None:
    async def scenario() -> None:
        with socket.socket() as silent:  # accepts TCP connections (backlog) and never speaks
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)
            c = await collector(tmp_path, dsn=f"host=127.0.0.1 port={silent.getsockname()[1]} user=x",
                                node_name="silent", connect_timeout=0.5)
            started = time.monotonic()
            await c.poll_once()
            took = time.monotonic() - started
            assert took < 1.5
            assert types(c) == ["POSTGRES_DOWN"] and c.out[0]["extensions"]["reason"] == "timeout"
            await c.teardown()

    asyncio.run(scenario())


def test_collector_on_real_servers(pg_cluster: PgCluster, tmp_path: Path) -> None:
    pg = pg_cluster

    async def scenario() -> None:
        c1 = await collector(tmp_path, dsn=pg.dsn("node1"), node_name="node1", query_timeout=0.5)
        await c1.poll_once()
        assert types(c1) == ["POSTGRES_STATE"]  # the repmgr events from before are not emitted
        ext = c1.out[0]["extensions"]
        assert ext["role"] == "primary" and ext["timeline"] == 1 and ext["system_identifier"] == pg.system_identifier()
        assert [(n["node_name"], n["type"], n["active"]) for n in ext["repmgr_nodes"]] == [
            ("node1", "primary", True), ("node2", "standby", True)]
        assert ext["replication"][0]["application_name"] == "node2" and ext["node_id"] == 1
        assert c1.out[0]["dev_wwid"] == f"{pg.system_identifier()}:1"

        insert = "INSERT INTO repmgr.events (node_id, event, successful, details) VALUES (%s, %s, %s, %s)"
        pg.sql("node1", insert, [1, "test_one", True, "first"], user="repmgr", dbname="repmgr")
        await c1.poll_once()
        await c1.poll_once()
        repmgr = [e for e in c1.out if e["event_type"] == "POSTGRES_REPMGR_EVENT"]
        assert [(e["extensions"]["event"], e["extensions"]["details"], e["severity"]) for e in repmgr] == [
            ("test_one", "first", "info")]
        await c1.teardown()

        # a restarted collector resumes after what it emitted (the position is in its state file)
        pg.sql("node1", insert, [2, "test_two", False, "second"], user="repmgr", dbname="repmgr")
        c1 = await collector(tmp_path, dsn=pg.dsn("node1"), node_name="node1", query_timeout=0.5)
        await c1.poll_once()
        repmgr = [e for e in c1.out if e["event_type"] == "POSTGRES_REPMGR_EVENT"]
        assert [(e["extensions"]["event"], e["extensions"]["event_node_name"], e["severity"]) for e in repmgr] == [
            ("test_two", "node2", "warn")]

        # a query that takes longer than query_timeout: POSTGRES_DOWN (timeout), then back
        with psycopg.connect(pg.dsn("node1", "postgres", "repmgr")) as locker:
            locker.execute("LOCK TABLE repmgr.nodes IN ACCESS EXCLUSIVE MODE")
            c1.out.clear()
            started = time.monotonic()
            await c1.poll_once()
            assert time.monotonic() - started < 2.0
            assert types(c1) == ["POSTGRES_DOWN"] and c1.out[0]["extensions"]["reason"] == "timeout"
            locker.rollback()
        await c1.poll_once()
        assert types(c1) == ["POSTGRES_DOWN", "POSTGRES_STATE"]
        # its backend terminated: the poll reconnects at once, no outage reported
        killed = pg.sql("node1", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                 "WHERE application_name = 'busd-t-postgres'")
        assert killed == [(True,)]
        await c1.poll_once()
        assert types(c1) == ["POSTGRES_DOWN", "POSTGRES_STATE", "POSTGRES_STATE"]
        await c1.teardown()

        # a first start with a backlog emits the last rows of repmgr.events
        c2 = await collector(tmp_path / "other", dsn=pg.dsn("node2"), node_name="node2", repmgr_events_backlog=2)
        wait_for(lambda: pg.sql("node2", "SELECT 1 FROM repmgr.events WHERE event = 'test_two'", dbname="repmgr"),
                 10, "the test events replicated to node2")
        await c2.poll_once()
        assert types(c2) == ["POSTGRES_STATE", "POSTGRES_REPMGR_EVENT", "POSTGRES_REPMGR_EVENT"]
        assert [e["extensions"]["event"] for e in c2.out[1:]] == ["test_one", "test_two"]
        ext = c2.out[0]["extensions"]
        assert ext["role"] == "standby" and ext["streaming"] is True and ext["wal_receiver"]["received_tli"] == 1
        assert ext["lag_bytes"] is not None and ext["lag_seconds"] is not None and ext["replay_paused"] is False
        await c2.teardown()

    asyncio.run(scenario())


# -- through a real busd ------------------------------------------------------------------------


def start_bus(bus: Bus, pg: PgCluster, **parser_options: Any) -> Path:
    """busd with a collector per node, one parser and a recorder of the synthetic postgres events."""
    record = bus.base / "events.jsonl"
    collector_options = {"interval": 0.3, "query_timeout": 2.0, "connect_timeout": 1.0}
    bus.write({
        "pg1": {"type": "collector", "builtin": "postgres", "dsn": pg.dsn("node1"), "node_name": "node1",
                **collector_options},
        "pg2": {"type": "collector", "builtin": "postgres", "dsn": pg.dsn("node2"), "node_name": "node2",
                **collector_options},
        "pgstate": {"type": "parser", "builtin": "postgres", **parser_options},
        "rec": {"type": "receiver", "exec": plugin_cmd("recorder", "x"), "out": str(record),
                "filter": {"system": ["postgres"]}},
    })
    bus.start()
    bus.wait_running("pg1", "pg2", "pgstate", "rec")
    return record


def recorded(record: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in read_lines(record)]


def wait_event(record: Path, event_type: str, dev_name: str, timeout: float = 10.0, after: int = 0) -> dict[str, Any]:
    """Wait for the first recorded event of that type and node past the ``after`` first ones."""
    def found() -> dict[str, Any] | None:
        return next((e for e in recorded(record)[after:] if e["type"] == event_type and e["dev_name"] == dev_name),
                    None)
    return dict(wait_for(found, timeout, f"{event_type} for {dev_name}"))


def test_standby_lag_through_busd(pg_cluster: PgCluster, bus: Bus) -> None:
    pg = pg_cluster
    pg.sql("node1", "CREATE TABLE IF NOT EXISTS filler (x int, pad text)", user="app")
    record = start_bus(bus, pg, lag_threshold=0, lag_threshold_bytes=200_000)
    up = wait_event(record, "PG_UP", "node2")
    assert up["ext"]["lagging"] is False and up["ext"]["lag_bytes"] < 200_000
    pg.sql("node2", "SELECT pg_wal_replay_pause()")
    try:
        pg.sql("node1", "INSERT INTO filler SELECT i, repeat('x', 100) FROM generate_series(1, 20000) i", user="app")
        lag = wait_event(record, "PG_STANDBY_LAG", "node2")
        assert lag["severity"] == "warn" and lag["ext"]["lag_bytes"] >= 200_000 and lag["ext"]["lagging"] is True
    finally:
        pg.sql("node2", "SELECT pg_wal_replay_resume()")
    cleared = wait_event(record, "PG_STANDBY_LAG_CLEARED", "node2")
    assert cleared["severity"] == "info" and cleared["ext"]["lag_bytes"] < 200_000
    raw = bus.tail(2, "--kind", "raw", "--event-type", "POSTGRES_STATE")
    assert {e["dev_name"] for e in raw} <= {"node1", "node2"} and all(e["source"] in ("pg1", "pg2") for e in raw)
    assert not [e for e in recorded(record) if e["severity"] == "error"]


def test_failover_and_split_brain_through_busd(pg_cluster: PgCluster, bus: Bus) -> None:
    pg = pg_cluster
    record = start_bus(bus, pg, lag_threshold=30.0)
    # normal state: node1 primary, node2 standby of node1 with little lag, repmgr lists both
    wait_event(record, "PG_UP", "node1")
    wait_event(record, "PG_UP", "node2")
    changed = wait_event(record, "PG_PRIMARY_CHANGED", "node1")
    assert changed["ext"]["primary"] == "node1" and changed["severity"] == "info"
    last = wait_for(lambda: [e for e in recorded(record) if len(e["ext"]["nodes"]) == 2], 10, "a view of both nodes")[-1]
    view = last["ext"]
    assert view["nodes"]["node1"]["role"] == "primary" and view["nodes"]["node2"]["role"] == "standby"
    assert view["nodes"]["node2"]["upstream"] == "node1" and view["nodes"]["node2"]["lag_bytes"] < 1_000_000
    assert [(n["node_name"], n["type"]) for n in view["repmgr_nodes"]] == [("node1", "primary"), ("node2", "standby")]
    sysid = pg.system_identifier()
    assert changed["ext"]["system_identifier"] == sysid

    # the primary stops: PG_DOWN within a few polls; its collector keeps running and reporting
    seen = len(recorded(record))
    pg.stop("node1")
    stopped = time.monotonic()
    gone = wait_event(record, "PG_DOWN", "node1", after=seen)
    detected = time.monotonic() - stopped
    assert detected < 3.0, f"PG_DOWN after {detected:.2f} s"
    assert gone["severity"] == "error" and gone["ext"]["role"] == "down" and gone["ext"]["primary"] == ""
    wait_event(record, "PG_PRIMARY_CHANGED", "node1", after=seen)
    [raw_down] = bus.tail(1, "--kind", "raw", "--event-type", "POSTGRES_DOWN", last=10_000)
    assert raw_down["dev_name"] == "node1" and raw_down["severity"] == "error" and raw_down["source"] == "pg1"
    # still polling: the collector's status file counts the failed polls
    status = bus.runtime_dir / "status" / "pg1.json"
    failures = json.loads(status.read_text())["failures"]
    wait_for(lambda: json.loads(status.read_text())["failures"] > failures, 5, "more polls of the stopped node1")
    assert bus.plugin("pg1")["state"] == "running" and bus.plugin("pg1")["restarts"] == 0

    # repmgr promotes node2: PG_PROMOTED, PG_PRIMARY_CHANGED to node2, and repmgr's standby_promote
    seen = len(recorded(record))
    promoted_at = time.monotonic()
    pg.promote("node2")
    promoted = wait_event(record, "PG_PROMOTED", "node2", after=seen)
    reported = time.monotonic() - promoted_at
    assert reported < 5.0, f"PG_PROMOTED {reported:.2f} s after repmgr standby promote started"
    assert promoted["ext"]["timeline"] == 2 and promoted["ext"]["primary"] == "node2"
    changed = wait_event(record, "PG_PRIMARY_CHANGED", "node2", after=seen)
    assert changed["ext"]["previous_primary"] == "" and changed["ext"]["primary_source"] == "polled"
    promote_event = wait_event(record, "PG_REPMGR_EVENT", "node2", after=seen)
    assert promote_event["ext"]["event"] == "standby_promote" and promote_event["ext"]["successful"] is True

    # the old primary starts again, still a primary: split brain, and nobody is believed primary
    seen = len(recorded(record))
    pg.start("node1")
    split = wait_event(record, "PG_SPLIT_BRAIN", "node1", after=seen)
    assert split["severity"] == "error" and split["ext"]["primaries"] == ["node1", "node2"]
    assert split["ext"]["primary"] == "" and split["ext"]["split_brain"] is True
    back = wait_event(record, "PG_UP", "node1", after=seen)
    assert back["ext"]["role"] == "primary" and back["ext"]["timeline"] == 1
    none = wait_event(record, "PG_PRIMARY_CHANGED", "node2", after=seen)
    assert none["ext"]["primary"] == "" and none["severity"] == "warn"
    assert bus.plugin("pg1")["restarts"] == 0 and bus.plugin("pgstate")["restarts"] == 0

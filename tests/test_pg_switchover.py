"""PostgreSQL switch-over end to end, on real servers: two PostgreSQL 15 nodes with repmgr, HAProxy in
front, two busd nodes and a witness busd, each with its own runtime directory and hostname.

Each node's busd polls its own PostgreSQL (collector and parser ``postgres``), decides with its
neighbour and the witness (``pgcluster``), and acts: ``pg_hba`` (HAProxy's health-check users) and
``haproxy`` (server states through the stats socket). The witness's busd polls both nodes itself.
The tests run in order, as one story: normal routing, neighbour and witness unreachable, fail-over
(measured), the old primary back as a primary (split brain), and pg_hba.conf kept byte for byte.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from conftest import wait_for
from haproxyproc import HAProxyProc
from pgbus import Buses, Peers
from pgcluster import USERS, PgCluster

from receivers.pg_hba import END, find_block

SERVERS = {"node1": "pg1", "node2": "pg2"}
# node1's pg_hba.conf, the fixture's rules written oddly: CRLF, tabs, comments, no final newline
ODD_HBA = (b"# TYPE  DATABASE     USER             ADDRESS       METHOD   \r\n"
           b"local   all          all                            trust\r\n"
           b"\r\n"
           b"   # repmgr streams from here (an indented comment)\r\n"
           b"host\treplication  repmgr           127.0.0.1/32  trust\r\n"
           b"host    all          postgres,repmgr  127.0.0.1/32  trust   # inline comment\r\n"
           b"host    all          hc               127.0.0.1/32  md5\r\n"
           b"host    all          all              127.0.0.1/32  scram-sha-256")


@dataclass
class World:
    """Everything the scenarios share."""

    pg: PgCluster
    hap: HAProxyProc
    buses: Buses
    original: dict[str, bytes]

    def decision(self, node: str) -> dict[str, Any]:
        return self.buses.decision(node)

    def write_through_haproxy(self, timeout: float = 1.0) -> int:
        """INSERT through HAProxy's write frontend; return the port of the server that took it."""
        dsn = (f"host=127.0.0.1 port={self.hap.write_port} user=app password={USERS['app']} dbname=app "
               f"connect_timeout={max(1, int(timeout))}")
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("INSERT INTO routed (at) VALUES (now()) RETURNING inet_server_port()").fetchone()
        assert row is not None
        return int(row[0])

    def write_lands_on(self, node: str) -> bool:
        try:
            return self.write_through_haproxy() == self.pg.port(node)
        except psycopg.Error:
            return False

    def write_fails(self) -> bool:
        try:
            self.write_through_haproxy()
        except psycopg.Error:
            return True
        return False

    def wait_block(self, node: str, line: str) -> None:
        """Wait until ``node``'s managed block of pg_hba.conf has ``line`` (the receiver acts on its own)."""
        wait_for(lambda: line in self.block(node), 5, f"{line!r} in {node}'s pg_hba.conf")

    def block(self, node: str) -> str:
        """Return ``node``'s managed block of pg_hba.conf ("" while there is none)."""
        data = self.pg.hba_path(node).read_bytes()
        span = find_block(data)
        return "" if span is None else data[span[0]: span[1]].decode()


def node_plugins(pg: PgCluster, hap: HAProxyProc, peers: Peers, node: str, other: str) -> dict[str, dict[str, Any]]:
    return {
        "pg": {"type": "collector", "builtin": "postgres", "dsn": pg.dsn(node), "node_name": node, "interval": 0.2,
               "connect_timeout": 1.0, "query_timeout": 1.0},
        "pgstate": {"type": "parser", "builtin": "postgres"},
        "pgc": peers.table(node, neighbours=(other,), witness="w", timeout=1.0),
        "hba": {"type": "receiver", "builtin": "pg_hba", "hba_file": str(pg.hba_path(node)),
                "dsn": pg.dsn(node, "postgres"), "haproxy_addresses": ["127.0.0.1"], "rw_user": "hc",
                "ro_user": "hcro", "allow_ro": True, "reload_timeout": 2.0},
        "hap": {"type": "receiver", "builtin": "haproxy", "socket": str(hap.sock), "write_backend": "pg_write",
                "read_backend": "pg_read", "servers": SERVERS, "verify_interval": 1.0},
    }


def witness_plugins(pg: PgCluster, peers: Peers) -> dict[str, dict[str, Any]]:
    collect = {"type": "collector", "builtin": "postgres", "interval": 0.2, "connect_timeout": 1.0, "query_timeout": 1.0}
    return {
        "pg1": {**collect, "dsn": pg.dsn("node1"), "node_name": "node1"},
        "pg2": {**collect, "dsn": pg.dsn("node2"), "node_name": "node2"},
        "pgstate": {"type": "parser", "builtin": "postgres"},
        "pgc": peers.table("w", role="witness", neighbours=("node1", "node2")),
    }


@pytest.fixture(name="world", scope="module")
def fixture_world(pg_cluster: PgCluster) -> Iterator[World]:
    pg = pg_cluster
    # the read backend's health-check user: an MD5 password, as HAProxy's pgsql-check needs
    pg.sql("node1", "SET password_encryption = 'md5'; CREATE ROLE hcro LOGIN PASSWORD 'hcro-secret'")
    pg.sql("node1", "CREATE TABLE routed (id serial PRIMARY KEY, at timestamptz)", user="app")
    pg.hba_path("node1").write_bytes(ODD_HBA)
    shutil.chown(pg.hba_path("node1"), "postgres", "postgres")
    pg.sql("node1", "SELECT pg_reload_conf()")
    original = {node: pg.hba_path(node).read_bytes() for node in pg.nodes}
    buses = Buses(["node1", "node2", "w"])
    hap = HAProxyProc(buses.base, {"pg1": pg.port("node1"), "pg2": pg.port("node2")}, check_user="hc",
                      read_check_user="hcro", inter="300ms")
    try:
        hap.start()
        peers = Peers(buses.base / "keys", ["node1", "node2", "w"])
        buses.write("node1", node_plugins(pg, hap, peers, "node1", "node2"))
        buses.write("node2", node_plugins(pg, hap, peers, "node2", "node1"))
        buses.write("w", witness_plugins(pg, peers))
        for name in ("w", "node1", "node2"):
            buses[name].start()
        yield World(pg, hap, buses, original)
    finally:
        buses.close()
        hap.close()


def test_normal_routing_writes_land_on_the_primary(world: World) -> None:
    wait_for(lambda: world.decision("node1").get("outcome") == "allow_writes", 20, "node1 allowed writes")
    wait_for(lambda: world.decision("node2").get("allow_reads"), 20, "node2 serves reads")
    # (the witness decides when node2's busd was not answering yet or answered late)
    assert world.decision("node1")["rule"] in ("neighbour_agrees", "witness_agrees")
    assert world.decision("node2")["outcome"] == "deny_writes"
    wait_for(lambda: world.write_lands_on("node1"), 10, "a write through HAProxy on node1")
    for _ in range(5):  # every write, not just one that happened to be balanced there
        assert world.write_through_haproxy() == world.pg.port("node1")
    states = world.hap.states()
    assert states["pg_write/pg1"]["admin"] == "ready" and states["pg_write/pg2"]["admin"] == "maint"
    assert states["pg_read/pg1"]["admin"] == "ready" and states["pg_read/pg2"]["admin"] == "ready"
    wait_for(lambda: world.hap.states()["pg_read/pg2"]["op"] == "running", 10, "node2 healthy for reads")
    # what the health checks see: hc in on the primary only, hcro on both
    world.wait_block("node1", "hc    127.0.0.1/32  md5")
    world.wait_block("node2", "hc    127.0.0.1/32  reject")
    world.wait_block("node2", "hcro  127.0.0.1/32  md5")
    text = world.buses["node2"].run("busctl", "pg", "status").stdout
    assert "local view: node2 (standby): primary node1" in text and "neighbour node1" in text


def test_neighbour_and_witness_unreachable_deny_writes(world: World) -> None:
    b = world.buses
    b["node2"].stop()
    b["w"].stop()
    wait_for(lambda: world.decision("node1").get("rule") == "witness_unreachable", 15, "node1 on its own")
    assert world.decision("node1")["outcome"] == "deny_writes"
    wait_for(world.write_fails, 10, "writes refused")
    world.wait_block("node1", "hc    127.0.0.1/32  reject")
    assert world.hap.states()["pg_write/pg1"]["admin"] == "maint"
    b["w"].notifications.clear()
    b["node2"].notifications.clear()
    b["w"].start()
    b["node2"].start()
    wait_for(lambda: world.decision("node1").get("outcome") == "allow_writes", 20, "node1 back to writes")
    wait_for(lambda: world.write_lands_on("node1"), 10, "writes on node1 again")


def test_failover_writes_reach_the_new_primary_within_5_s(world: World) -> None:
    pg = world.pg
    pg.stop("node1")
    wait_for(lambda: world.decision("node1").get("outcome") == "deny_writes", 10, "node1 denies writes once down")
    # repmgr standby promote runs in a thread; the moment of promotion is when node2 leaves recovery
    promote = threading.Thread(target=pg.promote, args=("node2",))
    with psycopg.connect(pg.dsn("node2", "postgres"), autocommit=True) as conn:
        started = time.monotonic()
        promote.start()
        while conn.execute("SELECT pg_is_in_recovery()").fetchone() == (True,):
            assert time.monotonic() - started < 30, "node2 was not promoted"
            time.sleep(0.01)
    promoted = time.monotonic()
    wait_for(lambda: world.write_lands_on("node2"), 5, "writes through HAProxy on node2 within 5 s")
    took = time.monotonic() - promoted
    promote.join(30)
    print(f"\nswitch-over: writes through HAProxy reach node2 {took:.2f} s after its promotion "
          f"({promoted - started:.2f} s into repmgr standby promote)")
    assert took < 5.0
    d = world.decision("node2")
    assert d["outcome"] == "allow_writes" and d["primary"] == "node2"
    assert d["rule"] in ("witness_agrees", "neighbour_agrees")
    states = world.hap.states()
    assert states["pg_write/pg2"]["admin"] == "ready" and states["pg_write/pg1"]["admin"] == "maint"
    world.wait_block("node2", "hc    127.0.0.1/32  md5")


def test_old_primary_back_as_primary_is_split_brain_and_both_deny(world: World) -> None:
    world.pg.start("node1")  # no standby.signal: it runs as a primary again, on its old timeline
    for node in ("node1", "node2"):
        wait_for(lambda n=node: world.decision(n).get("rule") == "split_brain", 15, f"{node} sees split brain")
        d = world.decision(node)
        assert (d["outcome"], d["allow_reads"], d["split_brain"], d["primaries"]) == (
            "deny_writes", False, True, ["node1", "node2"])
    wait_for(world.write_fails, 10, "writes refused everywhere")
    states = world.hap.states()
    assert states["pg_write/pg1"]["admin"] == "maint" and states["pg_write/pg2"]["admin"] == "maint"
    for node in ("node1", "node2"):
        errors = world.buses[node].tail(1, "--event-type", "PG_ROUTING_DECISION", "--severity", "error", last=50)
        assert errors[0]["dev_name"] == node and errors[0]["extensions"]["split_brain"] is True
        assert "split brain" in errors[0]["msg"]
        world.wait_block(node, "hc    127.0.0.1/32  reject")


def test_pg_hba_keeps_every_line_outside_the_block(world: World) -> None:
    for node in world.pg.nodes:
        path = world.pg.hba_path(node)
        data = path.read_bytes()
        span = find_block(data)
        assert span is not None and span[0] == 0  # on top: the first match wins
        assert data[: span[0]] + data[span[1]:] == world.original[node]
        assert path.with_name("pg_hba.conf.busd-orig").read_bytes() == world.original[node]
        assert path.owner() == "postgres" and path.stat().st_mode & 0o777 == 0o600
        assert data[: span[1]].endswith(END + (b"\r\n" if node == "node1" else b"\n"))
        # PostgreSQL read every rule of the rewritten file
        assert world.pg.sql(node, "SELECT count(*) FROM pg_hba_file_rules WHERE error IS NOT NULL") == [(0,)]
        counters = wait_for(lambda n=node: (c := world.buses[n].plugin("hba").get("counters", {})).get("reloaded", 0) >= 2
                            and c, what="reloads counted in busctl status")
        assert "write_failed" not in counters

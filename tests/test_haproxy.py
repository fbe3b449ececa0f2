"""Receiver ``haproxy`` against a real HAProxy: server states through the runtime API, outages, drift."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import async_wait_for
from haproxyproc import HAProxyProc
from pgcluster import free_port

from bus.config import plugin_options
from receivers.haproxy import HAProxy, check_options, parse_servers_state

SERVERS = {"node1": "pg1", "node2": "pg2"}


@pytest.fixture(name="tmp")
def fixture_tmp() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="hap", dir="/tmp"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(name="haproxy")
def fixture_haproxy(tmp: Path) -> Iterator[HAProxyProc]:
    # no health checks: only the administrative states this receiver sets are under test here
    hap = HAProxyProc(tmp, {"pg1": free_port(), "pg2": free_port()}, check_user="")
    hap.start()
    yield hap
    hap.close()


def receiver(sock: Path | str, **options: Any) -> HAProxy:
    config = {"type": "receiver", "builtin": "haproxy", "socket": str(sock), "write_backend": "pg_write",
              "read_backend": "pg_read", "servers": SERVERS, **options}
    return HAProxy({"BUS_PLUGIN": "hap", "BUS_PLUGIN_CONFIG": json.dumps(config)})


def decision(node: str, outcome: str, reads: bool) -> dict[str, Any]:
    return {"system": "postgres", "event_type": "PG_ROUTING_DECISION", "dev_name": node,
            "extensions": {"outcome": outcome, "allow_reads": reads}}


def admin(hap: HAProxyProc) -> dict[str, str]:
    return {k: v["admin"] for k, v in hap.states().items()}


def test_decisions_set_server_states(haproxy: HAProxyProc) -> None:
    async def main() -> None:
        r = receiver(haproxy.sock)
        await r.setup()
        try:
            await r.handle(decision("node1", "allow_writes", True))
            assert admin(haproxy) == {"pg_write/pg1": "ready", "pg_write/pg2": "maint",
                                      "pg_read/pg1": "ready", "pg_read/pg2": "ready"}
            await r.handle(decision("node2", "deny_writes", True))  # a standby: reads only
            assert admin(haproxy)["pg_read/pg2"] == "ready"
            assert admin(haproxy)["pg_write/pg2"] == "maint"
            # switch-over: node2 takes writes, node1 (exclusive) is taken out of the write backend at once
            await r.handle(decision("node2", "allow_writes", True))
            assert admin(haproxy) == {"pg_write/pg1": "maint", "pg_write/pg2": "ready",
                                      "pg_read/pg1": "ready", "pg_read/pg2": "ready"}
            await r.handle({"system": "postgres", "event_type": "PG_DOWN", "dev_name": "node1", "extensions": {}})
            assert admin(haproxy)["pg_read/pg1"] == "maint"
            # no agreement: reads denied too
            await r.handle(decision("node2", "deny_writes", False))
            assert admin(haproxy)["pg_write/pg2"] == "maint" and admin(haproxy)["pg_read/pg2"] == "maint"
            assert r.counters["commands"] >= 8 and "command_failed" not in r.counters
            assert {s["server"] for s in r.state} == {"pg1", "pg2"}
            await r.handle(decision("node9", "allow_writes", True))  # not configured: ignored
            assert admin(haproxy)["pg_write/pg2"] == "maint"
        finally:
            await r.teardown()

    asyncio.run(main())


def test_drain_and_not_exclusive(haproxy: HAProxyProc) -> None:
    async def main() -> None:
        r = receiver(haproxy.sock, deny_state="drain", exclusive=False, read_backend="")
        await r.setup()
        try:
            await r.handle(decision("node1", "allow_writes", True))
            await r.handle(decision("node2", "deny_writes", True))
            await r.handle(decision("node1", "allow_writes", True))
            states = admin(haproxy)
            assert states["pg_write/pg1"] == "ready" and states["pg_write/pg2"] == "drain"
            assert states["pg_read/pg1"] == "ready" and states["pg_read/pg2"] == "ready"  # untouched
        finally:
            await r.teardown()

    asyncio.run(main())


def test_refused_command_is_counted(haproxy: HAProxyProc) -> None:
    async def main() -> None:
        r = receiver(haproxy.sock, servers={"node1": "nosuch"})
        await r.setup()
        try:
            assert await r.apply()
            await r.handle(decision("node1", "allow_writes", True))
            assert r.counters["command_refused"] >= 1
        finally:
            await r.teardown()

    asyncio.run(main())


def test_haproxy_down_is_retried_until_it_answers(tmp: Path) -> None:
    hap = HAProxyProc(tmp, {"pg1": free_port(), "pg2": free_port()}, check_user="")

    async def main() -> None:
        r = receiver(hap.sock)
        await r.setup()  # HAProxy not there yet: logged, not fatal
        try:
            await r.handle(decision("node2", "allow_writes", True))
            assert r.counters["command_failed"] == 1 and r.outage.active
            hap.start()
            await async_wait_for(lambda: not r.outage.active, 10, "the receiver to reach HAProxy")
            assert admin(hap)["pg_write/pg2"] == "ready" and admin(hap)["pg_write/pg1"] == "maint"
        finally:
            await r.teardown()
            hap.close()

    asyncio.run(main())


def test_drift_is_corrected(haproxy: HAProxyProc) -> None:
    async def main() -> None:
        r = receiver(haproxy.sock, verify_interval=0.1)
        await r.setup()
        try:
            await r.handle(decision("node1", "allow_writes", True))
            haproxy.command("set server pg_write/pg2 state ready")  # by hand, behind busd's back
            await async_wait_for(lambda: admin(haproxy)["pg_write/pg2"] == "maint", 5, "the drift to be corrected")
        finally:
            await r.teardown()

    asyncio.run(main())


def test_parse_servers_state_and_options() -> None:
    text = ("1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight\n"
            "3 pg_write 1 pg1 127.0.0.1 2 0 1\n3 pg_write 2 pg2 127.0.0.1 0 9 1\ngarbage\n")
    rows = parse_servers_state(text)
    assert [(r["srv_name"], r["op"], r["admin"]) for r in rows] == [("pg1", "running", "ready"),
                                                                   ("pg2", "stopped", "maint,drain")]
    base = {"socket": "/x", "servers": SERVERS}
    with pytest.raises(ValueError, match="write_backend"):
        check_options(plugin_options("receiver", "haproxy", base))
    with pytest.raises(ValueError, match=r"servers\.node1"):
        check_options(plugin_options("receiver", "haproxy", {**base, "write_backend": "w", "servers": {"node1": "a b"}}))
    check_options(plugin_options("receiver", "haproxy", {**base, "write_backend": "w"}))

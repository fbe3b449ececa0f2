"""Receiver websocket: real aiohttp clients against a real busd (filters, auth, heartbeat, slow clients, TLS)."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import BIN, Bus, ev, shipped_example, wait_for

from bus import config
from bus.exceptions import ConfigError
from receivers.websocket import parse_address

TOKEN = "s3cret-token"


@pytest.fixture(scope="module", name="wsbus")
def fixture_wsbus() -> Iterator[Bus]:
    """One busd with three websocket receivers: ``ws`` (tokens, small queue), ``hb`` (fast heartbeat), ``tls``."""
    base = Path(tempfile.mkdtemp(prefix="busw", dir="/tmp"))
    bus = Bus(base)
    (base / "tokens.txt").write_text("# rotated monthly\nfile-token\n")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(base / "key.pem"),
                    "-out", str(base / "cert.pem"), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    common = {"type": "receiver", "builtin": "websocket", "address": "127.0.0.1:0"}
    bus.write({
        "ws": {**common, "tokens": [TOKEN], "token_file": "tokens.txt", "client_queue": 20},
        "hb": {**common, "heartbeat": 0.5},
        "tls": {**common, "certfile": "cert.pem", "keyfile": "key.pem"},
    })
    try:
        bus.start()
        bus.wait_running("ws", "hb", "tls")
        yield bus
    finally:
        bus.close()
        shutil.rmtree(base, ignore_errors=True)


def address(bus: Bus, name: str) -> str:
    """The address a websocket receiver listens on (from its status file: it was given port 0)."""
    path = bus.runtime_dir / "status" / f"{name}.json"
    status = wait_for(lambda: path.exists() and json.loads(path.read_text()), what=f"{name} listening")
    return str(status["listening"][0])


def counters(bus: Bus, name: str) -> dict[str, int]:
    return dict(bus.plugin(name).get("counters", {}))


def synthetic(system: str, event_type: str, severity: str = "info", msg: str = "") -> dict[str, Any]:
    return ev(system, event_type, msg, severity=severity, kind="synthetic")


async def receive_texts(ws: aiohttp.ClientWebSocketResponse, n: int, timeout: float = 20) -> list[str]:
    out = []
    while len(out) < n:
        msg = await ws.receive(timeout=timeout)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        out.append(msg.data)
    return out


def test_parse_address_and_bad_options(tmp_path: Path) -> None:
    assert parse_address("127.0.0.1:9943") == ("127.0.0.1", 9943)
    assert parse_address("[::1]:80") == ("::1", 80)
    assert parse_address(":9943") == (None, 9943)
    for bad in ("9943", "host:", "::1:80", "h:70000"):
        with pytest.raises(ValueError):
            parse_address(bad)
    main = tmp_path / "busd.toml"
    for table, key, reason in [
        ('address = "localhost"', "address", "is not HOST:PORT"),
        ('certfile = "c.pem"', "keyfile", "TLS needs both certfile and keyfile"),
        ("client_queue = 0", "client_queue", "must be at least 1"),
        ('tokens = [""]', "tokens", "non-empty strings"),
    ]:
        main.write_text(f'[plugins.w]\ntype = "receiver"\nbuiltin = "websocket"\n{table}\n')
        with pytest.raises(ConfigError) as err:
            config.load(main)
        assert err.value.key == f"plugins.w.{key}" and reason in err.value.reason


def test_auth_peers_and_bad_queries(wsbus: Bus) -> None:
    base = f"http://{address(wsbus, 'ws')}"

    async def go() -> None:
        async with aiohttp.ClientSession() as s:
            for headers, query in [({}, ""), ({"Authorization": "Bearer wrong"}, ""), ({}, "?access_token=nope")]:
                async with s.get(f"{base}/v1/events{query}", headers=headers) as r:
                    assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Bearer")
                with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                    await s.ws_connect(f"{base}/v1/events{query}", headers=headers)
                assert err.value.status == 401
            async with s.get(f"{base}/v1/peers") as r:
                assert r.status == 401
            async with s.get(f"{base}/v1/peers", headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 200 and await r.json() == [{"hostname": "testhost", "self": True}]
            # the token file's tokens, and ?access_token= for browsers
            async with s.get(f"{base}/v1/peers?access_token=file-token") as r:
                assert r.status == 200
            async with s.get(f"{base}/v1/events?access_token={TOKEN}&severity=loud") as r:
                assert r.status == 400 and "severity: 'loud' is not one of info, warn, error" in await r.text()
            async with s.get(f"{base}/v1/events?access_token={TOKEN}&colour=red") as r:
                assert r.status == 400 and "unknown query parameter 'colour'" in await r.text()
            ws = await s.ws_connect(f"{base}/v1/events", headers={"Authorization": f"Bearer {TOKEN}"})
            await ws.close()

    asyncio.run(go())
    c = wait_for(lambda: (c := counters(wsbus, "ws")).get("unauthorized") == 7 and c.get("bad_requests") == 2 and c,
                 what="the refusals counted in busctl status")
    assert c["clients"] >= 1


def test_query_filters_and_frames_are_bus_tail_json(wsbus: Bus) -> None:
    base = f"ws://{address(wsbus, 'ws')}/v1/events?access_token={TOKEN}"
    events = [
        synthetic("scsi", "SCSI_CMD_FAILED", "error", "m1"),
        synthetic("multipath", "DM_MPATH_PATH_FAILED", "warn", "m2"),
        synthetic("scsi", "SCSI_SENSE", "info", "m3"),
        synthetic("block", "BLK_IO_ERROR", "error", "m4"),
        synthetic("multipath", "DM_MPATH_PATH_REINSTATED", "info", "m5"),
        synthetic("scsi", "SCSI_CMD_FAILED", "warn", "m6"),
    ]
    queries = {"all": "", "scsi_warn": "&system=scsi&severity=warn", "dm": "&event_type=DM_MPATH_*",
               "two": "&system=scsi&system=block&event_type=SCSI_CMD_FAILED&event_type=BLK_IO_ERROR"}
    expected = {"all": ["m1", "m2", "m3", "m4", "m5", "m6"], "scsi_warn": ["m1", "m6"], "dm": ["m2", "m5"],
                "two": ["m1", "m4", "m6"]}

    async def go() -> dict[str, list[str]]:
        async with aiohttp.ClientSession() as s:
            clients = {k: await s.ws_connect(base + q) for k, q in queries.items()}
            await asyncio.to_thread(wsbus.emit, events)
            got = {k: await receive_texts(ws, len(expected[k])) for k, ws in clients.items()}
            for ws in clients.values():  # nothing more arrives for the filtered ones
                with pytest.raises(asyncio.TimeoutError):
                    await ws.receive(timeout=0.3)
                await ws.close()
            return got

    got = asyncio.run(go())
    for key, msgs in expected.items():
        assert [json.loads(t)["msg"] for t in got[key]] == msgs, key
    tail = wsbus.run("bus-tail", "--json", "--count", "6", "--last", "6").stdout.splitlines()
    assert got["all"] == tail  # byte for byte what bus-tail --json prints


def test_heartbeat_closes_a_client_that_does_not_answer_pings(wsbus: Bus) -> None:
    url = f"ws://{address(wsbus, 'hb')}/v1/events"

    async def go() -> None:
        async with aiohttp.ClientSession() as s:
            alive = await s.ws_connect(url)  # aiohttp answers pings itself, while receive() runs
            reading = asyncio.create_task(receive_texts(alive, 1))
            mute = await s.ws_connect(url, autoping=False)
            started = time.monotonic()
            msg = await mute.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.PING
            while msg.type == aiohttp.WSMsgType.PING:  # never answered
                msg = await mute.receive(timeout=5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
            assert time.monotonic() - started < 3
            await asyncio.sleep(1.0)  # two more heartbeats: the answering client stays
            await asyncio.to_thread(wsbus.emit, [synthetic("test", "HB_ALIVE")])
            assert json.loads((await reading)[0])["event_type"] == "HB_ALIVE"
            await alive.close()

    asyncio.run(go())


def _small_socket(addr_info: Any) -> socket.socket:
    """A client socket with a tiny receive buffer: it stops the flow as soon as the client stops reading."""
    family, type_, proto, _, _ = addr_info
    sock = socket.socket(family, type_, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return sock


def test_slow_client_is_disconnected_and_never_slows_the_others(wsbus: Bus) -> None:
    url = f"ws://{address(wsbus, 'ws')}/v1/events?access_token={TOKEN}"
    n, size = 300, 32_000  # 9.6 MB: more than the kernel buffers between the server and a stalled client
    events = [synthetic("test", "BIG", msg=f"{i:05d} " + "x" * size) for i in range(n)]
    before = counters(wsbus, "ws").get("slow_clients", 0)

    async def go() -> tuple[list[str], list[str], aiohttp.WSMessage]:
        async with aiohttp.ClientSession() as fast_s, aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(socket_factory=_small_socket)) as slow_s:
            fast = await fast_s.ws_connect(url, max_msg_size=0)
            slow = await slow_s.ws_connect(url, max_msg_size=0)
            # paced by the fast client, 10 events at a time: its queue never nears the limit of 20 however
            # busy the machine is, while the slow one, never read, falls ever further behind
            emit = subprocess.Popen([str(BIN / "bus-emit"), "--config", str(wsbus.config)], stdin=subprocess.PIPE)
            assert emit.stdin is not None
            fast_got: list[str] = []
            for start in range(0, n, 10):
                chunk = "".join(json.dumps(e) + "\n" for e in events[start:start + 10]).encode()
                await asyncio.to_thread(lambda c=chunk: (emit.stdin.write(c), emit.stdin.flush()))  # type: ignore[union-attr]
                fast_got += await receive_texts(fast, 10, timeout=30)  # the slow one is not read meanwhile
            emit.stdin.close()
            assert await asyncio.to_thread(emit.wait, 60) == 0
            wait_for(lambda: counters(wsbus, "ws").get("slow_clients", 0) == before + 1, what="slow client counted")
            slow_got: list[str] = []
            while True:  # now read what was buffered for it, up to the close frame
                msg = await slow.receive(timeout=10)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                slow_got.append(msg.data)
            await fast.close()
            return fast_got, slow_got, msg

    fast_got, slow_got, close = asyncio.run(go())
    assert [json.loads(t)["msg"][:5] for t in fast_got] == [f"{i:05d}" for i in range(n)]
    assert close.type == aiohttp.WSMsgType.CLOSE, close
    assert close.data == 1008 and close.extra == "too slow: more than 20 events queued"
    assert len(slow_got) < n and slow_got == fast_got[: len(slow_got)]  # a prefix, in order
    assert counters(wsbus, "ws")["slow_clients"] == before + 1


def test_tls_with_a_self_signed_certificate(wsbus: Bus) -> None:
    host = address(wsbus, "tls")
    ctx = ssl.create_default_context(cafile=str(wsbus.base / "cert.pem"))

    async def go() -> None:
        async with aiohttp.ClientSession() as s:
            ws = await s.ws_connect(f"wss://{host}/v1/events?system=tls", ssl=ctx)
            await asyncio.to_thread(wsbus.emit, [synthetic("other", "NOT_FOR_YOU"), synthetic("tls", "OVER_TLS")])
            assert json.loads((await receive_texts(ws, 1))[0])["event_type"] == "OVER_TLS"
            await ws.close()
            with pytest.raises(aiohttp.ClientConnectorCertificateError):  # not trusted without the CA
                await s.ws_connect(f"wss://{host}/v1/events")
            with pytest.raises((aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, aiohttp.WSServerHandshakeError)):
                await s.ws_connect(f"ws://{host}/v1/events")  # plain text to a TLS port

    asyncio.run(go())


def test_commented_example_in_shipped_config_is_valid(tmp_path: Path) -> None:
    """The commented websocket table of conf/busd.toml loads once uncommented."""
    table = shipped_example(tmp_path, "stream").plugins["stream"].table
    assert table["builtin"] == "websocket" and table["tokens"] == ["change-me"] and table["client_queue"] == 1000

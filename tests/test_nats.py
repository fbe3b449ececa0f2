"""Receiver ``nats`` and :mod:`bus.fleet` against a real nats-server with JetStream: subjects, message ids,
the stream, three nodes, a 30 s outage, a busd restart during it, authentication and secrets."""

from __future__ import annotations

import asyncio
import collections
import functools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Bus, outliving_plugins, shipped_example, wait_for
from natsserver import NatsServer, stream_count, stream_messages

from bus.config import load
from bus.exceptions import ConfigError
from bus.filter import Filter
from bus.query import Query
from bus.secrets import redact_url
from receivers import nats as rn


@pytest.fixture(name="natsd")
def fixture_natsd() -> Iterator[NatsServer]:
    """A real ``nats-server -js`` on a free loopback port with its store in a temporary directory."""
    base = Path(tempfile.mkdtemp(prefix="nats", dir="/tmp"))
    server = NatsServer(base)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(name="nodes")
def fixture_nodes() -> Iterator[list[Bus]]:
    """Three busd nodes, each with its own runtime and state directories (a Bus per node)."""
    buses = [Bus(Path(tempfile.mkdtemp(prefix="bus", dir="/tmp"))) for _ in range(3)]
    try:
        yield buses
    finally:
        left = []
        for b in buses:
            b.close()
            left += outliving_plugins(b.runtime_dir)
            shutil.rmtree(b.base, ignore_errors=True)
        assert not left, f"plugin processes outlived busd: {left}"


def receiver(url: str, **options: Any) -> dict[str, Any]:
    """The ``[plugins.nats]`` table for a test busd (fast retries)."""
    return {"type": "receiver", "builtin": "nats", "servers": [url], "retry_max": 0.5, "timeout": 2.0, **options}


def status(bus: Bus, name: str = "nats") -> dict[str, Any]:
    """The receiver's own status file (what ``busctl status`` shows)."""
    path = bus.runtime_dir / "status" / f"{name}.json"
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


def synthetic(n: int, host: str = "testhost", system: str = "scsi", start: int = 0) -> list[dict[str, Any]]:
    """``n`` synthetic events for bus-emit."""
    return [{"system": system, "event_type": "SCSI_MEDIUM_ERROR", "msg": f"event {start + i}", "kind": "synthetic",
             "hostname": host, "dev_name": f"sd{i % 5}"} for i in range(n)]


def ids_in_stream(url: str) -> collections.Counter[str]:
    """Count the stream's messages by message id, checking each equals the body's event_id."""
    counts: collections.Counter[str] = collections.Counter()
    for msg in asyncio.run(stream_messages(url)):
        assert msg.headers["Nats-Msg-Id"] == json.loads(msg.data)["event_id"]
        counts[msg.headers["Nats-Msg-Id"]] += 1
    return counts


# -- pure functions ---------------------------------------------------------------------------------

def test_tokens_and_subjects_are_safe() -> None:
    assert rn.token("node1.example.com") == "node1_example_com"
    assert rn.token("a b*c>d") == "a_b_c_d"
    assert rn.token("") == "_"
    event = {"hostname": "h.1", "system": "scsi", "event_type": "SCSI_MEDIUM_ERROR"}
    assert rn.subject("busd", event) == "busd.h_1.scsi.SCSI_MEDIUM_ERROR"
    assert rn._subject_of("x.y", json.dumps(event).encode()) == "x.y.h_1.scsi.SCSI_MEDIUM_ERROR"
    assert redact_url("nats://u:pw@h:4222") == "nats://u:***@h:4222"
    assert redact_url("nats://tok@h:4222") == "nats://***@h:4222"
    assert redact_url("nats://h:4222") == "nats://h:4222"


def test_world_readable_config_with_a_secret_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "busd.toml"
    conf.write_text('[plugins.nats]\ntype = "receiver"\nbuiltin = "nats"\nuser = "busd"\npassword = "pw"\n')
    conf.chmod(0o644)
    with pytest.raises(ConfigError) as err:
        load(conf)
    assert str(err.value).startswith(f"{conf}: plugins.nats.password: holds a secret but the file is readable "
                                     "by everyone (mode 0644)")
    conf.write_text('[plugins.nats]\ntype = "receiver"\nbuiltin = "nats"\nservers = ["nats://u:pw@h:4222"]\n')
    with pytest.raises(ConfigError, match=r"plugins\.nats\.servers\[0\]: holds a secret"):
        load(conf)
    conf.chmod(0o640)
    cfg = load(conf)
    # busd --check prints the table masked
    assert cfg.plugins["nats"].masked_table()["servers"] == ["nats://u:***@h:4222"]


def test_bad_options_are_refused(tmp_path: Path) -> None:
    conf = tmp_path / "busd.toml"
    conf.write_text('[plugins.nats]\ntype = "receiver"\nbuiltin = "nats"\nservers = ["http://x"]\n')
    with pytest.raises(ConfigError, match="servers"):
        load(conf)


def test_shipped_example_loads(tmp_path: Path) -> None:
    """The commented [plugins.nats] block of conf/busd.toml is a valid configuration as it stands."""
    cfg = shipped_example(tmp_path, "nats")
    table = cfg.plugins["nats"].table
    assert table["servers"] == ["nats://nats1.example.com:4222"] and table["creds"] == "/etc/busd/busd.creds"


# -- one node ---------------------------------------------------------------------------------------

def test_events_reach_the_stream_with_subjects_and_msg_ids_stream_created(bus: Bus, natsd: NatsServer) -> None:
    assert stream_count(natsd.url) == 0  # no stream yet: the receiver creates it
    bus.write({"nats": receiver(natsd.url)}, main={"hostname": "node.a"})
    bus.start()
    events = synthetic(50, host="node.a")
    bus.emit(events)
    wait_for(lambda: status(bus).get("delivered", 0) >= 50, 20, "50 events delivered")
    msgs = asyncio.run(stream_messages(natsd.url))
    assert len(msgs) == 50
    assert {m.subject for m in msgs} == {"busd.node_a.scsi.SCSI_MEDIUM_ERROR"}
    assert all(m.headers["Nats-Msg-Id"] == json.loads(m.data)["event_id"] for m in msgs)
    assert [json.loads(m.data)["msg"] for m in msgs] == [e["msg"] for e in events]
    st = status(bus)
    assert st["connected"] and st["server"] == natsd.url and st["depth"] == 0

    async def config() -> Any:
        import nats

        nc = await nats.connect(natsd.url)
        try:
            return (await nc.jetstream().stream_info("BUSD")).config
        finally:
            await nc.close()
    cfg = asyncio.run(config())
    assert cfg.subjects == ["busd.>"] and cfg.duplicate_window == 3600.0


# -- three nodes and the fleet ----------------------------------------------------------------------

def test_three_nodes_publish_and_fleet_query_sees_every_host(nodes: list[Bus], natsd: NatsServer) -> None:
    from bus import fleet

    for i, node in enumerate(nodes):
        node.write({"nats": receiver(natsd.url)}, main={"hostname": f"node{i}"})
        node.start()
    for i, node in enumerate(nodes):
        node.emit(synthetic(20, host=f"node{i}", system=["scsi", "drbd", "lvm"][i]))
    for node in nodes:
        wait_for(lambda node=node: status(node).get("delivered", 0) >= 20, 20, "20 events per node")
    cfg = load(nodes[0].config)
    everything = asyncio.run(fleet.fleet_query(cfg, None, Query(Filter.parse({"kind": "all"}))))
    assert collections.Counter(e["hostname"] for e in everything) == {"node0": 20, "node1": 20, "node2": 20}
    # one host: the subject filter narrows it; one system across hosts; limit keeps the newest
    only1 = asyncio.run(fleet.fleet_query(cfg, natsd.url, Query(Filter.parse({}), hosts=("node1",))))
    assert len(only1) == 20 and {e["system"] for e in only1} == {"drbd"}
    lvm = asyncio.run(fleet.fleet_query(cfg, None, Query(Filter.parse({"system": "lvm"}), limit=5)))
    assert [e["msg"] for e in lvm] == [f"event {i}" for i in range(15, 20)]
    since = time.time() + 3600
    assert asyncio.run(fleet.fleet_query(cfg, None, Query(Filter.parse({}), since=since))) == []

    async def follow() -> list[Any]:
        got: list[Any] = []
        # from a point in time: what is emitted after it arrives, however late the subscription starts
        agen = fleet.fleet_follow(cfg, None, Query(Filter.parse({}), hosts=("node2",)), since=time.time())
        task = asyncio.ensure_future(agen.__anext__())
        await asyncio.to_thread(nodes[2].emit, synthetic(3, host="node2", system="lvm", start=100))
        got.append(await asyncio.wait_for(task, 10))
        while len(got) < 3:
            got.append(await asyncio.wait_for(agen.__anext__(), 10))
        await agen.aclose()
        return got
    live = asyncio.run(follow())
    assert [e["msg"] for e in live] == ["event 100", "event 101", "event 102"]
    assert {e["hostname"] for e in live} == {"node2"}

    # the same through the commands: busctl query --fleet and bus-tail --fleet URL, each line its host
    out = nodes[0].run("busctl", "query", "--fleet", "--host", "node1", "--json").stdout
    assert [json.loads(line)["hostname"] for line in out.splitlines()] == ["node1"] * 20
    table = nodes[0].run("busctl", "query", "--fleet", natsd.url, "--system", "lvm", "--limit", "2").stdout
    assert [line.split()[1] for line in table.splitlines()] == ["node2", "node2"]
    tail = nodes[1].run("bus-tail", "--fleet", natsd.url, "--since", "1h", "--host", "node0", "--count", "20",
                        "--json").stdout
    assert [json.loads(line)["msg"] for line in tail.splitlines()] == [f"event {i}" for i in range(20)]


# -- outages ----------------------------------------------------------------------------------------

def test_nats_killed_30s_mid_stream_and_busd_restarted_while_down_exactly_once(nodes: list[Bus],
                                                                             natsd: NatsServer) -> None:
    """Three nodes stream into one server; it is SIGKILLed for 30 s mid-stream and node0's busd restarts
    during the outage: afterwards the stream holds every node's events exactly once."""
    sent = {"node0": 20000, "node1": 5000, "node2": 5000}
    for i, node in enumerate(nodes):
        node.write({"nats": receiver(natsd.url)}, main={"hostname": f"node{i}"})
        node.start()
    bus = nodes[0]
    emitting = [threading.Thread(target=node.emit, args=(synthetic(sent[f"node{i}"], host=f"node{i}"),))
                for i, node in enumerate(nodes)]
    for thread in emitting:
        thread.start()
    wait_for(lambda: status(bus).get("delivered", 0) > 0, 20, "the first deliveries")
    natsd.kill()  # mid-stream: some of the events are in the stream, the rest not yet
    killed = time.monotonic()
    for thread in emitting:
        thread.join()
    assert status(bus)["delivered"] < 20000, "the outage came too late to be mid-stream"
    wait_for(lambda: (status(bus).get("last_error") or {}).get("error") and not status(bus).get("connected"),
             15, "the outage in the receiver's status")
    # busd restarted while NATS is down: the outbox keeps what waits
    bus.stop()
    bus.start()
    bus.emit(synthetic(1000, host="node0", start=20000))
    sent["node0"] += 1000
    wait_for(lambda: status(bus).get("depth", 0) > 0, 15, "events waiting in the outbox")
    time.sleep(max(0.0, 30 - (time.monotonic() - killed)))  # the outage lasts 30 s, as the brief asks
    natsd.start()
    for node in nodes:
        wait_for(lambda node=node: status(node).get("depth") == 0 and status(node).get("connected"), 30,
                 "outbox drained")
    counts = ids_in_stream(natsd.url)
    assert max(counts.values()) == 1, f"duplicated: {[k for k, v in counts.items() if v > 1][:5]}"
    from bus import fleet

    stream = asyncio.run(fleet.fleet_query(load(bus.config), None, Query(Filter.parse({"kind": "all"}))))
    hosts = collections.Counter(e["hostname"] for e in stream)
    assert hosts == sent, f"lost: {sent - hosts}"
    log = bus.read_log()
    assert "nats_unavailable" in log and "nats_recovered" in log, log[-6000:]


# -- authentication ---------------------------------------------------------------------------------

@pytest.mark.parametrize("auth", ["token", "user"])
def test_auth_works_and_wrong_credentials_are_a_clear_error_without_the_secret(bus: Bus, auth: str) -> None:
    base = Path(tempfile.mkdtemp(prefix="nats", dir="/tmp"))
    secret = "Sup3r-s3cret-value"
    args = ("--auth", secret) if auth == "token" else ("--user", "busd", "--pass", secret)
    server = NatsServer(base, *args)
    server.start()
    try:
        good = {"token": secret} if auth == "token" else {"user": "busd", "password": secret}
        bad = {"token": "wrong-one-xyz"} if auth == "token" else {"user": "busd", "password": "wrong-one-xyz"}
        bus.write({"nats": receiver(server.url, **good), "natsbad": receiver(server.url, stream="BAD", **bad)})
        bus.config.chmod(0o600)
        bus.start()
        bus.emit(synthetic(10))
        wait_for(lambda: status(bus).get("delivered", 0) >= 10, 20, "delivered with good credentials")
        # each attempt is refused; the status names the server's reason, not the reset after it
        error = wait_for(lambda: (status(bus, "natsbad").get("last_error") or {}).get("error"), 20, "an error")
        error = wait_for(lambda: (e := (status(bus, "natsbad").get("last_error") or {}).get("error", ""))
                         and "authorization" in e.lower() and e, 20, f"the auth error (first seen: {error})")
        assert status(bus, "natsbad")["delivered"] == 0 and status(bus, "natsbad")["depth"] == 10
        log = bus.read_log()
        assert "nats_unavailable" in log and "authorization" in log.lower()
        assert secret not in log and "wrong-one-xyz" not in log
        assert secret not in json.dumps(status(bus)) and "wrong-one-xyz" not in json.dumps(status(bus, "natsbad"))
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_existing_stream_with_other_settings_is_kept_with_a_warning(bus: Bus, natsd: NatsServer) -> None:
    async def create() -> None:
        import nats
        from nats.js.api import StreamConfig

        nc = await nats.connect(natsd.url)
        try:
            await nc.jetstream().add_stream(StreamConfig(name="BUSD", subjects=["busd.>"], duplicate_window=120))
        finally:
            await nc.close()
    asyncio.run(create())
    bus.write({"nats": receiver(natsd.url)})
    bus.start()
    bus.emit(synthetic(5))
    wait_for(lambda: status(bus).get("delivered", 0) >= 5, 20, "delivered")
    warning = next(r for r in bus.log_records() if r.get("event") == "nats_stream_differs")
    assert warning["differences"]["duplicate_window"] == [3600.0, 120.0]
    assert os.environ.get("PYTEST_CURRENT_TEST")  # sanity: running under pytest


# -- TLS --------------------------------------------------------------------------------------------

def _certificates(base: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (openssl, as an operator would)."""
    ca_key, ca, key, csr, cert = (base / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    run = functools.partial(subprocess.run, check=True, capture_output=True)
    run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=busd test CA"])
    run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"])
    ext = base / "san.cnf"
    ext.write_text("subjectAltName = IP:127.0.0.1\n")
    run(["openssl", "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", ext])
    return ca, cert, key


def test_tls_server_verified_with_the_configured_ca(bus: Bus) -> None:
    """tls:// with tls_ca delivers; without the CA the certificate is refused, clearly, and nothing is sent."""
    base = Path(tempfile.mkdtemp(prefix="natstls", dir="/tmp"))
    ca, cert, key = _certificates(base)
    server = NatsServer(base, "--tls", "--tlscert", str(cert), "--tlskey", str(key))
    server.start()
    try:
        url = server.url.replace("nats://", "tls://")
        bus.write({"nats": receiver(url, tls_ca=str(ca)), "natsnoca": receiver(url, stream="NOCA")})
        bus.start()
        bus.emit(synthetic(10))
        wait_for(lambda: status(bus).get("delivered", 0) >= 10, 20, "delivered over TLS")
        error = wait_for(lambda: (e := (status(bus, "natsnoca").get("last_error") or {}).get("error", ""))
                         and "certificate" in e.lower() and e, 20, "a certificate error")
        assert "verify" in error.lower(), error
        assert status(bus, "natsnoca")["delivered"] == 0 and status(bus, "natsnoca")["depth"] == 10
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_nkey_seed_file_authenticates(bus: Bus) -> None:
    """nkeys_seed: the receiver signs the server's nonce with the seed file; the seed never reaches the log."""
    import nacl.signing
    import nkeys

    base = Path(tempfile.mkdtemp(prefix="natsnk", dir="/tmp"))
    seed = nkeys.encode_seed(bytes(nacl.signing.SigningKey.generate()), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    (base / "user.nk").write_bytes(seed)
    (base / "user.nk").chmod(0o600)
    (base / "auth.conf").write_text(f'authorization {{ users = [ {{ nkey: "{public}" }} ] }}\n')
    server = NatsServer(base, "-c", str(base / "auth.conf"))
    server.start()
    try:
        bus.write({"nats": receiver(server.url, nkeys_seed=str(base / "user.nk")),
                   "natsnone": receiver(server.url, stream="NONE")})
        bus.start()
        bus.emit(synthetic(10))
        wait_for(lambda: status(bus).get("delivered", 0) >= 10, 20, "delivered with the nkey")
        wait_for(lambda: "authorization" in str((status(bus, "natsnone").get("last_error") or {}).get("error", "")),
                 20, "no credentials refused")
        assert seed.decode() not in bus.read_log()
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)

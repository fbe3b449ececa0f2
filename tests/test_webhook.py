"""Receiver ``webhook``: bodies, authentication, signatures, the durable outbox, outages and restarts."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from conftest import Bus, async_wait_for, ev, toml_value, wait_for
from webhook_server import WebhookServer

from bus.config import load
from bus.event import new_event
from bus.exceptions import ConfigError
from bus.secrets import redact_url
from receivers import webhook as wh
from receivers._outbox import KEEP_DELIVERED, Outbox, OutboxLocked

SECRET = "a gluster webhook secret, 32 bytes+"
SAMPLES = Path(__file__).resolve().parent.parent.parent / "shared" / "samples"


@pytest.fixture(name="server")
def fixture_server() -> Iterator[WebhookServer]:
    """A recording webhook server on 127.0.0.1, listening."""
    server = WebhookServer().up()
    try:
        yield server
    finally:
        server.close()


def gluster_event(name: str = "gv1", ts: int = 1468303352) -> dict[str, Any]:
    """A synthetic event as the gluster parser makes it for VOLUME_CREATE."""
    return new_event("gluster", "GLUSTER_VOLUME_CREATE", f"volume {name} created", kind="synthetic",
                     hostname="node1", dev_name=name, timestamp=ts + 0.25,
                     extensions={"nodeid": "95cd599c-5d87-43c1-8fba-b12821fd41b6", "ts": ts,
                                 "gluster_event": "VOLUME_CREATE", "message": {"name": name}})


def settings(**table: Any) -> dict[str, Any]:
    """One webhook's complete settings, with the receiver's defaults."""
    return wh.webhook_settings({k: o.default for k, o in wh.OPTIONS.items()} | {"webhooks": [table]})[0]


# -- what is sent -------------------------------------------------------------------------------------

def test_gluster_body_is_byte_for_byte_what_glustereventsd_posts() -> None:
    sample = json.loads((SAMPLES / "gluster-webhook-body.json").read_text())
    body, subject, issued_at = wh.render("gluster", gluster_event())
    # glustereventsd: message_json = json.dumps(message, sort_keys=True)
    assert body == json.dumps(sample, sort_keys=True).encode()
    assert body == (b'{"event": "VOLUME_CREATE", "message": {"name": "gv1"}, '
                    b'"nodeid": "95cd599c-5d87-43c1-8fba-b12821fd41b6", "ts": 1468303352}')
    assert (subject, issued_at) == ("VOLUME_CREATE", 1468303352)
    # the node id the parser could not learn is null, as glustereventsd posts it (not the hostname)
    event = gluster_event()
    event["extensions"]["nodeid"] = None
    assert json.loads(wh.render("gluster", event)[0])["nodeid"] is None


def test_gluster_body_of_other_events_and_busd_format() -> None:
    event = new_event("scsi", "SCSI_MEDIUM_ERROR", "medium error on sdb", severity="error", kind="synthetic",
                      hostname="node2", dev_name="sdb", dev_wwid="naa.1", timestamp=1700000000.9,
                      extensions={"sector": 10240})
    body, subject, issued_at = wh.render("gluster", event)
    assert json.loads(body) == {"nodeid": "node2", "ts": 1700000000, "event": "SCSI_MEDIUM_ERROR",
                                "message": {"msg": "medium error on sdb", "system": "scsi", "severity": "error",
                                            "dev_name": "sdb", "dev_wwid": "naa.1", "event_id": event["event_id"],
                                            "source": "", "extensions": {"sector": 10240}}}
    assert list(json.loads(body)) == ["event", "message", "nodeid", "ts"]
    assert (subject, issued_at) == ("SCSI_MEDIUM_ERROR", 1700000000)
    body, subject, _ = wh.render("busd", event)
    assert json.loads(body) == event and subject == "SCSI_MEDIUM_ERROR"


def test_jwt_is_glusters_and_pyjwt_verifies_it() -> None:
    now = 1700000100.7
    token = wh.jwt_token(SECRET, "VOLUME_CREATE", 1468303352, now=now)
    header, _, _ = token.split(".")
    assert header == "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"  # base64url of '{"alg":"HS256","typ":"JWT"}'
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], issuer="gluster", options={"verify_exp": False})
    assert claims == {"iss": "gluster", "sub": "VOLUME_CREATE", "iat": 1468303352, "exp": 1700000160}
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(token, SECRET + " but another one", algorithms=["HS256"], options={"verify_exp": False})


def test_request_headers_bearer_jwt_signature() -> None:
    event = gluster_event()
    body, headers = wh.Sender(settings(url="http://h/x", bearer_token="tok", headers={"X-Env": "prod"})).request(event)
    assert headers["Authorization"] == "Bearer tok" and headers["X-Env"] == "prod"
    assert headers["Content-Type"] == "application/json" and headers["X-Busd-Event-Id"] == event["event_id"]
    assert "X-Busd-Signature" not in headers
    now = time.time()
    body, headers = wh.Sender(settings(url="http://h/x", secret=SECRET, signing_key="sig")).request(event, now=now)
    claims = jwt.decode(headers["Authorization"].removeprefix("Bearer "), SECRET, algorithms=["HS256"])
    assert claims["exp"] == int(now) + 60 and claims["iat"] == 1468303352
    assert headers["X-Busd-Timestamp"] == str(int(now))
    assert wh.verify_signature("sig", headers, body)
    assert not wh.verify_signature("sig", headers, body + b" ")
    assert not wh.verify_signature("wrong", headers, body)
    assert not wh.verify_signature("sig", headers, body, now=now + 301)
    assert not wh.verify_signature("sig", {}, body)


def test_tls_is_verified_against_the_system_or_ca_file_unless_disabled(tmp_path: Path) -> None:
    crt, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(crt, key)
    server = WebhookServer(tls=tls).up()
    event = gluster_event()

    async def post(**table: Any) -> wh.Attempt:
        sender = wh.Sender(settings(url=server.url + "/t", **table), base=tmp_path)
        try:
            return await sender.post(event)
        finally:
            await sender.close()

    try:
        strict = asyncio.run(post())
        assert strict.outcome == "retry" and "certificate" in strict.error and strict.status is None
        assert asyncio.run(post(ca_file="cert.pem")).outcome == "delivered"  # relative to the configuration
        assert asyncio.run(post(verify_tls=False)).outcome == "delivered"
        missing = asyncio.run(post(ca_file="nothere.pem"))
        assert missing.outcome == "retry" and missing.error.startswith(f"ca_file {tmp_path}/nothere.pem: No such file")
        assert len(server.received()) == 2
    finally:
        server.close()


# -- configuration ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("table", "key", "reason"), [
    ({"url": "ftp://x/"}, "webhooks[0].url", "not an http"),
    ({"url": "http://x/", "secret": "a", "bearer_token": "b"}, "webhooks[0].secret", "not both"),
    ({"url": "http://x/", "colour": "red"}, "webhooks[0].colour", "unknown key"),
    ({"url": "http://x/", "filter": {"sistem": "gluster"}}, "webhooks[0].filter.sistem", "unknown key"),
    ({"url": "http://x/", "format": "xml"}, "webhooks[0].format", "not one of"),
    ({"url": "http://x/", "timeout": 0}, "webhooks[0].timeout", "must be positive"),
    ({"url": "http://x/", "reject_status": [429]}, "webhooks[0].reject_status", "4xx"),
    ({"url": "http://x/", "headers": {"Authorization": "x"}, "bearer_token": "t"}, "webhooks[0].headers.Authorization",
     "set by the receiver"),
    ({"name": "a"}, "webhooks[0].url", "is required"),
])
def test_bad_webhook_options_are_refused_with_the_key(tmp_path: Path, table: dict[str, Any], key: str,
                                                       reason: str) -> None:
    conf = tmp_path / "busd.toml"
    conf.write_text(f'[main]\nruntime_dir = "{tmp_path}"\n[plugins.wh]\ntype = "receiver"\nbuiltin = "webhook"\n'
                    f"webhooks = [{_inline(table)}]\n")
    with pytest.raises(ConfigError) as info:
        load(conf)
    assert info.value.key == f"plugins.wh.{key}" and reason in str(info.value)


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {_inline(v)}' for k, v in value.items()) + " }"
    return json.dumps(value)


def test_names_derived_from_urls_must_be_distinct() -> None:
    assert wh.name_from_url("https://monitor.example.com:8443/hooks/gluster") == "monitor.example.com-8443-hooks-gluster"
    assert wh.name_from_url("http://[::1]/") == "1"
    with pytest.raises(ValueError, match=r"webhooks\[1\]\.name: 'h-x' is also webhook 0's name"):
        wh.webhook_settings({"webhooks": [{"url": "http://h/x"}, {"url": "https://h/x"}]})
    assert redact_url("https://u:pw@h:8/p") == "https://u:***@h:8/p"


# -- the outbox ---------------------------------------------------------------------------------------

def test_outbox_orders_bounds_expires_dedups_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "o" / "hook.sqlite"
    box = Outbox(path)
    with pytest.raises(OutboxLocked):
        Outbox(path)
    for i in range(5):
        assert box.add(f"id{i}", b"{}", 100.0 + i, bound=10, keep_from=0) == (True, 0)
    assert box.add("id0", b"{}", 200.0, bound=10, keep_from=0) == (False, 0)  # the bus delivered it again
    assert [r.event_id for r in box.peek(10)] == ["id0", "id1", "id2", "id3", "id4"]
    box.done(box.peek(2)[-1].seq, delivered=2)
    box.save()
    assert box.add("id1", b"{}", 200.0, bound=10, keep_from=0) == (False, 0)  # delivered ids are remembered too
    # the bound drops the oldest waiting events, except those being sent (seq < keep_from)
    head = box.peek(1)[0].seq
    assert box.add("id5", b"{}", 105.0, bound=3, keep_from=head + 1) == (True, 1)
    assert [r.event_id for r in box.peek(10)] == ["id2", "id4", "id5"]
    assert box.expire(104.5) == 2 and [r.event_id for r in box.peek(10)] == ["id5"]
    box.close()
    box = Outbox(path)
    assert box.depth == 1 and box.totals["delivered"] == 2 and box.totals["outbox_full"] == 1
    assert box.totals["expired"] == 2 and [r.event_id for r in box.peek(10)] == ["id5"]
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    box.close()


def test_outbox_forgets_delivered_rows_beyond_the_dedup_window(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "hook.sqlite")
    for i in range(KEEP_DELIVERED + 10):
        box.add(f"id{i}", b"{}", 1.0, bound=10**6, keep_from=0)
    box.done(KEEP_DELIVERED + 10, delivered=KEEP_DELIVERED + 10)
    box.save()
    rows = box.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    assert rows == KEEP_DELIVERED and box.depth == 0
    box.close()


def test_outbox_on_a_full_disk_says_so_and_takes_events_again_once_there_is_room(tmp_path: Path) -> None:
    """SQLite rolls a transaction back itself on SQLITE_FULL: the error must stay "full", not "cannot rollback"."""
    box = Outbox(tmp_path / "hook.sqlite")
    pages = box.db.execute("PRAGMA page_count").fetchone()[0]
    box.db.execute(f"PRAGMA max_page_count = {pages + 2}")  # a disk with room for a page or two more
    with pytest.raises(sqlite3.OperationalError, match="full"):
        for i in range(100):
            box.add(f"id{i}", b"x" * 3000, 1.0, bound=10**6, keep_from=0)
    assert not box.db.in_transaction
    held = box.depth
    box.db.execute("PRAGMA max_page_count = 1000000")  # room again
    assert box.add("again", b"{}", 1.0, bound=10**6, keep_from=0) == (True, 0)
    assert box.depth == held + 1 == box.db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
    box.close()


# -- the receiver, in this process --------------------------------------------------------------------

def receiver(tmp_path: Path, webhooks: list[dict[str, Any]], **options: Any) -> wh.Webhook:
    config = {"builtin": "webhook", "type": "receiver", "state_dir": str(tmp_path / "state"), "retry_max": 0.2,
              "webhooks": webhooks, **options}
    return wh.Webhook({"BUS_PLUGIN": "wh", "BUS_PLUGIN_CONFIG": json.dumps(config), "BUS_HOSTNAME": "node1",
                       "BUS_RUNTIME_DIR": str(tmp_path / "run")})



def test_receiver_shows_a_full_disk_in_its_status_while_the_event_waits(tmp_path: Path, server: WebhookServer) -> None:
    """handle() retries a write the disk refused; busctl webhook status must show the error meanwhile."""
    plugin = receiver(tmp_path, [{"url": server.url + "/h", "name": "h", "format": "busd"}])
    status_file = tmp_path / "run" / "status" / "wh.json"

    def hook_status() -> dict[str, Any]:
        try:
            return dict(json.loads(status_file.read_text())["webhooks"][0])
        except (OSError, ValueError):
            return {}

    def last_error() -> str:
        return str((hook_status().get("last_error") or {}).get("error", ""))

    async def scenario() -> None:
        await plugin.setup()
        try:
            await plugin.handle(new_event("test", "FIRST", kind="synthetic"))  # opens the outbox
            # delivered and in the status: from now on only a new change makes the receiver write its status
            await async_wait_for(lambda: hook_status().get("delivered") == 1, what="the first delivery in the status")
            box = plugin.hooks[0].outbox
            assert box is not None
            box.db.execute(f"PRAGMA max_page_count = {box.db.execute('PRAGMA page_count').fetchone()[0]}")
            waiting = asyncio.create_task(plugin.handle(new_event("test", "BIG", "x" * 20000, kind="synthetic")))
            await async_wait_for(lambda: "full" in last_error(), what="the full disk in the status file")
            assert not waiting.done()
            box.db.execute("PRAGMA max_page_count = 1000000")
            await asyncio.wait_for(waiting, 10)
        finally:
            await plugin.teardown()

    asyncio.run(scenario())
    assert [r.json()["event_type"] for r in server.received("/h")] == ["FIRST", "BIG"]

def test_receiver_filters_retries_rejects_and_reports_status(tmp_path: Path, server: WebhookServer) -> None:
    bad = set()
    unauthorized = [401, 401]  # the first two requests (the server's token was not set up yet): retried

    def answer(req: Any) -> int:
        if unauthorized:
            return unauthorized.pop()
        return 400 if req.header("X-Busd-Event-Id") in bad else 200

    server.status = answer
    plugin = receiver(tmp_path, [
        {"url": server.url + "/gluster", "filter": {"system": "gluster"}, "secret": SECRET},
        {"url": server.url + "/all", "name": "all", "format": "busd", "bearer_token": "t", "signing_key": "sig"},
    ])
    events = [gluster_event("gv1"), new_event("scsi", "SCSI_ERR", "x", kind="synthetic"), gluster_event("gv2")]
    bad.add(events[1]["event_id"])

    async def scenario() -> None:
        await plugin.setup()
        try:
            for event in events:
                await plugin.handle(event)
            await async_wait_for(lambda: len(server.received("/all")) == 2 and len(server.received("/gluster")) == 2)
            # every outbox empty: the server has the requests *and* the plugin counted their answers
            await async_wait_for(lambda: all(h.outbox is not None and h.outbox.depth == 0 for h in plugin.hooks))
        finally:
            await plugin.teardown()

    asyncio.run(scenario())
    gl = server.received("/gluster")
    assert [r.json()["message"]["name"] for r in gl] == ["gv1", "gv2"]
    claims = jwt.decode(gl[0].header("Authorization").removeprefix("Bearer "), SECRET, algorithms=["HS256"],
                        issuer="gluster", options={"verify_iat": False})
    assert claims["sub"] == "VOLUME_CREATE" and claims["iat"] == 1468303352
    everything = server.received("/all")
    assert [r.json()["event_id"] for r in everything] == [events[0]["event_id"], events[2]["event_id"]]
    assert all(r.header("Authorization") == "Bearer t" and wh.verify_signature("sig", r.headers, r.body)
               for r in everything)
    status = json.loads((tmp_path / "run" / "status" / "wh.json").read_text())
    hooks = {h["name"]: h for h in status["webhooks"]}
    assert hooks["all"]["depth"] == 0 and hooks["all"]["delivered"] == 2 and hooks["all"]["rejected"] == 1
    assert hooks["127.0.0.1-" + str(server.port) + "-gluster"]["delivered"] == 2
    errors = [h["last_error"] for h in hooks.values() if h["last_error"]]
    assert errors and all(e["status"] == 401 and e["error"].startswith("HTTP 401 Unauthorized") for e in errors)
    assert all(h["last_success"] > h["last_error"]["time"] for h in hooks.values() if h["last_error"])
    assert plugin.counters["delivered"] == 4 and plugin.counters["dropped"] == 1


def test_concurrent_requests_retry_only_what_failed(tmp_path: Path, server: WebhookServer) -> None:
    failing: set[str] = set()
    failed_once: set[str] = set()

    def answer(req: Any) -> int:  # every 7th event fails on its first attempt
        event_id = req.header("X-Busd-Event-Id")
        if event_id in failing and event_id not in failed_once:
            failed_once.add(event_id)
            return 503
        return 200

    server.status = answer
    plugin = receiver(tmp_path, [{"url": server.url + "/c", "name": "c", "format": "busd", "concurrency": 4}])
    events = [new_event("test", "E", str(i), kind="synthetic", extensions={"i": i}) for i in range(100)]
    failing.update(e["event_id"] for e in events[::7])

    async def scenario() -> None:
        await plugin.setup()
        try:
            for event in events:
                await plugin.handle(event)
            await async_wait_for(lambda: plugin.hooks[0].outbox is not None and plugin.hooks[0].outbox.depth == 0)
        finally:
            await plugin.teardown()

    asyncio.run(scenario())
    got = [r.json()["extensions"]["i"] for r in server.received()]
    assert sorted(got) == list(range(100))  # each once: what succeeded next to a failure is not sent again
    assert failed_once == failing
    # a sliding window of 4 requests, stopped by a failure until it is retried: an event that did not
    # fail arrives before those queued well after it (the server may reorder the few in flight)
    late = [i for n, i in enumerate(got) if i % 7 and any(j > i + 8 for j in got[:n])]
    assert not late
    [hook] = json.loads((tmp_path / "run" / "status" / "wh.json").read_text())["webhooks"]
    assert hook["delivered"] == 100 and hook["depth"] == 0 and hook["last_error"]["status"] == 503


def test_events_older_than_max_age_are_dropped_and_counted(tmp_path: Path) -> None:
    from webhook_server import free_port

    plugin = receiver(tmp_path, [{"url": f"http://127.0.0.1:{free_port()}/", "name": "down", "max_age": 0.3}])

    async def scenario() -> None:
        await plugin.setup()
        try:
            for i in range(3):
                await plugin.handle(new_event("test", "E", str(i), kind="synthetic"))
            await async_wait_for(lambda: plugin.hooks[0].outbox is not None and plugin.hooks[0].outbox.totals["expired"] == 3)
        finally:
            await plugin.teardown()

    asyncio.run(scenario())
    [hook] = json.loads((tmp_path / "run" / "status" / "wh.json").read_text())["webhooks"]
    assert hook["depth"] == 0 and hook["expired"] == 3 and hook["delivered"] == 0
    assert hook["last_error"]["error"].startswith("cannot connect") and hook["last_success"] is None
    assert plugin.counters["dropped"] == 3


# -- end to end through busd ----------------------------------------------------------------------------

def configure(bus: Bus, webhooks: list[dict[str, Any]], **options: Any) -> None:
    """Write a configuration with one webhook receiver ``wh`` (every kind of event) and its webhooks."""
    table = {"type": "receiver", "builtin": "webhook", "state_dir": str(bus.base / "state"), "retry_max": 0.3,
             "filter": {"kind": "all"}, **options}
    hooks = "".join("\n[[plugins.wh.webhooks]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in hook.items())
                    for hook in webhooks)
    bus.write({"wh": table}, extra=hooks)


def hook_status(bus: Bus, plugin: str = "wh") -> dict[str, dict[str, Any]]:
    path = bus.runtime_dir / "status" / f"{plugin}.json"
    try:
        return {h["name"]: h for h in json.loads(path.read_text())["webhooks"]}
    except (OSError, ValueError):
        return {}


def last_error(bus: Bus, name: str = "h") -> dict[str, Any]:
    return hook_status(bus).get(name, {}).get("last_error") or {}


def depth(bus: Bus, name: str) -> int | None:
    return hook_status(bus).get(name, {}).get("depth")


def test_outage_and_reload_with_1000_events_then_every_one_arrives_in_order_once(bus: Bus, server: WebhookServer) -> None:
    configure(bus, [{"url": server.url + "/h", "name": "h", "format": "busd"}])
    bus.start()
    bus.wait_running("wh")
    bus.emit([ev("test", "FIRST")])
    wait_for(lambda: len(server.received()) == 1, what="the first delivery")
    server.down()
    bus.emit([ev("test", "E", f"event {i}", extensions={"i": i}) for i in range(500)])
    # a reload that restarts the receiver while it queues: what it had not reported is delivered
    # to it again, and the outbox recognises what it already holds
    configure(bus, [{"url": server.url + "/h", "name": "h", "format": "busd"}], retry_max=0.25)
    assert "restarted ['wh']" in bus.run("busctl", "reload").stdout
    bus.emit([ev("test", "E", f"event {i}", extensions={"i": i}) for i in range(500, 1000)])
    wait_for(lambda: depth(bus, "h") == 1000, what="1000 events in the outbox")
    wait_for(lambda: last_error(bus).get("error", "").startswith("cannot connect"), what="the error in the status")
    assert len(server.received()) == 1
    server.up()
    wait_for(lambda: len(server.received()) >= 1001, 30, "the backlog to drain")
    wait_for(lambda: depth(bus, "h") == 0, what="an empty outbox")
    got = [r.json()["extensions"]["i"] for r in server.received()[1:]]
    assert got == list(range(1000))
    status = hook_status(bus)["h"]
    assert status["delivered"] == 1001 and status["last_success"] > status["last_error"]["time"]


def test_kill_9_busd_during_a_backlog_loses_nothing(bus: Bus, server: WebhookServer) -> None:
    server.status = 503
    configure(bus, [{"url": server.url + "/h", "name": "h", "format": "busd"}])
    bus.start()
    bus.wait_running("wh")
    bus.emit([ev("test", "E", extensions={"i": i}) for i in range(300)])
    wait_for(lambda: depth(bus, "h") == 300, what="300 events in the outbox")
    wait_for(lambda: last_error(bus).get("status") == 503, what="the 503 in the status")

    def slow(_: Any) -> int:  # a server taking 5 ms per request: the backlog drains for about 1.5 s
        time.sleep(0.005)
        return 200

    server.status = slow
    wait_for(lambda: len(server.received()) >= 60, what="the backlog to start draining")
    bus.stop(signal.SIGKILL)  # the receiver dies with busd, in the middle of the backlog
    server.status = 200
    bus.start()
    bus.wait_running("wh")

    def arrived() -> list[int]:
        return [r.json()["extensions"]["i"] for r in server.received()]

    wait_for(lambda: set(arrived()) == set(range(300)), 30, "the rest of the backlog after the restart")
    wait_for(lambda: depth(bus, "h") == 0, what="an empty outbox")
    got = arrived()
    # two runs in order: before the kill, and after the restart from the last saved position (which
    # may be the very delivery the kill interrupted: then the second run starts with a repeat)
    restart = next((i for i in range(1, len(got)) if got[i] <= got[i - 1]), len(got))
    first, second = got[:restart], got[restart:]
    assert first == list(range(len(first))) and second == list(range(second[0] if second else 0, 300))
    duplicates = len(got) - 300
    # at least once: what was delivered after the last save of the cursor (every 0.05 s) is resent
    assert 0 <= duplicates <= 30, f"{duplicates} duplicates of 300 ({duplicates / 3:.1f} %)"


def test_full_outbox_drops_the_oldest_counts_and_reports_them(bus: Bus, server: WebhookServer) -> None:
    server.down()
    configure(bus, [
        {"url": server.url + "/h", "name": "h", "format": "busd", "filter": {"system": "test"}, "max_outbox": 10},
        {"url": server.url + "/drops", "name": "drops", "format": "busd", "filter": {"system": "webhook"}}],
        report_interval=0.3)
    bus.start()
    bus.wait_running("wh")
    bus.emit([ev("test", "E", extensions={"i": i}) for i in range(30)])
    wait_for(lambda: hook_status(bus).get("h", {}).get("outbox_full") == 20, what="20 drops counted")
    assert depth(bus, "h") == 10
    server.up()

    def reported() -> int:
        return sum(r.json()["extensions"]["dropped"] for r in server.received("/drops"))

    wait_for(lambda: reported() == 20 and len(server.received("/h")) == 10, 20, "deliveries and drop reports")
    # the oldest go first, except the event being retried when the bound was reached: whichever was
    # oldest at the worker's first attempt, which depends on how the 30 events arrived in batches
    got = [r.json()["extensions"]["i"] for r in server.received("/h")]
    assert got == list(range(20, 30)) or (got[1:] == list(range(21, 30)) and got[0] < 21), got
    report = server.received("/drops")[-1].json()
    assert report["event_type"] == "WEBHOOK_EVENTS_DROPPED" and report["severity"] == "warn"
    assert report["system"] == "webhook" and report["dev_name"] == "h" and report["source"] == "wh"
    assert report["extensions"]["webhook"] == "h" and report["extensions"]["dropped_total"] == 20
    assert all(r.json()["extensions"]["expired"] == 0 for r in server.received("/drops"))
    wait_for(lambda: bus.plugin("wh").get("counters", {}).get("dropped") == 20, what="drops counted in busctl status")


def test_gluster_webhook_end_to_end_with_jwt(bus: Bus, server: WebhookServer) -> None:
    configure(bus, [
        {"url": server.url + "/g", "filter": {"system": "gluster"}, "secret": SECRET}])
    bus.start()
    bus.wait_running("wh")
    event = gluster_event()
    for key in ("event_id", "timestamp", "kind", "v", "source"):
        event.pop(key, None)
    # had the other event passed the webhook's filter, it would arrive first (in order)
    bus.emit([ev("other", "NOT_FOR_IT"), event])
    wait_for(lambda: server.received(), what="a delivery")
    req = server.received()[0]
    sample = json.loads((SAMPLES / "gluster-webhook-body.json").read_text())
    assert req.body == json.dumps(sample, sort_keys=True).encode()
    token = req.header("Authorization").removeprefix("Bearer ")
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], issuer="gluster")
    assert claims["sub"] == "VOLUME_CREATE" and claims["iat"] == 1468303352
    assert claims["exp"] - time.time() <= 60
    assert os.path.exists(bus.base / "state" / "wh" / f"127.0.0.1-{server.port}-g.sqlite")

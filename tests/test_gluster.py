"""The ``gluster`` collector and parser: wire format, glustereventsd's rules, a real busd, real GlusterFS."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import Bus, wait_for
from gluster_send import c_gf_event, gf_event, send_raw
from gluster_send import main as send_main
from kernel_input import SAMPLES

from bus import config
from bus.exceptions import BadInput, ConfigError
from collectors.gluster import Gluster as GlusterCollector
from collectors.gluster import format_sender
from parsers._gluster_events import EVENTS, parse_datagram
from parsers.gluster import ERRORS, WARNINGS, device, parse_message, severity_of
from parsers.gluster import Gluster as GlusterParser

SENDER = Path(__file__).resolve().parent / "gluster_send.py"
NODE = "95cd599c-5d87-43c1-8fba-b12821fd41b6"


def free_port() -> int:
    """A UDP port free on both 127.0.0.1 and [::1]."""
    while True:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s6:
            s6.bind(("::1", 0))
            port = int(s6.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s4:
                try:
                    s4.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port


def logs(bus: Bus, event: str) -> list[dict[str, Any]]:
    return [r for r in bus.log_records() if r.get("event") == event]


def glusterd_info(path: Path, uuid: str = NODE) -> Path:
    path.write_text(f"UUID={uuid}\noperating-version=100000\n")
    return path


def collector(**options: Any) -> GlusterCollector:
    table = {"type": "collector", "builtin": "gluster", **options}
    return GlusterCollector({"BUS_PLUGIN": "gl", "BUS_PLUGIN_CONFIG": json.dumps(table), "BUS_HOSTNAME": "node1"})


def parser() -> GlusterParser:
    return GlusterParser({"BUS_PLUGIN": "glp", "BUS_PLUGIN_CONFIG": json.dumps({"type": "parser", "builtin": "gluster"}),
                          "BUS_HOSTNAME": "node1"})


def webhook_body(event: dict[str, Any]) -> str:
    """GlusterFS's webhook body (``json.dumps(..., sort_keys=True)``) from a parsed event's extensions."""
    ext = event["extensions"]
    return json.dumps({"nodeid": ext["nodeid"], "ts": ext["ts"], "event": ext["gluster_event"],
                       "message": ext["message"]}, sort_keys=True)


# -- the wire format ---------------------------------------------------------------------------


def test_event_table_matches_the_sample_file() -> None:
    lines = (SAMPLES / "gluster-event-types.txt").read_text().splitlines()
    assert [f"{i} {name}" for i, name in enumerate(EVENTS)] == lines
    assert len(EVENTS) == 142 and len(set(EVENTS)) == 142


def test_datagram_sample_lines_and_shapes() -> None:
    first, second = (SAMPLES / "gluster-messages.txt").read_text().splitlines()
    d = parse_datagram(first.encode())
    assert (d.ts, d.index, d.message, d.text) == (1468303352, 2, "name=gv1", first)
    d = parse_datagram(second.encode() + b"\n")  # glustereventsd strips the datagram too
    assert (d.index, d.message) == (6, "name=gv1;options=cluster.quorum-type,auto,performance.cache-size,256MB")
    # the brick's posix xlator sends text with spaces in a value; only the first two spaces split
    d = parse_datagram(b"1795596330 105 op=open;brick=vm:/b1 timeout is 20")
    assert d.message == "op=open;brick=vm:/b1 timeout is 20"
    assert parse_datagram(b"1468303352 3").message == ""


@pytest.mark.parametrize(("data", "reason"), [
    (b"1468303352 2 name=\xff\xfe", "not_utf8"),
    (b"", "empty"),
    (b" \n", "empty"),
    (b"1468303352", "no_index"),
    (b"1468303352x 2 name=a", "bad_timestamp"),
    (b"-1 2 name=a", "bad_timestamp"),
    (b"1468303352.5 2 name=a", "bad_timestamp"),
    (b"1468303352  2 name=a", "bad_index"),  # two spaces: gluster's split gives an empty index
    (b"1468303352 +2 name=a", "bad_index"),
    (b"1468303352 two name=a", "bad_index"),
    (b"1468303352 2" + b"0" * 12 + b" name=a", "bad_index"),
    (b"1468303352 2 " + b"x" * 600, "oversized"),
])
def test_malformed_datagrams_are_refused_with_a_reason(data: bytes, reason: str) -> None:
    with pytest.raises(BadInput) as exc:
        parse_datagram(data, max_size=512)
    assert exc.value.kind == reason
    assert reason in str(exc.value)


# -- glustereventsd's message rules ----------------------------------------------------------


def test_volume_set_options_become_pairs() -> None:
    sample = (SAMPLES / "gluster-messages.txt").read_text().splitlines()[1].split(" ", 2)[2]
    assert parse_message("VOLUME_SET", sample) == {
        "name": "gv1", "options": [["cluster.quorum-type", "auto"], ["performance.cache-size", "256MB"]]}
    # what the gluster command really sends (a leading comma), an odd last key, and no options at all
    assert parse_message("VOLUME_SET", "name=gv;options=,performance.cache-size,256MB")["options"] == [
        ["performance.cache-size", "256MB"]]
    assert parse_message("VOLUME_SET", "name=gv;options=a,1,b")["options"] == [["a", "1"], ["b"]]
    assert parse_message("VOLUME_SET", "name=gv")["options"] == [[""]]
    # only VOLUME_SET: other events keep an options string as it is
    assert parse_message("VOLUME_RESET", "name=gv;options=a,1") == {"name": "gv", "options": "a,1"}


def test_booleans_and_integers_follow_glustereventsd() -> None:
    msg = parse_message("GEOREP_CREATE", "force=1;push-pem=YES;no-verify=Off;ssh-port=22;push_pem=1;ssh_port=22")
    assert msg == {"force": True, "push-pem": True, "no-verify": False, "ssh-port": 22,
                   "push_pem": "1", "ssh_port": "22"}  # gluster converts only the hyphenated names
    for text, value in [("on", True), ("true", True), ("True", True), ("yes", True), ("0", False), ("2", False),
                        ("", False), ("off", False)]:
        assert parse_message("VOLUME_START", f"name=v;force={text}")["force"] is value
    assert parse_message("GEOREP_CREATE", "ssh-port=abc")["ssh-port"] == "abc"
    assert parse_message("GEOREP_CREATE", "ssh-port= 2022")["ssh-port"] == 2022  # Python's int(), like gluster


def test_message_splitting_keeps_what_glustereventsd_would_drop() -> None:
    assert parse_message("VOLUME_CREATE", "name=gvt;bricks= 192.0.2.2:/b1 ") == {
        "name": "gvt", "bricks": " 192.0.2.2:/b1 "}  # values are not stripped
    assert parse_message("VOLUME_CREATE", "") == {}
    assert parse_message("VOLUME_CREATE", "name=a;;b=2;") == {"name": "a", "b": "2"}
    assert parse_message("VOLUME_CREATE", "name=a=b;flag") == {"name": "a=b", "flag": ""}
    assert parse_message("VOLUME_CREATE", "name=a;name=b") == {"name": "b"}


def test_severities() -> None:
    assert set(ERRORS) <= set(EVENTS) and set(WARNINGS) <= set(EVENTS)
    for name in EVENTS:
        if name.endswith(("_FAILED", "_FAILURE")):
            assert severity_of(name) == "error", name
    for name in ("QUORUM_LOST", "AFR_QUORUM_FAIL", "AFR_SPLIT_BRAIN", "AFR_SUBVOLS_DOWN", "EC_MIN_BRICKS_NOT_UP",
                 "BRICK_DISCONNECTED", "BITROT_BAD_FILE", "POSIX_SAME_GFID", "GEOREP_FAULTY", "PEER_REJECT"):
        assert severity_of(name) == "error", name
    for name in ("QUOTA_CROSSED_SOFT_LIMIT", "SNAPSHOT_SOFT_LIMIT_REACHED", "PEER_DISCONNECT", "SVC_DISCONNECTED",
                 "CLIENT_DISCONNECT", "DHT_DISK_USAGE"):
        assert severity_of(name) == "warn", name
    for name in ("VOLUME_CREATE", "VOLUME_STOP", "QUORUM_REGAINED", "AFR_SUBVOL_UP", "EC_MIN_BRICKS_UP",
                 "BRICK_CONNECTED", "PEER_CONNECT", "CLIENT_CONNECT", "GEOREP_CHECKPOINT_COMPLETED", "UNKNOWN_150"):
        assert severity_of(name) == "info", name
    assert sum(severity_of(n) == "info" for n in EVENTS) > 60  # most events are routine


@pytest.mark.parametrize(("message", "expected"), [
    ({"name": "gv1"}, ("gv1", "")),
    ({"peer": "node1", "volume": "gv1", "brick": "/bricks/b1"}, ("node1:/bricks/b1", "")),
    ({"brick": "vm:/bricks/b1 timeout is 20", "op": "open"}, ("vm:/bricks/b1", "")),
    ({"Volume": "gv1", "source-brick": "node2:/b2"}, ("node2:/b2", "")),
    ({"client_identifier": "10.0.0.5:49132", "brick_path": "/gluster/brick1"}, ("/gluster/brick1", "")),
    ({"primary_volume": "gv1", "primary_node": "node1", "brick_path": "/b1"}, ("node1:/b1", "")),
    ({"subvol": "gv1-replicate-0", "client-pid": "-6"}, ("gv1-replicate-0", "")),
    ({"volume_name": "gv1", "volume_id": "1e2a"}, ("gv1", "1e2a")),
    ({"snapshot_name": "s1", "snapshot_uuid": "9f0c", "volume_name": "gv1"}, ("s1", "9f0c")),
    ({"host": "node2", "uuid": "77aa"}, ("node2", "77aa")),
    ({"primary": "gv1", "secondary": "node3::gv2"}, ("gv1", "")),
    ({"svc_name": "glustershd"}, ("glustershd", "")),
    ({"status": "Success"}, ("", "")),
])
def test_device_of_a_message(message: dict[str, Any], expected: tuple[str, str]) -> None:
    assert device(message) == expected


def test_parser_builds_named_events_from_collector_events_and_replayed_lines(tmp_path: Path) -> None:
    col = collector(glusterd_info=str(glusterd_info(tmp_path / "glusterd.info")))
    col.on_datagram(b"1468303352 6 name=gv1;options=cluster.quorum-type,auto", ("::1", 40001, 0, 0))
    raw = col.pending.popleft()
    p = parser()
    out = p.handle(raw)
    assert out is not None
    assert (out["system"], out["event_type"], out["severity"], out["dev_name"]) == (
        "gluster", "GLUSTER_VOLUME_SET", "info", "gv1")
    assert out["timestamp"] == 1468303352.0 and out["hostname"] == "node1"
    assert out["msg"] == "VOLUME_SET gv1: name=gv1;options=cluster.quorum-type,auto"
    assert out["extensions"] == {"gluster_event": "VOLUME_SET", "ts": 1468303352, "nodeid": NODE, "index": 6,
                                 "message": {"name": "gv1", "options": [["cluster.quorum-type", "auto"]]},
                                 "sender": "[::1]:40001", "raw_event_id": raw["event_id"]}
    assert webhook_body(out) == json.dumps(json.loads((SAMPLES / "gluster-webhook-body.json").read_text())
                                           | {"event": "VOLUME_SET", "message": out["extensions"]["message"]},
                                           sort_keys=True)
    # a datagram replayed as a plain line (no extensions): parsed from msg, no node id
    line = {"event_id": "e1", "system": "gluster", "kind": "raw", "event_type": "GLUSTER_EVENT",
            "timestamp": time.time(), "msg": "1468303352 80 volume=gv1", "extensions": {}}
    out = p.handle(line)
    assert out is not None
    assert (out["event_type"], out["severity"], out["dev_name"], out["timestamp"]) == (
        "GLUSTER_QUORUM_LOST", "error", "gv1", 1468303352.0)
    assert out["extensions"]["nodeid"] is None and out["extensions"]["ts"] == 1468303352
    # an index newer than the table passes on as GLUSTER_UNKNOWN_<n>
    out = p.handle({**line, "msg": "1468303352 150 volume=gv1"})
    assert out is not None and out["event_type"] == "GLUSTER_UNKNOWN_150" and out["severity"] == "info"
    assert out["extensions"]["gluster_event"] == "UNKNOWN_150" and out["dev_name"] == "gv1"
    # garbage and other event types of the system give nothing, and no exception
    assert p.handle({**line, "msg": "not an event"}) is None
    assert p.handle({**line, "event_type": "GLUSTER_LOG_LINE"}) is None


# -- the collector -----------------------------------------------------------------------------


def test_collector_counts_malformed_and_follows_the_node_id(tmp_path: Path) -> None:
    info = tmp_path / "glusterd.info"
    col = collector(glusterd_info=str(info), queue=2, max_size=100)
    col.on_datagram(b"1468303352 2 name=gv1", ("127.0.0.1", 5000))
    ev = col.pending.popleft()
    assert (ev["system"], ev["kind"], ev["event_type"], ev["severity"], ev["msg"], ev["timestamp"]) == (
        "gluster", "raw", "GLUSTER_EVENT", "info", "1468303352 2 name=gv1", 1468303352.0)
    assert ev["extensions"] == {"index": 2, "message": "name=gv1", "sender": "127.0.0.1:5000"}  # no glusterd.info yet
    glusterd_info(info)
    col.on_datagram(b"1468303353 3 name=gv1;force=0", None)
    assert col.pending.popleft()["extensions"] == {"index": 3, "message": "name=gv1;force=0", "sender": "unix",
                                                   "nodeid": NODE}
    info.write_text("UUID=5e8c0000-0000-4000-8000-000000000001\noperating-version=100000\n")  # glusterd reset
    col.on_datagram(b"1468303354 4 name=gv1", "/run/sender.sock")
    ext = col.pending.popleft()["extensions"]
    assert ext["nodeid"] == "5e8c0000-0000-4000-8000-000000000001" and ext["sender"] == "unix:/run/sender.sock"
    for bad in (b"\xff", b"", b"1 x y", b"1" * 200):
        col.on_datagram(bad, ("::1", 6000, 0, 0))
    assert col.bad_inputs == {"not_utf8": 1, "empty": 1, "bad_index": 1, "oversized": 1}
    for i in range(3):
        col.on_datagram(f"146830335{i} 5 name=gv1".encode(), ("127.0.0.1", 5000))
    assert len(col.pending) == 2 and col.counters["dropped"] == 1  # the queue bound holds
    assert col.counters["received"] == 10


def test_unix_socket_path_replaces_only_a_stale_socket(tmp_path: Path) -> None:
    path = tmp_path / "events.sock"
    col = collector(path=str(path))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as live:
        live.bind(str(path))
        with pytest.raises(OSError, match="in use by another process"):
            col._open_unix()
    col._open_unix().close()  # the socket file left behind by a dead process is replaced
    path.unlink()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stream:
        stream.bind(str(path))
        stream.listen()
        with pytest.raises(OSError, match="another kind of socket"):
            col._open_unix()
    path.unlink()
    path.write_text("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        col._open_unix()
    assert path.read_text() == "not a socket"


def test_format_sender() -> None:
    assert format_sender(("192.0.2.2", 33930)) == "192.0.2.2:33930"
    assert format_sender(("::1", 54624, 0, 0)) == "[::1]:54624"
    assert format_sender("") == "unix" and format_sender(None) == "unix"
    assert format_sender(b"/tmp/s") == "unix:/tmp/s"


@pytest.mark.parametrize(("options", "key", "reason"), [
    ({"bind": ["localhost"]}, "bind", "is not an IP address"),
    ({"bind": ["::1", "0:0::1"]}, "bind", "listed twice"),
    ({"port": 70000}, "port", "not a port number"),
    ({"bind": []}, "bind", "nothing to listen on"),
    ({"path": "/run/" + "x" * 120}, "path", "longer than"),
    ({"max_size": 10}, "max_size", "between 64"),
    ({"port": "55555"}, "port", "must be an integer"),
])
def test_bad_collector_options_are_refused(tmp_path: Path, options: dict[str, Any], key: str, reason: str) -> None:
    table = "\n".join(f"{k} = {json.dumps(v)}" for k, v in options.items())
    path = tmp_path / "busd.toml"
    path.write_text(f'[main]\nruntime_dir = "{tmp_path}"\n[plugins.gl]\ntype = "collector"\nbuiltin = "gluster"\n{table}\n')
    with pytest.raises(ConfigError) as exc:
        config.load(path)
    assert f"plugins.gl.{key}" in str(exc.value) and reason in str(exc.value)


def test_parser_default_filter_takes_raw_gluster_events(tmp_path: Path) -> None:
    path = tmp_path / "busd.toml"
    path.write_text(f'[main]\nruntime_dir = "{tmp_path}"\n[plugins.glp]\ntype = "parser"\nbuiltin = "gluster"\n')
    flt = config.load(path).plugins["glp"].filter
    assert flt.match({"system": "gluster", "kind": "raw", "severity": "info", "event_type": "GLUSTER_EVENT"})
    assert not flt.match({"system": "kmsg", "kind": "raw", "severity": "info", "event_type": "KMSG_LINE"})
    assert not flt.match({"system": "gluster", "kind": "synthetic", "severity": "info", "event_type": "X"})


# -- the test sender ---------------------------------------------------------------------------


def test_sender_writes_what_gluster_writes() -> None:
    port = free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s4, socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s6:
        s4.bind(("127.0.0.1", port))
        s6.bind(("::1", port))
        s4.settimeout(5)
        # the Python library: kwargs in order, to 0.0.0.0 (delivered to 127.0.0.1)
        sent = gf_event(11, port=port, ts=1468303352, force=1, **{"push-pem": True})
        assert sent == b"1468303352 11 force=1;push-pem=True"
        data, addr = s4.recvfrom(4096)
        assert data == sent and addr[0] == "127.0.0.1"
        assert gf_event(3, port=port, ts=1) == b"1 3 "  # no kwargs: an empty message, as gluster sends it
        assert s4.recvfrom(4096)[0] == b"1 3 "
        # libglusterfs: the first address getaddrinfo gives for the local host ([::1] where IPv6 is up)
        first = socket.getaddrinfo(None, port, socket.AF_UNSPEC, socket.SOCK_DGRAM, 0, socket.AI_ADDRCONFIG)[0]
        sent = c_gf_event(2, "name=gv1;bricks= node1:/b1 ", port=port, ts=1468303352)
        assert sent == b"1468303352 2 name=gv1;bricks= node1:/b1 "
        receiver = s6 if first[0] == socket.AF_INET6 else s4
        receiver.settimeout(5)
        assert receiver.recvfrom(4096)[0] == sent
    with pytest.raises(ValueError):
        c_gf_event(len(EVENTS), "x=1", port=port)
    with pytest.raises(ValueError):
        gf_event(-1, port=port)
    assert send_main(["NO_SUCH_EVENT", "name=x", "--port", str(port)]) == 2


# -- end to end through a real busd ------------------------------------------------------------


def test_end_to_end_with_the_test_sender(bus: Bus, tmp_path: Path) -> None:
    port = free_port()
    sock_path = tmp_path / "events.sock"
    info = glusterd_info(tmp_path / "glusterd.info")
    blocker = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)  # e.g. a glustereventsd still running
    blocker.bind(("::1", port))
    bus.write({
        "gl": {"type": "collector", "builtin": "gluster", "port": port, "path": str(sock_path),
               "glusterd_info": str(info), "max_size": 512, "rebind_interval": 0.2},
        "glp": {"type": "parser", "builtin": "gluster"},
        "rep": {"type": "collector", "builtin": "replay", "path": str(SAMPLES / "gluster-messages.txt"),
                "system": "gluster", "event_type": "GLUSTER_EVENT", "interval": 0},
    })
    try:
        bus.start()
        bus.wait_running("gl", "glp", "rep")
        failed = wait_for(lambda: logs(bus, "gluster_bind_failed"), what="the bind failure on [::1]")
        assert failed[0]["address"] == "udp:::1" and "glustereventsd" in failed[0]["error"]
        status_file = bus.runtime_dir / "status" / "gl.json"
        wait_for(lambda: status_file.exists() and "udp:::1" in json.loads(status_file.read_text())["unbound"],
                 what="the unbound address in the status")  # written once a second: several retries by now
        gf_event(25, port=port, volume="gv1")  # QUOTA_ENABLE over 127.0.0.1, bound from the start
    finally:
        blocker.close()
    wait_for(lambda: any(r["address"] == "udp:::1" for r in logs(bus, "gluster_listening")), what="::1 bound")
    assert len(logs(bus, "gluster_bind_failed")) == 1  # one error line per outage, not per retry
    c_gf_event(76, "peer=node1;volume=gv1;brick=/bricks/b1", port=port)  # BRICK_DISCONNECTED, C style
    cli = subprocess.run([sys.executable, str(SENDER), "--port", str(port), "VOLUME_SET", "name=gv2",
                          "options=,performance.cache-size,256MB"], capture_output=True, text=True, timeout=30)
    assert cli.returncode == 0, cli.stderr
    send_raw(b"1468303360 80 volume=gv1", unix=str(sock_path))  # QUORUM_LOST over AF_UNIX
    send_raw(b"1468303361 150 volume=gv1", port=port)
    send_raw(b"1468303362 150 volume=gv2", port=port)
    for bad in (b"\xff\xfe", b" \n", b"1468303362", b"abc 2 name=x", b"1 x name=y", b"1 2 " + b"x" * 600):
        send_raw(bad, port=port)
    events = bus.tail(8, "--system", "gluster")
    by_type = {e["event_type"]: e for e in events}
    assert sorted(by_type) == ["GLUSTER_BRICK_DISCONNECTED", "GLUSTER_QUORUM_LOST", "GLUSTER_QUOTA_ENABLE",
                               "GLUSTER_UNKNOWN_150", "GLUSTER_VOLUME_CREATE", "GLUSTER_VOLUME_SET"]
    assert sum(e["event_type"] == "GLUSTER_VOLUME_SET" for e in events) == 2  # the sample line and the CLI
    assert sum(e["event_type"] == "GLUSTER_UNKNOWN_150" for e in events) == 2
    assert [r["index"] for r in logs(bus, "gluster_unknown_event")] == [150]  # logged once per index
    brick = by_type["GLUSTER_BRICK_DISCONNECTED"]
    assert (brick["severity"], brick["dev_name"], brick["kind"], brick["source"]) == (
        "error", "node1:/bricks/b1", "synthetic", "glp")
    assert brick["extensions"]["nodeid"] == NODE and brick["extensions"]["sender"].startswith(("[::1]:", "127.0.0.1:"))
    quota = by_type["GLUSTER_QUOTA_ENABLE"]
    assert quota["extensions"]["sender"].startswith("127.0.0.1:") and quota["dev_name"] == "gv1"
    lost = by_type["GLUSTER_QUORUM_LOST"]
    assert (lost["severity"], lost["timestamp"], lost["extensions"]["sender"]) == ("error", 1468303360.0, "unix")
    sets = sorted((e for e in events if e["event_type"] == "GLUSTER_VOLUME_SET"), key=lambda e: e["dev_name"])
    assert [s["extensions"]["message"] for s in sets] == [
        {"name": "gv1", "options": [["cluster.quorum-type", "auto"], ["performance.cache-size", "256MB"]]},
        {"name": "gv2", "options": [["performance.cache-size", "256MB"]]}]
    assert sets[0]["extensions"]["nodeid"] is None  # replayed lines carry no node id
    assert sets[1]["extensions"]["nodeid"] == NODE
    # malformed datagrams: counted by reason in the status, logged with the sender, never fatal
    expected = {"not_utf8": 1, "empty": 1, "no_index": 1, "bad_timestamp": 1, "bad_index": 1, "oversized": 1}
    wait_for(lambda: status_file.exists() and (s := json.loads(status_file.read_text()))["malformed"] == expected
             and s["emitted"] == 6, what="malformed counts in the status file")
    refused = logs(bus, "gluster_malformed_datagram")
    assert len(refused) == 6 and all(r["sender"].startswith("127.0.0.1:") for r in refused)
    entry = bus.plugin("gl")
    assert (entry["state"], entry["restarts"], entry["bad_input"]) == ("running", 0, expected)
    shown = bus.run("busctl", "gluster", "status").stdout
    assert f"port {port}" in shown and "malformed bad_index=1,bad_timestamp=1,empty=1," in shown and NODE in shown
    rows = json.loads(bus.run("busctl", "gluster", "status", "--json").stdout)
    assert rows[0]["listening"] == sorted(["udp:127.0.0.1", "udp:::1", f"unix:{sock_path}"])
    assert rows[0]["unbound"] == {} and rows[0]["emitted"] == 6
    bus.stop()
    assert not sock_path.exists()  # the collector removes its socket file


# -- real GlusterFS ----------------------------------------------------------------------------


class Glusterd:
    """A glusterd of this test module: its working directory (glusterd.info), node UUID, brick host."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.workdir = base / "glusterd"
        self.volfile = base / "glusterd.vol"
        self.host = brick_host()
        self.proc: subprocess.Popen[bytes] | None = None
        self.uuid = ""
        self.volumes: list[str] = []

    def gluster(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(["gluster", "--mode=script", *args], capture_output=True, text=True, timeout=120)
        if check and res.returncode != 0:
            raise AssertionError(f"gluster {' '.join(args)} exited {res.returncode}: {res.stdout}{res.stderr}")
        return res

    def start(self) -> None:
        self.workdir.mkdir()
        # glusterd's own volfile with a working directory of this test: /var/lib/glusterd stays untouched
        volfile = Path("/etc/glusterfs/glusterd.vol").read_text()
        self.volfile.write_text(volfile.replace("/var/lib/glusterd", str(self.workdir)))
        log = (self.base / "glusterd.log").open("wb")
        self.proc = subprocess.Popen(["glusterd", "-N", "-f", str(self.volfile), "-l", str(self.base / "glusterd.log"),
                                      "-p", str(self.base / "glusterd.pid")], stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def answers() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"glusterd exited {self.proc.returncode}: "
                                     f"{(self.base / 'glusterd.log').read_text(errors='replace')[-2000:]}")
            return self.gluster("peer", "status", check=False).returncode == 0
        wait_for(answers, 30, "glusterd to answer gluster peer status")
        # glusterd writes glusterd.info when its UUID is first asked for
        self.uuid = self.gluster("system::", "uuid", "get").stdout.split()[-1]
        assert (self.workdir / "glusterd.info").read_text().startswith(f"UUID={self.uuid}\n")

    def new_volume(self, name: str, brick_options: tuple[str, ...] = ()) -> Path:
        brick = self.base / "bricks" / name
        brick.parent.mkdir(exist_ok=True)
        self.volumes.append(name)
        self.gluster("volume", "create", name, f"{self.host}:{brick}", "force")
        return brick

    def stop(self) -> None:
        for name in self.volumes:  # volume stop also stops the brick processes
            self.gluster("volume", "stop", name, "force", check=False)
            self.gluster("volume", "delete", name, check=False)
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def brick_host() -> str:
    """A non-loopback IPv4 address of this machine (glusterd refuses loopback bricks)."""
    for line in subprocess.run(["ip", "-o", "-4", "addr", "show", "scope", "global"], capture_output=True,
                               text=True, check=True).stdout.splitlines():
        return line.split()[3].split("/")[0]
    raise AssertionError("no global IPv4 address on this machine: GlusterFS bricks need one")


@pytest.fixture(name="glusterd", scope="module")
def fixture_glusterd() -> Iterator[Glusterd]:
    """A real glusterd (from Debian's glusterfs-server) with a temporary working directory."""
    if os.geteuid() != 0:
        pytest.fail("the GlusterFS tests run glusterd, which needs root")
    if shutil.which("glusterd") is None:
        pytest.fail("glusterd is missing: install glusterfs-server (make system-deps)")
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 24007)) == 0:
            pytest.fail("a glusterd already listens on port 24007: stop it for these tests")
    base = Path(tempfile.mkdtemp(prefix="gl", dir="/tmp"))
    before = _leftovers()
    gd = Glusterd(base)
    try:
        gd.start()
        yield gd
    finally:
        gd.stop()
        shutil.rmtree(base, ignore_errors=True)
        # brick sockets, pid directories and logs glusterd leaves behind: leave the host as found
        for path in _leftovers() - before:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _leftovers() -> set[Path]:
    dirs = [Path("/var/run/gluster"), Path("/var/run/gluster/vols"), Path("/var/log/glusterfs/bricks")]
    return {p for d in dirs if d.is_dir() for p in d.iterdir()}


def gluster_events(bus: Bus) -> list[dict[str, Any]]:
    """Every synthetic event busd has published so far (only the gluster parser makes any here)."""
    n = bus.status()["broker"]["head"]["synthetic"]
    return bus.tail(n, "--system", "gluster") if n else []


def test_real_glusterfs_volume_lifecycle(bus: Bus, glusterd: Glusterd) -> None:
    # bricks send their events to their volfile server (the brick host), not to loopback
    bus.write({"gl": {"type": "collector", "builtin": "gluster", "bind": ["127.0.0.1", "::1", glusterd.host],
                      "glusterd_info": str(glusterd.workdir / "glusterd.info")},
               "glp": {"type": "parser", "builtin": "gluster"}})
    bus.start()
    bus.wait_running("gl", "glp")
    wait_for(lambda: len(logs(bus, "gluster_listening")) == 3, what="the collector bound on the GlusterFS port")
    vol = f"busd{os.getpid()}"
    brick = glusterd.new_volume(vol)
    glusterd.gluster("volume", "set", vol, "performance.cache-size", "256MB")
    glusterd.gluster("volume", "set", vol, "storage.health-check-interval", "1")
    glusterd.gluster("volume", "start", vol)
    wait_for(lambda: any(e["event_type"] == "GLUSTER_BRICK_CONNECTED" for e in gluster_events(bus)), 30,
             "glusterd's BRICK_CONNECTED")
    # the brick's health check finds its .glusterfs gone: the brick process itself reports it
    shutil.move(brick / ".glusterfs", brick.parent / f"{vol}.moved")
    wait_for(lambda: any(e["event_type"] == "GLUSTER_POSIX_HEALTH_CHECK_FAILED" for e in gluster_events(bus)), 30,
             "the brick's POSIX_HEALTH_CHECK_FAILED")
    glusterd.gluster("volume", "stop", vol, "force")
    glusterd.gluster("volume", "reset", vol, "performance.cache-size")
    glusterd.gluster("volume", "delete", vol)
    glusterd.volumes.remove(vol)
    wanted = ["VOLUME_CREATE", "VOLUME_SET", "VOLUME_SET", "VOLUME_START", "BRICK_CONNECTED",
              "POSIX_HEALTH_CHECK_FAILED", "VOLUME_STOP", "VOLUME_RESET", "VOLUME_DELETE"]
    events = wait_for(lambda: (evs := gluster_events(bus)) and all(
        sum(e["extensions"]["gluster_event"] == w for e in evs) >= wanted.count(w) for w in wanted) and evs,
        30, f"the events {wanted}")
    mine: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        mine.setdefault(e["extensions"]["gluster_event"], []).append(e)
        assert e["system"] == "gluster" and e["extensions"]["nodeid"] == glusterd.uuid
        assert abs(e["timestamp"] - time.time()) < 300
    create = mine["VOLUME_CREATE"][0]
    assert (create["event_type"], create["severity"], create["dev_name"]) == ("GLUSTER_VOLUME_CREATE", "info", vol)
    # the CLI sends "bricks= HOST:PATH " and the datagram is stripped (as glustereventsd does)
    assert create["extensions"]["message"] == {"name": vol, "bricks": f" {glusterd.host}:{brick}"}
    assert create["extensions"]["sender"].startswith(("[::1]:", "127.0.0.1:"))  # the gluster command, locally
    assert [s["extensions"]["message"]["options"] for s in mine["VOLUME_SET"]] == [
        [["performance.cache-size", "256MB"]], [["storage.health-check-interval", "1"]]]
    assert mine["VOLUME_START"][0]["extensions"]["message"] == {"name": vol, "force": False}
    connected = mine["BRICK_CONNECTED"][0]
    assert (connected["severity"], connected["dev_name"]) == ("info", f"{glusterd.host}:{brick}")
    health = mine["POSIX_HEALTH_CHECK_FAILED"][0]
    assert health["severity"] == "error" and health["dev_name"].endswith(f":{brick}")
    assert health["extensions"]["sender"].startswith(f"{glusterd.host}:")  # from the brick process
    assert mine["VOLUME_STOP"][0]["extensions"]["message"] == {"name": vol, "force": True}
    assert mine["VOLUME_RESET"][0]["extensions"]["message"] == {"name": vol, "option": "performance.cache-size"}
    assert mine["VOLUME_DELETE"][0]["dev_name"] == vol


class _Webhook(BaseHTTPRequestHandler):
    bodies: list[bytes] = []

    def do_POST(self) -> None:
        self.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_bodies_match_glustereventsd_byte_for_byte(bus: Bus, glusterd: Glusterd, tmp_path: Path) -> None:
    # the real glustereventsd finds its configuration in glusterd's working directory (gluster system:: getwd)
    server = HTTPServer(("127.0.0.1", 0), _Webhook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    eventsd_port, busd_port = free_port(), free_port()
    (glusterd.workdir / "events").mkdir(exist_ok=True)
    (glusterd.workdir / "events" / "config.json").write_text(json.dumps({"port": eventsd_port}))
    (glusterd.workdir / "events" / "webhooks.json").write_text(
        json.dumps({f"http://127.0.0.1:{server.server_address[1]}/listen": ""}))
    with (tmp_path / "eventsd.out").open("wb") as out:
        eventsd = subprocess.Popen(["glustereventsd", "-p", str(tmp_path / "eventsd.pid")], stdout=out,
                                   stderr=subprocess.STDOUT)
    bus.write({"gl": {"type": "collector", "builtin": "gluster", "port": busd_port,
                      "glusterd_info": str(glusterd.workdir / "glusterd.info")},
               "glp": {"type": "parser", "builtin": "gluster"}})
    try:
        bus.start()
        bus.wait_running("gl", "glp")
        wait_for(lambda: _bound(eventsd.pid, eventsd_port), 30, "glustereventsd to listen")
        accepted = [
            "1468303352 2 name=gv1",
            "1468303353 6 name=gv1;options=cluster.quorum-type,auto,performance.cache-size,256MB",
            "1468303354 6 name=gv1;options=,performance.cache-size,256MB,cluster.quorum-type",
            "1468303355 6 name=gv1",
            "1468303356 11 force=1;push-pem=yes;no-verify=Off;ssh-port=22;push_pem=1;primary=gv1",
            "1468303357 3 name=gv1;force=on;name=gv2",
            "1468303358 141 volume=gv1;subvol=gv1-dht;ssh-port=abc;force=2",
            "1468303359 76 peer=node1;volume=gv1;brick=/bricks/b1",
        ]
        dropped_by_glustereventsd = ["1468303360 3", "1468303361 2 name=a;", "1468303362 2 name=a=b"]
        for text in accepted + dropped_by_glustereventsd:
            send_raw(text.encode(), port=eventsd_port)
            send_raw(text.encode(), port=busd_port)
        ours = bus.tail(len(accepted) + len(dropped_by_glustereventsd), "--system", "gluster")
        wait_for(lambda: len(_Webhook.bodies) >= len(accepted), 30, "glustereventsd's webhook posts")
    finally:
        for proc in psutil.Process(eventsd.pid).children(recursive=True):  # its webhook worker processes
            proc.terminate()
        eventsd.terminate()
        eventsd.wait(10)
        server.shutdown()
    theirs = {json.loads(b)["ts"]: b.decode() for b in _Webhook.bodies}
    by_ts = {e["extensions"]["ts"]: e for e in ours}
    assert sorted(theirs) == [int(t.split()[0]) for t in accepted]  # glustereventsd drops the others
    for ts, body in theirs.items():
        assert webhook_body(by_ts[ts]) == body
    assert json.loads(theirs[1468303352])["nodeid"] == glusterd.uuid
    # what glustereventsd cannot parse still reaches busd's receivers
    assert by_ts[1468303360]["extensions"]["message"] == {}
    assert by_ts[1468303361]["extensions"]["message"] == {"name": "a"}
    assert by_ts[1468303362]["extensions"]["message"] == {"name": "a=b"}


def _bound(pid: int, port: int) -> bool:
    try:
        return any(c.laddr and c.laddr[1] == port for c in psutil.Process(pid).net_connections(kind="udp"))
    except psutil.NoSuchProcess:
        raise AssertionError("glustereventsd exited") from None

"""A plugin in a second language: the C parser of examples/c-parser/, built with make.

It talks to busd only through the wire protocol of docs/protocol.md (a DEALER on ``$BUS_INPUT``,
msgpack maps, acknowledgements carrying the outputs), so these tests check that the page is enough
to write a plugin without the Python SDK. Building needs a C compiler, pkg-config and the Debian
packages libzmq3-dev and libmsgpack-dev (libmsgpack-c-dev on Debian 13).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zmq
from conftest import Bus, wait_for

from bus.plugin import derive_id

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "c-parser"
BIN = Path(sys.executable).parent
PACKAGES = "gcc make pkg-config libzmq3-dev libmsgpack-dev"
PLUGIN = "cmatch"


@pytest.fixture(scope="module", name="c_parser")
def fixture_c_parser() -> Path:
    """Build the example with its Makefile; fail (never skip) with the packages to install."""
    if shutil.which("make") is None:
        pytest.fail(f"'make' is not installed; on Debian: apt-get install {PACKAGES}")
    res = subprocess.run(["make", "-C", str(EXAMPLE)], capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        pytest.fail(f"building examples/c-parser failed (on Debian: apt-get install {PACKAGES}):\n"
                    f"{res.stdout}\n{res.stderr}")
    binary = EXAMPLE / "build" / "c-parser"
    assert binary.is_file() and os.access(binary, os.X_OK), f"make did not produce {binary}"
    return binary


# -- against a real busd ---------------------------------------------------------------------------


def _start(bus: Bus, c_parser: Path) -> None:
    """Run busd with the C parser as its only plugin, and wait until the parser has said hello."""
    bus.write({PLUGIN: {"type": "parser", "exec": [str(c_parser)], "filter": {"kind": ["raw"]}, "word": "failed"}})
    bus.start()
    bus.wait_running(PLUGIN)


def _settled(bus: Bus, raw: int) -> dict[str, Any] | None:
    """Return the status once ``raw`` raw events are published and the C parser acknowledged all."""
    st = bus.status()
    p = next(p for p in st["plugins"] if p["name"] == PLUGIN)
    return st if st["broker"]["head"]["raw"] == raw and p["delivery"]["pending"] == 0 else None


def _raw(i: int, msg: str, **kw: Any) -> dict[str, Any]:
    return {"event_id": f"00000000-0000-4000-8000-{i:012d}", "system": "kmsg", "event_type": "KMSG_LINE",
            "msg": msg, **kw}


def _check_outputs(outputs: list[dict[str, Any]], inputs: list[dict[str, Any]]) -> None:
    assert [o["msg"] for o in outputs] == [i["msg"] for i in inputs]
    for out, raw in zip(outputs, inputs, strict=True):
        assert out["event_type"] == "C_MATCH"
        assert out["system"] == "example"
        assert out["severity"] == "warn"
        assert out["kind"] == "synthetic"
        assert out["source"] == PLUGIN
        assert out["hostname"] == "testhost"
        assert out["dev_name"] == raw.get("dev_name", "")
        assert out["extensions"] == {"raw_event_id": raw["event_id"], "raw_source": "bus-emit", "word": "failed"}
        # the same id the Python SDK would derive: a redelivered input gives a duplicate the broker drops
        assert out["event_id"] == derive_id(raw["event_id"], PLUGIN, 0)


def test_c_parser_turns_matching_raw_events_into_synthetic_events(bus: Bus, c_parser: Path) -> None:
    """Raw events go through the C parser; exactly those whose msg has the word come out, once."""
    first = [
        _raw(1, "sd 2:0:0:0: [sdb] rejecting I/O: device failed", dev_name="sdb"),
        _raw(2, "EXT4-fs (sdc1): mounted filesystem"),
        _raw(3, "md/raid1:md0: Disk failure on sdd, disabling device"),  # "failure", not "failed"
        _raw(4, "multipath: Failing path 8:32 failed", dev_name="mpatha", severity="warn"),
        _raw(5, "usb 1-1: new high-speed USB device"),
        _raw(6, "drbd r0/0: state change failed: (-2) Need access to UpToDate data"),
    ]
    _start(bus, c_parser)
    bus.emit(first)
    st = wait_for(lambda: _settled(bus, raw=len(first)), 20, "the C parser to acknowledge every raw event")
    matching = [e for e in first if "failed" in e["msg"]]
    assert st["broker"]["head"]["synthetic"] == len(matching)
    _check_outputs(bus.tail(len(matching)), matching)
    p = next(p for p in st["plugins"] if p["name"] == PLUGIN)
    assert p["events_in"] == len(matching) and p["events_out"] == len(first)
    assert p["dropped"] == {} and st["broker"]["malformed"] == 0

    # The plugin's JSON lines on stderr are merged into busd's log, tagged with its name.
    started = [r for r in bus.log_records() if r.get("event") == "c_parser_started"]
    assert started and started[0]["plugin"] == PLUGIN and started[0]["word"] == "failed"

    # A new incarnation says hello again and carries on.
    old_pid = p["pid"]
    os.kill(old_pid, signal.SIGKILL)
    wait_for(lambda: (q := bus.plugin(PLUGIN))["delivery"]["connected"] and q["pid"] not in (None, old_pid),
             20, "the C parser restarted")
    second = [_raw(7, "nothing to see"), _raw(8, "link to 10.0.0.2 failed", dev_name="eth0")]
    bus.emit(second)
    st = wait_for(lambda: _settled(bus, raw=len(first) + len(second)), 20, "the restarted parser to catch up")
    assert st["broker"]["head"]["synthetic"] == len(matching) + 1
    _check_outputs(bus.tail(len(matching) + 1), [*matching, second[1]])
    assert bus.plugin(PLUGIN)["restarts"] == 1
    assert bus.stop()[0] == 0


# -- against a fake broker: malformed input, redelivery, refusal, signals ---------------------------


class FakeBroker:
    """A ROUTER bound where busd's input socket would be, talking to one C parser process."""

    def __init__(self, base: Path, c_parser: Path, plugin: str = PLUGIN, config: dict[str, Any] | None = None):
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.rcvtimeo = 10_000
        endpoint = f"ipc://{base}/input.sock"
        self.sock.bind(endpoint)
        env = {**os.environ, "BUS_PLUGIN": plugin, "BUS_PLUGIN_TYPE": "parser", "BUS_INPUT": endpoint,
               "BUS_HOSTNAME": "fakehost", "BUS_PLUGIN_CONFIG": json.dumps(config or {"type": "parser"})}
        self.stderr_path = base / "stderr.log"
        self.stderr = self.stderr_path.open("wb")
        self.proc = subprocess.Popen([str(c_parser)], env=env, stdout=subprocess.DEVNULL, stderr=self.stderr)
        self.peer = b""

    def recv(self) -> dict[str, Any]:
        """Receive one message from the parser (remembering its routing id)."""
        self.peer, frame = self.sock.recv_multipart()
        return dict(msgpack.unpackb(frame))

    def send(self, *frames: bytes) -> None:
        """Send frames to the parser."""
        self.sock.send_multipart([self.peer, *frames])

    def deliver(self, upto: int, events: list[Any]) -> dict[str, Any]:
        """Send a delivery; return the acknowledgement."""
        self.send(msgpack.packb({"op": "events", "upto": upto, "events": events}))
        return self.recv()

    def logs(self) -> list[dict[str, Any]]:
        """Return the parser's JSON log lines."""
        self.stderr.flush()
        return [json.loads(line) for line in self.stderr_path.read_text().splitlines()]

    def close(self) -> None:
        """Kill the parser if needed and close the socket."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.stderr.close()
        self.sock.close(0)
        self.ctx.term()


def test_c_parser_survives_malformed_frames_and_is_idempotent(bus: Bus, c_parser: Path) -> None:
    """Garbage from the input socket is logged and skipped; a redelivery gives the same output id."""
    word = "d\u00e9j\u00e0 vu \U0001F600"  # JSON-escaped in BUS_PLUGIN_CONFIG, as busd writes it
    fake = FakeBroker(bus.base, c_parser, config={"type": "parser", "exec": ["word"], "word": word})
    try:
        assert fake.recv() == {"op": "hello", "plugin": PLUGIN, "window": 1000}
        for junk in (b"", b"\xc1", b"\x93\x01", msgpack.packb([1, 2]), msgpack.packb({"op": 5}),
                     msgpack.packb({"op": "bogus"}), msgpack.packb({"op": "events"}),
                     msgpack.packb({"op": "events", "upto": "7", "events": []}),
                     msgpack.packb({"op": "events", "upto": 7, "events": {}}),
                     b"\xdd\xff\xff\xff\xff", b"\xdf\x0f\xff\xff\xff", b"\x91" * 100,
                     msgpack.packb({"op": "events"}) + b"x"):
            fake.send(junk)
        fake.send(b"two", b"frames")
        event = {"v": 1, "event_id": "parent-1", "timestamp": 1700000000.25, "hostname": "h", "severity": "info",
                 "system": "kmsg", "kind": "raw", "event_type": "L", "dev_wwid": "naa.1", "dev_name": "sdb",
                 "msg": f"seen {word} here", "source": "col", "extensions": {}}
        ack = fake.deliver(41, [5, "x", {"msg": 3}, {"no": "msg"}, event, {**event, "msg": "no match"}])
        assert ack["op"] == "ack" and ack["upto"] == 41
        assert ack["events"] == [{
            "v": 1, "event_id": derive_id("parent-1", PLUGIN, 0), "timestamp": 1700000000.25,
            "hostname": "fakehost", "severity": "warn", "system": "example", "kind": "synthetic",
            "event_type": "C_MATCH", "dev_wwid": "naa.1", "dev_name": "sdb", "msg": f"seen {word} here",
            "extensions": {"raw_event_id": "parent-1", "raw_source": "col", "word": word}}]
        # delivered again (as after a crash): the same output, with the same id
        again = fake.deliver(42, [event])
        assert again["upto"] == 42 and again["events"] == ack["events"]
        empty = fake.deliver(43, [])
        assert empty == {"op": "ack", "upto": 43, "events": []}

        fake.proc.send_signal(signal.SIGTERM)
        assert fake.proc.wait(timeout=10) == 0
        logs = fake.logs()
        assert all(isinstance(r["event"], str) and r["level"] in ("info", "warning", "error") for r in logs)
        assert sum(r["event"] in ("malformed_frame", "malformed_delivery") for r in logs) == 14
        assert sum(r["event"] == "event_skipped" for r in logs) == 4
        assert logs[-1]["event"] == "c_parser_stopping"
    finally:
        fake.close()


def test_c_parser_exits_when_the_broker_refuses_it(bus: Bus, c_parser: Path) -> None:
    """{op: "error"} after hello (not a configured parser): logged, exit status 1."""
    fake = FakeBroker(bus.base, c_parser, plugin="stranger")
    try:
        assert fake.recv()["plugin"] == "stranger"
        fake.send(msgpack.packb({"op": "error", "error": "unknown parser 'stranger'"}))
        assert fake.proc.wait(timeout=10) == 1
        assert {"event": "broker_refused", "level": "error", "error": "unknown parser 'stranger'"} in fake.logs()
    finally:
        fake.close()


def test_c_parser_needs_its_environment(c_parser: Path) -> None:
    """Started by hand without BUS_PLUGIN/BUS_INPUT it says what is missing and exits 2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
    res = subprocess.run([str(c_parser)], env=env, capture_output=True, text=True, timeout=10)
    assert res.returncode == 2
    assert json.loads(res.stderr)["event"] == "missing_environment"

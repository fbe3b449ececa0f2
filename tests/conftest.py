"""Fixtures that run a real busd process with real plugins on real ZeroMQ sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# Property tests (hypothesis) on a busy machine: no per-example deadline (a loaded CI box is slow, not
# wrong), and under CI the examples are derived from the test's name, so a run can be repeated exactly.
settings.register_profile("busd", deadline=None, max_examples=300, derandomize=bool(os.environ.get("CI")),
                          suppress_health_check=[HealthCheck.too_slow], database=None)
settings.load_profile("busd")

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parent.parent
PLUGINS = Path(__file__).resolve().parent / "plugins"


def shipped_example(tmp_path: Path, *names: str) -> Any:
    """Load the commented ``[plugins.NAME]`` blocks of ``conf/busd.toml``, uncommented, as one configuration.

    A block runs from its ``# [plugins.NAME]`` line to the first line that is not a comment.
    """
    from bus.config import load

    text = (ROOT / "conf" / "busd.toml").read_text()
    blocks = []
    for name in names:
        block = re.search(rf"^# \[plugins\.{re.escape(name)}\]\n(?:#.*\n)+", text, re.M)
        assert block, f"no commented [plugins.{name}] block in conf/busd.toml"
        blocks.append(re.sub(r"^# ?", "", block.group(0), flags=re.M))
    conf = tmp_path / "busd.toml"
    conf.write_text("\n".join(blocks))
    return load(conf)
PY = sys.executable


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


async def async_wait_for(predicate: Callable[[], Any], timeout: float = 15.0, what: str = "condition") -> Any:
    """:func:`wait_for` for tests that run their own event loop: polls without blocking it."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)
    return value


@contextlib.asynccontextmanager
async def fake_broker(base: Path, answer: Callable[[dict[str, Any]], dict[str, Any]], *,
                      xpub: bool = False) -> AsyncIterator[tuple[Any, Any]]:
    """A real ROUTER standing in for busd's control socket, and its PUB (or XPUB) events socket, in ``base``.

    ``answer(request)`` gives the fields of each reply (``ok``, ``id`` and epoch ``e`` are added).
    Yields ``(pub, client)``: the events socket and a ControlClient connected to the control socket;
    close what was made from the client (a Subscriber) before the block ends.
    """
    import zmq
    import zmq.asyncio

    from bus import protocol
    from bus.client import ControlClient

    ctx = zmq.asyncio.Context()
    control = ctx.socket(zmq.ROUTER)
    control.bind(f"ipc://{base}/control.sock")
    pub = ctx.socket(zmq.XPUB if xpub else zmq.PUB)
    pub.bind(f"ipc://{base}/events.sock")

    async def serve() -> None:
        while True:
            frames = await control.recv_multipart()
            req = protocol.unpackb(frames[-1])
            reply = {"ok": True, "id": req["id"], "epoch": "e", **answer(req)}
            await control.send_multipart([*frames[:-1], protocol.packb(reply)])

    serving = asyncio.create_task(serve())
    client = ControlClient(f"ipc://{base}/control.sock", ctx)
    try:
        yield pub, client
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        client.close()
        pub.close(0)
        control.close(0)
        ctx.term()


def plugin_cmd(name: str, *args: str) -> list[str]:
    """Return the ``exec`` argv of a test plugin in tests/plugins/."""
    return [PY, str(PLUGINS / f"{name}.py"), *args]


def toml_value(value: Any) -> str:
    """Render a Python value as TOML (enough for test configurations)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


class Bus:
    """A busd under test: its config file, runtime dir, process and helpers for the CLI tools."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.config = base / "busd.toml"
        self.runtime_dir = base / "run"
        self.state_dir = base / "state"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = base / "busd.log"
        self.notify_path = base / "notify.sock"
        self.notify: socket.socket | None = None
        self.notifications: list[str] = []

    def write(self, plugins: dict[str, dict[str, Any]], main: dict[str, Any] | None = None,
              extra: str = "") -> None:
        """Write the configuration: ``[main]`` (fast restarts by default) and one table per plugin."""
        settings = {"runtime_dir": str(self.runtime_dir), "state_dir": str(self.state_dir), "hostname": "testhost",
                    "restart_delay": 0.05,
                    "min_uptime": 2.0, "max_fast_crashes": 3, "stop_timeout": 1.0, **(main or {})}
        lines = ["[main]"] + [f"{k} = {toml_value(v)}" for k, v in settings.items()]
        for name, table in plugins.items():
            lines.append(f"\n[plugins.{name}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in table.items()]
        self.config.write_text("\n".join(lines) + "\n" + extra)

    def start(self, *, ready: bool = True) -> subprocess.Popen[bytes]:
        """Start busd with NOTIFY_SOCKET pointing at a datagram socket; wait for READY=1."""
        if self.notify is None:
            self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self.notify.bind(str(self.notify_path))
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path)}
        self.log = self.log_path.open("ab")
        self.proc = subprocess.Popen([str(BIN / "busd"), "--config", str(self.config)], stdout=self.log,
                                     stderr=subprocess.STDOUT, env=env)
        if ready:
            self.wait_notification("READY=1")
        return self.proc

    def wait_notification(self, state: str, timeout: float = 15.0) -> None:
        """Wait until busd has sent ``state`` to the notify socket."""
        assert self.notify is not None
        deadline = time.monotonic() + timeout
        while not any(state in n.split("\n") for n in self.notifications):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"busd did not send {state}; log:\n{self.read_log()[-3000:]}")
            self.notify.settimeout(remaining)
            try:
                self.notifications.append(self.notify.recv(4096).decode())
            except TimeoutError:
                continue

    def stop(self, sig: int = signal.SIGTERM) -> tuple[int, float]:
        """Signal busd and wait; return its exit status and how long it took."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(sig)
        rc = self.proc.wait(timeout=30)
        took = time.monotonic() - started
        self.proc = None
        self.log.close()
        return rc, took

    def read_log(self) -> str:
        """Return what busd has logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_records(self) -> list[dict[str, Any]]:
        """Return busd's JSON log lines, parsed."""
        out = []
        for line in self.read_log().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def run(self, tool: str, *args: str, input: str | None = None, timeout: float = 60,
            check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``bus-tail``, ``bus-emit`` or ``busctl`` against this busd."""
        cmd = [str(BIN / tool), "--config", str(self.config), *args]
        res = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
        return res

    def status(self) -> dict[str, Any]:
        """Return ``busctl status --json``."""
        return dict(json.loads(self.run("busctl", "status", "--json").stdout))

    def plugin(self, name: str) -> dict[str, Any]:
        """Return one plugin's entry of ``busctl status``."""
        return next(p for p in self.status()["plugins"] if p["name"] == name)

    def emit(self, events: list[dict[str, Any]], **kw: Any) -> subprocess.CompletedProcess[str]:
        """Push events with ``bus-emit`` (JSON Lines on stdin)."""
        return self.run("bus-emit", input="".join(json.dumps(e) + "\n" for e in events), **kw)

    def tail(self, count: int, *args: str, last: int | None = None, timeout: float = 60) -> list[dict[str, Any]]:
        """Return ``count`` events from ``bus-tail --json`` (``--last`` replays what is buffered)."""
        extra = ["--last", str(count if last is None else last)]
        res = self.run("bus-tail", "--json", "--count", str(count), *extra, *args, timeout=timeout)
        return [json.loads(line) for line in res.stdout.splitlines()]

    def wait_running(self, *names: str, timeout: float = 20) -> None:
        """Wait until the named plugins run and every parser's delivery link is connected."""
        def ready() -> bool:
            plugins = {p["name"]: p for p in self.status()["plugins"]}
            return all(plugins[n]["state"] == "running" and plugins[n].get("delivery", {"connected": True})["connected"]
                       for n in names)
        wait_for(ready, timeout, f"plugins {names} running")

    def close(self) -> None:
        """Stop busd as systemd would (SIGTERM, SIGKILL after 10 s), so its plugins go with it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.log.close()
        if self.notify is not None:
            self.notify.close()


@pytest.fixture(name="bus")
def fixture_bus() -> Iterator[Bus]:
    """A busd under test in a short temporary directory (ipc:// paths must stay short)."""
    base = Path(tempfile.mkdtemp(prefix="bus", dir="/tmp"))
    b = Bus(base)
    try:
        yield b
    finally:
        b.close()
        left = outliving_plugins(b.runtime_dir)
        shutil.rmtree(base, ignore_errors=True)
    assert not left, f"plugin processes outlived busd: {left}"


def outliving_plugins(runtime_dir: Path) -> list[str]:
    """Kill and describe the processes started for the busd on ``runtime_dir`` that are still running."""
    marker = f"BUS_RUNTIME_DIR={runtime_dir}".encode()
    left = []
    for pid in (int(d) for d in os.listdir("/proc") if d.isdigit()):
        try:
            if marker not in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                continue
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError):  # gone meanwhile, or not ours to read
            continue
        left.append(f"{pid} {cmdline.strip()}")
    return left


def read_lines(path: Path) -> list[str]:
    """Return the complete lines a recorder plugin wrote so far (not a line it is writing now)."""
    if not path.exists():
        return []
    text = path.read_text()
    return text[: text.rfind("\n") + 1].splitlines()


def ev(system: str, event_type: str, msg: str = "", **kw: Any) -> dict[str, Any]:
    """A minimal event for bus-emit."""
    return {"system": system, "event_type": event_type, "msg": msg, **kw}


@pytest.fixture(name="pg_cluster", scope="module")
def fixture_pg_cluster() -> Iterator[Any]:
    """Real PostgreSQL 15: ``node1`` primary, ``node2`` streaming standby, both registered with repmgr.

    One fresh pair per test module (about 3 s to build), stopped and removed afterwards even when a test
    or the build fails. See :class:`pgcluster.PgCluster` for its methods, users and ``pg_hba.conf``.
    """
    from pgcluster import PgCluster

    with PgCluster() as pg:
        yield pg

#!/usr/bin/env python3
"""busd webhook benchmark: deliveries per second from the ``webhook`` receiver to a fast local server.

Run from the repository root: ``.venv/bin/python bench/webhook.py`` (part of ``make bench``); about
half a minute on a 2-core machine.

A real busd runs the built-in ``webhook`` receiver with one webhook (gluster format, JWT
authentication, HMAC signature: the full per-request work) pointing at an aiohttp server in its own
process that answers 200 at once and checks that events arrive in order and once. Phases, each
with a fresh busd and outbox:

* ``backlog c=1``: the server is down while N events are emitted and queued in the outbox; then it
  starts and the backlog drains, one request at a time (strict order, keep-alive);
* ``backlog c=8``: the same with ``concurrency = 8`` (8 requests in flight on 8 connections);
* ``live c=8``: the server is up; N events go through bus-emit -> busd -> the receiver's outbox
  -> the server; the clock runs from the first emit to the last receipt.

Reported: deliveries/s (N / time from the first to the last receipt; for ``live``, from the first
emit), the receiver's CPU time per event (and the rate one core of it would sustain: the figure
that holds on a machine busy with other work, where the wall-clock rate depends on the neighbours),
the server's, duplicates and out-of-order arrivals, and the target (2 000/s).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psutil
from run import BUSD, PY, ROOT, say, toml_str, wait_for

TARGET = 2000.0
SECRET = "a benchmark secret of 32 bytes or more"


# -- the server (a child process) ---------------------------------------------------------------------

def serve(port: int) -> None:
    """Answer every POST with 200, counting events and checking their order; GET /stats reports."""
    from aiohttp import web

    stats: dict[str, Any] = {"count": 0, "dupes": 0, "out_of_order": 0, "first": None, "last": None, "seen": set(),
                             "highest": -1}

    async def post(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        i = body["message"]["extensions"]["i"]
        now = time.time()
        if i in stats["seen"]:
            stats["dupes"] += 1
        else:
            if i < stats["highest"]:
                stats["out_of_order"] += 1
            stats["highest"] = max(stats["highest"], i)
            stats["seen"].add(i)
        stats["count"] += 1
        stats["first"] = stats["first"] or now
        stats["last"] = now
        return web.Response(text="ok")

    async def get(_: web.Request) -> web.Response:
        return web.json_response({k: v for k, v in stats.items() if k != "seen"} | {"distinct": len(stats["seen"])})

    app = web.Application()
    app.router.add_post("/hook", post)
    app.router.add_get("/stats", get)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=lambda *_: print("ready", flush=True))


class Server:
    """The server process."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([PY, __file__, "--serve", str(self.port)], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.proc.stdout.readline()

    def cpu(self) -> float:
        """CPU seconds the server process has used so far."""
        assert self.proc is not None
        t = psutil.Process(self.proc.pid).cpu_times()
        return float(t.user + t.system)

    def stats(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/stats", timeout=5) as resp:
            return dict(json.loads(resp.read()))

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            self.proc.wait(10)
            self.proc = None


# -- busd ---------------------------------------------------------------------------------------------

class WebhookRun:
    """A busd with one webhook receiver; the receiver's status file tells its outbox depth."""

    def __init__(self, port: int, concurrency: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="busw", dir="/tmp"))
        self.config = self.dir / "busd.toml"
        self.config.write_text(f"""\
[main]
runtime_dir = {toml_str(str(self.dir / "run"))}
hostname = "bench"

[plugins.wh]
type = "receiver"
builtin = "webhook"
filter = {{ kind = "all" }}
state_dir = {toml_str(str(self.dir / "state"))}
retry_max = 0.2
concurrency = {concurrency}

[[plugins.wh.webhooks]]
url = "http://127.0.0.1:{port}/hook"
name = "bench"
format = "gluster"
secret = {toml_str(SECRET)}
signing_key = "bench"
""")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with (self.dir / "busd.log").open("wb") as log:
            self.proc = subprocess.Popen([BUSD, "--config", str(self.config)], stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        if not wait_for(lambda: self.depth() is not None, 30):
            raise SystemExit(f"the webhook receiver did not start; see {self.dir / 'busd.log'}")

    def receiver_cpu(self) -> float:
        """CPU seconds the webhook receiver process has used so far."""
        assert self.proc is not None
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                if "receivers.webhook" in " ".join(child.cmdline()):
                    t = child.cpu_times()
                    return float(t.user + t.system)
            except psutil.Error:
                continue
        return 0.0

    def depth(self) -> int | None:
        try:
            status = json.loads((self.dir / "run" / "status" / "wh.json").read_text())
            return int(status["webhooks"][0]["depth"])
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return None

    def emit(self, n: int) -> float:
        """Push n events with bus-emit; return when the first was handed over."""
        lines = "".join(json.dumps({"system": "bench", "event_type": "BENCH_EVENT", "msg": f"event {i}",
                                    "extensions": {"i": i}}) + "\n" for i in range(n))
        started = time.time()
        subprocess.run([str(Path(BUSD).parent / "bus-emit"), "--config", str(self.config)], input=lines.encode(),
                       check=True, timeout=120)
        return started

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def backlog(n: int, concurrency: int) -> dict[str, Any]:
    """Queue n events while the server is down, then measure the drain."""
    port = free_port()
    run, server = WebhookRun(port, concurrency), Server(port)
    try:
        run.start()
        run.emit(n)
        if not wait_for(lambda: run.depth() == n, 120):
            raise SystemExit(f"the outbox holds {run.depth()} events, not {n}")
        client_cpu = run.receiver_cpu()
        server.start()
        server_cpu = server.cpu()
        if not wait_for(lambda: server.stats()["distinct"] >= n, 300, 0.1):
            raise SystemExit(f"only {server.stats()['distinct']} of {n} events arrived")
        s = server.stats()
        s["rate"] = n / (s["last"] - s["first"])
        s["client_us"] = (run.receiver_cpu() - client_cpu) / n * 1e6
        s["server_us"] = (server.cpu() - server_cpu) / n * 1e6
        return s
    finally:
        server.stop()
        run.stop()


def live(n: int, concurrency: int) -> dict[str, Any]:
    """Emit n events into a running bus and measure until the server has them all."""
    port = free_port()
    run, server = WebhookRun(port, concurrency), Server(port)
    try:
        server.start()
        run.start()
        client_cpu, server_cpu = run.receiver_cpu(), server.cpu()
        started = run.emit(n)
        if not wait_for(lambda: server.stats()["distinct"] >= n, 300, 0.1):
            raise SystemExit(f"only {server.stats()['distinct']} of {n} events arrived")
        s = server.stats()
        s["rate"] = n / (s["last"] - started)
        s["client_us"] = (run.receiver_cpu() - client_cpu) / n * 1e6
        s["server_us"] = (server.cpu() - server_cpu) / n * 1e6
        return s
    finally:
        server.stop()
        run.stop()


def line(label: str, s: dict[str, Any], n: int) -> str:
    return (f"{label:14} {s['rate']:8.0f} deliveries/s   receiver {s['client_us']:4.0f} us CPU/event "
            f"(one core: {1e6 / s['client_us']:5.0f}/s), server {s['server_us']:4.0f} us   (n={n}, received "
            f"{s['count']}, duplicates {s['dupes']}, out of order {s['out_of_order']})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=10_000, help="events per phase")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    a = parser.parse_args()
    if a.serve:
        serve(a.serve)
        return 0
    say(f"webhook benchmark: {a.n} events per phase, gluster format with JWT and HMAC signature")
    results = {
        "backlog c=1": backlog(a.n, 1),
        "backlog c=8": backlog(a.n, 8),
        "live c=8": live(a.n, 8),
    }
    for label, s in results.items():
        say(line(label, s, a.n))
    best = max(s["rate"] for s in results.values())
    say(f"target: {TARGET:.0f} deliveries/s with keep-alive and concurrency: "
        f"{'met' if results['backlog c=8']['rate'] >= TARGET else 'NOT met'} "
        f"({results['backlog c=8']['rate']:.0f}/s draining with concurrency 8; best phase {best:.0f}/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

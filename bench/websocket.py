#!/usr/bin/env python3
"""busd websocket benchmark: fan-out of events to 50 websocket clients.

Run from the repository root: ``.venv/bin/python bench/websocket.py`` (part of ``make bench``).

A real busd runs the built-in ``websocket`` receiver (``client_queue`` large enough that nobody is
dropped). The clients are real aiohttp websocket clients, spread over ``--procs`` processes so the
measuring side is not the bottleneck; each counts its frames and decodes the last one. Once all are
connected, ``bus-emit`` pushes ``--events`` synthetic events (about 400 bytes of JSON each). The clock
runs from the first frame any client receives to the last frame the last client receives.

Reported: deliveries/s in total (events x clients / elapsed; the target is 20 000/s with 50
clients), the events/s each client received, the CPU time of the websocket receiver per 1000
deliveries, and its peak RSS. ``--clients 1 --procs 1`` shows what the bus alone delivers (bus-emit
is then the limit).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BUSD, PY, ROOT, mb, say, toml_str, wait_for

sys.path.insert(0, str(ROOT))
from bus import protocol
from bus.client import request

TARGET = 20_000


def client_proc(url: str, n_clients: int, n_events: int, connected: Any, results: Any) -> None:
    """Connect ``n_clients`` websockets, receive ``n_events`` frames on each, report first/last receipt times."""
    import aiohttp

    async def one(session: aiohttp.ClientSession, ready: asyncio.Event, stamps: list[float]) -> None:
        async with session.ws_connect(url) as ws:
            ready.set()
            got, first, last = 0, 0.0, ""
            async for msg in ws:
                if got == 0:
                    first = time.time()
                got += 1
                last = msg.data
                if got == n_events:
                    break
            stamps.append(first)
            stamps.append(time.time())
            assert json.loads(last)["extensions"]["n"] == n_events - 1

    async def main() -> None:
        stamps: list[float] = []
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            readies = [asyncio.Event() for _ in range(n_clients)]
            tasks = [asyncio.create_task(one(session, r, stamps)) for r in readies]
            for r in readies:
                await r.wait()
            connected.release()
            await asyncio.gather(*tasks)
        results.put((min(stamps[0::2]), max(stamps[1::2])))

    asyncio.run(main())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--events", type=int, default=4000)
    ap.add_argument("--procs", type=int, default=2, help="client processes")
    a = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="busws", dir="/tmp"))
    runtime = base / "run"
    cfg = base / "busd.toml"
    cfg.write_text(f"""\
[main]
runtime_dir = {toml_str(str(runtime))}
hostname = "bench"

[plugins.ws]
type = "receiver"
builtin = "websocket"
address = "127.0.0.1:0"
client_queue = {a.events + 10}
max_clients = {a.clients + 10}
""")
    control = protocol.endpoint(runtime, protocol.CONTROL)
    log = (base / "busd.log").open("wb")
    busd = subprocess.Popen([BUSD, "--config", str(cfg)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            cwd=ROOT, start_new_session=True)
    try:
        status_file = runtime / "status" / "ws.json"
        if not wait_for(status_file.exists, 30):
            raise SystemExit("websocket bench: the receiver did not start; see " + str(base / "busd.log"))
        url = f"ws://{json.loads(status_file.read_text())['listening'][0]}/v1/events"
        st = asyncio.run(request(control, {"op": "status"}, 5.0))
        ws_proc = psutil.Process(next(p["pid"] for p in st["plugins"] if p["name"] == "ws"))

        ctx = mp.get_context("fork")
        connected, results = ctx.Semaphore(0), ctx.Queue()
        shares = [a.clients // a.procs + (1 if i < a.clients % a.procs else 0) for i in range(a.procs)]
        procs = [ctx.Process(target=client_proc, args=(url, n, a.events, connected, results)) for n in shares if n]
        for p in procs:
            p.start()
        for _ in procs:
            connected.acquire()
        say(f"websocket bench: {a.clients} clients connected ({len(procs)} processes), {a.events} events")

        lines = "".join(json.dumps({"system": "bench", "event_type": "BENCH_EVENT", "kind": "synthetic",
                                    "severity": "warn", "dev_name": "sdb", "dev_wwid": "naa.600508b1001c4d5f",
                                    "msg": f"benchmark event {i} with a message of ordinary length for a storage error",
                                    "extensions": {"n": i, "sector": 123456 + i}}) + "\n" for i in range(a.events))
        cpu0 = ws_proc.cpu_times()
        rss_max = ws_proc.memory_info().rss
        emit_start = time.time()
        emitter = subprocess.Popen([str(Path(PY).parent / "bus-emit"), "--config", str(cfg)], stdin=subprocess.PIPE,
                                   stdout=subprocess.DEVNULL, text=True)
        assert emitter.stdin is not None
        emitter.stdin.write(lines)
        emitter.stdin.close()
        firsts: list[float] = []
        lasts: list[float] = []
        while len(firsts) < len(procs):
            try:
                first, last = results.get(timeout=0.2)
                firsts.append(first)
                lasts.append(last)
            except Exception:  # queue.Empty: sample memory meanwhile
                rss_max = max(rss_max, ws_proc.memory_info().rss)
                if time.time() - emit_start > 300:
                    raise SystemExit("websocket bench: clients did not receive every event within 300 s") from None
        cpu1 = ws_proc.cpu_times()
        emitter.wait(30)
        for p in procs:
            p.join(10)
        elapsed = max(lasts) - min(firsts)
        deliveries = a.events * a.clients
        cpu = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
        st = asyncio.run(request(control, {"op": "status"}, 5.0))
        ws = next(p for p in st["plugins"] if p["name"] == "ws")
        say(f"  elapsed (first frame to last frame): {elapsed:.2f} s")
        say(f"  deliveries: {deliveries} ({a.events} events x {a.clients} clients), "
            f"dropped clients: {ws.get('counters', {}).get('slow_clients', 0)}")
        say(f"  websocket fan-out: {deliveries / elapsed:,.0f} deliveries/s total "
            f"({a.events / elapsed:,.0f} events/s to each client)  [target {TARGET:,}/s: "
            f"{'met' if deliveries / elapsed >= TARGET else 'NOT met'}]")
        say(f"  receiver CPU: {cpu:.2f} s ({1e6 * cpu / deliveries:.2f} ms per 1000 deliveries), "
            f"peak RSS {mb(rss_max)}")
        return 0
    finally:
        busd.send_signal(signal.SIGTERM)
        try:
            busd.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(busd.pid, signal.SIGKILL)
        log.close()


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""busd nats benchmark: events per second from the ``nats`` receiver of one node into a real JetStream.

Run from the repository root: ``.venv/bin/python bench/nats.py`` (part of ``make bench``). A real busd
runs the built-in ``nats`` receiver against a real ``nats-server -js`` on loopback (file storage).
Phases, each with a fresh busd, outbox and stream:

* ``backlog``: nats-server is down while N events are emitted and committed to the outbox; then it
  starts and the backlog drains (the forwarding rate itself: outbox -> pipelined publishes -> PubAcks);
* ``live``: nats-server is up; N events go bus-emit -> busd -> outbox -> JetStream, timed from the
  first emit to the last acknowledgement (bounded by what bus-emit and busd's broker take in).

Reported: events/s, and loss and duplicates counted in the stream (messages and distinct
``Nats-Msg-Id``s); target 20 000/s per node, zero loss.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
# this file is bench/nats.py: keep its directory behind site-packages, so "import nats" is the library
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]
sys.path.insert(0, str(ROOT / "tests"))
from conftest import Bus  # noqa: E402
from natsserver import NatsServer  # noqa: E402
from run import save_rows, say  # noqa: E402

TARGET = 20_000.0


def status(bus: Bus) -> dict[str, Any]:
    try:
        return dict(json.loads((bus.runtime_dir / "status" / "nats.json").read_text()))
    except (OSError, ValueError):
        return {}


def wait(pred: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return False


async def stream_ids(url: str) -> tuple[int, int]:
    """Return (messages, distinct Nats-Msg-Id) of stream BUSD, read with one ordered consumer."""
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        info = await js.stream_info("BUSD")
        total = info.state.messages
        ids: set[str] = set()
        sub = await js.subscribe("busd.>", ordered_consumer=True)
        for _ in range(total):
            msg = await sub.next_msg(timeout=10)
            ids.add((msg.headers or {}).get("Nats-Msg-Id", ""))
        await sub.unsubscribe()
        return total, len(ids)
    finally:
        await nc.close()


def events(n: int) -> str:
    return "".join(json.dumps({"system": "scsi", "event_type": "SCSI_MEDIUM_ERROR", "msg": f"bench event {i}",
                               "kind": "synthetic", "dev_name": f"sd{i % 26}", "extensions": {"i": i}}) + "\n"
                   for i in range(n))


def phase(name: str, n: int, backlog: bool) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="bnats", dir="/tmp"))
    natsd = NatsServer(base)
    bus = Bus(base / "bus")
    bus.base.mkdir()
    try:
        bus.write({"nats": {"type": "receiver", "builtin": "nats", "servers": [natsd.url], "retry_max": 0.2,
                            "timeout": 5.0}}, main={"hostname": "bench1"})
        if not backlog:
            natsd.start()
        bus.start()
        lines = events(n)
        started = time.monotonic()
        bus.run("bus-emit", input=lines, timeout=600)
        if backlog:
            wait(lambda: status(bus).get("depth") == n, 120)
            natsd.start()
            started = time.monotonic()
        ok = wait(lambda: status(bus).get("delivered", 0) >= n, 300)
        took = time.monotonic() - started
        total, distinct = asyncio.run(stream_ids(natsd.url))
        rate = n / took if ok else 0.0
        say(f"{name}: {n} events in {took:.2f} s = {rate:,.0f}/s; stream {total} messages, {distinct} distinct ids, "
            f"lost {n - distinct}, duplicated {total - distinct}")
        return {"rate": rate, "lost": n - distinct, "dupes": total - distinct}
    finally:
        bus.close()
        natsd.stop()
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=100_000, help="events per phase")
    a = ap.parse_args()
    say(f"busd nats benchmark: {a.n} events per phase into nats-server -js (loopback, file storage)")
    backlog = phase("backlog", a.n, True)
    live = phase("live", a.n, False)
    rows: list[tuple[str, str, str, str, bool | None]] = []
    for label, r in (("backlog drain", backlog), ("live (bus-emit to PubAck)", live)):
        rows.append((f"{label}, events/s", f"{r['rate']:,.0f}", "", f">= {TARGET:,.0f}",
                     r["rate"] >= TARGET if label.startswith("backlog") else None))
        rows.append((f"{label}, lost / duplicated", f"{r['lost']} / {r['dupes']}", "", "0 / 0",
                     r["lost"] == 0 and r["dupes"] == 0))
    save_rows("nats", "nats receiver: one node into JetStream", "", rows)
    return 0 if all(k is not False for *_, k in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

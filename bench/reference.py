#!/usr/bin/env python3
"""The reference: a bare pyzmq + msgpack pipeline of the same shape as busd's, one message per event.

    collector PUSH -> broker PULL ; broker PUSH -> parser PULL ; parser PUSH -> broker PULL ;
    broker PUB -> receiver SUB

Each role is its own process (``python bench/reference.py ROLE ...``), all over ``ipc://`` in ``--dir``.
Every process waits with one blocking receive, then drains what is queued with non-blocking receives.
The broker decodes and re-encodes every event on both hops (``source``/``kind`` set, like busd does);
the parser builds one synthetic event per input, keeping the timestamp and the parent's id.
PUB/SUB high-water marks are those busd uses (100 000), so loss, if any, is where busd would replay.

``bench/run.py`` drives it; the receiver writes ``receiver.json`` and ``receiver.ids``, the collector
``collector.json`` and ``collector.ids``.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import time
from collections import deque
from pathlib import Path

import msgpack
import zmq

DRAIN = 1000
HWM = 100_000


def _ep(d: str, name: str) -> str:
    return f"ipc://{d}/{name}"


def _new_id() -> str:
    x = os.urandom(16).hex()
    return f"{x[:8]}-{x[8:12]}-4{x[13:16]}-{x[16:20]}-{x[20:]}"


def collector(a: argparse.Namespace) -> None:
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, -1)
    push.connect(_ep(a.dir, "ingest"))
    time.sleep(0.3)
    packb = msgpack.Packer(use_bin_type=True).pack
    host = socket.gethostname()
    n, rate = a.n, a.rate
    ids: list[str] = []
    add = ids.append

    def one(i: int) -> None:
        eid = _new_id()
        add(eid)
        push.send(packb({"v": 1, "event_id": eid, "timestamp": time.time(), "hostname": host, "severity": "info",
                         "system": "bench", "kind": "raw", "event_type": "BENCH_RAW", "dev_wwid": "",
                         "dev_name": "", "msg": "bench event", "source": "",
                         "extensions": {"phase": 0, "seq": i, "n": n}}))

    t_first = time.time()
    if rate <= 0:
        for i in range(n):
            one(i)
    else:
        start = time.monotonic()
        i = 0
        while i < n:
            due = min(n, int((time.monotonic() - start) * rate) + 1)
            while i < due:
                one(i)
                i += 1
            time.sleep(0.001)
    t_last = time.time()
    out = Path(a.out)
    (out / "collector.ids").write_text("\n".join(ids) + "\n")
    (out / "collector.json").write_text(json.dumps({"count": n, "rate": rate, "first_emit": t_first,
                                                     "last_emit": t_last}))
    push.close()
    ctx.term()


def broker(a: argparse.Namespace) -> None:
    ctx = zmq.Context()
    ingest = ctx.socket(zmq.PULL)
    ingest.bind(_ep(a.dir, "ingest"))
    to_parser = ctx.socket(zmq.PUSH)
    to_parser.bind(_ep(a.dir, "p_in"))
    from_parser = ctx.socket(zmq.PULL)
    from_parser.bind(_ep(a.dir, "p_out"))
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, HWM)
    pub.bind(_ep(a.dir, "pub"))
    unpackb = msgpack.unpackb
    packb = msgpack.Packer(use_bin_type=True).pack
    pending: deque[bytes] = deque()   # events for the parser that its pipe could not take yet
    poller = zmq.Poller()
    poller.register(from_parser, zmq.POLLIN)
    interest: dict[zmq.Socket, int] = {}

    def want(sock: zmq.Socket, flags: int) -> None:
        if interest.get(sock, 0) != flags:
            if flags:
                poller.register(sock, flags)   # register() also modifies
            else:
                poller.unregister(sock)
            interest[sock] = flags

    (Path(a.out) / "broker.ready").write_text(str(os.getpid()))
    while True:
        want(to_parser, zmq.POLLOUT if pending else 0)
        want(ingest, zmq.POLLIN if len(pending) < DRAIN else 0)   # back-pressure while the parser lags
        ready = dict(poller.poll())
        if from_parser in ready:
            for _ in range(DRAIN):
                try:
                    frame = from_parser.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                ev = unpackb(frame)
                ev["source"] = "parser"
                pub.send(packb(ev), zmq.NOBLOCK)
        while pending:
            try:
                to_parser.send(pending[0], zmq.NOBLOCK)
            except zmq.Again:
                break
            pending.popleft()
        if ingest in ready:
            for _ in range(DRAIN):
                try:
                    frame = ingest.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                ev = unpackb(frame)
                ev["source"] = "collector"
                ev["kind"] = "raw"
                data = packb(ev)
                if pending:
                    pending.append(data)
                    continue
                try:
                    to_parser.send(data, zmq.NOBLOCK)
                except zmq.Again:
                    pending.append(data)


def parser(a: argparse.Namespace) -> None:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.connect(_ep(a.dir, "p_in"))
    push = ctx.socket(zmq.PUSH)
    push.connect(_ep(a.dir, "p_out"))
    unpackb = msgpack.unpackb
    packb = msgpack.Packer(use_bin_type=True).pack
    host = socket.gethostname()
    (Path(a.out) / "parser.ready").write_text(str(os.getpid()))
    while True:
        batch = [pull.recv()]
        try:
            while len(batch) < DRAIN:
                batch.append(pull.recv(zmq.NOBLOCK))
        except zmq.Again:
            pass
        for frame in batch:
            ev = unpackb(frame)
            ext = ev["extensions"]
            push.send(packb({"v": 1, "event_id": _new_id(), "timestamp": ev["timestamp"], "hostname": host,
                             "severity": "info", "system": ev["system"], "kind": "synthetic",
                             "event_type": "BENCH_SYNTH", "dev_wwid": "", "dev_name": "", "msg": ev["msg"],
                             "source": "", "extensions": {"parent": ev["event_id"], "phase": ext["phase"],
                                                          "n": ext["n"]}}))


def receiver(a: argparse.Namespace) -> None:
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, HWM)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(_ep(a.dir, "pub"))
    unpackb = msgpack.unpackb
    seen: set[str] = set()
    lat: list[float] = []
    received = 0
    first = last = 0.0
    time.sleep(0.3)
    (Path(a.out) / "receiver.ready").write_text(str(os.getpid()))
    idle_ms = int(a.idle * 1000)
    while len(seen) < a.n:
        if not sub.poll(idle_ms if received else 60_000):
            break
        batch = [sub.recv()]
        try:
            while len(batch) < DRAIN:
                batch.append(sub.recv(zmq.NOBLOCK))
        except zmq.Again:
            pass
        for frame in batch:
            now = time.time()
            ev = unpackb(frame)
            if not received:
                first = now
            last = now
            received += 1
            seen.add(ev["extensions"]["parent"])
            lat.append(now - ev["timestamp"])
    out = Path(a.out)
    (out / "receiver.ids").write_text("\n".join(seen) + "\n")
    (out / "receiver.json").write_text(json.dumps({"n": a.n, "received": received, "unique": len(seen),
                                                    "first_recv": first, "last_recv": last, "latencies": lat}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("role", choices=["collector", "broker", "parser", "receiver"])
    ap.add_argument("--dir", required=True, help="directory of the ipc:// sockets")
    ap.add_argument("--out", required=True, help="directory for result files")
    ap.add_argument("--n", type=int, default=100_000, help="events to emit / expect")
    ap.add_argument("--rate", type=float, default=0.0, help="events/s (0: as fast as possible)")
    ap.add_argument("--idle", type=float, default=3.0, help="receiver: stop after this long without events")
    a = ap.parse_args()
    {"collector": collector, "broker": broker, "parser": parser, "receiver": receiver}[a.role](a)


if __name__ == "__main__":
    main()

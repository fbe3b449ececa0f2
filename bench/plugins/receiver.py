#!/usr/bin/env python3
"""Bench receiver (SDK ``Receiver``): records, per phase, every parent event id and its latency.

When it has seen all ``n`` distinct ids of a phase (or on SIGUSR1, for every phase so far) it writes
``receiver-<k>.json`` (counts, first/last receipt, latencies) and ``receiver-<k>.ids`` into ``out``.
Latency = ``time.time()`` at receipt - the collector's ``timestamp``; with the parser's
``extensions.t_parse`` it is also split into collector -> parser and parser -> receiver.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

from bus.plugin import Receiver, run


def _write(path: Path, text: str) -> None:
    """Write atomically: run.py polls for these files."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class _Phase:
    __slots__ = ("first", "ids", "last", "lat", "lat_in", "lat_out", "n", "seen", "written")

    def __init__(self, n: int) -> None:
        self.n = n
        self.ids: list[str] = []
        self.seen: set[str] = set()
        self.lat: list[float] = []
        self.lat_in: list[float] = []    # collector timestamp -> parser handle()
        self.lat_out: list[float] = []   # parser handle() -> receiver handle()
        self.first = 0.0
        self.last = 0.0
        self.written = False


class BenchReceiver(Receiver):
    async def setup(self) -> None:
        self.out = Path(self.options["out"])
        self.phases: dict[int, _Phase] = {}
        self.lost_events = 0
        self.lost_notices = 0
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self.dump_all)
        _write(self.out / "receiver.ready", str(os.getpid()))

    def handle_batch(self, events: list[dict[str, Any]]) -> None:
        """Record a batch: the SDK hands over what arrived together, received at one moment."""
        now = time.time()
        phases = self.phases
        st: _Phase | None = None
        k = -1
        touched: set[int] = set()
        for event in events:
            ext = event["extensions"]
            if event["event_type"] == "BUS_EVENTS_LOST":
                self.lost_notices += 1
                self.lost_events += int(ext.get("missed", 0))
                continue
            if ext["phase"] != k or st is None:
                k = ext["phase"]
                st = phases.get(k)
                if st is None:
                    st = phases[k] = _Phase(ext["n"])
                    st.first = now
                touched.add(k)
            parent = ext["parent"]
            st.ids.append(parent)
            st.seen.add(parent)
            ts = event["timestamp"]
            st.lat.append(now - ts)
            tp = ext.get("t_parse")
            if tp is not None:
                st.lat_in.append(tp - ts)
                st.lat_out.append(now - tp)
        for k in touched:
            st = phases[k]
            st.last = now
            if len(st.seen) >= st.n and not st.written:
                self.dump(k, partial=False)

    def dump(self, k: int, *, partial: bool) -> None:
        st = self.phases[k]
        _write(self.out / f"receiver-{k}.ids", "\n".join(st.seen) + "\n")
        _write(self.out / f"receiver-{k}.json", json.dumps({
            "phase": k, "n": st.n, "received": len(st.ids), "unique": len(st.seen), "first_recv": st.first,
            "last_recv": st.last, "latencies": st.lat, "lat_in": st.lat_in, "lat_out": st.lat_out,
            "partial": partial, "lost_events": self.lost_events,
            "lost_notices": self.lost_notices, "stats": dict(self.subscriber.stats) if self.subscriber else {}}))
        st.written = True

    def dump_all(self) -> None:
        for k, st in self.phases.items():
            if not st.written:
                self.dump(k, partial=True)
        _write(self.out / "receiver-dump.json", json.dumps({
            "lost_events": self.lost_events, "lost_notices": self.lost_notices,
            "stats": dict(self.subscriber.stats) if self.subscriber else {}}))


if __name__ == "__main__":
    run(BenchReceiver)

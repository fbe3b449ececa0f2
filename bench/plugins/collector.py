#!/usr/bin/env python3
"""Bench collector (SDK ``Collector``): emits phases of events when told to, then idles.

Options (from the plugin table): ``out`` (result directory) and ``phases``, an array of
``{count, rate}`` tables (``rate = 0``: as fast as :class:`bus.client.Publisher` allows).

``bench/run.py`` starts each phase with SIGUSR1. For each phase the collector writes
``collector-<k>.json`` (first/last emit time, time everything was acknowledged) and
``collector-<k>.ids`` (every event id emitted, one per line) once all events are acknowledged.
Each event carries ``extensions = {phase, seq, n}`` and ``timestamp = time.time()`` at emit.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path

import zmq

from bus.plugin import Collector, run


def _write(path: Path, text: str) -> None:
    """Write atomically: run.py polls for these files."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class BenchCollector(Collector):
    async def run(self) -> None:
        out = Path(self.options["out"])
        phases = self.options["phases"]
        go = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, go.set)
        loop.add_signal_handler(signal.SIGUSR2, self._dump_state)
        _write(out / "collector.ready", str(os.getpid()))
        event = self.event
        emit_many = self.emit_many
        for k, phase in enumerate(phases):
            await go.wait()
            go.clear()
            n = int(phase["count"])
            rate = float(phase.get("rate", 0))
            ids: list[str] = []
            t_first = time.time()
            # what a real collector does with what one read gave it: build the events, emit them together
            if rate <= 0:
                for i0 in range(0, n, 100):
                    batch = [event("bench", "BENCH_RAW", "bench event", extensions={"phase": k, "seq": i, "n": n})
                             for i in range(i0, min(n, i0 + 100))]
                    ids += [ev["event_id"] for ev in batch]
                    await emit_many(batch)
            else:
                start = time.monotonic()
                i = 0
                while i < n:
                    due = min(n, int((time.monotonic() - start) * rate) + 1)
                    batch = [event("bench", "BENCH_RAW", "bench event", extensions={"phase": k, "seq": j, "n": n})
                             for j in range(i, due)]
                    ids += [ev["event_id"] for ev in batch]
                    await emit_many(batch)
                    i = due
                    await asyncio.sleep(0.001)  # uvloop rounds timers to whole ms: 0.0005 would spin
            t_last = time.time()
            ok = await self._publisher.flush(120) if self._publisher else True
            t_acked = time.time()
            _write(out / f"collector-{k}.ids", "\n".join(ids) + "\n")
            _write(out / f"collector-{k}.json", json.dumps({
                "phase": k, "count": n, "rate": rate, "first_emit": t_first, "last_emit": t_last,
                "acked_at": t_acked, "all_acked": ok,
                "rejected": len(self._publisher.rejected) if self._publisher else 0}))
        await asyncio.Event().wait()  # idle until busd stops us

    def _dump_state(self) -> None:
        """SIGUSR2: write the Publisher's state (used by run.py to describe a stall)."""
        pub = self._publisher
        state = {"acked": pub.acked, "inflight": len(pub.inflight), "buffered": len(pub.buffer),
                 "pending": pub.pending(), "waiting_replies": len(self.control._waiting)} if pub else {}
        if self._control is not None:
            # POLLIN (1) here while acknowledgements are missing: replies sit unread in the DEALER
            state["zmq_events"] = int(self._control.sock.getsockopt(zmq.EVENTS))
        _write(Path(self.options["out"]) / "collector-state.json", json.dumps(state))


if __name__ == "__main__":
    run(BenchCollector)

"""How busd and every Python plugin run their event loop: uvloop, with the garbage collector tuned."""

from __future__ import annotations

import asyncio
import gc


def runner() -> asyncio.Runner:
    """Return an :class:`asyncio.Runner` on uvloop (asyncio's own loop when uvloop is missing).

    Also raises the collector's first threshold: every event decoded is a few dicts, and at tens of
    thousands of events a second the default (700 allocations) runs a collection every few
    milliseconds, for a bus whose data (bytes in rings and queues) holds no reference cycles.
    """
    gc.set_threshold(50_000, 20, 20)
    try:
        import uvloop

        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:  # pragma: no cover - uvloop is a dependency; fallback for odd platforms
        return asyncio.Runner()

#!/usr/bin/env python3
"""Bench parser (SDK ``Parser``): one synthetic event per input, keeping the input's timestamp.

The input's ``event_id`` goes to ``extensions.parent`` (the SDK derives the output's own id), so the
receiver can count what it sees against what the collector emitted; ``extensions.t_parse`` is when
``handle()`` ran, to split the latency into its two halves.
"""

from __future__ import annotations

import time
from typing import Any

from bus.plugin import Parser, run


class PassThrough(Parser):
    def handle(self, event: dict[str, Any]) -> dict[str, Any]:
        ext = event["extensions"]
        return self.event(event["system"], "BENCH_SYNTH", event["msg"], timestamp=event["timestamp"],
                          extensions={"parent": event["event_id"], "phase": ext["phase"], "n": ext["n"],
                                      "t_parse": time.time()})


if __name__ == "__main__":
    run(PassThrough)

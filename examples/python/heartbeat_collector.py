#!/usr/bin/env python3
"""A collector in 15 lines: one raw HEARTBEAT event every ``interval`` seconds."""

import asyncio

from bus.plugin import Collector, run


class Heartbeat(Collector):
    async def run(self):
        while True:
            await self.emit(self.event("example", "HEARTBEAT", f"{self.hostname} is alive"))
            await asyncio.sleep(float(self.options.get("interval", 10)))


if __name__ == "__main__":
    run(Heartbeat)

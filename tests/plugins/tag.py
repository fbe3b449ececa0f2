"""Test parser: one synthetic ``<PREFIX>_<type>`` event per input, naming the input and the parser."""

import asyncio
import os

from bus.plugin import Parser, run


async def stall_once(plugin, handled):
    """With option ``stall_after``, hang after that many events, once (a marker file remembers)."""
    stall = plugin.options.get("stall_after")
    marker = plugin.options.get("marker")
    if stall is not None and handled == stall and not os.path.exists(marker):
        open(marker, "w").close()
        plugin.log.info("stalling", handled=handled)
        await asyncio.Event().wait()


class Tag(Parser):
    handled = 0

    async def handle(self, event):
        delay = self.options.get("delay", 0)
        if delay:
            await asyncio.sleep(delay)
        await stall_once(self, self.handled)
        self.handled += 1
        prefix = self.options.get("prefix", "TAG")
        return self.event(event["system"], f"{prefix}_{event['event_type']}", event["msg"],
                          severity=event["severity"], dev_name=event["dev_name"],
                          extensions={"raw_id": event["event_id"], "parser": self.name})


if __name__ == "__main__":
    run(Tag)

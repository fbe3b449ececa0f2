"""Test parser: one synthetic ``<PREFIX>_<type>`` event per input, naming the input and the parser."""

import asyncio
import os

from bus.plugin import Parser, run


async def misbehave(plugin):
    """Test hooks shared by the test plugins: option ``delay`` (seconds per event), and option
    ``stall_after`` (hang after that many events, once: the ``marker`` file remembers)."""
    if plugin.options.get("delay"):
        await asyncio.sleep(plugin.options["delay"])
    stall, marker = plugin.options.get("stall_after"), plugin.options.get("marker")
    if stall is not None and plugin.handled == stall and not os.path.exists(marker):
        open(marker, "w").close()
        plugin.log.info("stalling", handled=plugin.handled)
        await asyncio.Event().wait()
    plugin.handled += 1


class Tag(Parser):
    handled = 0

    async def handle(self, event):
        await misbehave(self)
        prefix = self.options.get("prefix", "TAG")
        return self.event(event["system"], f"{prefix}_{event['event_type']}", event["msg"],
                          severity=event["severity"], dev_name=event["dev_name"],
                          extensions={"raw_id": event["event_id"], "parser": self.name})


if __name__ == "__main__":
    run(Tag)

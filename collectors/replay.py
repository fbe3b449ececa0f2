"""Collector ``replay``: replays a recorded file into the bus, line by line, at a set pace.

``format = "lines"``: each line becomes a raw event whose ``msg`` is the line (system ``system``,
type ``event_type``); ``format = "jsonl"``: each line is an event (missing keys get defaults).
Used by ``make demo`` and by tests; after the file, it waits (or starts over with ``loop``).
"""

from __future__ import annotations

import asyncio

from bus.config import Option
from bus.event import EventError, from_json
from bus.plugin import Collector, run

OPTIONS = {
    "path": Option(str, Option.REQUIRED, "file to replay (a relative path is relative to the configuration file)"),
    "format": Option(str, "lines", "lines (plain text) or jsonl (one event per line)", ("lines", "jsonl")),
    "interval": Option(float, 0.2, "seconds between two lines"),
    "start_delay": Option(float, 0.0, "seconds to wait before the first line"),
    "loop": Option(bool, False, "start over at the end of the file"),
    "system": Option(str, "kmsg", "system of the events made from plain lines"),
    "event_type": Option(str, "LINE", "event type of the events made from plain lines"),
}


class Replay(Collector):
    """Emit one raw event per line of a file."""

    async def run(self) -> None:
        """Replay the file, then idle (or loop)."""
        opts = self.options
        path = self.path(opts["path"])
        await asyncio.sleep(opts["start_delay"])
        while True:
            with path.open(encoding="utf-8", errors="backslashreplace") as f:
                for number, line in enumerate(f, 1):
                    text = line.rstrip("\n")
                    if not text.strip():
                        continue
                    if opts["format"] == "jsonl":
                        try:
                            event = from_json(text, where=f"{path}:{number}")
                        except EventError as exc:
                            self.log.warning("bad_line", error=str(exc))
                            continue
                    else:
                        event = self.event(opts["system"], opts["event_type"], text,
                                           extensions={"file": str(path), "line": number})
                    await self.emit(event)
                    if opts["interval"]:
                        await asyncio.sleep(opts["interval"])
            self.log.info("replay_done", path=str(path))
            if not opts["loop"]:
                await asyncio.Event().wait()


if __name__ == "__main__":
    run(Replay)

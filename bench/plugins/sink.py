#!/usr/bin/env python3
"""Fault-matrix receiver (SDK ``Receiver``): one JSON line per event it handles, in the file of option ``out``.

Each line holds ``id`` (the input's id a parser put in ``extensions.raw_id``, else the event's own
``event_id``), ``t`` (``time.time()`` at receipt) and ``type``; a ``BUS_EVENTS_LOST`` line also holds
``missed``. The file is opened for appending, so a restarted sink continues it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from bus.plugin import Receiver, run


class Sink(Receiver):
    async def setup(self) -> None:
        self.out = open(self.options["out"], "a", buffering=1)

    async def handle(self, event: dict[str, Any]) -> None:
        ext = event["extensions"]
        line = {"id": ext.get("raw_id") or event["event_id"], "t": time.time(), "type": event["event_type"]}
        if event["event_type"] == "BUS_EVENTS_LOST":
            line["missed"] = ext.get("missed", 0)
        self.out.write(json.dumps(line) + "\n")

    async def teardown(self) -> None:
        self.out.close()


if __name__ == "__main__":
    run(Sink)

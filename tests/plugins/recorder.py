"""Test receiver: appends one JSON line per event it handles to the file in option ``out``."""

import json

from tag import misbehave

from bus.plugin import Receiver, run


class Recorder(Receiver):
    handled = 0

    async def setup(self):
        self.out = open(self.options["out"], "a", buffering=1)

    async def handle(self, event):
        await misbehave(self)
        self.out.write(json.dumps({"id": event["event_id"], "type": event["event_type"],
                                   "raw_id": event["extensions"].get("raw_id"),
                                   "parser": event["extensions"].get("parser"), "source": event["source"],
                                   "severity": event["severity"], "system": event["system"],
                                   "dev_name": event["dev_name"], "msg": event["msg"],
                                   "ext": event["extensions"]}) + "\n")

    async def teardown(self):
        self.out.close()


if __name__ == "__main__":
    run(Recorder)

#!/usr/bin/env python3
"""A receiver in 15 lines: appends one line per event to the file named by its ``path`` option."""

from bus.plugin import Receiver, run


class AppendToFile(Receiver):
    async def setup(self):
        self.file = open(self.options["path"], "a", buffering=1)

    def handle(self, event):
        self.file.write(f'{event["timestamp"]:.6f} {event["severity"]} {event["event_type"]} {event["msg"]}\n')


if __name__ == "__main__":
    run(AppendToFile)

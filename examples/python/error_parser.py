#!/usr/bin/env python3
"""A parser in 15 lines: every raw line that mentions "error" becomes a synthetic event."""

from bus.plugin import Parser, run


class ErrorLines(Parser):
    def handle(self, event):
        if "error" in event["msg"].lower():
            return self.event("example", "LINE_WITH_ERROR", event["msg"], severity="error",
                              dev_name=event["dev_name"], extensions={"raw_source": event["source"]})
        return None


if __name__ == "__main__":
    run(ErrorLines)

"""Receiver ``debugger``: writes every event it receives into busd's log (like drbd-reactor's).

``format = "line"`` logs the readable one-line form; ``format = "json"`` logs the whole event.
"""

from __future__ import annotations

from bus.cli import format_line
from bus.config import Option
from bus.event import Event
from bus.plugin import Receiver, run

OPTIONS = {
    "format": Option(str, "line", "line (readable) or json (the whole event)", ("line", "json")),
}


class Debugger(Receiver):
    """Log each event."""

    def handle(self, event: Event) -> None:
        """Log one event."""
        if self.options["format"] == "json":
            self.log.info("bus_event", bus_event=event)
        else:
            self.log.info("bus_event", line=format_line(event, color=False))


if __name__ == "__main__":
    run(Debugger)

"""Bench receiver: counts the synthetic events it gets (busd reports its progress and lag)."""

from typing import Any

from bus.plugin import Receiver, run


class Tally(Receiver):
    """Count events; nothing else, so the bench measures the bus and the parsers."""

    count = 0

    def handle(self, event: dict[str, Any]) -> None:
        """Count one event."""
        self.count += 1


if __name__ == "__main__":
    run(Tally)

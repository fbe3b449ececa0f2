"""Retry delays for receivers that deliver to a server that may be down (journald, SMTP)."""

from __future__ import annotations

import time
from typing import Any


class Outage:
    """Exponential backoff with one clear error when deliveries start failing and one line when they recover.

    Each failure returns the delay before the next attempt (``first`` doubling up to ``maximum``);
    while the outage lasts, the error is repeated every ``remind`` seconds with the attempt count.

    Args:
        log: the plugin's structlog logger.
        what: what is down, e.g. ``journald``: logs ``<what>_unavailable`` and ``<what>_recovered``.
        first: first delay, seconds.
        maximum: longest delay, seconds.
        remind: seconds between two error lines of one outage.
    """

    def __init__(self, log: Any, what: str, first: float = 0.1, maximum: float = 30.0, remind: float = 60.0) -> None:
        self.log = log
        self.what = what
        self.first = min(first, maximum)
        self.maximum = maximum
        self.remind = remind
        self.attempts = 0
        self.since = 0.0
        self._last_log = 0.0

    @property
    def active(self) -> bool:
        """Whether the last attempt failed."""
        return self.attempts > 0

    def failed(self, error: str, **fields: Any) -> float:
        """Record a failed attempt, log it when due, and return the delay before the next one."""
        now = time.monotonic()
        if not self.attempts:
            self.since = now
        self.attempts += 1
        delay: float = min(self.maximum, self.first * 2.0 ** min(self.attempts - 1, 30))
        if self.attempts == 1 or now - self._last_log >= self.remind:
            self._last_log = now
            self.log.error(f"{self.what}_unavailable", error=error, attempts=self.attempts, retry_in=round(delay, 3),
                           down_for=round(now - self.since, 1), **fields)
        else:
            self.log.debug(f"{self.what}_unavailable", error=error, attempts=self.attempts, retry_in=round(delay, 3), **fields)
        return delay

    def succeeded(self, **fields: Any) -> None:
        """Record a successful attempt; log the recovery if an outage was going on."""
        if self.attempts:
            self.log.info(f"{self.what}_recovered", attempts=self.attempts,
                          down_for=round(time.monotonic() - self.since, 1), **fields)
            self.attempts = 0

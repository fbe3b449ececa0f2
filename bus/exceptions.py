"""Exceptions raised by busd.

Hierarchy::

    BusError
    ├── EventError      an event that does not follow schema version 1
    ├── ConfigError     a configuration file, key or value that is refused
    └── ControlError    the daemon could not be reached or refused a request
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["AlreadyRunning", "BusError", "ConfigError", "ControlError", "EventError", "FleetError", "HistoryError"]


class BusError(Exception):
    """Base class of every error busd raises on purpose."""


class EventError(BusError, ValueError):
    """An event failed validation; the message names the offending key."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}")


class ConfigError(BusError):
    """A configuration was refused; the message names the file, the key and the reason."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {reason}")


class ControlError(BusError):
    """A request to the running daemon failed (not running, timed out or refused)."""


class AlreadyRunning(BusError):
    """Another busd serves the same runtime dir; the message names its pid."""


class BadInput(BusError, ValueError):
    """Input a collector or parser cannot use (a garbage line, a malformed datagram).

    ``kind`` is a short key naming the defect (for counters and one log line per kind), ``detail``
    says what exactly was wrong.
    """

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class HistoryError(BusError):
    """The history database cannot be used; the message names the file and what is wrong with it."""

    def __init__(self, path: Path | str, reason: str, *, corrupt: bool = False) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = Path(path)
        self.reason = reason
        self.corrupt = corrupt
        """The file is there but is no SQLite database (or a damaged one)."""


class FleetError(BusError, RuntimeError):
    """The fleet cannot be read: no ``nats`` receiver configured, no server, no stream (message says which)."""

"""Receiver ``history``: every event it receives stored in a local SQLite file, for ``busctl query``,
``bus-tail --since`` and ``busctl dev info`` (see :mod:`bus.history` and docs/operators.md, "History").

Which events: the plugin's ``filter`` (default: synthetic events; ``filter = { kind = "all" }``
stores raw ones too). Each batch the bus delivers is one transaction, committed before
``handle_batch`` returns, so the progress busd sees means stored.

When a write fails (disk full, I/O error) the receiver logs one error per episode, shows it as
``error`` in its status (``busctl status``), keeps the events in memory (at most ``max_pending``;
beyond that the oldest are counted as ``lost``), retries every second and keeps running; the error
clears when a write works again. A file that is not a SQLite database is never deleted: it is moved
aside to ``<path>.corrupt-<epoch seconds>`` (logged, shown as ``warning`` in the status) and a new
database is started.

Options: ``path`` (default ``<state_dir>/history.sqlite``), ``max_age`` (seconds, default 30 days),
``max_bytes`` (default 1 GiB), ``prune_interval`` (seconds between retention passes),
``max_pending`` (events held in memory while the disk refuses writes).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import deque
from pathlib import Path
from typing import Any

from bus.config import Option
from bus.event import Event
from bus.history import History, HistoryError
from bus.plugin import Receiver, run, stop_tasks

OPTIONS = {
    "path": Option(str, "", "database file ('': <state_dir>/history.sqlite; relative: to the config file)"),
    "max_age": Option((int, float), 30 * 86400.0, "seconds an event is kept (0: no age limit)"),
    "max_bytes": Option(int, 1 << 30, "most bytes of stored events; the oldest go first (0: no limit)"),
    "prune_interval": Option((int, float), 60.0, "seconds between retention passes"),
    "max_pending": Option(int, 100_000, "events held in memory while writes fail; beyond: counted as lost"),
}

RETRY_INTERVAL = 1.0


def check_options(options: dict[str, Any]) -> None:
    """Refuse negative bounds and a non-positive interval."""
    for key in ("max_age", "max_bytes", "max_pending"):
        if options[key] < 0:
            raise ValueError(f"{key}: must not be negative")
    if options["prune_interval"] <= 0:
        raise ValueError("prune_interval: must be positive")


def database_path(options: dict[str, Any], state_dir: Path | None, config_dir: Path) -> Path:
    """Return where an instance keeps its database (the receiver and ``busctl query`` agree through this)."""
    if options.get("path"):
        return config_dir / str(options["path"])
    if state_dir is None:
        raise ValueError("path: no [main] state_dir known and no path option")
    return state_dir / "history.sqlite"


class HistoryReceiver(Receiver):
    """Stores events in SQLite (see the module docstring)."""

    def __init__(self, env: Any = None) -> None:
        super().__init__(env)
        self.db: History | None = None
        self.db_path = Path()
        self.pending: deque[Event] = deque()
        self.error: str | None = None
        self.warning: str | None = None
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        for key in ("stored", "duplicates", "pruned", "lost", "pending", "rows", "bytes"):
            self.counters[key] = 0

    async def setup(self) -> None:
        """Open (or create) the database; start the retention and retry tasks."""
        o = self.options
        self.db_path = database_path(o, self.state_dir, Path(self.env.get("BUS_CONFIG_DIR", ".")))
        self._open()
        self._tasks = [asyncio.create_task(self._prune_loop(), name="history-prune"),
                       asyncio.create_task(self._retry_loop(), name="history-retry")]

    def _open(self) -> None:
        try:
            self.db = History.open(self.db_path)
        except HistoryError as exc:
            if not exc.corrupt:
                self._fail(str(exc))
                return
            aside = self.db_path.with_name(f"{self.db_path.name}.corrupt-{int(time.time())}")
            self.db_path.rename(aside)
            for suffix in ("-wal", "-shm"):
                side = self.db_path.with_name(self.db_path.name + suffix)
                if side.exists():
                    side.rename(aside.with_name(aside.name + suffix))
            self.warning = f"{exc}; moved aside to {aside}, a new database was started"
            self.log.error("history_corrupt", path=str(self.db_path), error=exc.reason, moved_to=str(aside))
            self.db = History.open(self.db_path)
        self._refresh()
        self.log.info("history_open", path=str(self.db_path), rows=self.counters["rows"])

    def _refresh(self) -> None:
        """Update the row and byte counters and the status file."""
        if self.db is not None:
            try:
                self.counters["rows"] = self.db.rows()
                self.counters["bytes"] = self.db.used_bytes()
                oldest = self.db.oldest()
            except sqlite3.Error:
                oldest = None
        else:
            oldest = None
        self.counters["pending"] = len(self.pending)
        self.count("pruned", 0)  # wakes the subscriber: busctl status sees the new counters soon
        self.write_status({"path": str(self.db_path), "error": self.error, "warning": self.warning,
                           "oldest": oldest, **self.counters})

    def _fail(self, message: str) -> None:
        if self.error is None:
            self.log.error("history_write_failed", path=str(self.db_path), error=message,
                           pending=len(self.pending))
        self.error = message
        self._refresh()
        self._wake.set()

    def handle_batch(self, events: list[Event]) -> None:
        """Store a batch in one transaction (or hold it in memory while writes fail)."""
        self.pending.extend(events)
        over = len(self.pending) - self.options["max_pending"]
        if over > 0:
            for _ in range(over):
                self.pending.popleft()
            self.count("lost", over)
        self._flush()

    def _flush(self) -> bool:
        """Write what is pending; return whether it worked."""
        if not self.pending:
            return True
        if self.db is None:
            try:
                self._open()
            except (HistoryError, OSError, sqlite3.Error) as exc:
                self._fail(str(exc))
                return False
            if self.db is None:
                return False
        batch = list(self.pending)
        try:
            new = self.db.insert_many(batch)
        except (sqlite3.Error, OSError) as exc:
            self._fail(f"{self.db_path}: {exc}")
            return False
        self.pending.clear()
        self.count("stored", new)
        self.count("duplicates", len(batch) - new)
        self.counters["rows"] += new
        self.counters["pending"] = 0
        if self.error is not None:
            self.log.info("history_write_recovered", path=str(self.db_path), stored=new)
            self.error = None
            self._refresh()
        return True

    async def _retry_loop(self) -> None:
        while True:
            await self._wake.wait()
            while self.pending and not self._flush():
                await asyncio.sleep(RETRY_INTERVAL)
            self._wake.clear()

    async def _prune_loop(self) -> None:
        o = self.options
        while True:
            if self.db is not None:
                try:
                    n = self.db.prune(o["max_age"] or None, o["max_bytes"] or None)
                    if n:
                        self.count("pruned", n)
                except sqlite3.Error as exc:
                    self.log.warning("history_prune_failed", path=str(self.db_path), error=str(exc))
            self._refresh()
            await asyncio.sleep(o["prune_interval"])

    async def teardown(self) -> None:
        """Stop the tasks, try a last write of what is pending, close the database."""
        await stop_tasks(self._tasks, self.log, "history_task_failed")
        if self.pending:
            self._flush()
        if self.db is not None:
            self.db.close()


def main() -> None:
    """Entry point for ``busd`` (built-in receiver ``history``)."""
    run(HistoryReceiver)


if __name__ == "__main__":
    main()

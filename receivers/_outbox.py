"""A durable, bounded, ordered outbox: one SQLite file in WAL mode per webhook.

Rows are events waiting for delivery, in the order they were added (``seq``). Delivery is in
order, so what has been delivered is a prefix: a ``cursor`` (the ``seq`` of the last row done)
marks it, and advancing it is one small write however many rows it passes. Delivered rows are kept
a while (:data:`KEEP_DELIVERED`) so an event handed to the receiver again after a restart (the bus
delivers at least once) is recognised by its id and not queued twice; rows dropped before delivery
(outbox full, too old) are deleted.

Everything runs on the caller's thread: one SQLite statement is tens of microseconds, cheaper than
a hop to a worker thread, and it keeps the outbox free of locking.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["KEEP_DELIVERED", "Outbox", "OutboxLocked", "Row", "next_rows"]

KEEP_DELIVERED = 10_000
"""Delivered rows kept to recognise an event the bus delivers again; older ones are deleted."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    created REAL NOT NULL,
    event BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value NUMERIC NOT NULL);
"""

_TOTALS = ("cursor", "delivered", "outbox_full", "expired", "rejected")
"""Numbers kept in ``meta``: the cursor and what happened to events since the outbox was created."""


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection) -> Iterator[None]:
    """One write transaction, committed at the end or rolled back when the body (or the commit) raises.

    On a full disk or an I/O error SQLite may have rolled the transaction back itself: a second
    rollback would fail and hide the real error ("database or disk is full") behind "cannot rollback".
    """
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise


class OutboxLocked(OSError):
    """Another process holds this outbox (a second instance of the same receiver)."""


@dataclass(frozen=True, slots=True)
class Row:
    """One waiting event: its place, id, when it was queued (epoch seconds) and the stored event (JSON)."""

    seq: int
    event_id: str
    created: float
    event: bytes


class Outbox:
    """One webhook's outbox.

    Args:
        path: the SQLite file (created with its directory); ``PATH.lock`` guards it against a
            second process.
        synchronous: ``normal`` (a commit survives the process being killed; WAL keeps the file
            consistent after a power loss but the last commits may be lost) or ``full`` (each
            commit is on disk before it returns; slower).

    Raises:
        OutboxLocked: another process has the outbox open.
        sqlite3.Error, OSError: the file cannot be created or read.
    """

    def __init__(self, path: Path, synchronous: str = "normal") -> None:
        self.path = path
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        self._lock = os.open(f"{path}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            raise OutboxLocked(f"{path} is in use by another process") from None
        try:
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
            # checkpoint every 100 pages (400 KiB), not SQLite's 1000: the outbox commits once per event, and a
            # 4 MiB log alone would fill a small state filesystem past recovery (fault matrix, row 6a)
            self.db.execute("PRAGMA wal_autocheckpoint=100")
            self.db.executescript(_SCHEMA)
            stored = dict(self.db.execute("SELECT key, value FROM meta").fetchall())
        except BaseException:
            os.close(self._lock)
            raise
        self.totals: dict[str, int] = {k: int(stored.get(k, 0)) for k in _TOTALS}
        self.cursor = self.totals["cursor"]
        self.depth: int = self.db.execute("SELECT COUNT(*) FROM outbox WHERE seq > ?", (self.cursor,)).fetchone()[0]
        self._saved_cursor = self.cursor
        self._pruned_upto = self.cursor
        self.deletions = 0
        """Bumped whenever waiting events are dropped: rows read before may be gone."""

    # -- adding --------------------------------------------------------------------------------

    def add(self, event_id: str, event: bytes, created: float, *, bound: int, keep_from: int) -> tuple[bool, int]:
        """Queue an event (committed when this returns) unless its id is already in the outbox.

        When ``bound`` events already wait, the oldest waiting ones with ``seq >= keep_from`` are
        deleted to make room (rows below ``keep_from`` are being sent right now).

        Returns:
            ``(added, dropped)``: whether the event is new, and how many were dropped for it.
        """
        db = self.db
        with _transaction(db):
            cur = db.execute("INSERT OR IGNORE INTO outbox (event_id, created, event) VALUES (?, ?, ?)",
                             (event_id, created, event))
            added = cur.rowcount == 1
            dropped = 0
            if added and self.depth + 1 > bound:
                dropped = db.execute(
                    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?)",
                    (max(self.cursor, keep_from - 1), self.depth + 1 - bound)).rowcount
                self.totals["outbox_full"] += dropped
                self._save_meta(("outbox_full",))
        self.depth += added - dropped
        self.deletions += dropped > 0
        return added, dropped

    # -- delivering ----------------------------------------------------------------------------

    def peek(self, limit: int, after: int | None = None) -> list[Row]:
        """Return up to ``limit`` waiting events, oldest first (after ``seq`` ``after``, default the cursor)."""
        rows = self.db.execute("SELECT seq, event_id, created, event FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                               (self.cursor if after is None else after, limit)).fetchall()
        return [Row(*r) for r in rows]

    def done(self, seq: int, *, delivered: int = 0, rejected: int = 0, expired: int = 0) -> None:
        """Move the cursor to ``seq``: every event up to it was delivered, rejected or expired (saved by :meth:`save`)."""
        if seq <= self.cursor:
            return
        self.cursor = seq
        self.depth -= delivered + rejected + expired
        self.totals["delivered"] += delivered
        self.totals["rejected"] += rejected
        self.totals["expired"] += expired

    def expire(self, before: float) -> int:
        """Delete waiting events queued before ``before`` (epoch seconds); return how many."""
        with _transaction(self.db):
            n = self.db.execute("DELETE FROM outbox WHERE seq > ? AND created < ?", (self.cursor, before)).rowcount
            if n:
                self.totals["expired"] += n
                self._save_meta(("expired",))
        self.depth -= n
        self.deletions += n > 0
        return n

    def oldest(self) -> float | None:
        """Return when the oldest waiting event was queued (``None``: none waits)."""
        row = self.db.execute("SELECT created FROM outbox WHERE seq > ? ORDER BY seq LIMIT 1", (self.cursor,)).fetchone()
        return None if row is None else float(row[0])

    @property
    def unsaved(self) -> bool:
        """Whether the cursor moved since the last :meth:`save`."""
        return self.cursor != self._saved_cursor

    def save(self) -> None:
        """Commit the cursor and counters, and delete delivered rows beyond :data:`KEEP_DELIVERED`."""
        if self.cursor == self._saved_cursor:
            return
        with _transaction(self.db):
            self.totals["cursor"] = self.cursor
            self._save_meta(("cursor", "delivered", "rejected", "expired"))
            if self.cursor - self._pruned_upto >= KEEP_DELIVERED:
                self.db.execute("DELETE FROM outbox WHERE seq <= ?", (self.cursor - KEEP_DELIVERED,))
                self._pruned_upto = self.cursor
        self._saved_cursor = self.cursor

    def _save_meta(self, keys: tuple[str, ...]) -> None:
        self.db.executemany("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                            [(k, self.totals[k]) for k in keys])

    def close(self) -> None:
        """Save and close (the lock is released)."""
        try:
            self.save()
            self.db.close()
        finally:
            os.close(self._lock)

    def info(self) -> dict[str, Any]:
        """Return the depth, the age of the oldest event and the totals, for status output."""
        return {"depth": self.depth, "oldest": self.oldest(),
                **{k: v for k, v in self.totals.items() if k != "cursor"}}


async def next_rows(outbox: Outbox, wake: asyncio.Event, limit: int, save_interval: float) -> list[Row]:
    """Return the next waiting rows (up to ``limit``), waiting on ``wake`` while the outbox is empty.

    The delivery loop of the webhook and nats receivers: while nothing waits, the cursor is saved
    once it has stood still ``save_interval`` seconds (not after each delivery: a crash resends at
    most that much). ``wake`` is cleared before the read, so an event queued after it sets it again.
    """
    while True:
        wake.clear()
        rows = outbox.peek(limit)
        if rows:
            return rows
        if outbox.unsaved:
            try:
                async with asyncio.timeout(save_interval):
                    await wake.wait()
            except TimeoutError:
                outbox.save()
        else:
            await wake.wait()

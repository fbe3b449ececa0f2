"""The local history: one SQLite file of past events, written by the ``history`` receiver, read by commands.

One writer (the receiver, :meth:`History.open`), any number of readers (``busctl query``,
``bus-tail --since``, ``busctl dev info``: :meth:`History.open_readonly`, a ``mode=ro`` URI, so a
command never creates, migrates or locks the writer's file). The file is in WAL mode, so readers
never block the writer and the writer never blocks readers.

Each event is one row of ``events``: the indexed fields as columns (``severity`` as its rank, so
``--severity warn`` is a range) and the whole event as a msgpack blob, returned as it was stored.
``event_id`` is unique and inserts are ``INSERT OR IGNORE``: the bus delivers at least once, a
replayed event is stored once.

The database uses ``auto_vacuum = INCREMENTAL``: :meth:`History.prune` deletes by age and then,
oldest first, until the pages in use fit ``max_bytes``, and gives the freed pages back to the file
system (``PRAGMA incremental_vacuum``), so the file really shrinks.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bus import protocol
from bus.event import Event, severity_rank
from bus.exceptions import HistoryError
from bus.query import Query

__all__ = ["History", "HistoryError", "is_full"]

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL UNIQUE,
    timestamp REAL NOT NULL,
    hostname TEXT NOT NULL,
    severity INTEGER NOT NULL,
    system TEXT NOT NULL,
    kind TEXT NOT NULL,
    event_type TEXT NOT NULL,
    dev_name TEXT NOT NULL,
    dev_wwid TEXT NOT NULL,
    msg TEXT NOT NULL,
    source TEXT NOT NULL,
    data BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_timestamp ON events (timestamp);
CREATE INDEX IF NOT EXISTS events_system ON events (system, timestamp);
CREATE INDEX IF NOT EXISTS events_type ON events (event_type, timestamp);
CREATE INDEX IF NOT EXISTS events_dev_name ON events (dev_name) WHERE dev_name != '';
CREATE INDEX IF NOT EXISTS events_dev_wwid ON events (dev_wwid) WHERE dev_wwid != '';
"""
_INSERT = ("INSERT OR IGNORE INTO events (event_id, timestamp, hostname, severity, system, kind, event_type, "
           "dev_name, dev_wwid, msg, source, data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")


def is_full(exc: BaseException) -> bool:
    """Return whether an SQLite error means the disk (or the file system) is full."""
    return "full" in str(exc).lower()


def _row(event: Event) -> tuple[Any, ...]:
    return (event["event_id"], float(event.get("timestamp", 0.0)), event.get("hostname", ""),
            severity_rank(event.get("severity", "info")), event.get("system", ""), event.get("kind", ""),
            event.get("event_type", ""), event.get("dev_name", ""), event.get("dev_wwid", ""),
            event.get("msg", ""), event.get("source", ""), protocol.packb(dict(event)))


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class History:
    """An open history database; use :meth:`open` (the writer) or :meth:`open_readonly` (commands)."""

    def __init__(self, path: Path, db: sqlite3.Connection, readonly: bool) -> None:
        self.path = path
        self.db = db
        self.readonly = readonly

    @classmethod
    def open(cls, path: Path | str, *, busy_timeout: float = 5.0) -> History:
        """Open (creating it and its directory if needed) the database for writing.

        Raises:
            HistoryError: the file is not a database (``corrupt`` set), or cannot be opened or created.
        """
        path = Path(path)
        try:
            path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise HistoryError(path, f"cannot open: {exc}") from None
        try:
            db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes effect before the first table
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.executescript(_SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as exc:
            db.close()
            raise _error(path, exc) from None
        return cls(path, db, readonly=False)

    @classmethod
    def open_readonly(cls, path: Path | str) -> History:
        """Open an existing database read-only (never creates, never writes, never takes the write lock).

        Raises:
            HistoryError: no such file, not a database, or not readable.
        """
        path = Path(path)
        if not path.exists():
            raise HistoryError(path, "no history database here (is a 'history' receiver configured and running?)")
        try:
            db = sqlite3.connect(f"file:{quote(str(path.resolve()))}?mode=ro", uri=True, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA busy_timeout = 5000")
            db.execute("SELECT 1 FROM events LIMIT 1").fetchall()
        except sqlite3.DatabaseError as exc:
            raise _error(path, exc) from None
        return cls(path, db, readonly=True)

    def close(self) -> None:
        """Close the database."""
        self.db.close()

    # -- writing ----------------------------------------------------------------------------------

    def insert_many(self, events: Iterable[Event]) -> int:
        """Store events in one transaction; return how many were new (the rest were duplicates).

        Raises:
            sqlite3.OperationalError: disk full, I/O error... (the transaction is rolled back).
        """
        db = self.db
        before = db.total_changes
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(_INSERT, [_row(e) for e in events])
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return db.total_changes - before

    def prune(self, max_age: float | None = None, max_bytes: int | None = None, *, now: float | None = None) -> int:
        """Delete events older than ``max_age`` seconds, then the oldest until the data fits ``max_bytes``.

        The freed pages are returned to the file system. Return how many events were deleted.
        """
        db = self.db
        deleted = 0
        now = time.time() if now is None else now
        if max_age:
            deleted += db.execute("DELETE FROM events WHERE timestamp < ?", (now - max_age,)).rowcount
        if max_bytes:
            # rows over the bound, by the average row size; pages of the event_id index empty slowly
            # (random ids), so later rounds delete at most half of what is left, never everything
            for round_ in range(3):
                used, rows = self.used_bytes(), self.rows()
                if used <= max_bytes or rows <= 1:
                    break
                n = rows - int(max_bytes / (used / rows))
                if round_:
                    n = min(n, rows // 2)
                deleted += db.execute("DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY timestamp, "
                                      "id LIMIT ?)", (max(1, n),)).rowcount
        if deleted:
            db.executescript("PRAGMA incremental_vacuum;")  # sqlite3_exec runs every step (execute() runs one)
        return deleted

    # -- reading ----------------------------------------------------------------------------------

    def used_bytes(self) -> int:
        """Return the bytes of the pages in use (the file's size less its free pages)."""
        page = self.db.execute("PRAGMA page_size").fetchone()[0]
        count = self.db.execute("PRAGMA page_count").fetchone()[0]
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((count - free) * page)

    def rows(self) -> int:
        """Return how many events are stored."""
        return int(self.db.execute("SELECT count(*) FROM events").fetchone()[0])

    def oldest(self) -> float | None:
        """Return the oldest stored timestamp (``None``: empty)."""
        value = self.db.execute("SELECT min(timestamp) FROM events").fetchone()[0]
        return None if value is None else float(value)

    def query(self, q: Query) -> list[Event]:
        """Return the stored events ``q`` asks for, oldest first (with ``q.limit``: the newest that many).

        The time range, systems, kinds, minimum severity, event types (exact and ``X*`` prefixes),
        devices and hosts are narrowed in SQL; :meth:`Query.match` decides the rest.
        """
        where: list[str] = []
        args: list[Any] = []
        f = q.filter
        if q.since is not None:
            where.append("timestamp >= ?")
            args.append(q.since)
        if q.until is not None:
            where.append("timestamp < ?")
            args.append(q.until)
        for column, values in (("system", f.systems), ("kind", f.kinds), ("hostname", q.hosts or None)):
            if values is not None:
                where.append(f"{column} IN ({','.join('?' * len(values))})")
                args.extend(sorted(values))
        if f.min_severity:
            where.append("severity >= ?")
            args.append(f.min_severity)
        if f.exact_types is not None:
            ors = []
            if f.exact_types:
                ors.append(f"event_type IN ({','.join('?' * len(f.exact_types))})")
                args.extend(sorted(f.exact_types))
            for prefix in f.type_prefixes:
                ors.append("event_type LIKE ? ESCAPE '\\'")
                args.append(_like_escape(prefix) + "%")
            where.append("(" + " OR ".join(ors or ["0"]) + ")")
        if q.devs:
            marks = ",".join("?" * len(q.devs))
            where.append(f"(dev_name IN ({marks}) OR dev_wwid IN ({marks}))")
            args.extend(q.devs)
            args.extend(q.devs)
        sql = "SELECT data FROM events" + (" WHERE " + " AND ".join(where) if where else "")
        exact = f.contains is None  # everything else is in SQL: the limit can go there too
        if q.limit is not None:
            sql += " ORDER BY timestamp DESC, id DESC"
            if exact:
                sql += f" LIMIT {int(q.limit)}"
        else:
            sql += " ORDER BY timestamp, id"
        out: list[Event] = []
        unpack, match = protocol.unpackb, q.match
        try:
            for (data,) in self.db.execute(sql, args):
                event = unpack(data)
                if exact or match(event):
                    out.append(event)
                    if q.limit is not None and len(out) >= q.limit:
                        break
        except sqlite3.DatabaseError as exc:
            raise _error(self.path, exc) from None
        if q.limit is not None:
            out.reverse()
        return out

    def device_names(self, dev: str) -> tuple[set[str], set[str]]:
        """Return the ``dev_name`` and ``dev_wwid`` values seen together with ``dev`` (a name or a WWID),
        and the names seen with those WWIDs (a disk renamed across reboots keeps its WWID)."""
        sql = "SELECT DISTINCT dev_name, dev_wwid FROM events WHERE dev_name = ? OR dev_wwid = ?"
        rows = self.db.execute(sql, (dev, dev)).fetchall()
        wwids = {w for _, w in rows if w}
        for wwid in sorted(wwids):
            rows += self.db.execute(sql, ("", wwid)).fetchall()
        return {n for n, _ in rows if n}, wwids


def _error(path: Path, exc: sqlite3.DatabaseError) -> HistoryError:
    text = str(exc)
    corrupt = "not a database" in text or "malformed" in text
    if corrupt:
        return HistoryError(path, f"file is not a database ({text})", corrupt=True)
    return HistoryError(path, text)

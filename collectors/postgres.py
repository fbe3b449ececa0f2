"""Collector ``postgres``: polls the local PostgreSQL (and its repmgr metadata) every ``interval`` seconds.

It keeps one connection (psycopg 3, asyncio; when that connection broke, the poll tries once more on
a new one, so a restarted server or a terminated backend is not an outage; after any failure the
next poll connects anew), gives each query ``query_timeout`` seconds (server-side
``statement_timeout`` and a client-side bound: a hung query never stops the polling), and emits raw
events with ``system = "postgres"``, ``dev_name`` = ``node_name`` and ``dev_wwid`` =
``<system_identifier>:<repmgr node id>`` (``""`` until known):

``POSTGRES_STATE`` (info), one per successful poll. ``extensions``:
    ``node_name``, ``dsn`` (the DSN without password), ``interval``, ``role`` (``primary`` or
    ``standby``), ``in_recovery``, ``system_identifier`` (text), ``timeline`` (on a primary: from the
    current WAL file; on a standby: the WAL receiver's ``received_tli``, else the last restartpoint's),
    ``server_version``, ``postmaster_start_time`` (epoch), ``server_time`` (epoch);
    ``lsn`` (primary: ``pg_current_wal_lsn()``; standby: ``pg_last_wal_replay_lsn()``), ``lsn_bytes``
    (the same as a number), ``current_lsn``, ``receive_lsn``, ``replay_lsn`` (text or null);
    on a standby: ``replay_paused``, ``last_replay_time`` (epoch of the last replayed transaction),
    ``lag_seconds`` (0 when everything received is replayed, else ``now() -
    pg_last_xact_replay_timestamp()``; null before the WAL receiver has received anything),
    ``lag_bytes`` (received minus replayed, null likewise), ``streaming`` (the
    WAL receiver streams), ``wal_receiver`` (``status``, ``sender_host``, ``sender_port``,
    ``received_tli``, or null); on a primary ``lag_seconds``/``lag_bytes`` are null and ``streaming``
    false; ``replication`` (primary: one map per ``pg_stat_replication`` row: ``application_name``,
    ``client_addr``, ``state``, ``sync_state``, ``sent_lsn``, ``write_lsn``, ``flush_lsn``,
    ``replay_lsn``, ``write_lag``, ``flush_lag``, ``replay_lag`` (seconds or null),
    ``write_lag_bytes``, ``flush_lag_bytes``, ``replay_lag_bytes`` (behind the current LSN); ``[]``
    on a standby); ``repmgr`` (the ``repmgr`` schema exists), ``repmgr_nodes`` (one map per
    ``repmgr.nodes`` row: ``node_id``, ``node_name``, ``type``, ``active``, ``upstream_node_id``,
    ``upstream_node_name``, ``priority``, ``location``; ``[]`` without repmgr), ``node_id`` (this
    node's repmgr id, found by ``node_name``, or null).

``POSTGRES_DOWN`` (error), when a poll fails: on the transition, then every ``down_repeat`` seconds
    while it lasts (polling goes on at ``interval``). ``extensions``: ``node_name``, ``dsn``,
    ``interval``, ``reason`` (``unreachable``: no connection; ``timeout``: connecting or a query took
    too long; ``query_failed``: an SQL error such as missing privileges), ``error``, ``down_since``
    (epoch), ``system_identifier`` and ``node_id`` (last known, or ``""``/null).

``POSTGRES_REPMGR_EVENT`` (info; warn when ``successful`` is false), one per new row of
    ``repmgr.events``. ``extensions``: ``node_name`` (this collector's node), ``system_identifier``,
    ``event`` (e.g. ``standby_promote``), ``event_node_id``, ``event_node_name``, ``successful``,
    ``event_timestamp`` (ISO 8601), ``event_time`` (epoch), ``details``. The position in the table
    is kept across polls and restarts (``$BUS_RUNTIME_DIR/state/NAME.json``, reset when the system
    identifier changes); the first time the table is seen only its last ``repmgr_events_backlog``
    rows are emitted (default 0: only events from then on).

The user in ``dsn`` needs ``pg_monitor`` (or superuser) and, for ``pg_control_system()`` and
``pg_control_checkpoint()``, EXECUTE on them (superuser by default), plus read access to the ``repmgr``
schema of the database it connects to (repmgr's own database).

Options: ``dsn`` (libpq connection string), ``node_name`` (default: the host name; use repmgr's
``node_name``), ``interval``, ``query_timeout``, ``connect_timeout``, ``down_repeat``,
``repmgr_events_backlog``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import Awaitable
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from bus.config import Option
from bus.event import Event
from bus.plugin import Collector, run, write_atomic

OPTIONS = {
    "dsn": Option(str, "dbname=repmgr", "libpq connection string of the local PostgreSQL (e.g. "
                                         "'host=/run/postgresql dbname=repmgr user=repmgr')"),
    "node_name": Option(str, "", "name of this node in events (repmgr's node_name); default: the host name"),
    "interval": Option(float, 2.0, "seconds between two polls"),
    "query_timeout": Option(float, 5.0, "seconds one query may take (statement_timeout and a client-side bound)"),
    "connect_timeout": Option(float, 3.0, "seconds connecting may take"),
    "down_repeat": Option(float, 30.0, "seconds between two POSTGRES_DOWN events while the server stays down"),
    "repmgr_events_backlog": Option(int, 0, "repmgr.events rows emitted from before the collector first saw the "
                                            "table (0: only new events)"),
}

T = TypeVar("T")
STATUS_INTERVAL = 1.0
"""Seconds between two writes of the status file (sooner when the node's role or reachability changes)."""
EVENTS_BATCH = 200
"""repmgr.events rows read per poll at most (the rest on the next polls)."""

STATE_SQL = """
SELECT pg_is_in_recovery() AS in_recovery,
       (SELECT system_identifier::text FROM pg_control_system()) AS system_identifier,
       (SELECT timeline_id FROM pg_control_checkpoint()) AS checkpoint_timeline,
       CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_lsn()::text END AS current_lsn,
       CASE WHEN NOT pg_is_in_recovery()
            THEN ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int END AS current_timeline,
       pg_last_wal_receive_lsn()::text AS receive_lsn,
       pg_last_wal_replay_lsn()::text AS replay_lsn,
       extract(epoch FROM pg_last_xact_replay_timestamp())::float8 AS last_replay_time,
       extract(epoch FROM now())::float8 AS server_time,
       CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() END AS replay_paused,
       current_setting('server_version') AS server_version,
       extract(epoch FROM pg_postmaster_start_time())::float8 AS postmaster_start_time,
       to_regclass('repmgr.nodes') IS NOT NULL AS has_repmgr_nodes,
       to_regclass('repmgr.events') IS NOT NULL AS has_repmgr_events
"""
WAL_RECEIVER_SQL = "SELECT status, sender_host, sender_port, received_tli FROM pg_stat_wal_receiver"
REPLICATION_SQL = """
SELECT application_name, host(client_addr) AS client_addr, state, sync_state,
       sent_lsn::text AS sent_lsn, write_lsn::text AS write_lsn, flush_lsn::text AS flush_lsn,
       replay_lsn::text AS replay_lsn,
       extract(epoch FROM write_lag)::float8 AS write_lag, extract(epoch FROM flush_lag)::float8 AS flush_lag,
       extract(epoch FROM replay_lag)::float8 AS replay_lag
FROM pg_stat_replication ORDER BY application_name, client_addr
"""
REPMGR_NODES_SQL = """
SELECT n.node_id, n.node_name, n.type, n.active, n.upstream_node_id, u.node_name AS upstream_node_name,
       n.priority, n.location
FROM repmgr.nodes n LEFT JOIN repmgr.nodes u ON u.node_id = n.upstream_node_id ORDER BY n.node_id
"""
_EVENT_COLUMNS = """e.node_id AS event_node_id, n.node_name AS event_node_name, e.event, e.successful,
       e.event_timestamp, (extract(epoch FROM e.event_timestamp) * 1000000)::bigint AS event_us, e.details
FROM repmgr.events e LEFT JOIN repmgr.nodes n ON n.node_id = e.node_id"""
REPMGR_EVENTS_SQL = f"""
SELECT {_EVENT_COLUMNS}
WHERE e.event_timestamp >= 'epoch'::timestamptz + %s * interval '1 microsecond'
ORDER BY e.event_timestamp, e.node_id, e.event LIMIT {EVENTS_BATCH}
"""
REPMGR_LAST_EVENTS_SQL = f"SELECT {_EVENT_COLUMNS} ORDER BY e.event_timestamp DESC, e.node_id, e.event LIMIT %s"


def lsn_bytes(lsn: str | None) -> int | None:
    """Return a WAL position (``"16/B374D848"``) as a number of bytes, ``None`` for ``None``."""
    if not lsn:
        return None
    high, _, low = lsn.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def behind(ahead: str | None, lsn: str | None) -> int | None:
    """Return how many bytes ``lsn`` is behind ``ahead`` (never negative), ``None`` when one is unknown."""
    a, b = lsn_bytes(ahead), lsn_bytes(lsn)
    return None if a is None or b is None else max(0, a - b)


def safe_dsn(dsn: str) -> str:
    """Return ``dsn`` without its password (what events and logs show)."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "<invalid dsn>"
    return " ".join(f"{k}={v}" for k, v in params.items() if k != "password")


def check_options(options: dict[str, Any]) -> None:
    """Refuse a DSN libpq cannot parse and non-positive intervals."""
    try:
        conninfo_to_dict(options["dsn"])
    except psycopg.Error as exc:
        raise ValueError(f"dsn: not a valid libpq connection string ({exc})") from None
    for key in ("interval", "query_timeout", "connect_timeout", "down_repeat"):
        if options[key] <= 0:
            raise ValueError(f"{key}: must be positive")
    if options["repmgr_events_backlog"] < 0:
        raise ValueError("repmgr_events_backlog: must not be negative")


class PollFailed(Exception):
    """A poll that could not complete; ``reason`` is ``unreachable``, ``timeout`` or ``query_failed``."""

    def __init__(self, reason: str, error: str) -> None:
        super().__init__(f"{reason}: {error}")
        self.reason = reason
        self.error = error


def _event_key(row: dict[str, Any]) -> str:
    return f"{row['event_node_id']}/{row['event']}/{row['event_us']}/{row['details'] or ''}"


class Postgres(Collector):
    """Poll one PostgreSQL server and report its role, WAL positions, lag and repmgr metadata."""

    async def setup(self) -> None:
        """Read the options and the saved repmgr.events position."""
        opts = self.options
        self.dsn: str = opts["dsn"]
        self.node_name: str = opts["node_name"] or self.hostname or socket.gethostname()
        self.shown_dsn = safe_dsn(self.dsn)
        self.conn: psycopg.AsyncConnection[dict[str, Any]] | None = None
        self.abandoned: set[asyncio.Task[None]] = set()
        self.down_since: float | None = None
        self.last_down_event = 0.0
        self.system_identifier = ""
        self.node_id: int | None = None
        self.polls = 0
        self.failures = 0
        self.last_status = 0.0
        self.status: dict[str, Any] = {}
        # repmgr.events position: microseconds since the epoch of the newest row seen, and the rows
        # seen at exactly that time (the next query starts there again, to miss none of equal time)
        self.events_cursor: int | None = None
        self.events_seen: set[str] = set()
        self.saved_sysid = ""
        self.state_path = self.state_file()
        self.load_state()

    # -- repmgr.events position, kept across restarts ------------------------------------------

    def load_state(self) -> None:
        """Read the saved repmgr.events position (a missing or broken file means none)."""
        if self.state_path is None or not self.state_path.exists():
            return
        try:
            saved = json.loads(self.state_path.read_text())
            self.events_cursor = int(saved["events_cursor"]) if saved.get("events_cursor") is not None else None
            self.events_seen = {str(k) for k in saved.get("events_seen", [])}
            self.saved_sysid = str(saved.get("system_identifier", ""))
        except (OSError, ValueError, TypeError, KeyError) as exc:
            self.log.warning("state_unreadable", path=str(self.state_path), error=str(exc))
            self.events_cursor, self.events_seen = None, set()

    def save_state(self) -> None:
        """Save the repmgr.events position (errors are logged, not fatal)."""
        if self.state_path is None:
            return
        try:
            write_atomic(self.state_path, json.dumps({"events_cursor": self.events_cursor,
                                                      "events_seen": sorted(self.events_seen),
                                                      "system_identifier": self.system_identifier}))
        except OSError as exc:
            self.log.warning("state_write_failed", path=str(self.state_path), error=str(exc))

    # -- connection and bounded queries --------------------------------------------------------

    async def bounded(self, work: Awaitable[T], seconds: float, what: str) -> T:
        """Await ``work`` for at most ``seconds``; past that, abandon it and its connection.

        The abandoned query is cancelled in the background (psycopg asks the server to cancel it,
        which itself can take seconds when the server hangs), so the next poll is not delayed.
        """
        task = asyncio.ensure_future(work)
        done, _ = await asyncio.wait({task}, timeout=seconds)
        if done:
            return task.result()
        task.cancel()
        conn, self.conn = self.conn, None
        cleanup = asyncio.create_task(self._discard(task, conn))
        self.abandoned.add(cleanup)
        cleanup.add_done_callback(self.abandoned.discard)
        raise PollFailed("timeout", f"{what} took more than {seconds:g} s")

    @staticmethod
    async def _discard(task: asyncio.Future[Any], conn: psycopg.AsyncConnection[Any] | None) -> None:
        with contextlib.suppress(BaseException):
            await task
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def connection(self) -> psycopg.AsyncConnection[dict[str, Any]]:
        """Return the open connection, connecting (and setting ``statement_timeout``) when needed."""
        if self.conn is not None and not self.conn.closed:
            return self.conn
        opts = self.options
        params = conninfo_to_dict(self.dsn)
        extra: dict[str, Any] = {}
        if "connect_timeout" not in params:
            extra["connect_timeout"] = max(2, round(opts["connect_timeout"]))  # libpq: whole seconds, >= 2
        if "application_name" not in params:
            extra["application_name"] = f"busd-{self.name}"
        conn = await self.bounded(
            psycopg.AsyncConnection.connect(self.dsn, autocommit=True, row_factory=dict_row, **extra),
            opts["connect_timeout"], "connecting")
        self.conn = conn
        await self.query(f"SET statement_timeout = {int(opts['query_timeout'] * 1000)}")
        return conn

    async def query(self, sql: str, params: tuple[Any, ...] | None = None) -> list[dict[str, Any]]:
        """Run one query on the connection within ``query_timeout``; return its rows."""
        conn = self.conn
        assert conn is not None

        async def execute() -> list[dict[str, Any]]:
            cur = await conn.execute(sql.encode(), params)
            return await cur.fetchall() if cur.description is not None else []

        return await self.bounded(execute(), self.options["query_timeout"], sql.split()[0].lower() + " query")

    async def close_connection(self) -> None:
        """Close the connection (after a failure: the next poll opens a new one)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    # -- polling ---------------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll every ``interval`` seconds until stopped."""
        loop = asyncio.get_running_loop()
        interval = self.options["interval"]
        self.log.info("polling", node=self.node_name, dsn=self.shown_dsn, interval=interval)
        try:
            while True:
                started = loop.time()
                await self.poll_once()
                await asyncio.sleep(max(0.0, interval - (loop.time() - started)))
        finally:
            await self.close_connection()

    async def poll_once(self) -> None:
        """Poll once and emit what it found: a state and new repmgr events, or a down event."""
        self.polls += 1
        try:
            try:
                reused = self.conn is not None
                state, events = await self.read_all()
            except psycopg.OperationalError as exc:
                if not reused or isinstance(exc, psycopg.errors.QueryCanceled):
                    raise
                # the kept connection broke (server restarted, backend terminated): a new one decides
                await self.close_connection()
                state, events = await self.read_all()
        except PollFailed as exc:
            await self.failed(exc)
            return
        except psycopg.errors.QueryCanceled as exc:  # statement_timeout, an OperationalError too
            await self.failed(PollFailed("timeout", _one_line(exc)))
            return
        except psycopg.OperationalError as exc:
            await self.failed(PollFailed("unreachable", _one_line(exc)))
            return
        except psycopg.Error as exc:
            await self.failed(PollFailed("query_failed", _one_line(exc)))
            return
        if self.down_since is not None:
            self.log.info("postgres_reachable", node=self.node_name, dsn=self.shown_dsn,
                          down_for=round(time.time() - self.down_since, 3))
            self.down_since = None
        del state["repmgr_events_table"]
        await self.emit(self.state_event(state))
        for row in events:
            await self.emit(self.repmgr_event(row))
        if events:
            self.save_state()
        self.update_status({"up": True, "role": state["role"], "timeline": state["timeline"], "lsn": state["lsn"],
                            "lag_seconds": state["lag_seconds"], "lag_bytes": state["lag_bytes"],
                            "node_id": state["node_id"], "system_identifier": state["system_identifier"],
                            "repmgr_nodes": state["repmgr_nodes"], "error": None})

    async def read_all(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Connect when needed; return the state and the new repmgr events."""
        await self.connection()
        state = await self.read_state()
        return state, await self.read_repmgr_events(state) if state["repmgr_events_table"] else []

    async def read_state(self) -> dict[str, Any]:
        """Run the state queries; return the ``POSTGRES_STATE`` extensions (plus ``repmgr_events_table``)."""
        row = (await self.query(STATE_SQL))[0]
        standby = bool(row["in_recovery"])
        receiver = None
        replication: list[dict[str, Any]] = []
        if standby:
            rows = await self.query(WAL_RECEIVER_SQL)
            receiver = rows[0] if rows else None
        else:
            current = row["current_lsn"]
            for r in await self.query(REPLICATION_SQL):
                for stage in ("write", "flush", "replay"):
                    r[f"{stage}_lag_bytes"] = behind(current, r[f"{stage}_lsn"])
                replication.append(r)
        nodes = await self.query(REPMGR_NODES_SQL) if row["has_repmgr_nodes"] else []
        self.system_identifier = row["system_identifier"]
        self.node_id = next((n["node_id"] for n in nodes if n["node_name"] == self.node_name), None)
        if standby:
            timeline = receiver["received_tli"] if receiver and receiver["received_tli"] else row["checkpoint_timeline"]
            lsn = row["replay_lsn"]
            lag_bytes = behind(row["receive_lsn"], row["replay_lsn"])
            last = row["last_replay_time"]
            # everything received is replayed: no lag, however old the last replayed transaction is
            lag_seconds = (None if lag_bytes is None else 0.0 if lag_bytes == 0
                           else None if last is None else max(0.0, row["server_time"] - last))
        else:
            timeline = row["current_timeline"]
            lsn = row["current_lsn"]
            lag_bytes = None
            lag_seconds = None
        return {
            "node_name": self.node_name, "dsn": self.shown_dsn, "interval": self.options["interval"],
            "role": "standby" if standby else "primary", "in_recovery": standby,
            "system_identifier": row["system_identifier"], "timeline": timeline,
            "server_version": row["server_version"], "postmaster_start_time": row["postmaster_start_time"],
            "server_time": row["server_time"],
            "lsn": lsn, "lsn_bytes": lsn_bytes(lsn), "current_lsn": row["current_lsn"],
            "receive_lsn": row["receive_lsn"], "replay_lsn": row["replay_lsn"],
            "replay_paused": row["replay_paused"], "last_replay_time": row["last_replay_time"],
            "lag_seconds": lag_seconds, "lag_bytes": lag_bytes,
            "streaming": bool(receiver and receiver["status"] == "streaming"), "wal_receiver": receiver,
            "replication": replication,
            "repmgr": bool(row["has_repmgr_nodes"]), "repmgr_nodes": nodes, "node_id": self.node_id,
            "repmgr_events_table": bool(row["has_repmgr_events"]),
        }

    async def read_repmgr_events(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        """Return the rows of ``repmgr.events`` not emitted yet, oldest first, and advance the position."""
        sysid = state["system_identifier"]
        if self.events_cursor is not None and self.saved_sysid not in ("", sysid):
            self.log.info("repmgr_events_reset", reason="system identifier changed", was=self.saved_sysid, now=sysid)
            self.events_cursor, self.events_seen = None, set()
        self.saved_sysid = sysid
        if self.events_cursor is None:
            # first sight of the table: start after its newest row, emitting the last `backlog` rows
            backlog = self.options["repmgr_events_backlog"]
            rows = list(reversed(await self.query(REPMGR_LAST_EVENTS_SQL, (max(backlog, 1),))))
            self.events_cursor = rows[-1]["event_us"] if rows else 0
            self.events_seen = {_event_key(r) for r in rows if r["event_us"] == self.events_cursor}
            self.save_state()
            return rows[-backlog:] if backlog else []
        fresh = []
        for row in await self.query(REPMGR_EVENTS_SQL, (self.events_cursor,)):
            key = _event_key(row)
            if row["event_us"] == self.events_cursor and key in self.events_seen:
                continue
            if row["event_us"] > self.events_cursor:
                self.events_cursor, self.events_seen = row["event_us"], set()
            self.events_seen.add(key)
            fresh.append(row)
        return fresh

    async def failed(self, exc: PollFailed) -> None:
        """Drop the connection; emit ``POSTGRES_DOWN`` on the transition and every ``down_repeat`` s."""
        await self.close_connection()
        self.failures += 1
        now = time.time()
        if self.down_since is None:
            self.down_since = now
            self.log.error("postgres_unreachable", node=self.node_name, dsn=self.shown_dsn, reason=exc.reason,
                           error=exc.error)
        self.update_status({"up": False, "role": "down", "reason": exc.reason, "error": exc.error,
                            "down_since": self.down_since})
        if self.last_down_event >= self.down_since and now - self.last_down_event < self.options["down_repeat"]:
            return
        self.last_down_event = now
        ext = {"node_name": self.node_name, "dsn": self.shown_dsn, "interval": self.options["interval"],
               "reason": exc.reason, "error": exc.error, "down_since": self.down_since,
               "system_identifier": self.system_identifier, "node_id": self.node_id}
        await self.emit(self.event("postgres", "POSTGRES_DOWN",
                                   f"{self.node_name}: PostgreSQL {exc.reason} ({self.shown_dsn}): {exc.error}",
                                   severity="error", dev_name=self.node_name, dev_wwid=self.wwid(),
                                   extensions=ext))

    # -- events and status -----------------------------------------------------------------------

    def wwid(self) -> str:
        """Return ``<system_identifier>:<node id>`` (the node name without a repmgr id), ``""`` before the first poll."""
        if not self.system_identifier:
            return ""
        return f"{self.system_identifier}:{self.node_id if self.node_id is not None else self.node_name}"

    def state_event(self, state: dict[str, Any]) -> Event:
        """Build the ``POSTGRES_STATE`` event of one poll."""
        if state["role"] == "primary":
            detail = f"primary, timeline {state['timeline']}, lsn {state['lsn']}, {len(state['replication'])} standby(s)"
        else:
            upstream = state["wal_receiver"]["sender_host"] if state["wal_receiver"] else "no upstream"
            detail = (f"standby ({upstream}), timeline {state['timeline']}, replay {state['lsn']}, "
                      f"lag {state['lag_seconds']} s / {state['lag_bytes']} B")
        return self.event("postgres", "POSTGRES_STATE", f"{self.node_name}: {detail}", dev_name=self.node_name,
                          dev_wwid=self.wwid(), extensions=state)

    def repmgr_event(self, row: dict[str, Any]) -> Event:
        """Build the ``POSTGRES_REPMGR_EVENT`` of one ``repmgr.events`` row."""
        stamp: datetime = row["event_timestamp"]
        ext = {"node_name": self.node_name, "system_identifier": self.system_identifier, "event": row["event"],
               "event_node_id": row["event_node_id"], "event_node_name": row["event_node_name"] or "",
               "successful": bool(row["successful"]), "event_timestamp": stamp.isoformat(),
               "event_time": row["event_us"] / 1e6, "details": row["details"] or ""}
        who = row["event_node_name"] or f"node {row['event_node_id']}"
        ok = "" if row["successful"] else " (failed)"
        return self.event("postgres", "POSTGRES_REPMGR_EVENT", f"repmgr {row['event']} on {who}{ok}: {ext['details']}",
                          severity="info" if row["successful"] else "warn", dev_name=self.node_name,
                          dev_wwid=self.wwid(), extensions=ext)

    def update_status(self, status: dict[str, Any]) -> None:
        """Write the status file for ``busctl`` at most every second, at once when up/role changed."""
        now = time.time()
        changed = status.get("up") != self.status.get("up") or status.get("role") != self.status.get("role")
        self.status = status
        if changed or now - self.last_status >= STATUS_INTERVAL:
            self.last_status = now
            self.write_status({"node_name": self.node_name, "dsn": self.shown_dsn, "polls": self.polls,
                               "failures": self.failures, "last_poll": now, **status})

    async def teardown(self) -> None:
        """Close the connection; let abandoned queries finish their cancellation briefly."""
        await self.close_connection()
        if self.abandoned:
            await asyncio.wait(self.abandoned, timeout=1.0)


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


if __name__ == "__main__":
    run(Postgres)

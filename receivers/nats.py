"""Receiver ``nats``: publishes synthetic events to a NATS JetStream stream, nothing lost, nothing twice.

::

    [plugins.nats]
    type = "receiver"
    builtin = "nats"
    servers = ["nats://nats1.example.com:4222", "nats://nats2.example.com:4222"]
    user = "busd"
    password = "s3cret"              # the file must then not be world-readable

Each event goes to the subject ``<subject_prefix>.<host>.<system>.<event_type>`` (prefix ``busd`` by
default) with the event as its JSON body and its ``event_id`` as ``Nats-Msg-Id``. Host, system and
type are made safe subject tokens (:func:`token`): ``.``, whitespace, ``*``, ``>`` and any other
character outside letters, digits, ``-`` and ``_`` become ``_``, and an empty one is ``_``.

The stream (``stream``, default ``BUSD``, subjects ``["<prefix>.>"]``) is created when it is missing,
with ``max_age``, ``max_bytes``, ``duplicate_window``, ``replicas`` and ``storage``; an existing
stream whose settings differ is used as it is, with a warning (``nats_stream_differs``) naming each
difference: busd never changes a stream an operator may have tuned.

Delivery: every event is committed to a durable outbox (SQLite, WAL, ``<state_dir>/outbox.sqlite``
or the ``outbox`` option) before the receiver reports it handled, and leaves the outbox only when
JetStream acknowledged it (a PubAck, including one saying ``duplicate``). Publishes are pipelined:
up to ``window`` are in flight, and the outbox's cursor moves over the longest prefix that is
acknowledged. A publish that fails or is not acknowledged within ``timeout`` is sent again, with the
same message id, after a backoff (``Outage``: 0.25 s doubling to ``retry_max``), so NATS down for an
hour or busd restarted meanwhile loses nothing; the stream's duplicate window drops a resend of a
message it already holds (an acknowledgement lost, or a cursor not saved yet when busd was killed),
so the stream holds each event once as long as the resend comes within ``duplicate_window``.
Events that wait longer than ``outbox_max_age`` or beyond ``max_outbox`` are dropped, counted and
logged.

Secrets (``password``, ``token``, a password inside a server URL) are never logged: URLs are shown
as ``nats://user:***@host``. The status for ``busctl status`` holds ``connected``, ``server``,
``outbox`` depth, ``delivered``, ``last_error`` and ``last_success``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig

from bus.config import Option
from bus.event import Event, to_json_bytes
from bus.plugin import Receiver, run, stop_tasks
from bus.secrets import redact_url
from receivers._outbox import Outbox, Row, next_rows
from receivers._retry import Outage

OPTIONS = {
    "servers": Option(list, ["nats://127.0.0.1:4222"], "NATS servers: nats:// or tls:// URLs"),
    "subject_prefix": Option(str, "busd", "first token(s) of every subject: <prefix>.<host>.<system>.<event_type>"),
    "stream": Option(str, "BUSD", "the JetStream stream (created if missing)"),
    "subjects": Option(list, [], "the stream's subjects when it is created (default [\"<prefix>.>\"])"),
    "max_age": Option(float, 0.0, "seconds the stream keeps a message, when it is created (0: no limit)"),
    "max_bytes": Option(int, -1, "bytes the stream keeps, when it is created (-1: no limit)"),
    "duplicate_window": Option(float, 3600.0, "seconds JetStream remembers message ids to drop a resend"),
    "replicas": Option(int, 1, "replicas of the stream, when it is created"),
    "storage": Option(str, "file", "the stream's storage, when it is created", ("file", "memory")),
    "user": Option(str, "", "user name"),
    "password": Option(str, "", "password (the file must not be world-readable)"),
    "token": Option(str, "", "authentication token (the file must not be world-readable)"),
    "nkeys_seed": Option(str, "", "file holding an NKey seed"),
    "creds": Option(str, "", "credentials file (JWT and NKey seed)"),
    "tls_ca": Option(str, "", "CA certificates to verify the server with"),
    "tls_cert": Option(str, "", "client certificate (with tls_key)"),
    "tls_key": Option(str, "", "client certificate's key"),
    "tls_verify": Option(bool, True, "verify the server's certificate"),
    "outbox": Option(str, "", "the outbox file (default <state_dir>/outbox.sqlite)"),
    "synchronous": Option(str, "normal", "normal: survives any crash; full: also a power loss", ("normal", "full")),
    "outbox_max_age": Option(float, 86400.0, "seconds an event may wait in the outbox before it is dropped"),
    "max_outbox": Option(int, 1_000_000, "events waiting in the outbox; beyond, the oldest are dropped"),
    "window": Option(int, 4096, "publishes in flight awaiting their PubAck"),
    "timeout": Option(float, 5.0, "seconds to wait for a PubAck before sending again"),
    "retry_max": Option(float, 30.0, "longest delay between two attempts, seconds"),
}

SECRET_OPTIONS = ("password", "token")
"""Options refused in a world-readable file and masked by ``busd --check`` (see :func:`held_secrets`)."""

SAVE_INTERVAL = 0.05
"""Seconds between two saves of the outbox cursor while delivering (what a crash may send again)."""

_CLOSED = ("ConnectionResetError", "BrokenPipeError", "UnexpectedEOF", "ConnectionClosedError")
"""How a connection the server closed is described (:func:`describe`)."""

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


# -- configuration ---------------------------------------------------------------------------------

def token(value: str) -> str:
    """Return ``value`` as one safe subject token: every character but letters, digits, ``-`` and ``_``
    (so ``.``, whitespace, ``*`` and ``>``) becomes ``_``; an empty value is ``_``."""
    return _UNSAFE.sub("_", value) or "_"


def subject(prefix: str, event: Event) -> str:
    """Return the subject of ``event``: ``<prefix>.<host>.<system>.<event_type>``, each a safe token."""
    return (f"{prefix}.{token(str(event.get('hostname', '')))}.{token(str(event.get('system', '')))}"
            f".{token(str(event.get('event_type', '')))}")


def check_options(options: dict[str, Any]) -> None:
    """Check servers, the prefix, the stream name and the numbers (``"key: reason"`` on error)."""
    servers = options.get("servers") or []
    if not servers:
        raise ValueError("servers: give at least one nats:// or tls:// URL")
    for i, url in enumerate(servers):
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("nats", "tls") or not parts.hostname:
            raise ValueError(f"servers[{i}]: {redact_url(str(url))!r} is not a nats:// or tls:// URL with a host")
    prefix = options.get("subject_prefix", "busd")
    if not prefix or any(not t or _UNSAFE.search(t) for t in prefix.split(".")):
        raise ValueError(f"subject_prefix: {prefix!r}: dot-separated tokens of letters, digits, '-' and '_'")
    if not re.match(r"^[A-Za-z0-9_-]+$", options.get("stream", "BUSD")):
        raise ValueError(f"stream: {options.get('stream')!r}: letters, digits, '-' and '_' only")
    for key in ("duplicate_window", "timeout", "retry_max", "outbox_max_age"):
        if key in options and options[key] <= 0:
            raise ValueError(f"{key}: must be positive, got {options[key]}")
    for key in ("window", "max_outbox", "replicas"):
        if key in options and options[key] < 1:
            raise ValueError(f"{key}: must be at least 1, got {options[key]}")
    if options.get("password") and not options.get("user"):
        raise ValueError("password: needs user")
    if bool(options.get("tls_cert")) != bool(options.get("tls_key")):
        raise ValueError("tls_cert: give tls_cert and tls_key together")


def held_secrets(table: Mapping[str, Any]) -> list[str]:
    """Return the keys of ``table`` that hold a secret: ``password``, ``token`` or a server URL with one
    (``servers[i]``); :mod:`bus.config` refuses them in a world-readable file."""
    held = [k for k in SECRET_OPTIONS if table.get(k)]
    return held + [f"servers[{i}]" for i, url in enumerate(table.get("servers") or [])
                   if isinstance(url, str) and "@" in urlsplit(url).netloc]


def stream_config(options: Mapping[str, Any]) -> StreamConfig:
    """Return the stream busd creates when it is missing, from the receiver's options."""
    prefix = options.get("subject_prefix", "busd")
    return StreamConfig(
        name=options.get("stream", "BUSD"), subjects=list(options.get("subjects") or [f"{prefix}.>"]),
        max_age=float(options.get("max_age", 0.0)) or None, max_bytes=int(options.get("max_bytes", -1)),
        duplicate_window=float(options.get("duplicate_window", 3600.0)), num_replicas=int(options.get("replicas", 1)),
        storage=StorageType.MEMORY if options.get("storage") == "memory" else StorageType.FILE)


def tls_context(options: Mapping[str, Any], base: Path) -> ssl.SSLContext | None:
    """Return the TLS context for ``tls_*`` options or a tls:// server (``None``: plain TCP)."""
    wants = any(str(u).startswith("tls://") for u in options.get("servers") or [])
    if not (wants or options.get("tls_ca") or options.get("tls_cert")):
        return None
    ctx = ssl.create_default_context(cafile=str(base / options["tls_ca"]) if options.get("tls_ca") else None)
    if not options.get("tls_verify", True):
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if options.get("tls_cert"):
        ctx.load_cert_chain(str(base / options["tls_cert"]), str(base / options["tls_key"]))
    return ctx


def connect_options(options: Mapping[str, Any], base: Path = Path(".")) -> dict[str, Any]:
    """Return the keyword arguments of ``nats.connect`` for the receiver's servers and credentials
    (relative file paths relative to ``base``); the same for the receiver and :mod:`bus.fleet`."""
    kw: dict[str, Any] = {"servers": list(options.get("servers") or OPTIONS["servers"].default)}
    if options.get("user"):
        kw["user"] = options["user"]
        kw["password"] = options.get("password") or None
    if options.get("token"):
        kw["token"] = options["token"]
    if options.get("nkeys_seed"):
        kw["nkeys_seed"] = str(base / options["nkeys_seed"])
    if options.get("creds"):
        kw["user_credentials"] = str(base / options["creds"])
    ctx = tls_context(options, base)
    if ctx is not None:
        kw["tls"] = ctx
    return kw


def describe(exc: BaseException) -> str:
    """Return a one-line reason for a NATS failure (no secret: nats-py's messages hold none)."""
    if isinstance(exc, nats.errors.NoServersError):
        return "no NATS server reachable"
    if isinstance(exc, nats.js.errors.NoStreamResponseError):
        return "no stream listens on the subject (JetStream off, or the stream's subjects do not cover it)"
    if isinstance(exc, TimeoutError | nats.errors.TimeoutError):
        return "no acknowledgement in time"
    text = str(exc).strip()
    if "authorization" in text.lower() or "authentication" in text.lower():
        return f"authorization refused by the server ({text}): check user/password, token, nkeys_seed or creds"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def stream_differences(wanted: StreamConfig, have: StreamConfig) -> dict[str, Any]:
    """Return ``{setting: [wanted, existing]}`` for each stream setting that differs."""
    diff: dict[str, Any] = {}
    pairs = {"subjects": (sorted(wanted.subjects or []), sorted(have.subjects or [])),
             "max_age": (wanted.max_age or 0, have.max_age or 0),
             "max_bytes": (wanted.max_bytes, have.max_bytes),
             "duplicate_window": (wanted.duplicate_window, have.duplicate_window),
             "replicas": (wanted.num_replicas, have.num_replicas),
             "storage": (str(wanted.storage), str(have.storage))}
    for key, (a, b) in pairs.items():
        if a != b:
            diff[key] = [a, b]
    return diff


# -- the receiver ----------------------------------------------------------------------------------

class Nats(Receiver):
    """Queue events in the outbox; one task publishes them to JetStream, pipelined, in order of the outbox."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__(env)
        o = self.options
        self.prefix: str = o["subject_prefix"]
        self.servers = [redact_url(s) for s in o["servers"]]
        if o["outbox"]:
            self.outbox_path = self.path(o["outbox"])
        else:
            own = self.state_dir
            self.outbox_path = (own if own is not None else self.path(".")) / "outbox.sqlite"
        self.outbox: Outbox | None = None
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.outage = Outage(self.log, "nats", first=min(0.25, o["retry_max"]), maximum=o["retry_max"])
        self.wake = asyncio.Event()
        self.keep_from = 0
        self.delivered = 0
        self.last_success: float | None = None
        self.last_error: dict[str, Any] | None = None
        self.stream_ready = False
        self.tasks: list[asyncio.Task[None]] = []
        self._status_dirty = asyncio.Event()
        self._saved_at = 0.0

    async def setup(self) -> None:
        """Open the outbox and start the delivery and status tasks."""
        self.outbox = Outbox(self.outbox_path, self.options["synchronous"])
        self.tasks.append(asyncio.create_task(self._deliver(), name="nats-deliver"))
        self.tasks.append(asyncio.create_task(self._status_writer(), name="nats-status"))
        self.log.info("nats_started", servers=self.servers, stream=self.options["stream"], prefix=self.prefix,
                      outbox=str(self.outbox_path), waiting=self.outbox.depth)

    async def handle(self, event: Event) -> None:
        """Commit the event to the outbox (the bus counts it handled once this returns)."""
        assert self.outbox is not None
        while True:
            try:
                added, dropped = self.outbox.add(event["event_id"], to_json_bytes(event), time.time(),
                                                 bound=self.options["max_outbox"], keep_from=self.keep_from)
                break
            except sqlite3.Error as exc:  # disk full, I/O error: hold the event back until it can be kept
                self._error(f"outbox {self.outbox_path}: {exc}")
                self.log.error("nats_outbox_write_failed", path=str(self.outbox_path), error=str(exc))
                await asyncio.sleep(1.0)
        if dropped:
            self.count("dropped", dropped)
            self.log.warning("nats_events_dropped", reason="outbox_full", dropped=dropped,
                             max_outbox=self.options["max_outbox"])
        if added:
            self.wake.set()
        self._status_dirty.set()

    # -- connection ----------------------------------------------------------------------------

    async def _on_error(self, exc: Exception) -> None:
        """nats-py's error callback: each failed (re)connection attempt; logged through the outage."""
        why = describe(exc)
        self._error(why)
        if self.nc is None or not self.nc.is_connected:
            self.outage.failed(why, servers=self.servers)

    async def _on_disconnect(self) -> None:
        self.log.warning("nats_disconnected", servers=self.servers)
        self._status_dirty.set()

    async def _on_reconnect(self) -> None:
        self.log.info("nats_reconnected", server=self._server())
        self.outage.succeeded(server=self._server())
        self._status_dirty.set()

    def _server(self) -> str | None:
        nc = self.nc
        if nc is None or not nc.is_connected or nc.connected_url is None:
            return None
        return redact_url(nc.connected_url.geturl())

    async def _connect(self) -> JetStreamContext:
        """Return the JetStream context, connecting (and creating the stream) with backoff until it works."""
        while True:
            try:
                if self.nc is None:
                    self.nc = await nats.connect(
                        **connect_options(self.options, self.path(".")), name=f"busd {self.hostname} {self.name}",
                        max_reconnect_attempts=-1, reconnect_time_wait=0.5, connect_timeout=2,
                        allow_reconnect=True, error_cb=self._on_error, disconnected_cb=self._on_disconnect,
                        reconnected_cb=self._on_reconnect, pending_size=64 * 1024 * 1024)
                    self.js = self.nc.jetstream(publish_async_max_pending=self.options["window"])
                    self.log.info("nats_connected", server=self._server())
                    self.outage.succeeded(server=self._server())
                    self._status_dirty.set()
                assert self.js is not None
                if not self.stream_ready:
                    await self._ensure_stream(self.js)
                return self.js
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.nc is not None and not self.nc.is_connected and not self.nc.is_reconnecting:
                    with contextlib.suppress(Exception):
                        await self.nc.close()
                    self.nc = self.js = None
                why = describe(exc)
                self._error(why)
                await asyncio.sleep(self.outage.failed(why, servers=self.servers))

    async def _ensure_stream(self, js: JetStreamContext) -> None:
        """Create the stream if it is missing; warn (never change it) if its settings differ."""
        wanted = stream_config(self.options)
        assert wanted.name is not None
        try:
            info = await js.stream_info(wanted.name)
        except nats.js.errors.NotFoundError:
            await js.add_stream(wanted)
            self.log.info("nats_stream_created", stream=wanted.name, subjects=wanted.subjects,
                          duplicate_window=wanted.duplicate_window, storage=self.options["storage"])
        else:
            diff = stream_differences(wanted, info.config)
            if diff:
                self.log.warning("nats_stream_differs", stream=wanted.name, differences=diff,
                                 hint="busd does not change an existing stream; edit it with the nats CLI if needed")
        self.stream_ready = True

    # -- delivery ------------------------------------------------------------------------------

    async def _deliver(self) -> None:
        """Publish the outbox's events oldest first, a window in flight, forever; save the cursor often."""
        outbox = self.outbox
        assert outbox is not None
        while True:
            try:
                rows = await next_rows(outbox, self.wake, self.options["window"], SAVE_INTERVAL)
                cutoff = time.time() - self.options["outbox_max_age"]
                if rows[0].created < cutoff:
                    n = outbox.expire(cutoff)
                    self.count("dropped", n)
                    self.log.warning("nats_events_dropped", reason="expired", dropped=n,
                                     outbox_max_age=self.options["outbox_max_age"])
                    continue
                js = await self._connect()
                error = await self._publish(js, outbox, rows)
                if outbox.unsaved and time.monotonic() - self._saved_at >= SAVE_INTERVAL:
                    outbox.save()
                    self._saved_at = time.monotonic()
                if error is not None:
                    self._error(error)
                    self.count("failed_attempts")
                    await asyncio.sleep(self.outage.failed(error, waiting=outbox.depth, servers=self.servers))
            except sqlite3.Error as exc:
                self._error(f"outbox {self.outbox_path}: {exc}")
                self.log.error("nats_outbox_read_failed", path=str(self.outbox_path), error=str(exc))
                await asyncio.sleep(1.0)

    async def _publish(self, js: JetStreamContext, outbox: Outbox, rows: list[Row]) -> str | None:
        """Publish ``rows`` pipelined; move the cursor over the acknowledged prefix; return the first error."""
        futures: list[asyncio.Future[Any]] = []
        stream = self.options["stream"]
        deletions = outbox.deletions
        error: str | None = None
        try:
            for row in rows:
                if outbox.deletions != deletions:
                    break  # rows were dropped meanwhile (outbox full): publish what is left of them next round
                self.keep_from = row.seq + 1
                futures.append(await js.publish_async(_subject_of(self.prefix, row.event), row.event, stream=stream,
                                                      headers={"Nats-Msg-Id": row.event_id}))
            done = 0
            deadline = time.monotonic() + self.options["timeout"]
            for future in futures:
                try:
                    async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                        await asyncio.shield(future)
                except Exception as exc:
                    error = describe(exc)
                    break
                done += 1  # noqa: SIM113 - counts the acknowledged prefix, not the loop
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # connection closed, outbound buffer full: publish again later
            done = 0
            for future in futures:
                if not future.done() or future.exception() is not None:
                    break
                done += 1
            error = describe(exc)
        finally:
            for future in futures:
                if not future.done():
                    future.cancel()
                elif not future.cancelled():
                    future.exception()  # retrieved: no "exception never retrieved" warning
            self.keep_from = 0
        if done:
            outbox.done(rows[done - 1].seq, delivered=done)
            self.delivered += done
            self.count("delivered", done)
            self.last_success = time.time()
            self.outage.succeeded(server=self._server())
        self._status_dirty.set()
        return error

    # -- status --------------------------------------------------------------------------------

    def _error(self, error: str) -> None:
        now = time.time()
        last = self.last_error or {}
        # a server that refuses credentials says why, then closes: the reset that follows is no news
        if (error.startswith(_CLOSED) and str(last.get("error", "")).startswith("authorization refused")
                and now - float(last.get("time", 0.0)) < 5.0):
            error = str(last["error"])
        self.last_error = {"time": now, "error": error}
        self._status_dirty.set()

    def status(self) -> dict[str, Any]:
        """Return what ``busctl status`` shows for this receiver."""
        info: dict[str, Any] = {"depth": None}
        if self.outbox is not None:
            with contextlib.suppress(sqlite3.Error):
                info = self.outbox.info()
        return {"connected": self._server() is not None, "server": self._server(), "servers": self.servers,
                "stream": self.options["stream"], "outbox": str(self.outbox_path), **info,
                "delivered_since_start": self.delivered, "delivered": self.delivered,
                "last_success": self.last_success, "last_error": self.last_error,
                "retrying": self.outage.active, "attempts": self.outage.attempts}

    async def _status_writer(self) -> None:
        self.write_status(self.status())
        while True:
            await self._status_dirty.wait()
            self._status_dirty.clear()
            self.write_status(self.status())
            await asyncio.sleep(0.2)

    async def teardown(self) -> None:
        """Stop delivering, save the outbox, close the connection, write the final status."""
        await stop_tasks(self.tasks, self.log, "nats_task_failed")
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.close(), 1.0)
        self.write_status(self.status())
        if self.outbox is not None:
            try:
                self.outbox.close()
            except sqlite3.Error as exc:
                self.log.error("nats_outbox_close_failed", path=str(self.outbox_path), error=str(exc))


class _Head(msgspec.Struct):
    hostname: str = ""
    system: str = ""
    event_type: str = ""


_head_decoder = msgspec.json.Decoder(_Head)


def _subject_of(prefix: str, body: bytes) -> str:
    """Return the subject of a stored event, decoding only hostname, system and event_type."""
    try:
        head = _head_decoder.decode(body)
    except msgspec.DecodeError:
        return f"{prefix}._._._"
    return f"{prefix}.{token(head.hostname)}.{token(head.system)}.{token(head.event_type)}"


if __name__ == "__main__":
    run(Nats)

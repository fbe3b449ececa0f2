"""Receiver ``webhook``: POSTs events to any number of HTTP(S) webhooks, nothing lost.

One receiver instance serves every webhook listed in its ``webhooks`` array::

    [plugins.webhook]
    type = "receiver"
    builtin = "webhook"

    [[plugins.webhook.webhooks]]
    url = "https://monitor.example.com/gluster"
    filter = { system = "gluster" }
    secret = "s3cret"                # or bearer_token = "..."
    format = "gluster"

Per webhook: ``url`` (required), ``name`` (default derived from the URL, e.g.
``monitor.example.com-gluster``; it names the outbox, so keep it when the URL changes),
``filter`` (a bus filter map, ANDed with the receiver's own ``filter``), ``format``, ``bearer_token``
or ``secret``, ``signing_key``, ``headers`` (extra HTTP headers), and overrides of the receiver-wide
defaults ``timeout``, ``max_age``, ``max_outbox``, ``retry_max``, ``concurrency``, ``verify_tls``,
``ca_file`` and ``reject_status``.

Formats:

* ``gluster`` (default): the body glustereventsd POSTs, byte for byte: ``json.dumps({"nodeid",
  "ts", "event", "message"}, sort_keys=True)``. For events of the ``gluster`` parser these come
  from its extensions ``nodeid`` (``null`` when unknown, as glustereventsd sends it), ``ts``,
  ``gluster_event`` and ``message``; other events map to
  ``nodeid`` = the event's hostname, ``ts`` = its timestamp in whole seconds, ``event`` = its
  ``event_type`` and ``message`` = ``{"msg", "system", "severity", "dev_name", "dev_wwid",
  "event_id", "source", "extensions"}``, so gluster consumers get every event in a shape they parse.
* ``busd``: the whole event as one JSON object (what ``bus-tail --json`` prints).

Authentication as glustereventsd does it: ``bearer_token`` sends ``Authorization: Bearer TOKEN``;
``secret`` sends ``Authorization: Bearer JWT``, an HS256 JWT whose claims are ``iss`` "gluster",
``sub`` the event type, ``iat`` the event's time and ``exp`` 60 s after the request is made (so a
retry an hour later still carries a valid token). ``signing_key`` adds ``X-Busd-Timestamp: T`` (epoch
seconds of the request) and ``X-Busd-Signature: sha256=HEX``, HEX being HMAC-SHA256 with the key over
``T + "." + body``; a consumer recomputes it, compares in constant time and refuses a timestamp more
than 5 minutes away from its clock (:func:`verify_signature`). Every request also carries
``X-Busd-Event-Id`` (the same on a redelivery: consumers can drop duplicates with it).

Delivery guarantees: every matching event is committed to the webhook's outbox (SQLite, WAL mode,
``<[main] state_dir>/<plugin>/<name>.sqlite``, or under the ``state_dir`` option) before the receiver
reports it handled to busd, so a crash, restart or reload of busd or of the receiver loses nothing:
the bus replays what was not reported, the outbox keeps what was. An event leaves the outbox only
after a 2xx answer. Per webhook, events
go out oldest first (with ``concurrency = N``, a sliding window of N requests in flight on N
keep-alive connections: order may vary within those N); a failed request (no connection, timeout,
5xx, any 4xx not listed in ``reject_status``) is retried with exponential backoff and jitter (0.25 s
doubling up to ``retry_max``; a ``Retry-After`` up to ``retry_max`` is honoured) and holds back the
events behind it, for up to ``max_age`` seconds after the event was queued. Delivery is at least
once: a request that reached the server but whose answer was lost, or whose success was not saved
yet when the process was killed (at most 0.05 s of deliveries), is sent again (with the same
``X-Busd-Event-Id``).

Losses are explicit, counted, logged and reported as a ``WEBHOOK_EVENTS_DROPPED`` event (system
``webhook``, severity ``warn``, dev_name the webhook's name; at most one per webhook every
``report_interval`` seconds): ``outbox_full`` (more than ``max_outbox`` events waiting: the oldest
go, except those being sent), ``expired`` (waited longer than ``max_age``) and ``rejected`` (the
server answered a status in ``reject_status``, default 400, 413 and 422: "this request will never be
accepted", so it must not block the events behind it). 401, 403, 404, 408, 429 and 5xx are
retried: they are outages or misconfigurations that an operator fixes, after which every event
arrives.

``synchronous = "full"`` makes each commit reach the disk before the event counts as handled
(survives a power loss, at the price of an fsync per event); the default ``normal`` survives any
process crash. ``busctl webhook status`` shows each webhook's outbox depth, last success and last
error from the status this receiver writes.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import hashlib
import hmac
import json
import os
import random
import re
import sqlite3
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from bus import __version__
from bus.config import Option, check_table
from bus.event import Event, new_event, to_json
from bus.filter import Filter, FilterError
from bus.plugin import Receiver, run, stop_tasks
from bus.secrets import redact_url
from receivers._outbox import Outbox, Row, next_rows
from receivers._retry import Outage

FORMATS = ("gluster", "busd")

OPTIONS = {
    "webhooks": Option(list, [], "the webhooks: an array of tables with url, name, filter, format, bearer_token, "
                                 "secret, signing_key, headers and overrides of the defaults below"),
    "state_dir": Option(str, "", "directory of the outboxes, each receiver in its own subdirectory (relative to the "
                                 "configuration file); default: the receiver's directory under [main] state_dir"),
    "synchronous": Option(str, "normal", "normal: an event survives any crash once handled; full: also a power "
                                         "loss (an fsync per event)", ("normal", "full")),
    "timeout": Option(float, 10.0, "seconds one request may take"),
    "max_age": Option(float, 86400.0, "seconds an event may wait for delivery before it is dropped"),
    "max_outbox": Option(int, 100_000, "events waiting per webhook; beyond, the oldest are dropped"),
    "retry_max": Option(float, 60.0, "longest delay between two attempts, seconds"),
    "concurrency": Option(int, 1, "requests in flight per webhook (1: strictly in order)"),
    "verify_tls": Option(bool, True, "verify the server's certificate"),
    "ca_file": Option(str, "", "CA certificates to verify servers with (default: the system's)"),
    "reject_status": Option(list, [400, 413, 422], "HTTP statuses that drop the event instead of retrying it"),
    "report_interval": Option(float, 60.0, "seconds between two WEBHOOK_EVENTS_DROPPED events of one webhook"),
}

SHARED = ("timeout", "max_age", "max_outbox", "retry_max", "concurrency", "verify_tls", "ca_file", "reject_status")
"""Receiver-wide defaults that a webhook's table may override."""

WEBHOOK_OPTIONS: dict[str, Option] = {
    "url": Option(str, Option.REQUIRED, "http:// or https:// URL to POST events to"),
    "name": Option(str, "", "the webhook's name (default: derived from the URL); names its outbox"),
    "filter": Option(dict, {}, "which events (a bus filter: system, kind, severity, event_type)"),
    "format": Option(str, "gluster", "gluster (glustereventsd's body) or busd (the event as JSON)", FORMATS),
    "bearer_token": Option(str, "", "send Authorization: Bearer TOKEN"),
    "secret": Option(str, "", "send Authorization: Bearer JWT (HS256 with gluster's claims) signed with this"),
    "signing_key": Option(str, "", "sign each body: X-Busd-Timestamp and X-Busd-Signature (HMAC-SHA256)"),
    "headers": Option(dict, {}, "extra HTTP headers"),
    **{k: OPTIONS[k] for k in SHARED},
}

BATCH = 256
"""Events read from the outbox at a time."""

SAVE_INTERVAL = 0.05
"""Seconds between two saves of an outbox's cursor while delivering (what a crash may send again); 20 small commits a second."""

JWT_LIFETIME = 60
"""Seconds a JWT stays valid after the request is made (glustereventsd's value)."""

SIGNATURE_TOLERANCE = 300
"""Seconds a signed request's timestamp may differ from the consumer's clock (:func:`verify_signature`)."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_HEADER = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_OWN_HEADERS = ("authorization", "content-type", "x-busd-timestamp", "x-busd-signature", "x-busd-event-id")


# -- configuration ---------------------------------------------------------------------------------

def legacy_state_dir() -> str:
    """Return where outboxes lived before ``[main] state_dir``: ``/var/lib/busd/webhook`` as root, else
    ``$XDG_STATE_HOME/busd/webhook``; a receiver whose outboxes are still there keeps using them."""
    if os.geteuid() == 0:
        return "/var/lib/busd/webhook"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return f"{base}/busd/webhook"


def name_from_url(url: str) -> str:
    """Derive a webhook name from its URL: host, port and path joined by ``-`` (``webhook`` if empty)."""
    parts = urlsplit(url)
    raw = "-".join(p for p in (parts.hostname or "", str(parts.port or ""), parts.path) if p)
    name = re.sub(r"[^A-Za-z0-9_.]+", "-", raw).strip("-._")[:64].rstrip("-._")
    return name or "webhook"


def check_webhook(spec: Any, where: str) -> dict[str, Any]:
    """Validate one webhook table (defaults not applied); return it.

    Raises:
        ValueError: ``"<where>.<key>: reason"``.
    """
    table = check_table(where, spec, WEBHOOK_OPTIONS, what="a table with at least url")
    if "url" not in table:
        raise ValueError(f"{where}.url: is required")
    url = urlsplit(table["url"])
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ValueError(f"{where}.url: {table['url']!r} is not an http:// or https:// URL with a host")
    try:
        url.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"{where}.url: {exc}") from None
    if table.get("name") and not _NAME.match(table["name"]):
        raise ValueError(f"{where}.name: {table['name']!r}: use letters, digits, '_', '-' and '.', at most 64")
    try:
        Filter.parse(table.get("filter"))
    except FilterError as exc:
        raise ValueError(f"{where}.{exc}") from None
    if table.get("bearer_token") and table.get("secret"):
        raise ValueError(f"{where}.secret: give bearer_token or secret, not both")
    for header, value in (table.get("headers") or {}).items():
        if not _HEADER.match(header):
            raise ValueError(f"{where}.headers.{header}: not a valid HTTP header name")
        if not isinstance(value, str) or "\n" in value or "\r" in value:
            raise ValueError(f"{where}.headers.{header}: must be a one-line string")
        if header.lower() in _OWN_HEADERS[1:] or (header.lower() == "authorization"
                                                   and (table.get("bearer_token") or table.get("secret"))):
            raise ValueError(f"{where}.headers.{header}: set by the receiver itself")
    _check_numbers(table, f"{where}.")
    return table


def _check_numbers(values: Mapping[str, Any], where: str) -> None:
    for key in ("timeout", "max_age", "retry_max", "report_interval"):
        if key in values and values[key] <= 0:
            raise ValueError(f"{where}{key}: must be positive, got {values[key]}")
    for key in ("max_outbox", "concurrency"):
        if key in values and values[key] < 1:
            raise ValueError(f"{where}{key}: must be at least 1, got {values[key]}")
    for status in values.get("reject_status", ()):
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 499 or status in (408, 429):
            raise ValueError(f"{where}reject_status: {status!r} is not a 4xx status other than 408 and 429")


def webhook_settings(options: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Return each webhook's complete settings: defaults, receiver-wide values, its own table, its name.

    Raises:
        ValueError: a webhook is wrong or two have the same name (``"webhooks[i].key: reason"``).
    """
    webhooks = options.get("webhooks") or []
    out: list[dict[str, Any]] = []
    names: dict[str, int] = {}
    for index, table in enumerate(webhooks):
        where = f"webhooks[{index}]"
        check_webhook(table, where)
        settings = {k: o.default for k, o in WEBHOOK_OPTIONS.items() if o.default is not Option.REQUIRED}
        settings.update({k: options[k] for k in SHARED if k in options})
        settings.update(table)
        settings["name"] = table.get("name") or name_from_url(table["url"])
        if settings["name"] in names:
            raise ValueError(f"{where}.name: {settings['name']!r} is also webhook {names[settings['name']]}'s name "
                             "(give each a distinct name)")
        names[settings["name"]] = index
        out.append(settings)
    return out


def check_options(options: dict[str, Any]) -> None:
    """Check the receiver-wide numbers and every webhook (URL, filter, auth, headers, unique names)."""
    _check_numbers(options, "")
    webhook_settings(options)


# -- what is sent ----------------------------------------------------------------------------------

def gluster_message(event: Event) -> dict[str, Any]:
    """Return glustereventsd's ``{"nodeid", "ts", "event", "message"}`` for an event (see the module doc)."""
    ext: dict[str, Any] = event.get("extensions") or {}
    if isinstance(ext.get("gluster_event"), str) and isinstance(ext.get("message"), dict):
        ts = int(event.get("timestamp", 0))
        with contextlib.suppress(KeyError, TypeError, ValueError):
            ts = int(ext["ts"])
        # a node id the parser could not learn stays null, as glustereventsd sends it
        return {"nodeid": ext["nodeid"] if "nodeid" in ext else event.get("hostname", ""), "ts": ts,
                "event": ext["gluster_event"], "message": ext["message"]}
    return {"nodeid": event.get("hostname", ""), "ts": int(event.get("timestamp", 0)),
            "event": event.get("event_type", ""),
            "message": {"msg": event.get("msg", ""), "system": event.get("system", ""),
                        "severity": event.get("severity", ""), "dev_name": event.get("dev_name", ""),
                        "dev_wwid": event.get("dev_wwid", ""), "event_id": event.get("event_id", ""),
                        "source": event.get("source", ""), "extensions": ext}}


def render(fmt: str, event: Event) -> tuple[bytes, str, int]:
    """Return the body for ``fmt``, and the JWT subject and issue time for it."""
    if fmt == "gluster":
        message = gluster_message(event)
        # exactly glustereventsd's json.dumps call (default separators, ASCII)
        return json.dumps(message, sort_keys=True, default=str).encode(), str(message["event"]), int(message["ts"])
    return to_json(event).encode(), str(event.get("event_type", "")), int(event.get("timestamp", 0))


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def jwt_token(secret: str, subject: str, issued_at: int, now: float | None = None) -> str:
    """Return glustereventsd's HS256 JWT: ``iss`` gluster, ``sub``, ``iat``, ``exp`` = now + 60 s.

    Built like glustereventsd's ``get_jwt_token`` (the same header and claim bytes), so a consumer
    that verifies gluster's tokens verifies these.
    """
    claims = {"exp": int(time.time() if now is None else now) + JWT_LIFETIME, "iss": "gluster", "sub": subject,
              "iat": issued_at}
    signing_input = _b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + _b64(
        json.dumps(claims, separators=(",", ":"), sort_keys=True).encode())
    return (signing_input + b"." + _b64(hmac.new(secret.encode(), signing_input, hashlib.sha256).digest())).decode()


def signature(key: str, timestamp: int, body: bytes) -> str:
    """Return the ``X-Busd-Signature`` value: ``sha256=`` + HMAC-SHA256(key, ``"<timestamp>." + body``) in hex."""
    return "sha256=" + hmac.new(key.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def verify_signature(key: str, headers: Mapping[str, str], body: bytes, now: float | None = None) -> bool:
    """Check a delivery's signature as a consumer should: right HMAC, timestamp within 5 minutes.

    ``headers`` must look names up case-insensitively (as aiohttp's and http.server's do).
    """
    try:
        timestamp = int(headers["X-Busd-Timestamp"])
        given = headers["X-Busd-Signature"]
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - timestamp) > SIGNATURE_TOLERANCE:
        return False
    return hmac.compare_digest(given, signature(key, timestamp, body))


@dataclass
class Attempt:
    """The outcome of one request: ``delivered`` (2xx), ``rejected`` (a ``reject_status``) or ``retry``."""

    outcome: str
    status: int | None
    latency: float
    error: str = ""
    retry_after: float | None = None


def _retry_after(value: str | None) -> float | None:
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


class Sender:
    """POSTs events to one webhook over one keep-alive aiohttp session (also used by ``busctl webhook test``).

    Args:
        settings: the webhook's complete settings (:func:`webhook_settings`).
        base: the directory relative ``ca_file`` paths are relative to.
    """

    def __init__(self, settings: Mapping[str, Any], base: Path = Path(".")) -> None:
        self.settings = settings
        self.base = base
        self.url: str = settings["url"]
        self.session: aiohttp.ClientSession | None = None
        self.user_agent = f"busd/{__version__} (webhook)"

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.settings["verify_tls"]:
            return False
        if self.settings["ca_file"]:
            path = self.base / self.settings["ca_file"]
            try:
                return ssl.create_default_context(cafile=str(path))
            except (OSError, ssl.SSLError) as exc:  # read again at the next attempt: a fixed file is picked up
                raise ValueError(f"ca_file {path}: {getattr(exc, 'strerror', None) or exc}") from None
        return True

    def _open(self) -> aiohttp.ClientSession:
        if self.session is None:
            connector = aiohttp.TCPConnector(limit=self.settings["concurrency"], ssl=self._ssl())
            # no cookies: a webhook is stateless, and the jar costs time on every request
            self.session = aiohttp.ClientSession(connector=connector, headers={"User-Agent": self.user_agent},
                                                 cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False,
                                                 timeout=aiohttp.ClientTimeout(total=self.settings["timeout"]))
        return self.session

    def request(self, event: Event, now: float | None = None) -> tuple[bytes, dict[str, str]]:
        """Return the body and headers of the request that delivers ``event`` (made afresh for each attempt)."""
        s = self.settings
        body, subject, issued_at = render(s["format"], event)
        now = time.time() if now is None else now
        headers = {**s["headers"], "Content-Type": "application/json", "X-Busd-Event-Id": str(event.get("event_id", ""))}
        if s["secret"]:
            headers["Authorization"] = "Bearer " + jwt_token(s["secret"], subject, issued_at, now)
        elif s["bearer_token"]:
            headers["Authorization"] = "Bearer " + s["bearer_token"]
        if s["signing_key"]:
            ts = int(now)
            headers["X-Busd-Timestamp"] = str(ts)
            headers["X-Busd-Signature"] = signature(s["signing_key"], ts, body)
        return body, headers

    async def post(self, event: Event) -> Attempt:
        """Send one event; never raises for network or server trouble (the :class:`Attempt` says what happened)."""
        started = time.monotonic()
        try:
            session = self._open()
            body, headers = self.request(event)
            async with session.post(self.url, data=body, headers=headers) as resp:
                text = await resp.read()
                latency = time.monotonic() - started
                if 200 <= resp.status < 300:
                    return Attempt("delivered", resp.status, latency)
                snippet = text[:200].decode(errors="replace").strip()
                error = f"HTTP {resp.status} {resp.reason or ''}".strip() + (f": {snippet}" if snippet else "")
                outcome = "rejected" if resp.status in self.settings["reject_status"] else "retry"
                return Attempt(outcome, resp.status, latency, error, _retry_after(resp.headers.get("Retry-After")))
        except TimeoutError:
            return Attempt("retry", None, time.monotonic() - started, f"no answer within {self.settings['timeout']:g} s")
        except (aiohttp.ClientError, OSError, ssl.SSLError, ValueError) as exc:
            return Attempt("retry", None, time.monotonic() - started, _describe(exc))

    async def close(self) -> None:
        """Close the session and its connections."""
        if self.session is not None:
            await self.session.close()
            self.session = None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cert_error = exc.certificate_error
        why = getattr(cert_error, "verify_message", "") or str(cert_error)
        return f"TLS certificate of {exc.host}:{exc.port} not accepted: {why} (ca_file, verify_tls)"
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        # asyncio words a refused connection "Connect call failed (addr)": the errno says it plainly
        errno = os_error.errno or 0
        why = os.strerror(errno) if errno > 0 else (os_error.strerror or str(os_error))
        return f"cannot connect to {exc.host}:{exc.port}: {why}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, ValueError) and str(exc):  # ours (ca_file) or aiohttp's (a bad URL): already worded
        return str(exc)
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def probe_event(hostname: str) -> Event:
    """Return the event ``busctl webhook test`` sends (system ``webhook``, type ``WEBHOOK_TEST``)."""
    return new_event("webhook", "WEBHOOK_TEST", f"test delivery from busd on {hostname}", kind="synthetic",
                     hostname=hostname, extensions={"test": True})


# -- the receiver ----------------------------------------------------------------------------------

@dataclass
class Hook:
    """One webhook at run time: its settings, filter, outbox, sender and what happened lately."""

    settings: dict[str, Any]
    filter: Filter
    sender: Sender
    outage: Outage
    path: Path
    outbox: Outbox | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    keep_from: int = 0
    """Events from the outbox's cursor up to this ``seq`` (excluded) are being sent: never dropped for room."""
    delivered: int = 0
    last_success: float | None = None
    last_error: dict[str, Any] | None = None
    unreported: collections.Counter[str] = field(default_factory=collections.Counter)
    report_due: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        """The webhook's name."""
        return str(self.settings["name"])

    def status(self) -> dict[str, Any]:
        """Return what ``busctl webhook status`` shows for this webhook."""
        info: dict[str, Any] = {"depth": None}
        if self.outbox is not None:
            with contextlib.suppress(sqlite3.Error):
                info = self.outbox.info()
        return {"name": self.name, "url": redact_url(self.settings["url"]), "format": self.settings["format"],
                "outbox": str(self.path), **info, "delivered_since_start": self.delivered,
                "last_success": self.last_success, "last_error": self.last_error,
                "retrying": self.outage.active, "attempts": self.outage.attempts}


class Webhook(Receiver):
    """Queue matching events in each webhook's outbox; a task per webhook delivers them in order."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__(env)
        self.outbox_dir = self._outbox_dir()
        self.hooks: list[Hook] = []
        for settings in webhook_settings(self.options):
            log = self.log.bind(webhook=settings["name"], url=redact_url(settings["url"]))
            self.hooks.append(Hook(settings, Filter.parse(settings["filter"]),
                                   Sender(settings, self.path(".")),
                                   Outage(log, "webhook", first=min(0.25, settings["retry_max"]),
                                          maximum=settings["retry_max"]),
                                   self.outbox_dir / f"{settings['name']}.sqlite"))
        self.tasks: list[asyncio.Task[None]] = []
        self._status_dirty = asyncio.Event()

    def _outbox_dir(self) -> Path:
        """The ``state_dir`` option's subdirectory for this receiver, else its own state directory
        (or the pre-``[main] state_dir`` location while outboxes are still there)."""
        if self.options["state_dir"]:
            return self.path(self.options["state_dir"]) / self.name
        legacy = Path(legacy_state_dir()) / self.name
        own = self.state_dir
        if own is None or (any(legacy.glob("*.sqlite")) and not any(own.glob("*.sqlite"))):
            if own is not None:
                self.log.warning("webhook_legacy_outboxes", path=str(legacy),
                                 hint=f"stop busd and move them to {own} (or set state_dir)")
            return legacy
        return own

    async def setup(self) -> None:
        """Open the outboxes, warn about orphaned ones, start a delivery and a report task per webhook."""
        for hook in self.hooks:
            self._open(hook)
        self._warn_orphans()
        for hook in self.hooks:
            self.tasks.append(asyncio.create_task(self._deliver(hook), name=f"webhook-{hook.name}"))
            self.tasks.append(asyncio.create_task(self._reporter(hook), name=f"webhook-report-{hook.name}"))
        self.tasks.append(asyncio.create_task(self._status_writer(), name="webhook-status"))
        self.log.info("webhook_started", webhooks=[h.name for h in self.hooks], state_dir=str(self.outbox_dir),
                      waiting={h.name: h.outbox.depth for h in self.hooks if h.outbox is not None})

    def _open(self, hook: Hook) -> Outbox | None:
        """Open a webhook's outbox if it is not open; log why when it cannot be (retried later)."""
        if hook.outbox is None:
            try:
                hook.outbox = Outbox(hook.path, self.options["synchronous"])
            except (OSError, sqlite3.Error) as exc:
                hook.last_error = {"time": time.time(), "status": None, "error": f"outbox {hook.path}: {exc}"}
                self.log.error("webhook_outbox_unavailable", webhook=hook.name, path=str(hook.path), error=str(exc))
        return hook.outbox

    def _warn_orphans(self) -> None:
        names = {f"{h.name}.sqlite" for h in self.hooks}
        with contextlib.suppress(OSError):
            for path in sorted(self.outbox_dir.glob("*.sqlite")):
                if path.name not in names:
                    self.log.warning("webhook_outbox_orphaned", path=str(path),
                                     reason="no configured webhook has this name; its waiting events are not sent")

    async def _outbox(self, hook: Hook) -> Outbox:
        """Return the webhook's outbox, waiting (and retrying with backoff) until it can be opened."""
        delay = 0.5
        while (outbox := self._open(hook)) is None:
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
        return outbox

    async def handle(self, event: Event) -> None:
        """Commit the event to the outbox of every webhook whose filter matches, then return."""
        data: bytes | None = None
        for hook in self.hooks:
            if not hook.filter.match(event):
                continue
            if data is None:
                data = to_json(event).encode()
            while True:
                outbox = await self._outbox(hook)
                try:
                    added, dropped = outbox.add(event["event_id"], data, time.time(),
                                                bound=hook.settings["max_outbox"], keep_from=hook.keep_from)
                    break
                except sqlite3.Error as exc:  # disk full, I/O error: hold the event back until it can be kept
                    hook.last_error = {"time": time.time(), "status": None, "error": f"outbox {hook.path}: {exc}"}
                    self.log.error("webhook_outbox_write_failed", webhook=hook.name, path=str(hook.path), error=str(exc))
                    self._status_dirty.set()  # busctl webhook status shows the error while the event waits
                    await asyncio.sleep(1.0)
            if dropped:
                self._dropped(hook, "outbox_full", dropped)
            if added:
                hook.wake.set()
        self._status_dirty.set()

    def _dropped(self, hook: Hook, reason: str, n: int) -> None:
        hook.unreported[reason] += n
        hook.report_due.set()
        self.count("dropped", n)

    # -- delivery ------------------------------------------------------------------------------

    async def _deliver(self, hook: Hook) -> None:
        """Send the webhook's events oldest first, up to ``concurrency`` requests in flight, forever.

        The outbox's cursor is saved every :data:`SAVE_INTERVAL` seconds and when the outbox has
        been empty that long, not after each request: a crash resends at most that much.
        """
        while True:
            outbox = await self._outbox(hook)
            try:
                rows = await next_rows(outbox, hook.wake, BATCH, SAVE_INTERVAL)
                cutoff = time.time() - hook.settings["max_age"]
                if rows[0].created < cutoff:
                    self._dropped(hook, "expired", outbox.expire(cutoff))
                    continue
                await self._send_rows(hook, outbox, rows)
            except sqlite3.Error as exc:
                hook.last_error = {"time": time.time(), "status": None, "error": f"outbox {hook.path}: {exc}"}
                self.log.error("webhook_outbox_read_failed", webhook=hook.name, path=str(hook.path), error=str(exc))
                await asyncio.sleep(1.0)

    async def _send_rows(self, hook: Hook, outbox: Outbox, rows: list[Row]) -> None:
        """Send rows in order, keeping up to ``concurrency`` requests in flight (a sliding window).

        The cursor advances over the longest prefix of rows that are done with. When a request
        fails, no new one starts: the ones in flight finish, then the failed ones are retried
        (:meth:`_retry`) before the next rows go. Stops early when events were dropped meanwhile
        (outbox full: the rows read may be gone), so the caller reads again.
        If the task is cancelled, rows not yet under the cursor are sent again by the next run.
        """
        limit = hook.settings["concurrency"]
        sender = hook.sender
        deletions = outbox.deletions
        loop = asyncio.get_running_loop()
        saved = loop.time()
        outcomes: dict[int, str] = {}
        inflight: dict[asyncio.Future[Attempt], Row] = {}
        failed: list[tuple[Row, Attempt]] = []
        started = resolved = 0
        try:
            while True:
                cutoff = time.time() - hook.settings["max_age"]
                while started < len(rows) and len(inflight) < limit and not failed and outbox.deletions == deletions:
                    row = rows[started]
                    started += 1
                    hook.keep_from = row.seq + 1
                    if row.created < cutoff:
                        outcomes[row.seq] = "expired"
                    else:
                        inflight[asyncio.ensure_future(sender.post(json.loads(row.event)))] = row
                if not inflight:
                    if not failed:
                        break
                    outcomes.update(await self._retry(hook, outbox, failed))
                    failed = []
                else:
                    finished, _ = await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                    attempts = [(inflight.pop(task), task.result()) for task in finished]
                    failed += self._settle(hook, attempts, outcomes)
                    failed.sort(key=lambda f: f[0].seq)
                # the cursor moves over the longest prefix that is done with
                counts = {"delivered": 0, "rejected": 0, "expired": 0}
                while resolved < started and rows[resolved].seq in outcomes:
                    counts[outcomes.pop(rows[resolved].seq)] += 1
                    resolved += 1
                if resolved and any(counts.values()):
                    outbox.done(rows[resolved - 1].seq, **counts)
                    self._account(hook, counts)
                    if loop.time() - saved >= SAVE_INTERVAL:
                        outbox.save()
                        saved = loop.time()
        finally:
            for task in inflight:
                task.cancel()
            hook.keep_from = 0
            self._status_dirty.set()

    async def _retry(self, hook: Hook, outbox: Outbox, failed: list[tuple[Row, Attempt]]) -> dict[int, str]:
        """Retry failed rows (all together) with backoff until each is delivered, rejected or expired."""
        outcomes: dict[int, str] = {}
        sender = hook.sender
        while failed:
            first = failed[0][1]
            hook.last_error = {"time": time.time(), "status": first.status, "error": first.error}
            self.count("failed_attempts", len(failed))
            delay = hook.outage.failed(first.error, waiting=outbox.depth) * random.uniform(0.5, 1.0)
            if first.retry_after is not None:
                delay = max(delay, min(first.retry_after, hook.settings["retry_max"]))
            self._status_dirty.set()
            await asyncio.sleep(delay)
            cutoff = time.time() - hook.settings["max_age"]
            for row, _ in failed:
                if row.created < cutoff:
                    outcomes[row.seq] = "expired"
            pending = [row for row, _ in failed if row.seq not in outcomes]
            attempts = await asyncio.gather(*(sender.post(json.loads(row.event)) for row in pending))
            failed = self._settle(hook, list(zip(pending, attempts, strict=True)), outcomes)
        return outcomes

    def _settle(self, hook: Hook, attempts: list[tuple[Row, Attempt]],
                outcomes: dict[int, str]) -> list[tuple[Row, Attempt]]:
        """Record the outcome of each (row, attempt); return those to retry (any success ends an outage)."""
        failed = []
        for row, attempt in attempts:
            if attempt.outcome == "retry":
                failed.append((row, attempt))
            else:
                outcomes[row.seq] = attempt.outcome
                if attempt.outcome == "rejected":
                    self._rejected(hook, row, attempt)
        if len(failed) < len(attempts):
            hook.last_success = time.time()
            hook.outage.succeeded()
        return failed

    def _rejected(self, hook: Hook, row: Row, attempt: Attempt) -> None:
        self.log.error("webhook_event_rejected", webhook=hook.name, url=redact_url(hook.sender.url), event_id=row.event_id,
                       error=attempt.error, reason="the status is in reject_status: the event is dropped, not retried")

    def _account(self, hook: Hook, counts: dict[str, int]) -> None:
        """Count what the cursor passed: deliveries, and drops (rejected, expired) to report."""
        if counts["delivered"]:
            hook.delivered += counts["delivered"]
            self.count("delivered", counts["delivered"])
        for reason in ("rejected", "expired"):
            if counts[reason]:
                self._dropped(hook, reason, counts[reason])
        self._status_dirty.set()

    # -- reports and status --------------------------------------------------------------------

    async def _reporter(self, hook: Hook) -> None:
        """Report drops as a WEBHOOK_EVENTS_DROPPED event: the first at once, then at most one per interval."""
        while True:
            await hook.report_due.wait()
            hook.report_due.clear()
            await self._report(hook)
            await asyncio.sleep(self.options["report_interval"])

    async def _report(self, hook: Hook, timeout: float | None = None) -> None:
        """Log the drops not reported yet and publish them as one event (a failure to publish is logged)."""
        counts = dict(hook.unreported)
        hook.unreported.clear()
        total = sum(counts.values())
        if not total:
            return
        why = ", ".join(f"{n} {_REASONS[r]}" for r, n in sorted(counts.items()))
        url = redact_url(hook.settings["url"])
        self.log.warning("webhook_events_dropped", webhook=hook.name, url=url, dropped=total, **counts)
        totals = hook.outbox.totals if hook.outbox is not None else {}
        event = self.event(
            "webhook", "WEBHOOK_EVENTS_DROPPED", f"webhook {hook.name} ({url}): {total} events dropped ({why})",
            severity="warn", dev_name=hook.name,
            extensions={"webhook": hook.name, "url": url, "dropped": total,
                        **{r: counts.get(r, 0) for r in _REASONS},
                        "dropped_total": sum(totals.get(r, 0) for r in _REASONS)})
        try:
            async with asyncio.timeout(timeout):
                await self.emit(event)
        except Exception as exc:  # outside busd, or busd gone at shutdown: the log line above stays
            self.log.warning("webhook_report_failed", webhook=hook.name, error=str(exc) or type(exc).__name__)

    def write_webhook_status(self) -> None:
        """Write every webhook's outbox depth, counts, last success and last error for ``busctl``."""
        self.write_status({"state_dir": str(self.outbox_dir), "webhooks": [h.status() for h in self.hooks]})

    async def _status_writer(self) -> None:
        self.write_webhook_status()
        while True:
            await self._status_dirty.wait()
            self._status_dirty.clear()
            self.write_webhook_status()
            await asyncio.sleep(1.0)

    async def teardown(self) -> None:
        """Stop delivering, save every outbox, report pending drops and write the final status."""
        await stop_tasks(self.tasks, self.log, "webhook_task_failed")
        for hook in self.hooks:
            await hook.sender.close()
            await self._report(hook, timeout=1.0)
        self.write_webhook_status()
        for hook in self.hooks:
            if hook.outbox is not None:
                try:
                    hook.outbox.close()
                except sqlite3.Error as exc:
                    self.log.error("webhook_outbox_close_failed", webhook=hook.name, error=str(exc))


_REASONS = {"outbox_full": "outbox full", "expired": "older than max_age", "rejected": "rejected by the server"}


if __name__ == "__main__":
    run(Webhook)

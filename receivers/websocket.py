"""Receiver ``websocket``: streams events to websocket clients as JSON text frames (aiohttp server).

Endpoints (``ws://ADDRESS`` or, with ``certfile``/``keyfile``, ``wss://ADDRESS``):

``GET /v1/events``  a websocket; every event the receiver gets is sent as one text frame holding
                    the event as ``bus-tail --json`` prints it. Query parameters filter the stream
                    like ``bus-tail``: ``system`` and ``event_type`` (repeatable, ``*`` at the end of
                    a type for a prefix), ``severity`` (the minimum) and ``kind`` (``raw``,
                    ``synthetic``, ``all``; the receiver's own ``filter`` decides which kinds it
                    gets at all, synthetic by default). ``BUS_EVENTS_LOST`` reaches every client.
``GET /v1/peers``   the nodes of the cluster as JSON. busd has no cluster feature yet, so this is
                    only this node: ``[{"hostname": "...", "self": true}]``.

Options:

``address``       ``HOST:PORT`` to listen on (default ``127.0.0.1:9943``; ``[::1]:9943`` for IPv6,
                  ``:9943`` for every address; port 0 picks a free port, shown in ``busctl``'s
                  status file of the plugin, ``listening``).
``certfile``, ``keyfile``  PEM certificate chain and private key (relative to the configuration
                  file): TLS (``wss://``). Both or neither.
``tokens``        bearer tokens accepted; ``token_file`` a file of more, one per line (``#``
                  comments), re-read when it changes. A client sends ``Authorization: Bearer T``,
                  or ``?access_token=T`` (browsers cannot set headers on a websocket); a missing or
                  wrong token gets HTTP 401. With no token configured at all anyone may connect (a
                  warning is logged when the address is not a loopback one).
``heartbeat``     seconds between pings (default 30; 0: none); a client that does not answer a ping
                  within half of that is closed.
``client_queue``  events queued per client (default 1000). A client that falls further behind
                  is disconnected with close code 1008 (policy violation) and the reason
                  ``too slow: more than N events queued``, and counted (``slow_clients``); the
                  others never wait for it.
``max_clients``   simultaneous clients (default 256); more get HTTP 503.

When the address cannot be bound (in use, bad certificate), the error is logged
(``websocket_listen_failed``) and retried with backoff up to 30 s; events meanwhile reach nobody.
Counters in ``busctl status``: ``clients`` (accepted), ``clients_open``, ``unauthorized``,
``bad_requests``, ``slow_clients``, ``refused_full``, ``frames_sent``.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import os
import ssl
from collections import deque
from collections.abc import Mapping
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from bus.config import Option
from bus.event import Event, to_json
from bus.filter import Filter, FilterError
from bus.plugin import Receiver, run

OPTIONS = {
    "address": Option(str, "127.0.0.1:9943", "HOST:PORT to listen on ([::1]:9943 for IPv6, :9943 for every address)"),
    "certfile": Option(str, "", "TLS certificate chain, PEM (with keyfile: wss://)"),
    "keyfile": Option(str, "", "TLS private key, PEM"),
    "tokens": Option(list, [], "bearer tokens accepted (none at all: no authentication)"),
    "token_file": Option(str, "", "file of bearer tokens, one per line, re-read when it changes"),
    "heartbeat": Option((int, float), 30.0, "seconds between pings; no pong within half of it closes (0: off)"),
    "client_queue": Option(int, 1000, "events queued per client before it is disconnected as too slow"),
    "max_clients": Option(int, 256, "simultaneous clients; more get HTTP 503"),
}

QUERY_KEYS = ("system", "severity", "event_type", "kind", "access_token")
SLOW_CLOSE = WSCloseCode.POLICY_VIOLATION
CLOSE_TIMEOUT = 10.0


def parse_address(text: str) -> tuple[str | None, int]:
    """Split ``HOST:PORT`` (``[V6]:PORT``, ``:PORT`` for every address) into ``(host or None, port)``.

    Raises:
        ValueError: not of that shape, or the port is not 0-65535.
    """
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 127.0.0.1:9943, [::1]:9943, :9943)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:9943")
    return (host if host not in ("", "*") else None), int(port)


def check_options(options: Mapping[str, Any]) -> None:
    """Refuse what the option types cannot say (raises ``ValueError("key: reason")``)."""
    try:
        parse_address(options["address"])
    except ValueError as exc:
        raise ValueError(f"address: {exc}") from None
    if bool(options["certfile"]) != bool(options["keyfile"]):
        raise ValueError(f"{'keyfile' if options['certfile'] else 'certfile'}: TLS needs both certfile and keyfile")
    if not all(isinstance(t, str) and t.strip() for t in options["tokens"]):
        raise ValueError("tokens: must be an array of non-empty strings")
    if options["heartbeat"] < 0:
        raise ValueError("heartbeat: must be 0 (off) or positive")
    for key in ("client_queue", "max_clients"):
        if options[key] < 1:
            raise ValueError(f"{key}: must be at least 1")


def _is_loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Client:
    """One connected websocket: its filter and the queue of frames its sender task writes."""

    __slots__ = ("filter", "peer", "queue", "ready", "sender", "transport", "ws")

    def __init__(self, ws: web.WebSocketResponse, flt: Filter, request: web.Request) -> None:
        self.ws = ws
        self.transport = request.transport
        peer = request.remote or "?"
        self.filter = flt
        self.peer = peer
        self.queue: deque[str] = deque()
        self.ready = asyncio.Event()
        self.sender: asyncio.Task[None] | None = None


class Websocket(Receiver):
    """Fan events out to websocket clients, each with its own filter and bounded queue."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__(env)
        self.clients: set[Client] = set()
        self.host, self.port = parse_address(self.options["address"])
        self.limit: int = self.options["client_queue"]
        self._runner: web.AppRunner | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._closing: set[asyncio.Task[None]] = set()
        self._token_file_mtime: float | None = None
        self._file_tokens: list[str] = []
        self.listening: list[str] = []

    # -- events ----------------------------------------------------------------------------------

    async def handle(self, event: Event) -> None:
        """Queue the event for every client whose filter matches; drop a client that cannot keep up.

        Events come in batches without a pause, so a full queue may be a burst, not a slow client:
        the senders get one turn of the event loop first, and a queue still full then means its
        socket is not taking data. One such turn per full event, shared by every full client.
        """
        lost = event.get("event_type") == "BUS_EVENTS_LOST"
        wanted = [c for c in self.clients if lost or c.filter.match(event)]
        if not wanted:
            return
        text = to_json(event)
        full = [c for c in wanted if not self._offer(c, text)]
        if not full:
            return
        await asyncio.sleep(0)
        for client in full:
            if client in self.clients and not self._offer(client, text):
                self._drop_slow(client)

    def _offer(self, client: Client, text: str) -> bool:
        """Queue ``text`` for ``client`` unless its queue is full; return whether it was queued."""
        if len(client.queue) >= self.limit:
            return False
        client.queue.append(text)
        client.ready.set()
        return True

    async def _send(self, client: Client) -> None:
        """Write a client's queue to its websocket, in order; only this client waits for its socket."""
        ws, queue, ready = client.ws, client.queue, client.ready
        sent = 0
        try:
            while True:
                if not queue:
                    if sent:
                        self.count("frames_sent", sent)
                        sent = 0
                    ready.clear()
                    await ready.wait()
                    continue
                await ws.send_str(queue.popleft())
                sent += 1
        except (ConnectionError, RuntimeError) as exc:  # the client went away under the write
            self.log.debug("websocket_send_failed", peer=client.peer, error=str(exc))
        finally:
            if sent:
                self.count("frames_sent", sent)

    def _drop_slow(self, client: Client) -> None:
        self.clients.discard(client)
        self.count("slow_clients")
        self.log.warning("websocket_client_too_slow", peer=client.peer, queued=len(client.queue), limit=self.limit)
        client.queue.clear()
        if client.sender is not None:
            client.sender.cancel()
        self._close(client, SLOW_CLOSE, f"too slow: more than {self.limit} events queued")

    def _close(self, client: Client, code: int, reason: str) -> None:
        task = asyncio.ensure_future(self._close_ws(client, code, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close_ws(self, client: Client, code: int, reason: str) -> None:
        # the close frame waits behind what is still buffered for the client: give it some time
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await client.ws.close(code=code, message=reason.encode())
        except (TimeoutError, ConnectionError, RuntimeError):
            if client.transport is not None:
                client.transport.abort()

    # -- HTTP ------------------------------------------------------------------------------------

    def _tokens(self) -> list[str]:
        tokens = list(self.options["tokens"])
        name = self.options["token_file"]
        if name:
            path = self.path(name)
            try:
                mtime = os.stat(path).st_mtime
                if mtime != self._token_file_mtime:
                    lines = path.read_text().splitlines()
                    self._file_tokens = [t.strip() for t in lines if t.strip() and not t.lstrip().startswith("#")]
                    self._token_file_mtime = mtime
            except OSError as exc:
                self.log.error("websocket_token_file_unreadable", path=str(path), error=str(exc))
                self._file_tokens, self._token_file_mtime = [], None
                return tokens or ["\0no token can match\0"]  # configured but unreadable: refuse everyone
            tokens += self._file_tokens
        return tokens

    def _authorized(self, request: web.Request) -> bool:
        tokens = self._tokens()
        if not tokens:
            return True
        given = request.query.get("access_token", "")
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given = value.strip()
        if not given:
            return False
        # compare with every token, so the time taken does not tell which one nearly matched
        return sum(hmac.compare_digest(given.encode(), t.encode()) for t in tokens) > 0

    def _refuse(self, request: web.Request, status: int, counter: str, reason: str) -> web.Response:
        self.count(counter)
        self.log.info("websocket_refused", peer=request.remote, status=status, reason=reason)
        headers = {"WWW-Authenticate": 'Bearer realm="busd"'} if status == 401 else {}
        return web.Response(status=status, text=reason + "\n", headers=headers)

    def _client_filter(self, request: web.Request) -> Filter:
        query = request.query
        for key in query:
            if key not in QUERY_KEYS:
                raise FilterError(f"unknown query parameter {key!r} (allowed: {', '.join(QUERY_KEYS[:-1])})")
        spec: dict[str, Any] = {}
        for key in ("system", "event_type", "kind"):
            values = query.getall(key, [])
            if values:
                spec[key] = values
        severities = query.getall("severity", [])
        if len(severities) > 1:
            raise FilterError("severity: give one minimum severity")
        if severities:
            spec["severity"] = severities[0]
        return Filter.parse(spec)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        if not self._authorized(request):
            return self._refuse(request, 401, "unauthorized", "missing or wrong bearer token")
        try:
            flt = self._client_filter(request)
        except FilterError as exc:
            return self._refuse(request, 400, "bad_requests", str(exc).removeprefix("filter."))
        if len(self.clients) >= self.options["max_clients"]:
            return self._refuse(request, 503, "refused_full", f"too many clients ({self.options['max_clients']})")
        heartbeat = self.options["heartbeat"] or None
        ws = web.WebSocketResponse(heartbeat=heartbeat, max_msg_size=64 * 1024)
        await ws.prepare(request)
        client = Client(ws, flt, request)
        client.sender = asyncio.create_task(self._send(client), name=f"ws-send-{client.peer}")
        self.clients.add(client)
        self.count("clients")
        self.count("clients_open")
        self.log.info("websocket_client_connected", peer=client.peer, query=dict(request.query.items()) | (
            {"access_token": "***"} if "access_token" in request.query else {}))
        try:
            async for msg in ws:  # clients only listen; reading runs pings, pongs and the close handshake
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            self.clients.discard(client)
            client.sender.cancel()
            self.count("clients_open", -1)
            self.log.info("websocket_client_disconnected", peer=client.peer, close_code=ws.close_code)
        return ws

    async def _peers(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return self._refuse(request, 401, "unauthorized", "missing or wrong bearer token")
        return web.json_response([{"hostname": self.hostname, "self": True}])

    # -- lifecycle -------------------------------------------------------------------------------

    def _ssl_context(self) -> ssl.SSLContext | None:
        if not self.options["certfile"]:
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.path(self.options["certfile"]), self.path(self.options["keyfile"]))
        return ctx

    async def setup(self) -> None:
        """Start the HTTP server (in the background: a failing bind is retried, not fatal)."""
        app = web.Application()
        app.router.add_get("/v1/events", self._events)
        app.router.add_get("/v1/peers", self._peers)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
        await self._runner.setup()
        self._serve_task = asyncio.create_task(self._serve(), name="websocket-serve")
        if not self._tokens() and not _is_loopback(self.host):
            self.log.warning("websocket_unauthenticated", address=self.options["address"],
                             reason="no tokens configured: anyone who reaches the address reads the events")

    async def _serve(self) -> None:
        assert self._runner is not None
        delay = 1.0
        while True:
            try:
                site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self._ssl_context(),
                                   reuse_address=True)
                await site.start()
                break
            except (OSError, ssl.SSLError, ValueError) as exc:
                self.log.error("websocket_listen_failed", address=self.options["address"], error=str(exc),
                               retry_in=delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
        self.listening = [_format_sockname(a) for a in self._runner.addresses]
        scheme = "wss" if self.options["certfile"] else "ws"
        self.log.info("websocket_listening", address=self.listening, scheme=scheme)
        self.write_status({"listening": self.listening, "scheme": scheme})

    async def teardown(self) -> None:
        """Close every client (1001 going away) and the server."""
        if self._serve_task is not None:
            self._serve_task.cancel()
        for client in tuple(self.clients):
            if client.sender is not None:
                client.sender.cancel()
            self._close(client, WSCloseCode.GOING_AWAY, "busd receiver stopping")
        self.clients.clear()
        if self._closing:
            await asyncio.wait(tuple(self._closing), timeout=1.0)
        if self._runner is not None:
            await self._runner.cleanup()


def _format_sockname(name: Any) -> str:
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


if __name__ == "__main__":
    run(Websocket)

"""Collector ``gluster``: GlusterFS event datagrams (the ``gf_event`` Events API), one raw event each.

GlusterFS (glusterd, the ``gluster`` command, bricks, clients, geo-replication) sends every event
as one UDP datagram ``<unix-ts> <index> key=value;key=value`` to port 55555 of the local host
(``[::1]`` first where IPv6 is up, then ``127.0.0.1``); this collector takes the place of
``glustereventsd``, which must be stopped so busd can bind the port. The ``gluster`` parser turns
the raw events into named, typed events.

Options:

- ``bind`` (default ``["127.0.0.1", "::1"]``): addresses to listen on (IP literals). Brick and
  client processes send their events to their *volfile server*, the host name given with
  ``-s`` (a brick of ``node1:/bricks/b1`` sends to ``node1``'s address, not to loopback); to
  receive those too, listen where ``glustereventsd`` does: ``["0.0.0.0", "::1"]``.
- ``port`` (default 55555): the UDP port (GlusterFS releases before 2021 sent to 24009).
- ``path`` (default empty: off): also listen on an AF_UNIX datagram socket at this path (a
  relative path is relative to the configuration file), for senders that write there, e.g.
  ``/var/run/gluster/events.sock``, where the first (2016) Events API design had ``gf_event``
  write (its development code used a stream connection; the releases send UDP); a stale socket
  file is replaced, one in use by a live process is not.
- ``glusterd_info`` (default ``/var/lib/glusterd/glusterd.info``): glusterd's identity file,
  whose ``UUID=`` line is the node id ``glustereventsd`` puts in every webhook body (re-read
  when the file changes; absent until glusterd first ran).
- ``max_size`` (default 16384): larger datagrams are refused as ``oversized``.
- ``queue`` (default 10000): datagrams held while busd applies back pressure; beyond, they are
  dropped and counted (UDP has no flow control).
- ``rebind_interval`` (default 5 s): an address that could not be bound (port in use, address
  not configured yet) is tried again this often; the error is logged once per outage.

Each valid datagram becomes a raw event: system ``gluster``, kind ``raw``, event_type
``GLUSTER_EVENT``, severity ``info``, ``msg`` the datagram text (stripped), ``timestamp`` its
time stamp (whole seconds, as GlusterFS sends them), and ``extensions``: ``index`` (int),
``message`` (the ``key=value;...`` text, possibly empty), ``sender`` (``"127.0.0.1:40001"``,
``"[::1]:40001"``, ``"unix:/path"`` or ``"unix"`` for an unbound AF_UNIX sender) and, when
``glusterd_info`` has one, ``nodeid``.

Malformed datagrams (``oversized``, ``not_utf8``, ``empty``, ``no_index``, ``bad_timestamp``,
``bad_index``) are counted by reason and logged with the sender (at most 10 lines a minute, then
a count), never fatal. Counters, listening addresses and the node id are in the plugin's status
file (``busctl gluster status``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import os
import socket
import stat
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bus.config import Option
from bus.event import Event
from bus.exceptions import BadInput
from bus.plugin import Collector, run
from parsers._gluster_events import DEFAULT_PORT, parse_datagram

OPTIONS = {
    "bind": Option(list, ["127.0.0.1", "::1"], "IP addresses to listen on for event datagrams"),
    "port": Option(int, DEFAULT_PORT, "UDP port GlusterFS sends its events to"),
    "path": Option(str, "", "also listen on an AF_UNIX datagram socket at this path (empty: off)"),
    "glusterd_info": Option(str, "/var/lib/glusterd/glusterd.info", "glusterd's identity file (UUID= is the node id)"),
    "max_size": Option(int, 16384, "largest datagram accepted, bytes"),
    "queue": Option(int, 10000, "datagrams held while busd applies back pressure (beyond: dropped, counted)"),
    "rebind_interval": Option(float, 5.0, "seconds between attempts to bind an address that failed"),
}

LOG_BURST = 10
"""Malformed or dropped datagrams logged per :data:`LOG_WINDOW`; the rest are counted."""
LOG_WINDOW = 60.0


def check_options(options: dict[str, Any]) -> None:
    """Refuse bind entries that are not IP addresses, bad ports and sizes, and nothing to listen on."""
    seen = set()
    for item in options["bind"]:
        try:
            address = ipaddress.ip_address(item)
        except (ValueError, TypeError):
            raise ValueError(f"bind: {item!r} is not an IP address (e.g. \"127.0.0.1\", \"::1\", \"0.0.0.0\")") from None
        if address in seen:
            raise ValueError(f"bind: {item!r} is listed twice")
        seen.add(address)
    if not 1 <= options["port"] <= 65535:
        raise ValueError(f"port: {options['port']} is not a port number (1-65535)")
    if not options["bind"] and not options["path"]:
        raise ValueError("bind: nothing to listen on (give addresses in bind, or a path)")
    if len(os.fsencode(options["path"])) > 107:
        raise ValueError(f"path: {options['path']!r} is longer than an AF_UNIX socket path may be (107 bytes)")
    if not 64 <= options["max_size"] <= 1 << 20:
        raise ValueError(f"max_size: {options['max_size']} is not between 64 and 1048576")
    if options["queue"] < 1:
        raise ValueError(f"queue: {options['queue']} must be at least 1")
    if options["rebind_interval"] <= 0:
        raise ValueError(f"rebind_interval: {options['rebind_interval']} must be positive")


def format_sender(addr: Any) -> str:
    """Return a datagram's source as ``host:port``, ``[v6]:port``, ``unix:/path`` or ``unix``."""
    if isinstance(addr, tuple) and len(addr) >= 2:
        host, port = addr[0], addr[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if isinstance(addr, bytes):
        addr = os.fsdecode(addr)
    return f"unix:{addr}" if addr else "unix"


def read_node_id(path: str) -> str | None:
    """Return the ``UUID=`` value of a ``glusterd.info`` file the way glustereventsd reads it.

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("UUID="):
                return line.strip().split("=")[-1]
    return None


class _Listener(asyncio.DatagramProtocol):
    """Hands every datagram of one socket to the collector."""

    def __init__(self, collector: Gluster) -> None:
        self.collector = collector

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.collector.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.collector.log.warning("gluster_receive_error", error=str(exc))


class _LogLimiter:
    """At most ``burst`` lines per ``window`` seconds; the rest are counted and summarised."""

    def __init__(self, burst: int = LOG_BURST, window: float = LOG_WINDOW) -> None:
        self.burst = burst
        self.window = window
        self.started = 0.0
        self.logged = 0
        self.suppressed = 0

    def allow(self, now: float) -> bool:
        """Return whether one more line may be logged now (counting it if not)."""
        if now - self.started >= self.window:
            self.started, self.logged = now, 0
        if self.logged < self.burst:
            self.logged += 1
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self, now: float) -> int:
        """Return how many lines were held back, once their window is over (else 0)."""
        if not self.suppressed or now - self.started < self.window:
            return 0
        n, self.suppressed = self.suppressed, 0
        return n


class Gluster(Collector):
    """Listen for GlusterFS event datagrams on UDP (and optionally AF_UNIX) and emit raw events."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__(env)
        opts = self.options
        self.max_size: int = opts["max_size"]
        self.port: int = opts["port"]
        self.unix_path: Path | None = self.path(opts["path"]) if opts["path"] else None
        self.info_path: str = opts["glusterd_info"]
        self.pending: deque[Event] = deque()
        self.wakeup = asyncio.Event()
        self.transports: dict[str, asyncio.BaseTransport] = {}
        self.unbound: dict[str, str] = {}
        self.counters: dict[str, Any] = {"received": 0, "emitted": 0, "dropped": 0}
        self.limiter = _LogLimiter()
        self._node_key: tuple[int, int, int] | None = None
        self._node_id: str | None = None
        self._node_error: str | None = None
        self._status_dirty = True

    # -- receiving -------------------------------------------------------------------------

    def on_datagram(self, data: bytes, addr: Any) -> None:
        """Check one datagram; queue its raw event, or count and log why it is refused."""
        self.counters["received"] += 1
        self._status_dirty = True
        sender = format_sender(addr)
        try:
            dgram = parse_datagram(data, self.max_size)
        except BadInput as exc:
            # logged here, limited per minute and with the sender, rather than once per kind
            self.bad_input(exc.kind, exc.detail, log=False, sender=sender)
            if self.limiter.allow(time.monotonic()):
                self.log.warning("gluster_malformed_datagram", reason=exc.kind, sender=sender, detail=exc.detail)
            return
        if len(self.pending) >= self.options["queue"]:
            self.counters["dropped"] += 1
            if self.limiter.allow(time.monotonic()):
                self.log.warning("gluster_queue_full", sender=sender, queue=self.options["queue"],
                                 dropped=self.counters["dropped"])
            return
        ext: dict[str, Any] = {"index": dgram.index, "message": dgram.message, "sender": sender}
        node_id = self.node_id()
        if node_id is not None:
            ext["nodeid"] = node_id
        self.pending.append(self.event("gluster", "GLUSTER_EVENT", dgram.text, timestamp=float(dgram.ts),
                                       extensions=ext))
        self.wakeup.set()

    def node_id(self) -> str | None:
        """Return the node UUID from ``glusterd_info``, re-reading the file only when it changed."""
        try:
            st = os.stat(self.info_path)
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
            if key != self._node_key:
                self._node_id = read_node_id(self.info_path)
                self._node_key = key
                self.log.info("gluster_node_id", path=self.info_path, nodeid=self._node_id)
            self._node_error = None
        except OSError as exc:
            if self._node_error is None:
                self.log.warning("gluster_node_id_unknown", path=self.info_path, error=exc.strerror or str(exc),
                                 hint="events go out without nodeid until glusterd has created this file")
            self._node_error = exc.strerror or str(exc)
            self._node_key, self._node_id = None, None
        return self._node_id

    # -- sockets ---------------------------------------------------------------------------

    async def bind_all(self) -> None:
        """Open every configured socket that is not open yet; log each failure once per outage."""
        loop = asyncio.get_running_loop()
        wanted = [f"udp:{a}" for a in self.options["bind"]] + ([f"unix:{self.unix_path}"] if self.unix_path else [])
        for key in wanted:
            if key in self.transports:
                continue
            try:
                sock = self._open_unix() if key.startswith("unix:") else self._open_udp(key[4:])
                transport, _ = await loop.create_datagram_endpoint(lambda: _Listener(self), sock=sock)
            except OSError as exc:
                reason = _bind_error(exc, self.port, key)
                if self.unbound.get(key) != reason:
                    self.log.error("gluster_bind_failed", address=key, error=reason,
                                   retry_in=self.options["rebind_interval"])
                self.unbound[key] = reason
                self._status_dirty = True
                continue
            self.transports[key] = transport
            self.unbound.pop(key, None)
            self._status_dirty = True
            self.log.info("gluster_listening", address=key, port=None if key.startswith("unix:") else self.port)

    def _open_udp(self, host: str) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                # "::" must not also take the IPv4 port, so "0.0.0.0" can be bound beside it
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((host, self.port))
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    def _open_unix(self) -> socket.socket:
        assert self.unix_path is not None
        path = str(self.unix_path)
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            mode = None
        if mode is not None:
            if not stat.S_ISSOCK(mode):
                raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
                try:
                    probe.connect(path)
                except ConnectionRefusedError:
                    os.unlink(path)  # stale: nothing reads from it any more
                except OSError as exc:  # e.g. a stream socket: someone else's
                    raise OSError(errno.EADDRINUSE, f"{path} is another kind of socket ({exc.strerror})") from None
                else:
                    raise OSError(errno.EADDRINUSE, f"{path} is in use by another process")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(path)
        except OSError:
            sock.close()
            raise
        sock.setblocking(False)
        return sock

    # -- the plugin ------------------------------------------------------------------------

    async def run(self) -> None:
        """Bind, then emit queued events; rebind failed addresses and publish status meanwhile."""
        self.node_id()
        await self.bind_all()
        upkeep = asyncio.create_task(self._upkeep(), name="gluster-upkeep")
        try:
            while True:
                await self.wakeup.wait()
                self.wakeup.clear()
                while self.pending:
                    await self.emit(self.pending.popleft())
                    self.counters["emitted"] += 1
                    self._status_dirty = True
        finally:
            upkeep.cancel()

    async def _upkeep(self) -> None:
        next_bind = time.monotonic() + self.options["rebind_interval"]
        while True:
            self._publish_status()
            await asyncio.sleep(min(1.0, self.options["rebind_interval"]))
            now = time.monotonic()
            held = self.limiter.take_suppressed(now)
            if held:
                self.log.warning("gluster_log_suppressed", datagrams=held, malformed=dict(self.bad_inputs),
                                 dropped=self.counters["dropped"])
            if self.unbound and now >= next_bind:
                await self.bind_all()
            if now >= next_bind:
                next_bind = now + self.options["rebind_interval"]

    def _publish_status(self) -> None:
        if not self._status_dirty:
            return
        self._status_dirty = False
        self.write_status({"listening": sorted(self.transports), "unbound": dict(self.unbound), "port": self.port,
                           "nodeid": self._node_id, **self.counters,
                           "malformed": dict(self.bad_inputs)})

    async def teardown(self) -> None:
        """Close the sockets and remove the AF_UNIX socket file this collector created."""
        for transport in self.transports.values():
            transport.close()
        if self.unix_path is not None and f"unix:{self.unix_path}" in self.transports:
            with contextlib.suppress(OSError):
                os.unlink(self.unix_path)
        self.transports.clear()


def _bind_error(exc: OSError, port: int, key: str) -> str:
    """Explain a bind failure, with what to do about the usual ones."""
    text = exc.strerror or str(exc)
    if exc.errno == errno.EADDRINUSE and key.startswith("udp:"):
        return f"{text}: port {port} is taken (is glustereventsd running? stop and disable it so busd owns the port)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{text}: no interface has this address (yet)"
    return text


if __name__ == "__main__":
    run(Gluster)

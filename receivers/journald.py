"""Receiver ``journald``: writes every event into the systemd journal with its fields, queryable.

Each event becomes one journal entry sent with journald's native protocol to ``socket`` (default
``/run/systemd/journal/socket``):

- ``MESSAGE``: the event's ``msg`` (or the readable one-line form when it is empty);
- ``PRIORITY``: 3 for error, 4 for warn, 6 for info; ``SYSLOG_IDENTIFIER=busd``;
- ``MESSAGE_ID``: 32 hex digits derived from the event type alone (a UUIDv5), the same on every host
  and version, so ``journalctl MESSAGE_ID=...`` finds every event of a type;
- every other key of the event as ``BUS_<KEY>`` (``BUS_EVENT_ID``, ``BUS_SYSTEM``, ``BUS_EVENT_TYPE``,
  ``BUS_DEV_WWID``, ``BUS_DEV_NAME``, ``BUS_SEVERITY``, ``BUS_HOSTNAME``, ``BUS_SOURCE``, ``BUS_KIND``,
  ``BUS_TIMESTAMP``, ...) and each extension as ``BUS_EXT_<KEY>`` (upper-cased, characters other than
  ``A-Z0-9_`` turned into ``_``); values that are not strings are JSON. So
  ``journalctl BUS_DEV_WWID=naa.5000c500a1b2c3d4`` lists a disk's history.

An entry too large for one datagram is written to a sealed memfd whose descriptor is passed instead,
as ``sd_journal_sendv`` does. When journald is down (socket missing or refusing), the error is
logged (``journald_unavailable``, repeated every minute while it lasts), counted in ``busctl status``
(``journald_errors``), and entries wait in memory, retried with backoff (0.1 s doubling up to
``retry_max``). Up to ``queue_size`` entries wait; beyond that the receiver stops taking events, so
they wait in busd's replay buffer instead (``replay_buffer`` events), and only what falls out of
that is lost, reported as ``BUS_EVENTS_LOST``. Entries still waiting when the receiver stops are
logged as ``journald_unsent`` with their number.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import fcntl
import json
import os
import re
import socket
import struct
import time
import uuid
from collections import deque
from functools import lru_cache
from typing import Any

from bus.cli import format_line
from bus.config import Option
from bus.event import Event
from bus.plugin import Receiver, run
from receivers._retry import Outage

OPTIONS = {
    "socket": Option(str, "/run/systemd/journal/socket", "journald's native protocol socket"),
    "queue_size": Option(int, 1000, "entries kept in memory while journald is down (then back pressure)"),
    "retry_max": Option(float, 30.0, "longest delay between two attempts while journald is down, seconds"),
}

PRIORITY = {"error": "3", "warn": "4", "info": "6"}
MESSAGE_ID_NAMESPACE = uuid.UUID("97e38ec4-a3d4-4955-b39e-2ac8a71c9228")
"""Never change it: every ``MESSAGE_ID`` already in journals derives from it."""

_NOT_FIELD = re.compile(r"[^A-Z0-9_]")
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL
_SKIPPED = frozenset({"v", "msg", "extensions"})


def check_options(options: dict[str, Any]) -> None:
    """Refuse a queue that cannot hold an entry and a non-positive retry delay."""
    if options["queue_size"] < 1:
        raise ValueError(f"queue_size: must be at least 1, got {options['queue_size']}")
    if options["retry_max"] <= 0:
        raise ValueError(f"retry_max: must be positive, got {options['retry_max']}")
    if not options["socket"]:
        raise ValueError("socket: must not be empty")


def message_id(event_type: str) -> str:
    """Return the ``MESSAGE_ID`` of an event type: 32 lower-case hex digits, stable forever."""
    return uuid.uuid5(MESSAGE_ID_NAMESPACE, event_type).hex


@lru_cache(maxsize=4096)
def field_name(prefix: str, key: str) -> bytes:
    """Return a valid journal field name for an event key: ``prefix`` + the key upper-cased.

    Journal field names are ``A-Z``, ``0-9`` and ``_``, do not start with ``_`` or a digit, and are at
    most 64 characters; a longer name is cut and ends with a hash of the key to stay distinct.
    """
    name = prefix + _NOT_FIELD.sub("_", key.upper())
    if len(name) > 64:
        name = f"{name[:55]}_{uuid.uuid5(MESSAGE_ID_NAMESPACE, key).hex[:8].upper()}"
    return name.encode()


def _add(parts: list[bytes], name: bytes, value: Any) -> None:
    data = (value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)).encode(
        "utf-8", "surrogateescape")
    if b"\n" in data:  # the binary form: name, newline, 64-bit little-endian length, data, newline
        parts += (name, b"\n", struct.pack("<Q", len(data)), data, b"\n")
    else:
        parts += (name, b"=", data, b"\n")


def encode(event: Event) -> bytes:
    """Return one journal entry in the native protocol for an event."""
    parts: list[bytes] = []
    event_type = str(event.get("event_type", ""))
    _add(parts, b"MESSAGE", event.get("msg") or format_line(event, color=False))
    _add(parts, b"PRIORITY", PRIORITY.get(event.get("severity", "info"), "6"))
    _add(parts, b"SYSLOG_IDENTIFIER", "busd")
    _add(parts, b"MESSAGE_ID", message_id(event_type))
    for key, value in event.items():
        if key not in _SKIPPED:
            _add(parts, field_name("BUS_", str(key)), value)
    for key, value in (event.get("extensions") or {}).items():
        _add(parts, field_name("BUS_EXT_", str(key)), value)
    return b"".join(parts)


class Journald(Receiver):
    """Send each event to journald, keeping entries while it is down."""

    async def setup(self) -> None:
        """Prepare the queue and start the task that sends what waits."""
        opts = self.options
        self.socket_path = str(self.path(opts["socket"]))
        self.bound: int = opts["queue_size"]
        self.queue: deque[bytes] = deque()
        self.sock: socket.socket | None = None
        self.outage = Outage(self.log, "journald", maximum=opts["retry_max"])
        self.wake = asyncio.Event()
        self.space = asyncio.Event()
        self.sender = asyncio.create_task(self._sender(), name="journald-sender")

    async def handle(self, event: Event) -> None:
        """Send the entry now, or queue it (waiting while the queue is full)."""
        payload = encode(event)
        if not self.queue:
            with contextlib.suppress(OSError):  # the sender retries it, logs and counts the failure
                if self._send(payload):
                    return
        while len(self.queue) >= self.bound:
            self.space.clear()
            await self.space.wait()
        self.queue.append(payload)
        self.wake.set()

    def _connect(self) -> socket.socket:
        if self.sock is None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
            try:
                sock.connect(self.socket_path)
            except OSError:
                sock.close()
                raise
            self.sock = sock
        return self.sock

    def _disconnect(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _send(self, payload: bytes) -> bool:
        """Send one entry; return False when journald's queue is full (wait until writable).

        Raises:
            OSError: journald is not there (the connection is dropped, to be made again).
        """
        try:
            sock = self._connect()
            sock.send(payload)
            return True
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EMSGSIZE, errno.ENOBUFS):
                self._disconnect()
                raise
        return self._send_memfd(sock, payload)

    def _send_memfd(self, sock: socket.socket, payload: bytes) -> bool:
        """Pass an entry too large for a datagram as a sealed memfd (journald reads and closes it)."""
        try:
            fd = os.memfd_create("busd-journal", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except OSError as exc:
            self.count("journald_dropped")
            self.log.error("journald_entry_dropped", reason=f"too large for a datagram ({len(payload)} bytes) "
                           f"and no memfd: {exc}")
            return True
        try:
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            try:
                sock.sendmsg([], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]).tobytes())])
            except BlockingIOError:
                return False
            except OSError:
                self._disconnect()
                raise
            return True
        finally:
            os.close(fd)

    async def _writable(self) -> None:
        """Wait until journald has room again (or 1 s, then simply try again)."""
        if self.sock is None:
            return
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        fd = self.sock.fileno()

        def wake() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_writer(fd, wake)
        try:
            async with asyncio.timeout(1.0):
                await ready
        except TimeoutError:
            pass
        finally:
            loop.remove_writer(fd)

    async def _sender(self) -> None:
        """Send the queued entries in order, retrying with backoff while journald is down."""
        queue = self.queue
        while True:
            if not queue:
                self.wake.clear()
                await self.wake.wait()
                continue
            try:
                sent = self._send(queue[0])
            except OSError as exc:
                self.count("journald_errors")
                await asyncio.sleep(self.outage.failed(f"{self.socket_path}: {exc.strerror or exc}", queued=len(queue)))
                continue
            if not sent:
                await self._writable()
                continue
            queue.popleft()
            if self.outage.active:
                self.outage.succeeded(socket=self.socket_path, queued=len(queue))
            if len(queue) < self.bound:
                self.space.set()

    async def teardown(self) -> None:
        """Send what waits (for up to 0.5 s), then report what could not be sent."""
        deadline = time.monotonic() + 0.5
        while self.queue and time.monotonic() < deadline and not self.outage.active:
            await asyncio.sleep(0.01)
        self.sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.sender
        if self.queue:
            self.log.error("journald_unsent", entries=len(self.queue), socket=self.socket_path,
                           reason="journald did not take them before the receiver stopped")
        self._disconnect()


if __name__ == "__main__":
    run(Journald)

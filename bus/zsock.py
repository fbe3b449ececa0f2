"""Waiting for ZeroMQ sockets from asyncio, without a future per message.

``zmq.asyncio`` builds futures, a poller and enum flags for every ``recv`` and ``send``; on the
hot paths of the SDK that cost more CPU than the events themselves. The SDK therefore uses plain
sockets: it waits with :class:`Readiness` (the loop watches the socket's file descriptor), drains
every message waiting without blocking, and sends without blocking.

ZeroMQ's file descriptor is edge-triggered: it signals that the socket's state changed, not that
a message waits, and any operation on the socket (a send too) may consume that signal. So the
readiness of a socket is always read from ``zmq.EVENTS`` before sleeping, and a send on a socket
that also receives is followed by :meth:`Readiness.poke`.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import zmq

__all__ = ["NOBLOCK", "POLLIN", "Readiness", "has_message", "recv_message", "send_message", "sync_context"]

# plain ints: pyzmq's constants are enum flags, and every ``&`` or ``|`` on them builds a new enum
POLLIN = int(zmq.POLLIN)
POLLOUT = int(zmq.POLLOUT)
NOBLOCK = int(zmq.NOBLOCK)
SNDMORE = int(zmq.SNDMORE)
_EVENTS = int(zmq.EVENTS)
_RCVMORE = int(zmq.RCVMORE)


def has_message(sock: zmq.Socket[bytes]) -> bool:
    """Return whether a message waits on ``sock`` (this also re-arms its file descriptor)."""
    return bool(cast(int, sock.get(_EVENTS)) & POLLIN)


def recv_message(sock: zmq.Socket[bytes]) -> list[bytes]:
    """Receive one whole multipart message that :func:`has_message` said is waiting."""
    frames = [sock.recv(NOBLOCK)]
    while sock.get(_RCVMORE):
        frames.append(sock.recv(NOBLOCK))
    return frames


def send_message(sock: zmq.Socket[bytes], frames: list[bytes], flags: int = 0) -> None:
    """Send a multipart message (``pyzmq``'s ``send_multipart`` without its per-call checks)."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        sock.send(frame, flags | SNDMORE if i < last else flags)


def sync_context(ctx: zmq.Context[Any] | None = None) -> zmq.Context[zmq.Socket[bytes]]:
    """Return a plain context on the same ZeroMQ context (one I/O thread) as ``ctx``, or the global one."""
    if ctx is None:
        return zmq.Context.instance()
    return zmq.Context.shadow(ctx.underlying)


class Readiness:
    """Await a ZeroMQ socket having a message to receive (or room to send).

    Args:
        sock: a plain (not ``zmq.asyncio``) socket; the running loop watches its descriptor
            until :meth:`close`.
    """

    def __init__(self, sock: zmq.Socket[bytes]) -> None:
        self.sock = sock
        self._loop = asyncio.get_running_loop()
        self._fd = cast(int, sock.getsockopt(zmq.FD))
        self._waiter: asyncio.Future[None] | None = None
        self._interrupted = False
        self._loop.add_reader(self._fd, self._wake)

    def _events(self) -> int:
        return cast(int, self.sock.get(_EVENTS))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def interrupt(self) -> None:
        """Make a pending :meth:`wait` return now (with whether the socket is ready)."""
        self._interrupted = True
        self._wake()

    def poke(self) -> None:
        """After a send on the socket: wake the waiter if a message is waiting (the send may have taken the signal)."""
        if self._waiter is not None and self._events() & POLLIN:
            self._wake()

    async def wait(self, timeout: float | None = None, events: int = POLLIN) -> bool:
        """Return True once the socket has ``events`` ready, False after ``timeout`` seconds without."""
        loop = self._loop
        deadline = None if timeout is None else loop.time() + timeout
        while not self._events() & events:
            if deadline is not None and loop.time() >= deadline:
                return False
            waiter = self._waiter = loop.create_future()
            timer = None if deadline is None else loop.call_at(deadline, self._wake)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
            if self._interrupted:
                self._interrupted = False
                return bool(self._events() & events)
        return True

    async def send(self, data: bytes) -> None:
        """Send one frame, waiting only while the socket's queue is full."""
        while True:
            try:
                self.sock.send(data, NOBLOCK)
                break
            except zmq.Again:
                await self.wait(events=POLLOUT)
        self.poke()

    def close(self) -> None:
        """Stop watching the descriptor (before the socket is closed)."""
        self._loop.remove_reader(self._fd)

"""Clients of the broker: control requests, acknowledged publishing, and gap-free subscribing.

These are the building blocks of the plugin SDK and of ``bus-emit``, ``bus-tail`` and ``busctl``.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import math
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import zmq
import zmq.asyncio

from bus import protocol
from bus.event import Event, new_event, new_event_id
from bus.exceptions import ControlError
from bus.log import get_logger
from bus.protocol import SEQ
from bus.zsock import NOBLOCK, Readiness, has_message, recv_message, sync_context

__all__ = ["ControlClient", "Delivery", "Publisher", "Run", "Subscriber", "request"]

log = get_logger("client")


def permission_denied(endpoint: str) -> str:
    """Return why this process may not connect to an ``ipc://`` endpoint (``""``: it may, or cannot tell).

    ZeroMQ connects in the background and would only time out; this names the cause at once.
    """
    if not endpoint.startswith("ipc://"):
        return ""
    path = endpoint.removeprefix("ipc://")
    if os.access(path, os.W_OK):
        return ""
    try:
        os.stat(path)
    except FileNotFoundError:
        return ""  # busd is not running: the request times out with its own message
    except PermissionError:
        pass  # a directory on the way may not be searched
    return (f"permission denied on {path}: busd's sockets are for its own user and the members of its "
            f"socket_group ([main] socket_group; see docs/operators.md, Security)")


class ControlClient:
    """A DEALER on the control socket with concurrent requests matched to replies by ``id``.

    Args:
        endpoint: busd's control socket (``BUS_CONTROL``).
        ctx: the ZeroMQ context to share (its I/O thread); the global one by default.

    Attributes:
        ctx: a ``zmq.asyncio`` context on the same ZeroMQ context, for callers' own sockets.
    """

    def __init__(self, endpoint: str, ctx: zmq.Context[Any] | None = None) -> None:
        self.endpoint = endpoint
        self.ctx = ctx if isinstance(ctx, zmq.asyncio.Context) else zmq.asyncio.Context.instance()
        self.zctx = sync_context(ctx if ctx is not None else self.ctx)
        self.sock = self._connect()
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._ready: Readiness | None = None
        self.on_pending: Callable[[int], None] | None = None

    def _connect(self) -> zmq.Socket[bytes]:
        sock = self.zctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SNDHWM, 0)  # never full: a send never blocks
        sock.connect(self.endpoint)
        return sock

    def reconnect(self) -> None:
        """Throw the socket away with whatever it still queues, and connect a new one.

        The "lazy pirate" pattern: after a timeout, resending on the same socket would pile copies
        up in its queue while busd is away; a fresh socket holds only what is sent next.
        """
        self._stop_reader()
        self.sock.close(0)
        self.sock = self._connect()

    def _stop_reader(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            self._reader = None
        if self._ready is not None:
            self._ready.close()
            self._ready = None

    def _ensure_reader(self) -> Readiness:
        if self._ready is None:
            self._ready = Readiness(self.sock)
            self._reader = asyncio.create_task(self._read(self._ready), name="control-reader")
        return self._ready

    async def _read(self, ready: Readiness) -> None:
        sock = ready.sock
        while True:
            await ready.wait()
            while has_message(sock):
                self._dispatch(recv_message(sock)[-1])

    def _dispatch(self, frame: bytes) -> None:
        try:
            reply = protocol.unpackb(frame)
            if reply.get("pending"):  # busd holds the request back (back pressure): keep waiting
                if self.on_pending is not None:
                    self.on_pending(reply["id"])
                return
            fut = self._waiting.pop(reply["id"])
        except Exception:
            return
        if not fut.done():
            fut.set_result(reply)

    def send(self, msg: dict[str, Any]) -> tuple[int, asyncio.Future[dict[str, Any]]]:
        """Send a request now and return ``(id, future reply)``; :meth:`resend` may repeat it."""
        rid = next(self._ids)
        msg["id"] = rid
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = fut
        self._send(msg)
        return rid, fut

    def resend(self, rid: int, msg: dict[str, Any]) -> None:
        """Send request ``rid`` again (after a timeout); its first future still gets the reply."""
        msg["id"] = rid
        self._send(msg)

    def _send(self, msg: dict[str, Any]) -> None:
        ready = self._ensure_reader()
        try:
            self.sock.send(protocol.packb(msg), NOBLOCK)
        except zmq.ZMQError as exc:  # the request times out and is sent again
            log.warning("control_send_failed", error=str(exc))
        ready.poke()

    def forget(self, rid: int) -> None:
        """Stop waiting for request ``rid``."""
        self._waiting.pop(rid, None)

    async def request(self, msg: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
        """Send a request and await its reply.

        Raises:
            ControlError: no reply within ``timeout`` seconds, or the daemon refused the request.
        """
        denied = permission_denied(self.endpoint)
        if denied:
            raise ControlError(denied)
        rid, fut = self.send(msg)
        try:
            async with asyncio.timeout(timeout):
                reply = await fut
        except TimeoutError:
            self.forget(rid)
            raise ControlError(f"no reply from busd at {self.endpoint} within {timeout:g} s "
                               "(is busd running with this configuration?)") from None
        if not reply.get("ok", False):
            raise ControlError(str(reply.get("error", "request refused")))
        return reply

    def close(self) -> None:
        """Close the socket and cancel the reader."""
        self._stop_reader()
        for fut in self._waiting.values():
            fut.cancel()
        self.sock.close(0)


async def request(endpoint: str, msg: dict[str, Any], timeout: float = 5.0) -> dict[str, Any]:
    """Send one control request to ``endpoint`` and return the reply (see :meth:`ControlClient.request`)."""
    client = ControlClient(endpoint)
    try:
        return await client.request(msg, timeout)
    finally:
        client.close()


class Publisher:
    """Acknowledged publishing: events are batched, and kept until the broker acknowledges them.

    Unacknowledged batches are sent again after ``ack_timeout`` (the broker drops resends by
    ``event_id``), so a producer loses nothing when busd restarts under it.

    When to send is a trade between latency and wake-ups (every hop of the bus wakes once per
    batch, and on a busy machine a wake-up costs more than handling a dozen events):

    * an event on an idle line (nothing in flight, nothing sent for ``linger``) leaves at once;
    * otherwise a batch leaves when its first event has waited ``linger`` seconds, or earlier once
      it is both big and was quick to fill: ``n >= min_batch`` and ``n * n >= fast_rate *
      min_batch * age``. At ``fast_rate`` events/s and above that is ``min_batch`` events (2 ms
      at 5k/s); below, batches wait longer, growing as the rate falls (17 events after 5.6 ms at
      3k/s, 25 after 12.5 ms at 2k/s, ``linger`` at 1k/s). That makes a sustained 1k/s stream 40
      batches a second rather than 100, while p99 latency stays under 5 ms from 5k/s up;
    * with 2 or more requests in flight, what arrives waits for an acknowledgement (big batches
      at full speed).

    Args:
        client: the control client to publish through.
        plugin: the producer's name (``source`` of its events).
        batch: most events per request.
        window: most requests awaiting acknowledgement; :meth:`emit` waits beyond it.
        ack_timeout: seconds before an unacknowledged request is sent again.
        min_batch: fewest events of a batch that leaves before ``linger``.
        linger: seconds the first event of a batch may wait for company.
        fast_rate: events/s from which batches leave at ``min_batch`` events.

    Attributes:
        on_acked: when set, called with the events of each acknowledged request, in the order
            they were emitted, and only once every event emitted before them is acknowledged too
            (a producer that records how far it got, such as ``kmsg``, keeps that in its state).
    """

    def __init__(self, client: ControlClient, plugin: str, *, batch: int = 500, window: int = 8,
                 ack_timeout: float = 2.0, min_batch: int = 10, linger: float = 0.025,
                 fast_rate: float = 5000.0) -> None:
        self.client = client
        self.plugin = plugin
        self.batch = batch
        self.window = window
        self.ack_timeout = ack_timeout
        self.min_batch = min_batch
        self.linger = linger
        self._fill_factor = fast_rate * min_batch
        self._first = 0.0  # when the first event of the buffered batch came (monotonic seconds)
        self._last_send = -math.inf
        self.buffer: list[Event] = []
        self.inflight: OrderedDict[int, tuple[dict[str, Any], asyncio.Future[dict[str, Any]], float]] = OrderedDict()
        self.acked = 0
        self.rejected: list[tuple[int, str]] = []
        self._space = asyncio.Event()
        self._space.set()
        self._timer: asyncio.TimerHandle | None = None
        self._watchdog: asyncio.Task[None] | None = None
        self._sent = asyncio.Event()  # set while requests are in flight: the resend loop sleeps otherwise
        self.on_acked: Callable[[list[Event]], None] | None = None
        self._acked_early: dict[int, list[Event]] = {}
        client.on_pending = self._on_pending

    def _on_pending(self, rid: int) -> None:
        """busd holds this request back while its parsers catch up: it is alive, do not resend."""
        item = self.inflight.get(rid)
        if item is not None:
            self.inflight[rid] = (item[0], item[1], time.monotonic())

    async def emit(self, event: Event) -> None:
        """Queue one event; waits while the window of unacknowledged batches is full."""
        self._ensure_watchdog()
        while not self._space.is_set():
            await self._space.wait()
        if not event.get("event_id"):
            event["event_id"] = new_event_id()  # fixed now, so that a resend is recognised
        self.buffer.append(event)
        self._queued()

    async def emit_many(self, events: list[Any]) -> None:
        """Queue a batch of events at once: what :meth:`emit` does per event, once per batch.

        For a producer that has several events at hand (a block of lines read at once): the cost
        per event drops to appending it. Events may be maps or :class:`bus.event.WireEvent`; a map
        without an ``event_id`` gets one now (a ``WireEvent`` is given one by ``check_wire``).
        """
        if not events:
            return
        self._ensure_watchdog()
        while not self._space.is_set():
            await self._space.wait()
        for event in events:
            if type(event) is dict and not event.get("event_id"):
                event["event_id"] = new_event_id()
        self.buffer.extend(events)
        self._queued()

    def _queued(self) -> None:
        """Events joined the buffer: a lone one on an idle line leaves now, a new batch starts its timer, a due one leaves."""
        if self._timer is None:  # the first events of a batch
            now = time.monotonic()
            if len(self.buffer) == 1 and not self.inflight and now - self._last_send >= self.linger:
                self._send_all()
                return
            self._arm(now)
        if self._due():
            self._send_all()

    def _arm(self, now: float) -> None:
        """Start the batch now buffered: it leaves after ``linger`` at the latest."""
        self._first = now
        self._timer = asyncio.get_running_loop().call_later(self.linger, self._send_all)

    def _due(self) -> bool:
        """Whether the buffered batch leaves before its ``linger`` (see the class documentation)."""
        n = len(self.buffer)
        return n >= self.batch or (n >= self.min_batch and len(self.inflight) < 2
                                   and n * n >= self._fill_factor * (time.monotonic() - self._first))

    def _ensure_watchdog(self) -> None:
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._resend_loop(), name="publisher-resend")

    def _send_all(self) -> None:
        """Send what is buffered, as far as the window allows (the rest goes when acks come)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self.buffer and len(self.inflight) < self.window:
            events, self.buffer = self.buffer[: self.batch], self.buffer[self.batch:]
            msg = {"op": "publish", "plugin": self.plugin, "events": events}
            rid, fut = self.client.send(msg)
            self._last_send = now = time.monotonic()
            self.inflight[rid] = (msg, fut, now)
            fut.add_done_callback(functools.partial(self._on_ack, rid))
            self._sent.set()
        if len(self.inflight) >= self.window:
            self._space.clear()

    def _on_ack(self, rid: int, fut: asyncio.Future[dict[str, Any]]) -> None:
        item = self.inflight.pop(rid, None)
        if item is None or fut.cancelled():
            return
        reply = fut.result()
        self.acked += int(reply.get("accepted", 0))
        for index, reason in reply.get("rejected", []):
            self.rejected.append((index, reason))
            log.warning("event_rejected", plugin=self.plugin, reason=reason)
        if self.on_acked is not None:
            self._release_acked(rid, item[0]["events"])
        if self.buffer:  # what piled up while requests were in flight
            if self._due():
                self._send_all()
            elif self._timer is None:  # a remainder the full window held back
                self._arm(time.monotonic())
        if len(self.inflight) < self.window:
            self._space.set()

    def _release_acked(self, rid: int, events: list[Event]) -> None:
        """Hand acknowledged events to :attr:`on_acked` once no older request is still in flight."""
        assert self.on_acked is not None
        self._acked_early[rid] = events
        oldest = next(iter(self.inflight), None)  # request ids grow, and inflight keeps sending order
        for done in sorted(r for r in self._acked_early if oldest is None or r < oldest):
            self.on_acked(self._acked_early.pop(done))

    async def _resend_loop(self) -> None:
        """Resend everything unacknowledged (on a fresh socket) when the oldest waited too long.

        With nothing in flight it waits for the next send instead of waking: an idle producer costs nothing.
        """
        while True:
            if not self.inflight:
                self._sent.clear()
                await self._sent.wait()
            await asyncio.sleep(self.ack_timeout / 4)
            now = time.monotonic()
            if self.inflight and now - next(iter(self.inflight.values()))[2] > self.ack_timeout:
                self.client.reconnect()
                for rid, (msg, fut, _) in list(self.inflight.items()):
                    self.client.resend(rid, msg)
                    self.inflight[rid] = (msg, fut, now)
                log.info("publish_resend", plugin=self.plugin, events=self.pending() - len(self.buffer),
                         reason=f"not acknowledged within {self.ack_timeout:g} s")

    def pending(self) -> int:
        """Return how many events are not acknowledged yet."""
        return len(self.buffer) + sum(len(m["events"]) for m, _, _ in self.inflight.values())

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued event is acknowledged; return False if ``timeout`` ran out."""
        if self.buffer:
            self._ensure_watchdog()
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.pending():
            self._send_all()
            if deadline is not None and time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
        return True

    async def close(self, timeout: float | None = 2.0) -> bool:
        """Flush (up to ``timeout``) and stop; return whether everything was acknowledged."""
        ok = await self.flush(timeout)
        if self._timer is not None:
            self._timer.cancel()
        if self._watchdog is not None:
            self._watchdog.cancel()
        return ok


@dataclass(slots=True)
class Delivery:
    """One event from a :class:`Subscriber`, with its stream position."""

    kind: str
    seq: int
    event: Event


@dataclass(slots=True)
class Run:
    """Consecutive events of one kind from a :class:`Subscriber`: ``events[i]`` has number ``first + i``."""

    kind: str
    first: int
    events: list[Event]

    def deliveries(self) -> list[Delivery]:
        """The same events one :class:`Delivery` each."""
        kind, first = self.kind, self.first
        return [Delivery(kind, first + i, e) for i, e in enumerate(self.events)]


class Subscriber:
    """Receives published events in order, without gaps: missed ranges are replayed from the broker.

    What fell out of the broker's replay buffer arrives as one ``BUS_EVENTS_LOST`` event (system
    ``bus``, severity ``warn``) with the lost range in its extensions.

    Args:
        events_endpoint: the PUB socket (``BUS_EVENTS``).
        control: a control client (``BUS_CONTROL``).
        kinds: which kinds to receive (``raw``, ``synthetic``).
        plugin: a configured receiver's name: resumes where its last run stopped. ``None``: live.
        last: for an anonymous subscriber, start this many events back in the replay buffer.
        progress_interval: seconds between progress reports and head checks while events flow;
            on a quiet bus the interval doubles with each quiet report, up to ``idle_interval``.
        decode: turns a published array of events into a list; plain maps by default
            (:func:`bus.event.decode_wire` gives typed events, for a caller that only re-encodes them).
    """

    def __init__(self, events_endpoint: str, control: ControlClient, kinds: tuple[str, ...] = ("synthetic",),
                 *, plugin: str | None = None, last: int = 0, progress_interval: float = 0.25,
                 idle_interval: float = 5.0,
                 decode: Callable[[bytes], Any] = protocol.unpackb) -> None:
        self.control = control
        self.decode = decode
        self.kinds = kinds
        self.plugin = plugin
        self.last = last
        self.progress_interval = progress_interval
        self.idle_interval = max(idle_interval, progress_interval)
        self._interval = progress_interval
        self._reported: tuple[Any, ...] = ()  # what the last report said (received, handled, counters...)
        self._ready: Readiness | None = None
        self.sub = control.zctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 100_000)
        for kind in kinds:
            self.sub.setsockopt(zmq.SUBSCRIBE, f"{kind}.".encode())
        self.sub.connect(events_endpoint)
        self.next: dict[str, int] = {}
        self.epoch: str | None = None
        self.head: dict[str, int] = {}
        self.done_seq: dict[str, int] = {}
        self.stats: dict[str, Any] = {"received": 0, "handled": 0, "replayed": 0, "lost": 0, "gaps": 0, "failed": 0,
                      "malformed": 0, "kinds": list(kinds)}
        self._last_progress = 0.0

    async def start(self) -> None:
        """Say hello and learn where to start."""
        reply = await self.control.request({"op": "hello", "plugin": self.plugin, "kinds": list(self.kinds)})
        self.head = reply["head"]
        self.epoch = reply.get("epoch")
        for kind in self.kinds:
            start = reply["resume"][kind]
            if self.plugin is None:
                start = max(1, start - self.last)
            self.next[kind] = start

    def done(self, delivery: Delivery) -> None:
        """Mark a delivery handled (reported to the broker as progress)."""
        self.done_seq[delivery.kind] = delivery.seq
        self.stats["handled"] += 1

    def done_run(self, run: Run) -> None:
        """Mark a whole run handled: :meth:`done` for each of its events, in one step."""
        if run.events:
            self.done_seq[run.kind] = run.first + len(run.events) - 1
            self.stats["handled"] += len(run.events)

    async def _replay(self, kind: str, start: int, end: int, *, tentative: bool = False) -> list[Run]:
        """Fetch ``start..end`` from the broker's replay buffer, as runs; what fell out of it as a loss notice.

        ``tentative``: the events may still be on their way through the PUB socket (nothing proves
        them missed), so where the buffer no longer has them the replay stops, with no notice.
        """
        out: list[Run] = []
        while start <= end:
            reply = await self.control.request({"op": "replay", "kind": kind, "from": start, "to": end}, timeout=10)
            gap = reply.get("gap")
            if gap and tentative:
                break
            if gap:
                missed = gap[1] - gap[0] + 1
                self.stats["lost"] += missed
                log.warning("events_lost", kind=kind, first=gap[0], last=gap[1], missed=missed, plugin=self.plugin)
                out.append(Run(kind, gap[1], [new_event(
                    "bus", "BUS_EVENTS_LOST", f"{missed} {kind} events (seq {gap[0]}..{gap[1]}) fell out of the "
                    "broker's replay buffer before this subscriber received them",
                    severity="warn", kind=kind, extensions={"stream": kind, "first": gap[0], "last": gap[1],
                                                            "missed": missed})]))
                start = gap[1] + 1
            events = reply["events"]
            first = reply["first"]
            if events:
                out.append(Run(kind, first, events))
            self.stats["replayed"] += len(events)
            if events:
                start = first + len(events)
            elif not gap:
                break
            end = min(end, reply.get("head", end))
        return out

    async def _catch_up(self, kind: str, end: int, *, tentative: bool = False) -> list[Run]:
        """Replay ``next[kind]..end`` from the broker; return what is new, advancing ``next``.

        ``tentative`` (see :meth:`_replay`) when nothing proves the events missed: a quiet socket
        on a busy machine may only be late, and a receiver far behind must not call events lost
        that are still coming.
        """
        nxt = self.next[kind]
        if end < nxt:
            return []
        out: list[Run] = []
        for run in await self._replay(kind, nxt, end, tentative=tentative):
            last = run.first + len(run.events) - 1
            if last < nxt:
                continue
            if run.first < nxt:
                run = Run(kind, nxt, run.events[nxt - run.first:])
            out.append(run)
            nxt = last + 1
        self.next[kind] = nxt
        return out

    async def _progress(self, force: bool = False) -> None:
        """Report what was handled (at most every ``progress_interval``) and learn the head.

        Nothing new since the last report doubles the interval (up to ``idle_interval``), so an idle
        receiver wakes a few times a minute rather than four times a second; any event resets it.
        """
        now = time.monotonic()
        if not force and now - self._last_progress < self._interval:
            return
        self._last_progress = now
        counters = self.stats.get("counters")
        moved = (self.stats["received"], self.stats["handled"], self.stats["failed"], self.stats["lost"],
                 tuple(counters.items()) if counters else ())
        self._interval = (self.progress_interval if moved != self._reported
                          else min(2 * self._interval, self.idle_interval))
        self._reported = moved
        try:
            reply = await self.control.request({"op": "progress", "plugin": self.plugin,
                                                "acked": dict(self.done_seq), "stats": self.stats}, timeout=2)
            self.head = reply["head"]
            if reply.get("epoch") != self.epoch:
                log.warning("busd_restarted", plugin=self.plugin, reason="sequence numbers start over")
                self.epoch = reply.get("epoch")
                self.next.update(dict.fromkeys(self.kinds, 1))  # in place: runs() holds the map
        except Exception as exc:
            log.debug("progress_failed", error=str(exc))

    async def __aiter__(self) -> AsyncIterator[Delivery]:
        """Yield deliveries forever, in sequence order per kind, each exactly once per run."""
        async for runs in self.runs():
            for run in runs:
                for delivery in run.deliveries():
                    yield delivery

    async def batches(self) -> AsyncIterator[list[Delivery]]:
        """Yield what arrived at each wake-up as one list: the same deliveries as iterating, cheaper."""
        async for runs in self.runs():
            yield [d for run in runs for d in run.deliveries()]

    async def runs(self) -> AsyncIterator[list[Run]]:
        """Yield what arrived at each wake-up as runs of consecutive events: the cheapest form.

        A receiver that handles a run calls :meth:`done_run` for it (progress is per event
        number, so a run is one update, not one per event).
        """
        if not self.next:
            await self.start()
        for kind in self.kinds:
            caught = await self._catch_up(kind, self.head.get(kind, 0))
            if caught:
                yield caught
        sub = self.sub
        ready = self._ready = Readiness(sub)
        stats = self.stats
        nexts = self.next
        unpack = self.decode
        seq_of = SEQ.unpack
        kinds = {k.encode(): k for k in self.kinds}
        try:
            while True:
                out: list[Run] = []
                frames_read = 0
                if await ready.wait(self._interval):
                    while frames_read < 1000 and has_message(sub):
                        frames = recv_message(sub)
                        frames_read += 1
                        known = kinds.get(frames[0].split(b".", 1)[0])
                        if known is None:
                            continue
                        kind = known
                        try:
                            first = seq_of(frames[1])[0]
                            events = unpack(frames[2])
                            if type(events) is not list:
                                raise TypeError(f"publication holds a {type(events).__name__}, not an array")
                            n = len(events)
                        except Exception as exc:
                            stats["malformed"] += 1
                            log.warning("malformed_publication", error=str(exc), count=stats["malformed"])
                            continue
                        nxt = nexts[kind]
                        stats["received"] += n
                        if first > nxt:
                            stats["gaps"] += 1
                            out += await self._catch_up(kind, first - 1)
                            nxt = nexts[kind]
                        skip = nxt - first
                        if skip < n:
                            out.append(Run(kind, first, events) if skip <= 0 else Run(kind, nxt, events[skip:]))
                            nexts[kind] = first + n
                if frames_read:
                    self._interval = self.progress_interval  # events flow again: report promptly
                if out:
                    yield out
                await self._progress()
                if not frames_read:  # quiet: fetch what the PUB socket may have dropped at the end of a burst
                    for kind in self.kinds:
                        caught = await self._catch_up(kind, self.head.get(kind, 0), tentative=True)
                        if caught:
                            yield caught
        finally:
            self._ready = None
            ready.close()

    def soon(self) -> None:
        """Something to report changed outside the stream (a receiver's counter): report it within
        ``progress_interval``, even if the subscriber was idling on a long interval."""
        if self._interval > self.progress_interval:
            self._interval = self.progress_interval
            if self._ready is not None:
                self._ready.interrupt()

    async def report(self) -> None:
        """Report progress now (at shutdown, so a restart resumes exactly here)."""
        await self._progress(force=True)

    def close(self) -> None:
        """Close the SUB socket."""
        self.sub.close(0)


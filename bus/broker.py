"""The broker: ingest, validation, routing to parsers with acknowledgements, publication with replay.

Hot path, per drained batch of frames: decode -> :func:`bus.event.normalize` -> drop resends by
``event_id`` -> encode once -> append to the replay ring of its kind -> queue for every parser whose
filter matches -> after the batch, one PUB message per run of same-topic events and one delivery per
parser. Nothing here awaits per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import msgspec
import zmq

from bus import protocol
from bus.event import KINDS, WireEvent, check_wire, decode_wire, new_event_id, normalize
from bus.exceptions import EventError
from bus.filter import Filter
from bus.log import get_logger
from bus.protocol import MAX_FRAME, QUEUE_BYTES, REPLAY_BYTES, SEQ
from bus.zsock import NOBLOCK, has_message, recv_message, send_message

__all__ = ["Broker"]

log = get_logger("broker")
_encode = protocol.packb

_DRAIN_MAX = 256
_CONGESTED = 10_000
"""Events queued for one working parser above which producers are held back (at most half of
``parser_queue``)."""
_STALLED_AFTER = 10.0
"""Seconds without an acknowledgement after which a parser with events in flight is stalled."""
_PUB_RUN_MAX = 1000
_DELIVERY_MAX = 500
_DELIVERY_BYTES = 1 << 20
"""A delivery or a published message holds at most this many bytes of events (but always one): big events
travel in smaller messages, so a message never costs the broker much memory."""
_REPLAY_REPLY_MAX = 5000
_ROUTES_MAX = 10_000

ControlHandler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class _Batch(msgspec.Struct):
    """A publish or ack request, for decoding its events straight into :class:`WireEvent`."""

    op: str
    events: list[WireEvent] | msgspec.UnsetType = msgspec.UNSET
    plugin: Any = msgspec.UNSET
    id: Any = msgspec.UNSET
    upto: Any = msgspec.UNSET


_batch_decoder = msgspec.msgpack.Decoder(_Batch)


def _decode_batch(frame: bytes) -> dict[str, Any] | None:
    """Decode a publish or ack request whose events all fit :class:`WireEvent`; ``None`` for any other frame.

    ``None`` sends the frame to the general decoder, which keeps unknown keys and lets
    :func:`bus.event.normalize` name what is wrong.
    """
    try:
        req = _batch_decoder.decode(frame)
    except msgspec.MsgspecError:
        return None
    if req.op not in ("publish", "ack"):
        return None
    out: dict[str, Any] = {"op": req.op}
    for key in ("events", "plugin", "id", "upto"):
        value = getattr(req, key)
        if value is not msgspec.UNSET:
            out[key] = value
    return out


@dataclass
class Counters:
    """Counters of one plugin (or outside producer) as the broker sees it."""

    events_in: int = 0
    events_out: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    last_error: str = ""

    def drop(self, reason: str, n: int = 1, error: str = "") -> None:
        """Count ``n`` events dropped for ``reason``."""
        self.dropped[reason] += n
        if error:
            self.last_error = error

    def as_dict(self) -> dict[str, Any]:
        """Return the counters as a plain map (for ``busctl status``)."""
        return {"events_in": self.events_in, "events_out": self.events_out,
                "dropped": dict(self.dropped), "last_error": self.last_error}


class RecentIds:
    """Event ids seen recently: at least the last ``window``, at most twice as many.

    Two generations of plain sets rather than one ordered map trimmed per event: membership and
    insertion stay set operations, and forgetting is one whole generation at a time.
    """

    def __init__(self, window: int) -> None:
        self.window = window
        self._current: set[str] = set()
        self._previous: set[str] = set()

    def __contains__(self, eid: str) -> bool:
        return eid in self._current or eid in self._previous

    def __len__(self) -> int:
        return len(self._current) + len(self._previous)

    def add(self, eid: str) -> bool:
        """Remember ``eid``; return False if it was already remembered (one call per event in the broker).

        The older generation is forgotten once the current one is full.
        """
        current = self._current
        if eid in current or eid in self._previous:
            return False
        current.add(eid)
        if len(current) >= self.window:
            self._previous, self._current = current, set()
        return True


class ParserLink:
    """Events routed to one parser: kept until the parser acknowledges them."""

    def __init__(self, name: str, flt: Filter, capacity: int, counters: Counters,
                 max_bytes: int = QUEUE_BYTES) -> None:
        self.name = name
        self.filter = flt
        self.capacity = capacity
        self.max_bytes = max_bytes
        self.nbytes = 0
        """Bytes of the events kept (waiting and in flight)."""
        self.counters = counters
        self.in_flight: deque[tuple[int, bytes]] = deque()
        """Delivered, not acknowledged yet (oldest first)."""
        self.waiting: deque[tuple[int, bytes]] = deque()
        """Not delivered yet (oldest first)."""
        self.next_dseq = 1
        self.peer: bytes | None = None
        self.window = 1000
        self.redelivered = 0
        self.incarnations = 0
        self.last_progress = time.monotonic()
        self.stalled = False

    @property
    def sent(self) -> int:
        """Events delivered and not acknowledged."""
        return len(self.in_flight)

    def __len__(self) -> int:
        return len(self.in_flight) + len(self.waiting)

    def enqueue(self, data: bytes) -> None:
        """Keep ``data`` for delivery; when full (events or bytes), drop the oldest event not yet sent."""
        size = len(data)
        while (len(self.waiting) + len(self.in_flight) >= self.capacity  # not len(self): per event, a call less
               or self.nbytes + size > self.max_bytes) and (self.waiting or self.in_flight):
            self.nbytes -= len((self.waiting or self.in_flight).popleft()[1])
            self.counters.drop("parser_queue_full",
                               error=f"queue of {self.capacity} events or {self.max_bytes} bytes full")
        self.waiting.append((self.next_dseq, data))
        self.nbytes += size
        self.next_dseq += 1

    def requeue(self) -> None:
        """The incarnation is gone: what it did not acknowledge goes first to the next one."""
        self.redelivered += len(self.in_flight)
        self.waiting.extendleft(reversed(self.in_flight))
        self.in_flight.clear()

    def connect(self, peer: bytes, window: int) -> None:
        """A (new) incarnation said hello: everything not acknowledged is delivered again."""
        self.requeue()
        self.peer = peer
        self.window = max(1, min(window, 100_000))
        self.incarnations += 1
        self.last_progress = time.monotonic()

    def ack(self, upto: int) -> int:
        """Forget every event up to delivery number ``upto``; return how many were acknowledged."""
        n = 0
        freed = 0
        q = self.in_flight
        while q and q[0][0] <= upto:
            freed += len(q.popleft()[1])
            n += 1
        self.nbytes -= freed
        self.counters.events_out += n
        self.last_progress = time.monotonic()
        return n

    def backlog(self, now: float, limit: int) -> float:
        """Return how full this parser's queue is, 1.0 at the point producers are held back; 0 if it cannot be waited for.

        Full is ``limit`` events or half of ``max_bytes``, whichever comes first.

        A parser is waited for while it starts or restarts, but one without progress for
        ``_STALLED_AFTER`` seconds (down, or connected and silent with events in flight) must not
        hold the whole bus back: its queue fills up to ``capacity`` instead, drops counted.
        """
        busy = self.peer is None or self.sent > 0
        stalled = busy and now - self.last_progress > _STALLED_AFTER
        if stalled != self.stalled:
            self.stalled = stalled
            (log.warning if stalled else log.info)("parser_stalled" if stalled else "parser_resumed",
                                                   plugin=self.name, in_flight=self.sent, queued=len(self.waiting))
        # a parser that holds many events in flight (it correlates, see Parser.hold) is working, not
        # congested: in-flight events do not count up to half the capacity, less room for the
        # batches admitted before producers are held (the queue must not overflow meanwhile)
        if stalled:
            return 0.0
        allowance = max(0, self.capacity // 2 - 2 * _DELIVERY_MAX)
        events = len(self) - min(len(self.in_flight), allowance)
        return max(events / limit, 2 * self.nbytes / self.max_bytes)

    def deliveries(self) -> Iterable[bytes]:
        """Yield delivery frames for what the window allows."""
        waiting, in_flight = self.waiting, self.in_flight
        if not in_flight and waiting and self.peer is not None:
            self.last_progress = time.monotonic()  # an idle parser gets work: the stall clock starts now
        while self.peer is not None and waiting and len(in_flight) < self.window:
            n = min(self.window - len(in_flight), _DELIVERY_MAX, len(waiting))
            batch: list[tuple[int, bytes]] = []
            size = 0
            while len(batch) < n and (not batch or size + len(waiting[0][1]) <= _DELIVERY_BYTES):
                item = waiting.popleft()
                size += len(item[1])
                batch.append(item)
            in_flight.extend(batch)
            yield protocol.pack_with_events({"op": "events", "upto": batch[-1][0]}, [d for _, d in batch])

    def as_dict(self) -> dict[str, Any]:
        """Return the delivery state (for ``busctl status``)."""
        return {"pending": len(self), "in_flight": self.sent, "connected": self.peer is not None,
                "redelivered": self.redelivered, "bytes": self.nbytes}


class Stream:
    """Published events of one kind: sequence numbers and the replay ring, bounded in events and bytes."""

    def __init__(self, kind: str, size: int, max_bytes: int = REPLAY_BYTES) -> None:
        self.kind = kind
        self.seq = 0
        self.size = size
        self.max_bytes = max_bytes
        self.ring: deque[bytes] = deque()  # the encoded events; seq of ring[i] is first() + i
        self.nbytes = 0
        """Bytes in the ring; the broker adds to it as it appends, and calls :meth:`trim` after a batch."""

    def trim(self) -> None:
        """Forget the oldest events beyond ``size`` events or ``max_bytes`` bytes (the newest is always kept)."""
        ring = self.ring
        while len(ring) > self.size or (self.nbytes > self.max_bytes and len(ring) > 1):
            self.nbytes -= len(ring.popleft())

    def first(self) -> int:
        """Return the oldest sequence number still in the ring (``seq + 1`` when empty)."""
        return self.seq - len(self.ring) + 1

    def resize(self, size: int, max_bytes: int) -> None:
        """Change the ring's bounds, keeping the newest events."""
        self.size, self.max_bytes = size, max_bytes
        self.trim()

    def replay(self, start: int, end: int) -> tuple[list[bytes], int, tuple[int, int] | None]:
        """Return ``(events, first_seq, gap)`` for ``start..end``; ``gap`` is what fell out of the ring."""
        end = min(end, self.seq, start + _REPLAY_REPLY_MAX - 1)
        first = self.first()
        gap = (start, min(first - 1, end)) if start < first else None
        lo = max(start, first)
        if lo > end:
            return [], lo, gap
        offset = lo - first
        return list(islice(self.ring, offset, offset + end - lo + 1)), lo, gap


@dataclass
class ReceiverState:
    """What the broker knows of one receiver plugin, from its hello and progress reports."""

    start: dict[str, int]
    acked: dict[str, int] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    last_seen: float = 0.0


_STAT_COUNTERS = ("received", "handled", "replayed", "lost", "gaps", "failed", "malformed", "flood_suppressed")


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _receiver_stats(stats: dict[Any, Any]) -> dict[str, Any]:
    """Keep what a receiver's progress report may say, each of the right type; drop the rest.

    The report comes from a plugin in any language: a string where a count belongs must not break
    ``busctl status`` or the idle check, which read these.
    """
    out: dict[str, Any] = {key: stats[key] for key in _STAT_COUNTERS if _is_count(stats.get(key))}
    kinds = stats.get("kinds")
    if type(kinds) is list:
        out["kinds"] = [k for k in kinds if k in KINDS]
    counters = stats.get("counters")
    if type(counters) is dict:
        out["counters"] = {k: v for k, v in counters.items() if type(k) is str and _is_count(v)}
    return out


class Broker:
    """Binds the bus sockets, validates, routes and publishes events.

    Args:
        runtime_dir: directory for the ``ipc://`` sockets.
        hostname: put in events that do not name one.
        replay_buffer: published events kept per kind.
        parser_queue: events kept per parser until acknowledged.
        dedup_window: recent event ids remembered to drop resends.
    """

    def __init__(self, runtime_dir: str, hostname: str, *, replay_buffer: int = 100_000,
                 parser_queue: int = 100_000, dedup_window: int = 50_000,
                 replay_buffer_bytes: int = REPLAY_BYTES, parser_queue_bytes: int = QUEUE_BYTES,
                 socket_gid: int | None = None) -> None:
        self.runtime_dir = Path(runtime_dir)
        self.socket_gid = socket_gid
        self.hostname = hostname
        self.parser_queue = parser_queue
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._watched: dict[zmq.Socket[bytes], tuple[Callable[[], None], bool]] = {}
        self.streams = {kind: Stream(kind, replay_buffer, replay_buffer_bytes) for kind in KINDS}
        self.parser_queue_bytes = parser_queue_bytes
        self.counters: dict[str, Counters] = {}
        self.producer_types: dict[str, str] = {}
        self.parsers: dict[str, ParserLink] = {}
        self.receivers: dict[str, ReceiverState] = {}
        self.handlers: dict[str, ControlHandler] = {}
        self.malformed: Counter[str] = Counter()
        self._seen = RecentIds(dedup_window)
        self._routes: dict[tuple[str, str, str, str, str], tuple[Stream, bytes, tuple[tuple[ParserLink, Any], ...]]] = {}
        self._pending_pub: list[tuple[bytes, int, bytes]] = []
        self._ingest: dict[str, zmq.Socket[bytes]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self._input_peers: dict[bytes, str] = {}
        self._flowing = True
        # held publish requests: envelope, a map with only the request's id, and the frame itself (not
        # its decoded events: kept encoded while held, a held batch costs its bytes, not a few times more)
        self._held: deque[tuple[list[bytes], dict[str, Any], bytes]] = deque()
        self.held_back = 0
        self._work = asyncio.Event()
        self.started = time.time()
        # sequence numbers restart at 1 with each broker; the epoch tells subscribers which run
        self.epoch = new_event_id()

    # -- sockets -------------------------------------------------------------------------------

    def _socket(self, kind: int, name: str) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, protocol.HARD_MAX_FRAME)
        path = self.runtime_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        sock.bind(protocol.endpoint(self.runtime_dir, name))
        self._restrict(path, 0o660)
        return sock

    def _restrict(self, path: Path, mode: int) -> None:
        """Give ``path`` its mode and the socket group: the owner and the group's members, nobody else."""
        path.chmod(mode)
        if self.socket_gid is not None:
            os.chown(path, -1, self.socket_gid)

    async def start(self) -> None:
        """Bind the shared sockets and start serving them."""
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        self._restrict(self.runtime_dir, 0o750)
        (self.runtime_dir / "ingest").mkdir(exist_ok=True)
        self._restrict(self.runtime_dir / "ingest", 0o750)
        self._loop = asyncio.get_running_loop()
        self.pub = self._socket(zmq.PUB, protocol.EVENTS)
        self.pub.setsockopt(zmq.SNDHWM, 100_000)
        self.control = self._socket(zmq.ROUTER, protocol.CONTROL)
        self.input = self._socket(zmq.ROUTER, protocol.INPUT)
        self.input.setsockopt(zmq.SNDHWM, 0)
        self._watch(self.control, self._on_control)
        self._watch(self.input, self._on_input)
        self._tasks = [asyncio.create_task(self._tick(), name="tick")]

    async def close(self) -> None:
        """Stop serving and close every socket."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sock in [*self._watched, self.pub]:
            self._unwatch(sock)
            sock.close(0)
        self._ingest.clear()

    def _watch(self, sock: zmq.Socket[bytes], handle: Callable[[list[bytes]], None], *, producer: bool = False) -> None:
        """Serve ``sock`` from the event loop: drain it without blocking whenever it may be readable.

        ZeroMQ's file descriptor is edge-triggered: it signals that something changed, not that a
        message waits. So each wake-up drains until ``Again``; a turn ends after ``_DRAIN_MAX``
        messages (fairness: the parsers' acknowledgements must not wait behind a flood), and
        :meth:`flush` re-checks every socket after sending, since a send can swallow the signal.
        A ``producer`` socket (a plugin's ingest) is not read while the bus is congested: ZeroMQ's
        queue fills and the plugin's PUSH blocks, which is the back pressure we want.
        """
        def drain() -> None:
            n = 0
            while n < _DRAIN_MAX and (self._flowing or not producer) and has_message(sock):
                frames = recv_message(sock)
                try:
                    handle(frames)
                except Exception:
                    log.exception("broker_handler_failed")
                n += 1
                if producer:
                    self._update_flow()
            if n:
                self.flush()
            if n >= _DRAIN_MAX:
                self._loop.call_soon(drain)

        self._watched[sock] = (drain, producer)
        self._loop.add_reader(sock.fileno(), drain)
        self._loop.call_soon(drain)

    def _unwatch(self, sock: zmq.Socket[bytes]) -> None:
        if self._watched.pop(sock, None) is not None:
            self._loop.remove_reader(sock.fileno())

    def _recheck(self) -> None:
        """After sending: schedule a drain of every socket we send on that has messages waiting.

        Ingest sockets are never sent on, so their wake-ups cannot be swallowed.
        """
        for sock, (drain, producer) in self._watched.items():
            if not producer and has_message(sock):
                self._loop.call_soon(drain)

    def _reply(self, envelope: list[bytes], msg: dict[str, Any], reply: dict[str, Any] | bytes) -> None:
        """Answer a control request, echoing its ``id`` (replay replies carry it already)."""
        if isinstance(reply, dict):
            if "id" in msg:
                reply["id"] = msg["id"]
            reply = protocol.packb(reply)
        send_message(self.control, [*envelope, reply])

    async def _tick(self) -> None:
        """Twice a second: re-check the flow (stalled parsers) and tell held producers to wait.

        On an idle bus (nothing held, no parser with events queued) it sleeps until :meth:`flush`
        finds work, or 10 s: a wake-up of an idle process costs about a millisecond of CPU on a
        small VM, and an idle bus should cost nothing.
        """
        while True:
            if self._idle():
                self._work.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(10.0):
                        await self._work.wait()
            await asyncio.sleep(0.5)
            self._update_flow()
            for envelope, rid, _ in self._held:
                self._reply(envelope, rid, {"ok": True, "pending": True})
            self._recheck()

    def _update_flow(self) -> bool:
        """Hold producers back while a working parser has more than ``_CONGESTED`` events unsent.

        Returns whether producers may go on.
        """
        backlog = self._backlog()
        if self._flowing and backlog > 1.0:
            self._flowing = False
            log.info("flow_held", backlog=round(backlog, 3))
        elif not self._flowing and backlog <= 0.5:
            self._flowing = True
            log.info("flow_resumed", backlog=round(backlog, 3), held=len(self._held))
            for drain, producer in self._watched.values():
                if producer:
                    self._loop.call_soon(drain)
        while self._held and self._flowing:
            envelope, rid, frame = self._held.popleft()
            self._reply(envelope, rid, self._op_publish(_decode_batch(frame) or protocol.unpackb(frame)))
            self._send()
            self._flowing = self._backlog() <= 1.0
        return self._flowing

    def _backlog(self) -> float:
        """Return how full the fullest queue of a parser the bus waits for is (1.0: hold producers back)."""
        now = time.monotonic()
        limit = max(1, min(_CONGESTED, self.parser_queue // 2))
        return max((link.backlog(now, limit) for link in self.parsers.values()), default=0.0)

    # -- configuration -------------------------------------------------------------------------

    def _counters(self, name: str) -> Counters:
        c = self.counters.get(name)
        if c is None:
            c = self.counters[name] = Counters()
        return c

    def set_plugins(self, plugins: dict[str, tuple[str, Filter]]) -> None:
        """Apply the configured plugins: ``{name: (type, filter)}``.

        Opens an ingest socket for each collector and parser, a delivery queue for each parser, and a
        resume point for each new receiver; closes what is gone. Queues of parsers that stay are kept.
        """
        for name in list(self._ingest):
            if plugins.get(name, ("", None))[0] not in ("collector", "parser"):
                sock = self._ingest.pop(name)
                self._unwatch(sock)
                sock.close(0)
        for name, (ptype, flt) in plugins.items():
            self.producer_types[name] = ptype
            counters = self._counters(name)
            if ptype in ("collector", "parser") and name not in self._ingest:
                sock = self._socket(zmq.PULL, f"ingest/{name}.sock")
                self._watch(sock, self._ingest_handler(name), producer=True)
                self._ingest[name] = sock
            if ptype == "parser":
                link = self.parsers.get(name)
                if link is None:
                    self.parsers[name] = ParserLink(name, flt, self.parser_queue, counters, self.parser_queue_bytes)
                else:
                    link.filter = flt
            if ptype == "receiver" and name not in self.receivers:
                self.receivers[name] = ReceiverState(start={k: s.seq + 1 for k, s in self.streams.items()})
        for name in list(self.parsers):
            if plugins.get(name, ("", None))[0] != "parser":
                del self.parsers[name]
        for name in list(self.receivers):
            if plugins.get(name, ("", None))[0] != "receiver":
                del self.receivers[name]
        for name in list(self.producer_types):
            if name not in plugins:
                del self.producer_types[name]
        self._routes.clear()

    def resize(self, replay_buffer: int, parser_queue: int, dedup_window: int,
               replay_buffer_bytes: int = REPLAY_BYTES, parser_queue_bytes: int = QUEUE_BYTES) -> None:
        """Apply new buffer sizes from a reloaded configuration."""
        for stream in self.streams.values():
            stream.resize(replay_buffer, replay_buffer_bytes)
        self.parser_queue = parser_queue
        self.parser_queue_bytes = parser_queue_bytes
        for link in self.parsers.values():
            link.capacity = parser_queue
            link.max_bytes = parser_queue_bytes
        self._seen.window = dedup_window

    def plugin_stopped(self, name: str) -> None:
        """The supervisor saw a plugin exit: a parser's unacknowledged events wait for its next run."""
        link = self.parsers.get(name)
        if link is not None and link.peer is not None:
            self._input_peers.pop(link.peer, None)
            link.requeue()
            link.peer = None

    # -- ingest --------------------------------------------------------------------------------

    def _ingest_handler(self, name: str) -> Callable[[list[bytes]], None]:
        def handle(frames: list[bytes]) -> None:
            if len(frames) != 1:
                self._malformed(name, f"expected 1 frame, got {len(frames)}")
                return
            self.ingest_frame(name, frames[0])
        return handle

    def _malformed(self, sender: str, reason: str) -> None:
        # unknown connections (``control:<id>``) are counted per socket, not per connection,
        # so that a client reconnecting in a loop cannot grow the table
        key = sender if sender in self.counters else sender.split(":", 1)[0]
        self.malformed[key] += 1
        if sender in self.counters:
            self.counters[sender].drop("malformed", error=reason)
        log.warning("malformed_frame", sender=sender, reason=reason, count=self.malformed[key])

    def ingest_frame(self, source: str, frame: bytes) -> tuple[int, list[tuple[int, str]]]:
        """Decode a frame holding one event or an array of events from ``source`` and ingest it."""
        if len(frame) > MAX_FRAME:
            self._malformed(source, f"frame of {len(frame)} bytes exceeds the {MAX_FRAME} byte limit")
            return 0, []
        try:
            obj = decode_wire(frame)
        except Exception as exc:
            self._malformed(source, f"not valid msgpack ({exc})")
            return 0, []
        return self.ingest(source, obj if isinstance(obj, list) else [obj])

    def ingest(self, source: str, events: list[Any]) -> tuple[int, list[tuple[int, str]]]:
        """Validate, deduplicate, publish and route events from ``source``.

        Returns:
            ``(accepted, rejected)`` where ``rejected`` lists ``(index, reason)``; a duplicate
            (an event id seen recently) counts as accepted, since the producer may forget it.
        """
        ptype = self.producer_types.get(source)
        kind = "synthetic" if ptype == "parser" else ("raw" if ptype == "collector" else None)
        counters = self._counters(source)
        hostname = self.hostname
        remember = self._seen.add
        pending = self._pending_pub
        routes = self._routes
        rejected: list[tuple[int, str]] = []
        now = time.time()
        accepted = 0
        for index, event in enumerate(events):
            try:
                if type(event) is WireEvent:  # typed and checked in C when the batch was decoded
                    check_wire(event, hostname=hostname, kind=kind, source=source, now=now)
                    eid = event.event_id
                    key = (source, event.kind, event.system, event.severity, event.event_type)
                    msg = event.msg
                else:
                    normalize(event, hostname=hostname, kind=kind, source=source, now=now)
                    eid = event["event_id"]
                    key = (source, event["kind"], event["system"], event["severity"], event["event_type"])
                    msg = event["msg"]
            except EventError as exc:
                rejected.append((index, str(exc)))
                counters.drop("invalid", error=str(exc))
                log.warning("invalid_event", sender=source, index=index, error=str(exc))
                continue
            accepted += 1
            if not remember(eid):
                counters.drop("duplicate")
                continue
            data = _encode(event)
            route = routes.get(key)
            if route is None:
                route = self._route(key)
            stream, topic, targets = route
            stream.seq += 1
            stream.ring.append(data)
            stream.nbytes += len(data)
            pending.append((topic, stream.seq, data))
            for link, contains in targets:
                if contains is None or any(word in msg for word in contains):
                    link.enqueue(data)
        counters.events_in += accepted
        for stream in self.streams.values():
            stream.trim()
        return accepted, rejected

    def _route(self, key: tuple[str, str, str, str, str]) -> tuple[Stream, bytes, tuple[tuple[ParserLink, Any], ...]]:
        """Where events of ``key`` (source, kind, system, severity, event type) go: worked out once, then cached.

        The stream and topic they are published under, and the parsers whose filter matches (with
        the filter's ``contains`` words, the one part checked per event). A parser never gets its
        own outputs. The cache is emptied when the parsers change, and when it grows past
        ``_ROUTES_MAX`` keys (a producer inventing event types must not grow it for ever).
        """
        source, kind, system = key[0], key[1], key[2]
        if len(self._routes) >= _ROUTES_MAX:
            self._routes.clear()
        targets = tuple((p, p.filter.contains) for p in self.parsers.values()
                        if p.name != source and p.filter.match_fields(*key[1:]))
        route = self._routes[key] = (self.streams[kind], protocol.topic(kind, system), targets)
        return route

    def flush(self) -> None:
        """Send what the last batch produced, then re-check the flow (which may release held requests)."""
        self._send()
        self._update_flow()
        self._recheck()
        if not self._work.is_set() and not self._idle():
            self._work.set()

    def _idle(self) -> bool:
        """Whether nothing is held back and no parser has events queued (the tick may sleep)."""
        return not self._held and all(not len(link) for link in self.parsers.values())

    def _send(self) -> None:
        """Send PUB runs by topic, then parser deliveries."""
        pending = self._pending_pub
        if pending:
            self._pending_pub = []
            pub = self.pub
            i, n = 0, len(pending)
            while i < n:
                topic, first, data = pending[i]
                size = len(data)
                j = i + 1
                while (j < n and j - i < _PUB_RUN_MAX and pending[j][0] == topic
                       and size + len(pending[j][2]) <= _DELIVERY_BYTES):
                    size += len(pending[j][2])
                    j += 1
                send_message(pub, [topic, SEQ.pack(first), protocol.pack_array([p[2] for p in pending[i:j]])], NOBLOCK)
                i = j
        for link in self.parsers.values():
            if link.peer is not None:
                for frame in link.deliveries():
                    send_message(self.input, [link.peer, frame])

    # -- parser input socket -------------------------------------------------------------------

    def _on_input(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self._malformed("input:" + frames[0].hex(), f"expected 1 frame, got {len(frames) - 1}")
            return
        peer, frame = frames
        sender = self._input_peers.get(peer, "input:" + peer.hex())
        if len(frame) > MAX_FRAME:
            self._malformed(sender, f"frame of {len(frame)} bytes exceeds the {MAX_FRAME} byte limit")
            return
        try:
            msg = _decode_batch(frame) or protocol.unpackb(frame)
            op = msg["op"]
        except Exception as exc:
            self._malformed(sender, f"not a msgpack map with 'op' ({exc})")
            return
        if op == "hello":
            name = msg.get("plugin")
            link = self.parsers.get(name) if isinstance(name, str) else None
            if link is None:
                self._malformed(sender, f"hello from {name!r}, which is not a configured parser")
                send_message(self.input, [peer, protocol.packb({"op": "error", "error": f"unknown parser {name!r}"})])
                return
            if link.peer is not None:
                self._input_peers.pop(link.peer, None)
            self._input_peers[peer] = link.name
            window = msg.get("window", 1000)
            link.connect(peer, window if isinstance(window, int) else 1000)
            log.info("parser_connected", plugin=link.name, pending=len(link), incarnation=link.incarnations)
        elif op == "ack":
            name = self._input_peers.get(peer)
            link = self.parsers.get(name) if name else None
            if link is None:
                self._malformed(sender, "ack before hello")
                return
            events, upto = msg.get("events") or [], msg.get("upto")
            if not isinstance(events, list) or not isinstance(upto, int) or isinstance(upto, bool):
                self._malformed(sender, "an ack needs 'upto' (integer) and 'events' (array)")
                return
            if events:
                self.ingest(link.name, events)
            link.ack(upto)
        else:
            self._malformed(sender, f"unknown op {op!r}")

    # -- control socket ------------------------------------------------------------------------

    def _on_control(self, frames: list[bytes]) -> None:
        envelope, frame = frames[:-1], frames[-1]
        if not envelope:
            return
        try:
            msg = (_decode_batch(frame) or protocol.unpackb(frame)) if len(frame) <= MAX_FRAME else None
            if not isinstance(msg, dict) or not isinstance(msg.get("op"), str):
                raise ValueError("not a msgpack map with a string 'op'")
        except Exception as exc:
            reason = f"frame of {len(frame)} bytes exceeds the limit" if len(frame) > MAX_FRAME else str(exc)
            self._malformed("control:" + envelope[0].hex(), reason)
            self._reply(envelope, {}, {"ok": False, "error": f"malformed request: {reason}"})
            return
        op = msg["op"]
        reply: dict[str, Any] | bytes
        try:
            if op in self.handlers:  # the daemon's operations (status, reload...) may take a while
                task = asyncio.create_task(self._handle_async(envelope, msg))
                self._background.add(task)  # a reference, or the loop may drop the task
                task.add_done_callback(self._background.discard)
                return
            if op == "publish" and (self._held or not self._update_flow()):
                # held back: the reply (the acknowledgement) comes when the parsers catch up
                self._held.append((envelope, {"id": msg["id"]} if "id" in msg else {}, frame))
                self._work.set()
                self.held_back += 1
                reply = {"ok": True, "pending": True}
            elif op == "publish":
                reply = self._op_publish(msg)
            elif op == "replay":
                reply = self._op_replay(msg)
            elif op == "hello":
                reply = self._op_hello(msg)
            elif op == "progress":
                reply = self._op_progress(msg)
            else:
                reply = {"ok": False, "error": f"unknown op {op!r}"}
        except Exception as exc:
            log.exception("control_op_failed", op=op)
            reply = {"ok": False, "error": f"{op} failed: {exc}"}
        self._reply(envelope, msg, reply)

    async def _handle_async(self, envelope: list[bytes], msg: dict[str, Any]) -> None:
        try:
            reply = await self.handlers[msg["op"]](msg)
        except Exception as exc:
            log.exception("control_op_failed", op=msg["op"])
            reply = {"ok": False, "error": f"{msg['op']} failed: {exc}"}
        self._reply(envelope, msg, reply)
        self._recheck()

    def _op_publish(self, msg: dict[str, Any]) -> dict[str, Any]:
        source = msg.get("plugin") or "bus-emit"
        events = msg.get("events")
        if not isinstance(source, str) or not isinstance(events, list):
            return {"ok": False, "error": "publish needs 'plugin' (string) and 'events' (array)"}
        accepted, rejected = self.ingest(source, events)
        return {"ok": True, "accepted": accepted, "rejected": rejected}

    def head(self) -> dict[str, int]:
        """Return the last sequence number published of each kind."""
        return {kind: s.seq for kind, s in self.streams.items()}

    def _op_hello(self, msg: dict[str, Any]) -> dict[str, Any]:
        name = msg.get("plugin")
        head = self.head()
        state = self.receivers.get(name) if isinstance(name, str) else None
        if state is None:
            return {"ok": True, "head": head, "resume": {k: s + 1 for k, s in head.items()}, "epoch": self.epoch}
        state.last_seen = time.time()
        resume = {k: state.acked[k] + 1 if k in state.acked else state.start[k] for k in head}
        log.info("receiver_connected", plugin=name, resume=resume, head=head)
        return {"ok": True, "head": head, "resume": resume, "epoch": self.epoch}

    def _op_progress(self, msg: dict[str, Any]) -> dict[str, Any]:
        name = msg.get("plugin")
        state = self.receivers.get(name) if isinstance(name, str) else None
        if state is not None:
            state.last_seen = time.time()
            acked = msg.get("acked")
            if isinstance(acked, dict):
                for kind, seq in acked.items():
                    if kind in self.streams and isinstance(seq, int):
                        state.acked[kind] = max(seq, state.acked.get(kind, 0))
            stats = msg.get("stats")
            if isinstance(stats, dict):
                state.stats = _receiver_stats(stats)
        return {"ok": True, "head": self.head(), "epoch": self.epoch}

    def _op_replay(self, msg: dict[str, Any]) -> dict[str, Any] | bytes:
        kind, start, end = msg.get("kind"), msg.get("from"), msg.get("to")
        stream = self.streams.get(kind) if isinstance(kind, str) else None
        if stream is None or not isinstance(start, int) or not isinstance(end, int) or not 1 <= start <= end:
            return {"ok": False, "error": "replay needs 'kind' (raw|synthetic) and 1 <= 'from' <= 'to'"}
        events, first, gap = stream.replay(start, end)
        header: dict[str, Any] = {"ok": True, "kind": kind, "first": first, "gap": list(gap) if gap else None,
                                  "head": stream.seq, "epoch": self.epoch}
        if "id" in msg:
            header["id"] = msg["id"]
        return protocol.pack_with_events(header, events)

    def parsers_idle(self) -> bool:
        """Return whether every connected parser has acknowledged everything routed to it."""
        return all(not len(link) for link in self.parsers.values() if link.peer is not None)

    def receivers_idle(self) -> bool:
        """Return whether every receiver that reports progress has handled everything published."""
        head = self.head()
        return all(state.acked.get(k, 0) >= head[k] for state in self.receivers.values() if state.last_seen
                   for k in state.stats.get("kinds", ["synthetic"]) if k in head)

    # -- status --------------------------------------------------------------------------------

    def plugin_status(self, name: str) -> dict[str, Any]:
        """Return the broker's view of one plugin: counters, delivery or replay state."""
        out = self._counters(name).as_dict()
        link = self.parsers.get(name)
        if link is not None:
            out["delivery"] = link.as_dict()
        state = self.receivers.get(name)
        if state is not None:
            head = self.head()
            kinds = state.stats.get("kinds") or ["synthetic"]
            out["lag"] = sum(max(0, head[k] - state.acked.get(k, state.start[k] - 1)) for k in kinds if k in head)
            out["acked"] = dict(state.acked)
            out["events_in"] = int(state.stats.get("received", 0))
            out["events_out"] = int(state.stats.get("handled", 0))
            out["replayed"] = int(state.stats.get("replayed", 0))
            # gaps: publications the PUB socket dropped for this slow receiver (then replayed)
            # flood_suppressed: repeats the SDK's flood control collapsed into a summary event
            # malformed_publications: publications the receiver could not decode (and skipped)
            for reason, key in (("lost", "lost"), ("failed", "failed"), ("gaps", "publish_gaps"),
                                ("flood_suppressed", "flood_suppressed"), ("malformed", "malformed_publications")):
                if state.stats.get(reason):
                    out["dropped"][key] = state.stats[reason]
            counters = state.stats.get("counters")
            if isinstance(counters, dict) and counters:
                out["counters"] = dict(counters)
        return out

    def status(self) -> dict[str, Any]:
        """Return the broker's own counters."""
        return {
            "uptime": round(time.time() - self.started, 3),
            "head": self.head(),
            "buffered": {k: len(s.ring) for k, s in self.streams.items()},
            "malformed": sum(self.malformed.values()),
            "flowing": self._flowing,
            "held_back_requests": self.held_back,
            "outside_producers": {n: c.as_dict() for n, c in self.counters.items() if n not in self.producer_types},
        }

"""Memory bounds in bytes: the replay rings, parser queues, deliveries and published messages."""

from __future__ import annotations

import time

from conftest import Bus, ev, wait_for

from bus.broker import _DELIVERY_BYTES, Counters, ParserLink, Stream
from bus.filter import Filter


def test_replay_ring_keeps_the_newest_events_within_its_bytes() -> None:
    """Events beyond ``max_bytes`` fall out oldest first; the count bound still applies; one always stays."""
    ring = Stream("raw", size=100, max_bytes=1000)
    for i in range(20):
        data = bytes([i]) * 100
        ring.seq += 1
        ring.ring.append(data)
        ring.nbytes += len(data)
        ring.trim()
    assert len(ring.ring) == 10 and ring.nbytes == 1000
    events, first, gap = ring.replay(1, 20)
    assert first == 11 and gap == (1, 10) and events[0] == bytes([10]) * 100
    ring.resize(5, 1000)
    assert len(ring.ring) == 5 and ring.nbytes == 500 and ring.first() == 16
    big = b"x" * 5000  # larger than the whole bound: kept alone rather than nothing
    ring.seq += 1
    ring.ring.append(big)
    ring.nbytes += len(big)
    ring.trim()
    assert list(ring.ring) == [big]


def test_parser_queue_drops_the_oldest_beyond_its_bytes_and_holds_producers_at_half() -> None:
    counters = Counters()
    link = ParserLink("p", Filter.parse({}), capacity=1000, counters=counters, max_bytes=10_000)
    for _ in range(4):
        link.enqueue(b"a" * 1000)
    now = time.monotonic()
    assert link.backlog(now, limit=500) < 1.0  # 4000 bytes: below half of the bound
    link.enqueue(b"b" * 1000)
    link.enqueue(b"c" * 1000)
    assert link.backlog(now, limit=500) > 1.0  # 6000 bytes: past half, producers are held back
    for _ in range(6):
        link.enqueue(b"d" * 1000)
    assert link.nbytes == 10_000 and len(link) == 10
    assert counters.dropped["parser_queue_full"] == 2
    assert [d[:1] for _, d in link.waiting] == [b"a"] * 2 + [b"b", b"c"] + [b"d"] * 6  # the two oldest went
    link.connect(b"peer", 3)
    assert len(list(link.deliveries())) == 1 and len(link.in_flight) == 3  # the window
    assert link.ack(link.in_flight[-1][0]) == 3 and link.nbytes == 7000


def test_a_delivery_of_big_events_is_split_by_bytes() -> None:
    link = ParserLink("p", Filter.parse({}), capacity=1000, counters=Counters(), max_bytes=64 * 2**20)
    event = b"\xa1x" + b"\x00" * (_DELIVERY_BYTES // 4)  # not msgpack maps, but the framing does not care
    for _ in range(10):
        link.enqueue(event)
    link.connect(b"peer", 1000)
    frames = list(link.deliveries())
    assert len(frames) >= 3
    assert all(len(f) <= _DELIVERY_BYTES + 1024 for f in frames)
    assert len(link.in_flight) == 10


def test_busd_bounds_its_replay_ring_in_bytes_and_reports_the_loss(bus: Bus) -> None:
    """With ``replay_buffer_bytes`` small, a late reader gets the newest events and a BUS_EVENTS_LOST for the rest."""
    bus.write({}, main={"replay_buffer_bytes": 20_000})
    bus.start()
    events = [ev("bench", "BIG", "x" * 1000, kind="synthetic", extensions={"n": i}) for i in range(100)]
    bus.emit(events)
    st = wait_for(lambda: (s := bus.status())["broker"]["head"]["synthetic"] == 100 and s, what="all published")
    kept = st["broker"]["buffered"]["synthetic"]
    assert 10 <= kept < 25  # about 20 000 bytes of 1 kB events
    out = bus.tail(kept + 1, last=100)
    lost = [e for e in out if e["event_type"] == "BUS_EVENTS_LOST"]
    assert len(lost) == 1 and lost[0]["extensions"]["missed"] == 100 - kept
    assert [e["extensions"]["n"] for e in out if e["event_type"] == "BIG"] == list(range(100 - kept, 100))

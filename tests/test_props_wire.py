"""Property tests (hypothesis) on the wire: framing, the event decoder, the broker's ingest and ``bus-emit``.

Every frame a producer can send, whatever it holds, ends either as valid events or as a counted,
named error; nothing raises past the decoder, and the next good event goes through.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import uuid
from pathlib import Path
from typing import Any

import msgspec
import pytest
from conftest import Bus, fake_broker, wait_for
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bus import protocol
from bus.broker import MAX_FRAME, Broker
from bus.client import Subscriber
from bus.event import (
    KINDS,
    SEVERITIES,
    EventError,
    decode,
    decode_many,
    decode_wire,
    from_json_lines,
    new_event,
    normalize,
    to_json_bytes,
)

FIELDS = ("v", "event_id", "timestamp", "hostname", "severity", "system", "kind", "event_type", "dev_wwid",
          "dev_name", "msg", "source", "extensions")

scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text(max_size=12)
           | st.binary(max_size=12))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6) | st.integers(-5, 5), inner, max_size=3), max_leaves=8)
words = st.from_regex(r"[A-Za-z0-9_.:-]{1,12}", fullmatch=True)


@st.composite
def good_events(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event as a producer would write it (optional keys sometimes left out)."""
    event: dict[str, Any] = {"system": draw(words), "event_type": draw(words)}
    optional = {"severity": st.sampled_from(SEVERITIES), "msg": st.text(max_size=30), "dev_name": st.text(max_size=8),
                "extensions": st.dictionaries(st.text(max_size=6), st.none() | st.booleans() | st.integers(0, 99)
                                              | st.text(max_size=6), max_size=3),
                "timestamp": st.floats(0, 2e9), "event_id": words, "kind": st.sampled_from(KINDS)}
    for key in draw(st.lists(st.sampled_from(sorted(optional)), unique=True)):
        event[key] = draw(optional[key])
    return event


@st.composite
def mutated_events(draw: st.DrawFn) -> Any:
    """A valid event with some fields replaced by anything, or removed, or unknown keys added; or not a map."""
    if draw(st.integers(0, 19)) == 0:
        return draw(values)
    event = draw(good_events())
    for key in draw(st.lists(st.sampled_from(FIELDS), max_size=3, unique=True)):
        if draw(st.booleans()):
            event[key] = draw(values)
        else:
            event.pop(key, None)
    event.update(draw(st.dictionaries(st.text(max_size=6).filter(lambda k: k not in FIELDS), values, max_size=2)))
    return event


def names_a_field(reason: str) -> bool:
    """Whether an error (``key: why``) names what was wrong: one of the schema's keys, or the event itself."""
    key = reason.split(":", 1)[0]
    return key in FIELDS or key == "event" or key.startswith("extensions.")


def valid(event: Any) -> bool:
    """Check an event the bus accepted as a consumer would rely on it."""
    assert isinstance(event, dict)
    assert event["v"] == 1 and event["severity"] in SEVERITIES and event["kind"] in KINDS
    for key in ("system", "event_type"):
        assert type(event[key]) is str and event[key] and " " not in event[key] and event[key] == event[key].strip()
    for key in ("event_id", "hostname", "dev_wwid", "dev_name", "msg", "source"):
        assert type(event[key]) is str, key
    assert event["event_id"] and event["hostname"]
    assert type(event["timestamp"]) is float and type(event["extensions"]) is dict
    json.loads(to_json_bytes(event))  # bus-tail --json can always print it
    return True


def same(a: Any, b: Any) -> bool:
    """Equal as msgpack (so a NaN equals itself)."""
    return protocol.packb(a) == protocol.packb(b)


# -- framing -------------------------------------------------------------------------------------


@given(st.lists(values, max_size=20))
@example([None] * 70_000)  # the 32-bit array header
def test_pack_array_is_a_msgpack_array_of_its_items(items: list[Any]) -> None:
    """pack_array of encoded items decodes, with any msgpack decoder, to the items themselves."""
    frame = protocol.pack_array([protocol.packb(x) for x in items])
    assert frame == protocol.packb(items)  # byte for byte (NaN is not equal to itself, its encoding is)
    assert same(protocol.unpackb(frame), items)


@given(st.dictionaries(st.text(max_size=8).filter(lambda k: k != "events"), values, max_size=20),
       st.lists(values, max_size=5))
def test_pack_with_events_is_the_header_plus_events(header: dict[str, Any], events: list[Any]) -> None:
    """A replay reply: the header's keys and ``events``, an array of the already-encoded events."""
    frame = protocol.pack_with_events(header, [protocol.packb(e) for e in events])
    assert same(protocol.unpackb(frame), {**header, "events": events})


# -- the decoder ---------------------------------------------------------------------------------


@given(st.binary(max_size=64))
@example(b"\xc1")  # never used
@example(b"\x92\x01")  # array of 2 holding 1
@example(b"\xdd\xff\xff\xff\xff")  # an array claiming 4 billion items
def test_decode_of_any_bytes_raises_only_event_error(data: bytes) -> None:
    """Random bytes: an object, or EventError('frame', ...); the typed decoder raises only DecodeError."""
    for fn in (decode, decode_many):
        try:
            fn(data)
        except EventError as exc:
            assert exc.key == "frame" and "not valid msgpack" in str(exc)
    with contextlib.suppress(msgspec.DecodeError):
        decode_wire(data)


@given(st.lists(good_events(), min_size=1, max_size=5), st.data())
def test_a_truncated_frame_is_refused_whole(events: list[dict[str, Any]], data: st.DataObject) -> None:
    """msgpack is self-delimiting: any proper prefix of a batch is refused, never half-read."""
    frame = protocol.packb(events)
    cut = data.draw(st.integers(0, len(frame) - 1))
    with pytest.raises(EventError, match="frame: not valid msgpack"):
        decode_many(frame[:cut])
    with pytest.raises(msgspec.DecodeError):
        decode_wire(frame[:cut])


@given(mutated_events())
@example({"system": "a", "event_type": "B", "severity": []})  # unhashable: was a TypeError
@example({"system": "a", "event_type": "B", "kind": {}})
@example({"system": "a", "event_type": "B", "v": True})
@example({"system": "a", "event_type": "B", "timestamp": float("nan")})
@example({"system": "a", "event_type": "B", "extensions": {"x": b"\x00"}})
def test_normalize_accepts_or_names_the_field(event: Any) -> None:
    """Wrong types in any field: the event is either valid after normalize or refused naming the field."""
    try:
        out = normalize(event, hostname="h")
    except EventError as exc:
        assert names_a_field(str(exc)), exc
    else:
        assert valid(out)


# -- the broker's ingest, in process (the code the ingest socket calls) --------------------------


def fresh_broker(tmp_path: Path) -> Broker:
    """A broker with no sockets: ingest_frame validates, routes and queues for publishing."""
    broker = Broker(str(tmp_path), "testhost", replay_buffer=1000, dedup_window=1000)
    broker._counters("c")  # a known producer (as a configured collector is): its malformed frames are its own
    return broker


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(mutated_events(), max_size=6) | mutated_events())
def test_ingest_accounts_for_every_event_of_any_frame(tmp_path: Path, events: Any) -> None:
    """Each event of a decodable frame is accepted or rejected naming the field; each accepted one is
    published re-encoded and valid; whatever the broker accepts, ``normalize`` of the same map accepts."""
    broker = fresh_broker(tmp_path)
    frame = protocol.packb(events)
    items = events if isinstance(events, list) else [events]
    accepted, rejected = broker.ingest_frame("c", frame)
    assert accepted + len(rejected) == len(items) and sum(broker.malformed.values()) == 0
    assert all(names_a_field(reason) for _, reason in rejected), rejected
    published = [protocol.unpackb(data) for _, _, data in broker._pending_pub]
    assert all(valid(e) for e in published) and all(e["source"] == "c" for e in published)
    plain: list[bool] = []  # the typed (C) path and the plain path agree, event by event
    for item in protocol.unpackb(frame) if isinstance(events, list) else [protocol.unpackb(frame)]:
        try:
            normalize(item, hostname="h", source="c")
            plain.append(True)
        except EventError:
            plain.append(False)
    refused = {index for index, _ in rejected}
    assert [i not in refused for i in range(len(items))] == plain


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=64) | st.builds(lambda es, n: protocol.packb(es)[:n], st.lists(good_events(), min_size=1,
                                                                                         max_size=3),
                                          st.integers(0, 200)))
def test_ingest_of_garbage_counts_it_and_takes_the_next_frame(tmp_path: Path, frame: bytes) -> None:
    """Random or truncated frames never raise: undecodable ones are counted malformed, for the sender;
    the good frame after them is published."""
    broker = fresh_broker(tmp_path)
    try:
        obj = protocol.unpackb(frame)
    except msgspec.DecodeError:
        obj = None
        decodable = False
    else:
        decodable = True
    accepted, rejected = broker.ingest_frame("c", frame)
    if decodable:
        assert accepted + len(rejected) == (len(obj) if isinstance(obj, list) else 1)
    else:
        assert (accepted, rejected) == (0, []) and broker.malformed and broker.counters["c"].dropped["malformed"] == 1
    before = len(broker._pending_pub)
    assert broker.ingest_frame("c", protocol.packb(new_event("t", "GOOD", "after"))) == (1, [])
    assert protocol.unpackb(broker._pending_pub[before][2])["event_type"] == "GOOD"


def test_an_oversize_frame_is_counted_without_decoding(tmp_path: Path) -> None:
    """A frame over MAX_FRAME is refused by its length alone, naming the limit."""
    broker = fresh_broker(tmp_path)
    assert broker.ingest_frame("c", protocol.packb([new_event("t", "BIG", "x" * MAX_FRAME)])) == (0, [])
    assert broker.counters["c"].dropped["malformed"] == 1 and "exceeds" in broker.counters["c"].last_error


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(["received", "handled", "lost", "gaps", "kinds", "counters", "failed", "x"]),
                       values, max_size=5))
def test_a_receivers_progress_report_of_any_shape_cannot_break_status(tmp_path: Path, stats: dict[str, Any]) -> None:
    """A receiver in any language reports its stats; wrong types are dropped, status and the idle check work."""
    broker = fresh_broker(tmp_path)
    broker.set_plugins({"r": ("receiver", None)})  # type: ignore[dict-item]
    assert broker._op_progress({"plugin": "r", "acked": {"synthetic": 0}, "stats": stats})["ok"]
    entry = broker.plugin_status("r")
    assert all(type(entry[k]) is int for k in ("events_in", "events_out", "replayed", "lag"))
    assert all(type(v) is int for v in entry["dropped"].values())
    assert broker.receivers_idle() in (True, False)
    json.dumps(entry)


# -- a receiver's subscriber: garbage on the PUB socket ------------------------------------------


publications = st.lists(st.binary(max_size=40) | st.builds(protocol.packb, values), min_size=1, max_size=8)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=25)
@given(publications)
def test_a_subscriber_counts_undecodable_publications_and_takes_the_next(tmp_path: Path, garbage: list[bytes]) -> None:
    """Undecodable publications (not an array, wrong sequence frame) are counted as malformed and skipped;
    the good publication after them is delivered, in order, over real ZeroMQ sockets."""

    def answer(req: dict[str, Any]) -> dict[str, Any]:  # an empty bus: nothing to replay
        reply: dict[str, Any] = {"head": {"synthetic": 0}}
        if req["op"] == "hello":
            reply["resume"] = {"synthetic": 1}
        elif req["op"] == "replay":
            reply |= {"kind": "synthetic", "first": req["from"], "gap": None, "events": []}
        return reply

    async def scenario() -> tuple[list[Any], int]:
        async with fake_broker(tmp_path, answer, xpub=True) as (pub, client):
            sub = Subscriber(f"ipc://{tmp_path}/events.sock", client, ("synthetic",), progress_interval=0.05)
            await sub.start()
            good = [new_event("t", "GOOD", str(i), kind="synthetic") for i in range(3)]
            got: list[Any] = []

            async def read() -> None:
                async for runs in sub.runs():
                    for run in runs:
                        got.extend(run.events)
                    if any(isinstance(e, dict) and e.get("event_type") == "GOOD" for e in got):
                        return

            reading = asyncio.create_task(read())
            async with asyncio.timeout(5):  # an XPUB hears the subscription: what is sent now reaches the subscriber
                assert await pub.recv() == b"\x01synthetic."
            for payload in garbage:
                # a wrong sequence frame as well as a bad payload (an array payload is a batch of odd events)
                await pub.send_multipart([b"synthetic.t.", b"\x00", payload])
                if not isinstance(_try_unpack(payload), list):
                    await pub.send_multipart([b"synthetic.t.", protocol.SEQ.pack(1), payload])
            await pub.send_multipart([b"synthetic.t.", protocol.SEQ.pack(1),
                                      protocol.pack_array([protocol.packb(e) for e in good])])
            async with asyncio.timeout(10):
                await reading
            malformed = sub.stats["malformed"]
            sub.close()
        return got, malformed

    got, malformed = asyncio.run(scenario())
    expected = len(garbage) + sum(not isinstance(_try_unpack(p), list) for p in garbage)
    assert malformed == expected
    assert [e["msg"] for e in got] == ["0", "1", "2"]


def _try_unpack(payload: bytes) -> Any:
    try:
        return protocol.unpackb(payload)
    except msgspec.DecodeError:
        return None


# -- bus-emit JSON lines, end to end -------------------------------------------------------------


def json_safe(value: Any) -> Any:
    """``value`` with what JSON cannot hold replaced (bytes as text, non-finite floats as strings)."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    return value


lines = st.lists(st.builds(lambda e: json.dumps(json_safe(e)), mutated_events()) | st.text(max_size=30)
                 .filter(lambda t: "\n" not in t and "\r" not in t), min_size=1, max_size=12)


@given(lines)
@example(['{"system":"a","event_type":"B","severity":[]}', "not json", "[1]", "", '{"system":"a"}'])
def test_from_json_lines_names_the_line_of_each_bad_event(batch: list[str]) -> None:
    """Each non-blank line is an event or an error with its line number; what it accepts is valid and
    the same as ``normalize`` of ``json.loads`` of the line."""
    raw = [line.encode() for line in batch]
    events, errors = from_json_lines(raw, first_number=7, hostname="h", source="bus-emit")
    numbers = [n for n, line in enumerate(raw, 7) if line.strip()]
    assert len(events) + len(errors) == len(numbers)
    assert {n for n, _ in errors} <= set(numbers) and len({n for n, _ in errors}) == len(errors)
    for number, reason in errors:
        assert reason.startswith(f"stdin line {number}:") or names_a_field(reason), reason
    accepted = [n for n in numbers if n not in {m for m, _ in errors}]
    for number, event in zip(accepted, events, strict=True):
        plain = normalize(json.loads(raw[number - 7]), hostname="h")
        as_map = msgspec.to_builtins(event) if not isinstance(event, dict) else event
        assert valid(as_map)
        assert {k: as_map[k] for k in ("system", "event_type", "severity", "msg")} == \
               {k: plain[k] for k in ("system", "event_type", "severity", "msg")}


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=3)
@given(lines)
def test_bus_emit_reports_bad_lines_and_delivers_the_rest(bus: Bus, batch: list[str]) -> None:
    """Through a real busd: bus-emit names each bad line on stderr and exits 1, the good ones and a
    sentinel after them reach bus-tail, and busd keeps running."""
    if bus.proc is None:
        bus.write({})
        bus.start()
    raw = [line.encode() for line in batch]
    events, errors = from_json_lines(raw, first_number=1, hostname="testhost")
    tag = f"S{uuid.uuid4().hex}"  # unique: --last must not find an earlier example's sentinel
    text = "\n".join([*batch, json.dumps({"system": "sentinel", "event_type": tag})]) + "\n"
    def accepted() -> int:
        return int(bus.status()["broker"]["outside_producers"].get("bus-emit", {}).get("events_in", 0))

    before = accepted()
    done = bus.run("bus-emit", input=text, check=False)
    assert done.returncode == (1 if errors else 0), done.stderr
    for number, _ in errors:
        assert f"stdin line {number}:" in done.stderr
    tail = bus.tail(1, "--kind", "raw", "--system", "sentinel", "--event-type", tag, last=1000)
    assert tail[0]["event_type"] == tag and bus.proc.poll() is None
    # every line bus-emit found valid was acknowledged (and only those: the bad ones never left it)
    wait_for(lambda: accepted() == before + len(events) + 1, what="bus-emit's events counted in by busd")

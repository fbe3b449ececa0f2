"""The SDK Publisher's batching, against a real ROUTER socket standing in for busd's control socket."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio
from conftest import async_wait_for, fake_broker

from bus import protocol
from bus.client import ControlClient, Publisher, Subscriber
from bus.event import new_event


def test_lone_event_goes_at_once_a_quick_batch_at_min_batch_a_slow_one_at_linger(tmp_path: Path) -> None:
    """Idle line: one event, one request. Ten events in a burst: one request of ten. Ten events at
    200/s (below fast_rate): no request until the first has waited ``linger``, then one of ten."""
    linger = 0.3

    async def scenario() -> tuple[list[int], float]:
        ctx = zmq.asyncio.Context()
        router = ctx.socket(zmq.ROUTER)
        endpoint = f"ipc://{tmp_path}/control.sock"
        router.bind(endpoint)
        client = ControlClient(endpoint, ctx)
        publisher = Publisher(client, "p", min_batch=10, linger=linger, fast_rate=1000)
        sizes: list[int] = []

        async def request() -> list[Any]:
            frames = await asyncio.wait_for(router.recv_multipart(), 5)
            payload = protocol.unpackb(frames[-1])
            sizes.append(len(payload["events"]))
            return [frames[0], payload["id"]]

        async def answer(*requests: list[Any]) -> None:
            for ident, rid in requests:
                await router.send_multipart([ident, protocol.packb({"id": rid, "ok": True, "accepted": 1})])
            await async_wait_for(lambda: publisher.pending() == 0, 5, "the acknowledgements")

        await publisher.emit(new_event("t", "T", "lone"))
        first = await request()
        for i in range(10):  # microseconds apart: 10 events filled far faster than 1000/s
            await publisher.emit(new_event("t", "T", f"burst {i}"))
        await answer(first, await request())
        started = time.monotonic()
        for i in range(10):
            await publisher.emit(new_event("t", "T", f"slow {i}"))
            await asyncio.sleep(0.005)  # pacing the producer at ~200 events/s, not synchronisation
        assert publisher.pending() == 10 and not await router.poll(0), "a slow batch left before its linger"
        await answer(await request())
        waited = time.monotonic() - started
        await publisher.close(0)
        client.close()
        router.close(0)
        ctx.term()
        return sizes, waited

    sizes, waited = asyncio.run(scenario())
    assert sizes == [1, 10, 10]
    assert waited >= linger


def test_publish_linger_is_a_producer_option(tmp_path: Path) -> None:
    """``publish_linger`` sets a collector's or parser's Publisher linger; a receiver is refused it, by name."""
    from bus.config import load
    from bus.exceptions import ConfigError
    from bus.plugin import Collector

    conf = tmp_path / "busd.toml"
    conf.write_text(f'[main]\nruntime_dir = "{tmp_path}/run"\n[plugins.c]\ntype = "collector"\nexec = ["true"]\n'
                    'publish_linger = 0.002\n')
    table = load(str(conf)).plugins["c"].table
    env = {"BUS_PLUGIN": "c", "BUS_PLUGIN_CONFIG": json.dumps(table), "BUS_CONTROL": f"ipc://{tmp_path}/c.sock"}
    assert Collector(env).publisher.linger == 0.002
    assert Collector({**env, "BUS_PLUGIN_CONFIG": "{}"}).publisher.linger == 0.025
    conf.write_text(f'[main]\nruntime_dir = "{tmp_path}/run"\n[plugins.r]\ntype = "receiver"\nexec = ["true"]\n'
                    'publish_linger = 0.002\n')
    with pytest.raises(ConfigError, match=r"plugins\.r\.publish_linger: only collectors and parsers take this option"):
        load(str(conf))


def test_a_late_publication_is_not_reported_lost(tmp_path: Path) -> None:
    """A subscriber whose socket stays quiet while the broker's head is ahead (a busy machine can hold
    the PUB stream up for longer than a progress interval) replays what the broker still has, but
    does not call lost what the replay buffer no longer holds: the events may still be coming, and
    only a publication numbered past them proves them missed. Here they come 0.3 s late."""

    replays: list[dict[str, Any]] = []

    def answer(req: dict[str, Any]) -> dict[str, Any]:  # head is 10 from the first progress report on; 1..10 lost
        if req["op"] == "hello":
            return {"head": {"synthetic": 0}, "resume": {"synthetic": 1}}
        if req["op"] == "replay":
            replays.append(req)
            return {"kind": "synthetic", "first": 11, "gap": [req["from"], 10], "head": 10, "events": []}
        return {"head": {"synthetic": 10}}

    async def scenario() -> list[dict[str, Any]]:
        async with fake_broker(tmp_path, answer) as (pub, client):
            sub = Subscriber(f"ipc://{tmp_path}/events.sock", client, ("synthetic",), progress_interval=0.05)
            got: list[dict[str, Any]] = []

            async def read() -> None:
                stream = sub.runs()
                async for runs in stream:
                    for run in runs:
                        got.extend(run.events)
                        sub.done_run(run)
                    if len(got) >= 10:
                        break
                await stream.aclose()

            reading = asyncio.create_task(read())
            await async_wait_for(lambda: replays, 5, "a replay asked for while the socket is quiet")
            await asyncio.sleep(0.3)  # the publication is late on purpose: that is the case under test
            events = [new_event("t", "LATE", str(i), kind="synthetic") for i in range(10)]
            await pub.send_multipart([b"synthetic.t.", protocol.SEQ.pack(1),
                                      protocol.pack_array([protocol.packb(e) for e in events])])
            async with asyncio.timeout(5):
                await reading
            sub.close()
        return got

    got = asyncio.run(scenario())
    assert [e["event_type"] for e in got] == ["LATE"] * 10, got

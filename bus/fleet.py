"""The fleet's events: reading the JetStream stream the ``nats`` receivers of every node publish to.

:func:`connection` finds the ``nats`` receiver in a configuration (servers, credentials, stream,
subject prefix); :func:`fleet_query` returns past events of every host that match a :class:`Query`,
:func:`fleet_follow` streams them live. Events keep their ``hostname``, so output names each one's
host. The subject (``<prefix>.<host>.<system>.<event_type>``) narrows what the server sends when a
query names a single host and/or a single system (nats-server 2.9 takes one filter subject per
consumer); :meth:`Query.match` decides the rest, so the answer is the same as the local history's.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import heapq
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js.api import ConsumerConfig, DeliverPolicy

from bus.config import Config, plugin_options
from bus.event import Event
from bus.exceptions import FleetError
from bus.query import Query
from bus.secrets import redact_url

__all__ = ["FleetError", "FleetOptions", "connection", "fleet_follow", "fleet_query", "subject_filter"]

CLOCK_SKEW = 300.0
"""Seconds the stream is read before ``since``: a node's clock may be behind the server's."""

IDLE_TIMEOUT = 10.0
"""Seconds :func:`fleet_query` waits for the next message the server said is pending before giving up."""


@dataclass(frozen=True)
class FleetOptions:
    """Where and how to read the fleet's stream.

    Attributes:
        connect: keyword arguments of ``nats.connect`` (servers, credentials, TLS).
        stream: the stream's name.
        prefix: the subject prefix.
        plugin: the receiver the settings come from (``""``: none, an explicit URL and the defaults).
    """

    connect: dict[str, Any] = field(default_factory=dict)
    stream: str = "BUSD"
    prefix: str = "busd"
    plugin: str = ""


def connection(cfg: Config, url: str | None = None) -> FleetOptions:
    """Return how to reach the fleet's stream: from the configuration's first ``nats`` receiver
    (servers, user/password, token, nkeys_seed, creds, TLS, stream, subject_prefix); ``url`` replaces
    its servers (and alone suffices when no ``nats`` receiver is configured).

    Raises:
        FleetError: no ``nats`` receiver and no ``url``.
    """
    from receivers.nats import connect_options  # the receiver's module: one reading of the options

    for plugin in cfg.plugins.values():
        if plugin.type == "receiver" and plugin.builtin == "nats":
            options = plugin_options("receiver", "nats", plugin.table)
            kw = connect_options(options, Path(plugin.file).parent)
            if url:
                kw["servers"] = [url]
            return FleetOptions(kw, options["stream"], options["subject_prefix"], plugin.name)
    if not url:
        raise FleetError(f"{cfg.path}: no nats receiver is configured ([plugins.X] builtin = \"nats\"): "
                         "give the server's URL (--fleet nats://host:4222)")
    return FleetOptions({"servers": [url]})


def subject_filter(prefix: str, query: Query) -> str:
    """Return the one filter subject for ``query``: host and system narrowed when it names exactly one."""
    from receivers.nats import token

    host = token(query.hosts[0]) if len(query.hosts) == 1 else "*"
    systems = query.filter.systems
    system = token(next(iter(systems))) if systems is not None and len(systems) == 1 else "*"
    return f"{prefix}.>" if host == system == "*" else f"{prefix}.{host}.{system}.*"


async def _connect(opts: FleetOptions) -> Client:
    try:
        return await nats.connect(**opts.connect, allow_reconnect=False, connect_timeout=5, max_reconnect_attempts=0)
    except Exception as exc:
        from receivers.nats import describe

        servers = ", ".join(redact_url(s) for s in opts.connect.get("servers", []))
        raise FleetError(f"cannot connect to NATS ({servers}): {describe(exc)}") from None


def _config(query: Query, since: float | None) -> ConsumerConfig:
    if since is None:
        return ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
    start = datetime.datetime.fromtimestamp(max(0.0, since - CLOCK_SKEW), datetime.UTC)
    return ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start)


def _decode(data: bytes) -> Event | None:
    try:
        event = json.loads(data)
    except ValueError:
        return None
    return event if isinstance(event, dict) else None


async def fleet_query(cfg: Config, url: str | None, query: Query) -> list[Event]:
    """Return the fleet's past events that match ``query``, oldest first (the newest ``query.limit``).

    Reads the stream with an ordered ephemeral consumer from ``query.since`` (by store time, less
    :data:`CLOCK_SKEW`) or from the start, up to the stream's last message when the query starts.

    Raises:
        FleetError: no server, no stream, or the server stopped answering.
    """
    opts = connection(cfg, url)
    nc = await _connect(opts)
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(opts.stream)
        except nats.js.errors.NotFoundError:
            raise FleetError(f"no stream {opts.stream!r} on the NATS server (no node has published yet?)") from None
        last = info.state.last_seq
        if not info.state.messages:
            return []
        sub = await js.subscribe(subject_filter(opts.prefix, query), stream=opts.stream, ordered_consumer=True,
                                 config=_config(query, query.since))
        out: list[tuple[float, int, Event]] = []
        try:
            consumer = await sub.consumer_info()
            delivered = consumer.delivered.consumer_seq if consumer.delivered is not None else 0
            if consumer.num_pending == 0 and not delivered and sub.pending_msgs == 0:
                return []
            while True:
                try:
                    msg = await sub.next_msg(timeout=IDLE_TIMEOUT)
                except nats.errors.TimeoutError:
                    raise FleetError(f"stream {opts.stream!r}: no message for {IDLE_TIMEOUT:g} s although the "
                                     "server said more are pending") from None
                meta = msg.metadata
                if meta.sequence.stream > last:
                    break
                event = _decode(msg.data)
                if event is not None and query.match(event):
                    item = (float(event.get("timestamp", 0.0)), meta.sequence.stream, event)
                    if query.limit is not None and len(out) >= query.limit:
                        heapq.heappushpop(out, item)
                    else:
                        heapq.heappush(out, item)
                if meta.sequence.stream >= last or meta.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        return [event for _, _, event in sorted(out, key=lambda i: (i[0], i[1]))]
    finally:
        await nc.close()


async def fleet_follow(cfg: Config, url: str | None, query: Query, since: float | None = None) -> AsyncIterator[Event]:
    """Yield the fleet's events that match ``query`` as they reach the stream: from now, or from
    ``since`` (epoch seconds, by store time) when given. Runs until the caller stops iterating.

    Raises:
        FleetError: no server or no stream.
    """
    opts = connection(cfg, url)
    if since is not None and (query.since is None or query.since < since):
        query = dataclasses.replace(query, since=since)  # the store-time start is earlier by CLOCK_SKEW
    nc = await _connect(opts)
    try:
        js = nc.jetstream()
        try:
            await js.stream_info(opts.stream)
        except nats.js.errors.NotFoundError:
            raise FleetError(f"no stream {opts.stream!r} on the NATS server (no node has published yet?)") from None
        config = _config(query, since) if since is not None else ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
        sub = await js.subscribe(subject_filter(opts.prefix, query), stream=opts.stream, ordered_consumer=True,
                                 config=config)
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=None)
                except nats.errors.TimeoutError:
                    continue
                event = _decode(msg.data)
                if event is not None and query.match(event):
                    yield event
        finally:
            await asyncio.shield(sub.unsubscribe())
    finally:
        await nc.close()

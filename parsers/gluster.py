"""Parser ``gluster``: GlusterFS event datagrams to named events, with glustereventsd's message rules.

Input: the raw ``GLUSTER_EVENT`` events of the ``gluster`` collector (default filter: system
``gluster``, kind ``raw``; other event types of that system are ignored). A raw event without the
collector's ``extensions`` (a datagram replayed as a plain line by ``replay`` with
``system = "gluster"``, ``event_type = "GLUSTER_EVENT"``) is parsed from its ``msg``.

The message ``key=value;key=value`` is read as ``glustereventsd`` reads it, so the ``message``
map is what GlusterFS puts in its webhook body:

- items split at ``;``, each at ``=``; a later duplicate key wins;
- ``force``, ``push-pem``, ``no-verify`` become booleans (true for ``1``, ``on``, ``true``,
  ``yes`` in any case, false for anything else), ``ssh-port`` an integer when it is one (kept as
  text otherwise); only these spellings, like glustereventsd: the ``gluster`` command's
  ``push_pem``, ``no_verify``, ``ssh_port`` stay text (``"1"``) in GlusterFS's webhooks too;
- ``VOLUME_SET``'s ``options`` (``",k1,v1,k2,v2"``) become pairs ``[["k1", "v1"], ["k2", "v2"]]``
  (commas at either end ignored; an odd last key is a one-element list; without ``options`` at
  all, ``[[""]]``, as glustereventsd does).

Where glustereventsd drops an event whose message it cannot split (an empty message, an empty
item, an item without ``=`` or with a second ``=``), this parser keeps it: empty items are
skipped, an item without ``=`` is a key with the value ``""``, and only the first ``=`` splits.

Events: system ``gluster``, event_type ``GLUSTER_<NAME>`` (the GlusterFS name, prefixed so that
names like ``QUORUM_LOST`` or ``CLIENT_DISCONNECT`` say whose they are in filters; an index this
table does not know gives ``GLUSTER_UNKNOWN_<n>``, severity info, logged once per index), and:

- ``severity``: ``error`` for failures (every ``*_FAILED``/``*_FAILURE``), lost quorum
  (``QUORUM_LOST``, ``AFR_QUORUM_FAIL``), split brain, bricks or subvolumes down
  (``BRICK_DISCONNECTED``, ``AFR_SUBVOLS_DOWN``, ``EC_MIN_BRICKS_NOT_UP``), bad or duplicate
  files (``BITROT_BAD_FILE``, ``POSIX_SAME_GFID``), a faulty geo-replication worker, a rejected
  peer, a brick that is not (or already) part of a volume, a reached snapshot hard limit;
  ``warn`` for soft limits (``QUOTA_CROSSED_SOFT_LIMIT``, ``SNAPSHOT_SOFT_LIMIT_REACHED``),
  disconnects (``PEER_DISCONNECT``, ``SVC_DISCONNECTED``, ``CLIENT_DISCONNECT``), a rejected
  client, unknown peers and operations, missing ACL support, disk and inode usage past the
  minimum free (``DHT_*_USAGE``), the hot tier at its high watermark; ``info`` for the rest.
- ``dev_name``: what the event is about, the first of: a brick (``brick``, ``brick_path``,
  ``source-brick``, ``ta-brick``; prefixed ``host:`` from ``peer``/``primary_node``/
  ``master_node`` when it is a bare path, so ``node1:/bricks/b1``; only up to the first space), a snapshot
  (``snapshot_name``), a subvolume (``subvol``, e.g. ``gv1-replicate-0``), a volume (``name``,
  ``volume``, ``Volume``, ``volume_name``, ``vol``, ``primary``/``master``,
  ``primary_volume``/``master_volume``), a peer (``peer``, ``host``), a service
  (``svc_name``); else empty.
- ``dev_wwid``: the id GlusterFS gives with it, if any: ``snapshot_uuid`` of a snapshot,
  ``volume_id`` of a volume, ``uuid`` of a peer; else empty.
- ``msg``: ``"VOLUME_SET gv1: name=gv1;options=..."`` (name, device, the message as sent).
- ``timestamp``: the datagram's time stamp (also for a replayed line).
- ``extensions``: ``gluster_event`` (the GlusterFS name, e.g. ``VOLUME_CREATE``), ``message``
  (the map above), ``nodeid`` (the node UUID from the collector, ``None`` when unknown, as
  glustereventsd sends it), ``ts`` (int), ``index``, ``sender``, ``raw_event_id``. The first four
  are exactly GlusterFS's webhook body ``{"nodeid", "ts", "event", "message"}``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

from bus.event import Event
from bus.exceptions import BadInput
from bus.plugin import Parser, run
from parsers._gluster_events import EVENTS, event_name, parse_datagram

OPTIONS: dict[str, Any] = {}
FILTER = {"system": ["gluster"], "kind": "raw"}

AUTO_BOOL_ATTRIBUTES = ("force", "push-pem", "no-verify")
"""Keys glustereventsd turns into booleans (``eventsapiconf.AUTO_BOOL_ATTRIBUTES``)."""
AUTO_INT_ATTRIBUTES = ("ssh-port",)
"""Keys glustereventsd turns into integers (``eventsapiconf.AUTO_INT_ATTRIBUTES``)."""
_TRUE = ("1", "on", "true", "yes")

ERRORS = frozenset({
    "PEER_REJECT", "BRICK_DISCONNECTED", "QUORUM_LOST", "EC_MIN_BRICKS_NOT_UP", "GEOREP_FAULTY",
    "BITROT_BAD_FILE", "POSIX_SAME_GFID", "POSIX_ALREADY_PART_OF_VOLUME", "POSIX_BRICK_NOT_IN_VOLUME",
    "AFR_QUORUM_FAIL", "AFR_SUBVOLS_DOWN", "AFR_SPLIT_BRAIN", "SNAPSHOT_HARD_LIMIT_REACHED",
})
"""Errors besides every ``*_FAILED`` and ``*_FAILURE``."""
WARNINGS = frozenset({
    "QUOTA_CROSSED_SOFT_LIMIT", "SNAPSHOT_SOFT_LIMIT_REACHED", "PEER_DISCONNECT", "SVC_DISCONNECTED",
    "CLIENT_DISCONNECT", "CLIENT_AUTH_REJECT", "PEER_NOT_FOUND", "UNKNOWN_PEER", "NOTIFY_UNKNOWN_OP",
    "POSIX_ACL_NOT_SUPPORTED", "TIER_WATERMARK_HI", "DHT_DISK_USAGE", "DHT_INODES_USAGE",
})

_BRICK_KEYS = ("brick", "brick_path", "source-brick", "ta-brick")
_BRICK_HOST_KEYS = ("peer", "primary_node", "master_node")
_VOLUME_KEYS = ("name", "volume", "Volume", "volume_name", "vol", "primary", "master", "primary_volume",
                "master_volume")
_PEER_KEYS = ("peer", "host")


def severity_of(name: str) -> str:
    """Return the severity of a GlusterFS event name."""
    if name in ERRORS or name.endswith(("_FAILED", "_FAILURE")):
        return "error"
    return "warn" if name in WARNINGS else "info"


def boolify(value: str) -> bool:
    """glustereventsd's ``utils.boolify``: true for 1, on, true, yes in any case."""
    return value.lower() in _TRUE


def volume_set_options(options: str) -> list[list[str]]:
    """Split ``VOLUME_SET``'s ``",k1,v1,k2,v2"`` into ``[["k1", "v1"], ["k2", "v2"]]`` like glustereventsd."""
    pairs: list[list[str]] = []
    for i, item in enumerate(options.strip(",").split(",")):
        if i % 2 == 0:
            pairs.append([item])
        else:
            pairs[-1].append(item)
    return pairs


def parse_message(name: str, text: str) -> dict[str, Any]:
    """Return the ``message`` map of an event's ``key=value;key=value`` text (see the module doc)."""
    data: dict[str, Any] = {}
    for item in text.split(";"):
        if item:
            key, _, value = item.partition("=")
            data[key] = value
    for key in AUTO_BOOL_ATTRIBUTES:
        if key in data:
            data[key] = boolify(data[key])
    for key in AUTO_INT_ATTRIBUTES:
        if key in data:
            with contextlib.suppress(ValueError):  # glustereventsd keeps the text too
                data[key] = int(data[key])
    if name == "VOLUME_SET":
        data["options"] = volume_set_options(data.get("options", ""))
    return data


def _first(message: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    for key in keys:
        value = message.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return ""


def device(message: Mapping[str, Any]) -> tuple[str, str]:
    """Return ``(dev_name, dev_wwid)`` of an event's message map (see the module doc)."""
    # a brick path cannot hold white space (the gluster command splits its arguments there), but
    # posix appends text to it: "brick=node1:/bricks/b1 timeout is 20"
    brick = _first(message, _BRICK_KEYS).split(" ", 1)[0]
    if brick:
        host = _first(message, _BRICK_HOST_KEYS)
        return (f"{host}:{brick}" if host and brick.startswith("/") else brick), ""
    snapshot = _first(message, ("snapshot_name",))
    if snapshot:
        return snapshot, _first(message, ("snapshot_uuid",))
    subvol = _first(message, ("subvol",))
    if subvol:
        return subvol, ""
    volume = _first(message, _VOLUME_KEYS)
    if volume:
        return volume, _first(message, ("volume_id",))
    peer = _first(message, _PEER_KEYS)
    if peer:
        return peer, _first(message, ("uuid",))
    return _first(message, ("svc_name",)), ""


class Gluster(Parser):
    """Name, parse and rate GlusterFS events."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__(env)
        self.unknown: set[int] = set()

    def handle(self, event: Event) -> Event | None:
        """Return the named event of one raw ``GLUSTER_EVENT`` (``None`` for other events)."""
        if event.get("event_type") != "GLUSTER_EVENT":
            return None
        ext = event.get("extensions") or {}
        index, text = ext.get("index"), ext.get("message")
        ts = int(event["timestamp"])
        if not isinstance(index, int) or isinstance(index, bool) or not isinstance(text, str):
            try:
                dgram = parse_datagram(str(event.get("msg", "")).encode())
            except BadInput as exc:
                self.log.warning("gluster_bad_event", event_id=event.get("event_id"), reason=exc.kind,
                                 detail=exc.detail)
                return None
            index, text, ts = dgram.index, dgram.message, dgram.ts
        name = event_name(index)
        if index >= len(EVENTS) and index not in self.unknown:
            self.unknown.add(index)
            self.log.warning("gluster_unknown_event", index=index, known=len(EVENTS),
                             hint="a newer GlusterFS than this table; the event is passed on as "
                                  f"GLUSTER_UNKNOWN_{index}")
        message = parse_message(name, text)
        dev_name, dev_wwid = device(message)
        summary = f"{name} {dev_name}" if dev_name else name
        return self.event(
            "gluster", f"GLUSTER_{name}", f"{summary}: {text}" if text else summary,
            severity=severity_of(name), dev_name=dev_name, dev_wwid=dev_wwid, timestamp=float(ts),
            extensions={"gluster_event": name, "message": message, "nodeid": ext.get("nodeid"), "ts": ts,
                        "index": index, "sender": ext.get("sender", ""), "raw_event_id": event.get("event_id", "")})


if __name__ == "__main__":
    run(Gluster)

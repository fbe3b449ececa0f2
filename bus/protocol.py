"""Wire protocol shared by the broker and the SDK (see ``docs/protocol.md`` for the prose).

Sockets, all ``ipc://`` under the runtime directory:

``ingest/<plugin>.sock`` PULL  (``BUS_INGEST``)   fire-and-forget events from one collector or parser
``input.sock``           ROUTER (``BUS_INPUT``)   routed events to parsers, with acknowledgements
``events.sock``          PUB    (``BUS_EVENTS``)  published events: ``[topic, seq, array of events]``
``control.sock``         ROUTER (``BUS_CONTROL``) requests: acknowledged publish, replay, status...

Every frame that is not a topic or a sequence number is one msgpack object.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

__all__ = [
    "MAX_FRAME",
    "SEQ",
    "endpoint",
    "ingest_endpoint",
    "pack_array",
    "pack_with_events",
    "topic",
]

SEQ = struct.Struct(">Q")
# msgspec's untyped codec: standard MessagePack, about twice as fast as msgpack-python here
# (bench: 1.2 vs 2.1 us per event to decode, 0.45 vs 0.93 to encode); plugins use any library.
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()
MAX_FRAME = 8 * 1024 * 1024
"""Largest frame the broker accepts; larger frames are dropped and counted."""
HARD_MAX_FRAME = 64 * 1024 * 1024
"""ZeroMQ's own limit (``MAXMSGSIZE``): a peer sending more is disconnected by libzmq."""
IPC_PATH_MAX = 107
REPLAY_BYTES = 8 * 2**20
"""Default byte bound of the replay ring of each kind (``main.replay_buffer_bytes``): about 25 000 events of
330 bytes, or 900 DRBD batches of 70 lines."""
QUEUE_BYTES = 16 * 2**20
"""Default byte bound of a parser's queue (``main.parser_queue_bytes``); producers are held back at half."""

CONTROL = "control.sock"
INPUT = "input.sock"
EVENTS = "events.sock"


def endpoint(runtime_dir: str | Path, name: str) -> str:
    """Return the ``ipc://`` endpoint of socket ``name`` under ``runtime_dir``."""
    return f"ipc://{Path(runtime_dir) / name}"


def ingest_endpoint(runtime_dir: str | Path, plugin: str) -> str:
    """Return the per-plugin PULL endpoint a collector or parser pushes events to."""
    return endpoint(runtime_dir, f"ingest/{plugin}.sock")


def topic(kind: str, system: str) -> bytes:
    """Return the PUB topic of events of this kind and system, e.g. ``b"synthetic.scsi."``.

    The trailing dot makes prefix subscriptions exact: ``synthetic.md.`` does not match ``mdraid``.
    """
    return f"{kind}.{system}.".encode()


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 0x10000:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


def pack_array(items: Sequence[bytes]) -> bytes:
    """Return a msgpack array whose elements are the already-encoded ``items``."""
    return _array_header(len(items)) + b"".join(items)


def pack_with_events(header: dict[str, Any], events: Sequence[bytes]) -> bytes:
    """Return a msgpack map of ``header`` plus key ``events``: an array of already-encoded events."""
    n = len(header) + 1
    out = bytearray(bytes((0x80 | n,)) if n < 16 else b"\xde" + n.to_bytes(2, "big"))
    for key, value in header.items():
        out += _encoder.encode(key)
        out += _encoder.encode(value)
    out += _encoder.encode("events")
    out += pack_array(events)
    return bytes(out)


def packb(obj: Any) -> bytes:
    """Encode a control message."""
    return _encoder.encode(obj)


def unpackb(data: bytes) -> Any:
    """Decode any msgpack object (raises ``msgspec.DecodeError`` on garbage)."""
    return _decoder.decode(data)

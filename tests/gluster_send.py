"""Send GlusterFS event datagrams exactly as GlusterFS does: a test helper and a command.

GlusterFS has two senders, reproduced here byte for byte (GlusterFS 10):

- :func:`c_gf_event`, libglusterfs's ``_gf_event`` (glusterd, the ``gluster`` command, bricks,
  clients): ``getaddrinfo(host, port, AF_UNSPEC, SOCK_DGRAM, AI_ADDRCONFIG)``, the first address
  only (``host`` NULL is the local host: ``[::1]`` first where IPv6 is up; bricks and clients
  pass their volfile server), one ``sendto`` of ``"%u %d %s"`` (time, index, the message the
  caller formatted, e.g. ``"name=%s;force=%d"``).
- :func:`gf_event`, the Python ``gfevents.gf_event`` (geo-replication, the snapshot
  scheduler): an AF_INET socket to ``("0.0.0.0", port)`` (the kernel delivers that to
  127.0.0.1), ``"{int(time.time())} {type} k1=v1;k2=v2"`` from the keyword arguments in order,
  ``";"`` stripped at the ends.

Both refuse an index outside the event table, as GlusterFS does; :func:`send_raw` sends any bytes
(malformed datagrams, unknown indexes) over UDP or an AF_UNIX datagram socket.

As a command::

    python tests/gluster_send.py VOLUME_CREATE name=gv1 'bricks= node1:/b1 '   # C style, [::1]:55555
    python tests/gluster_send.py --python --port 24009 GEOREP_CREATE force=1    # Python library style
    python tests/gluster_send.py --raw '1468303352 2 name=gv1' --unix /run/gluster/events.sock
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from parsers._gluster_events import DEFAULT_PORT, EVENTS

__all__ = ["c_gf_event", "gf_event", "main", "send_raw"]


def _check(event_type: int) -> None:
    if isinstance(event_type, bool) or not isinstance(event_type, int) or not 0 <= event_type < len(EVENTS):
        raise ValueError(f"invalid event type {event_type!r} (GlusterFS refuses it too; use send_raw)")


def c_gf_event(event_type: int, msg: str, *, host: str | None = None, port: int = DEFAULT_PORT,
               ts: int | None = None) -> bytes:
    """Send one event like libglusterfs's ``_gf_event``; return the datagram sent."""
    _check(event_type)
    data = f"{int(time.time()) if ts is None else ts} {event_type} {msg}".encode()
    infos = socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_DGRAM, 0, socket.AI_ADDRCONFIG)
    family, socktype, proto, _, address = infos[0]
    with socket.socket(family, socktype, proto) as sock:
        sock.sendto(data, address)
    return data


def gf_event(event_type: int, *, port: int = DEFAULT_PORT, ts: int | None = None, **kwargs: object) -> bytes:
    """Send one event like the Python ``gfevents.gf_event``; return the datagram sent."""
    _check(event_type)
    msg = "".join(f"{k}={v};" for k, v in kwargs.items())
    data = f"{int(time.time()) if ts is None else ts} {event_type} {msg.strip(';')}".encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.sendto(data, ("0.0.0.0", port))
    return data


def send_raw(data: bytes, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT, unix: str | None = None) -> None:
    """Send any bytes as one datagram: over UDP to ``host:port``, or to the AF_UNIX socket ``unix``."""
    if unix is not None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(data, unix)
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.sendto(data, (host, port))


def event_index(text: str) -> int:
    """Return the index of an event given by name (``VOLUME_CREATE``) or number."""
    if text.isdigit():
        return int(text)
    try:
        return EVENTS.index(text.upper().removeprefix("GLUSTER_"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a GlusterFS event name or index") from None


def main(argv: list[str] | None = None) -> int:
    """Command line: send one event (see the module doc)."""
    ap = argparse.ArgumentParser(prog="gluster_send.py", description="Send a GlusterFS event datagram.")
    ap.add_argument("event", help="event name (VOLUME_CREATE) or index; with --raw, the whole datagram")
    ap.add_argument("pairs", nargs="*", metavar="KEY=VALUE", help="the event's message items, in order")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT, help="UDP port (default %(default)s)")
    ap.add_argument("--host", default=None, help="C style: volfile server to send to (default: the local host)")
    ap.add_argument("--python", action="store_true", help="send like the Python gf_event (to 0.0.0.0)")
    ap.add_argument("--raw", action="store_true", help="send EVENT verbatim (any text)")
    ap.add_argument("--unix", metavar="PATH", help="with --raw: send to this AF_UNIX datagram socket")
    ap.add_argument("--ts", type=int, default=None, help="time stamp (default: now)")
    args = ap.parse_args(argv)
    if args.raw:
        send_raw(args.event.encode(), host=args.host or "127.0.0.1", port=args.port, unix=args.unix)
        print(args.event)
        return 0
    if args.unix:
        ap.error("--unix needs --raw (GlusterFS itself sends over UDP)")
    try:
        index = event_index(args.event)
        items = [p.partition("=") for p in args.pairs]
        if args.python:
            data = gf_event(index, port=args.port, ts=args.ts, **{k: v for k, _, v in items})
        else:
            data = c_gf_event(index, ";".join(args.pairs), host=args.host, port=args.port, ts=args.ts)
    except (ValueError, argparse.ArgumentTypeError, OSError) as exc:
        print(f"gluster_send.py: {exc}", file=sys.stderr)
        return 2
    print(data.decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Fault-matrix plugin that never reads its socket (back pressure), as a receiver or as a parser.

As a receiver it connects SUB to ``BUS_EVENTS``, subscribes to everything and says hello on the
control socket, then never reads a published message. As a parser it connects to ``BUS_INPUT`` and
says hello (``window`` 4000, as the SDK), then never reads a delivery nor acknowledges one. Either
way it then sleeps until busd stops it.
"""

from __future__ import annotations

import os
import signal

import msgpack
import zmq


def main() -> None:
    """Connect, say hello, never read."""
    ctx = zmq.Context()
    name, kind = os.environ["BUS_PLUGIN"], os.environ["BUS_PLUGIN_TYPE"]
    if kind == "receiver":
        sub = ctx.socket(zmq.SUB)
        sub.connect(os.environ["BUS_EVENTS"])
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        control = ctx.socket(zmq.DEALER)
        control.connect(os.environ["BUS_CONTROL"])
        control.send(msgpack.packb({"op": "hello", "id": 1, "plugin": name}))
        control.recv()  # the hello's reply: busd now knows the receiver
    else:
        deliveries = ctx.socket(zmq.DEALER)
        deliveries.connect(os.environ["BUS_INPUT"])
        deliveries.send(msgpack.packb({"op": "hello", "plugin": name, "window": 4000}))
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    os._exit(0)  # without closing the sockets: nothing here would ever be read


if __name__ == "__main__":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    main()

"""systemd's notify protocol (sd_notify(3)): one datagram to ``$NOTIFY_SOCKET``; a no-op elsewhere."""

from __future__ import annotations

import os
import socket
import time

__all__ = ["notify", "watchdog_interval"]


def notify(*states: str) -> bool:
    """Send ``states`` (e.g. ``"READY=1"``, ``"STATUS=..."``) to systemd; return whether it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            # never block the event loop: a notify socket nobody reads (its queue holds only
            # net.unix.max_dgram_qlen datagrams) would otherwise freeze busd on its next reload
            sock.sendto("\n".join(states).encode(), socket.MSG_DONTWAIT, address)
        except OSError:
            return False
    return True


def reloading() -> bool:
    """Tell systemd a reload started (``Type=notify-reload`` needs ``MONOTONIC_USEC``)."""
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")


def watchdog_interval() -> float | None:
    """Return how often to send ``WATCHDOG=1`` (half of ``WatchdogSec=``), or None when not asked."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 2_000_000
    except ValueError:
        return None

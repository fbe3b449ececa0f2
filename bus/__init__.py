"""busd: a storage and cluster event bus for Linux.

The public surface for plugin authors is :mod:`bus.plugin` (``Collector``, ``Parser``,
``Receiver``, ``run``) and :mod:`bus.event` (``new_event``); everything else is the daemon.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]

"""Helpers the built-in collectors share (not a plugin: the leading ``_`` keeps it off the built-in list)."""

from __future__ import annotations

import asyncio


async def readable(fd: int, timeout: float | None = None) -> bool:
    """Wait until ``fd`` is readable (``False`` if ``timeout`` seconds pass first).

    The reader is registered only while waiting, so a collector held back by busd (back pressure)
    does not spin on a descriptor it is not reading yet.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        async with asyncio.timeout(timeout):
            await fut
        return True
    except TimeoutError:
        return False
    finally:
        loop.remove_reader(fd)

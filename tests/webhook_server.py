"""A real webhook server for tests: aiohttp on 127.0.0.1 (optionally TLS) in a thread, recording every request.

It can be taken down and brought back on the same port, and told which status to answer.
"""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web


@dataclass
class Request:
    """One request the server received."""

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body, parsed."""
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        """A header, looked up case-insensitively."""
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)


def free_port() -> int:
    """Return a TCP port that is free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WebhookServer:
    """Records POSTs; ``status`` (a number or a function of the request) decides the answer."""

    def __init__(self, port: int | None = None, tls: ssl.SSLContext | None = None) -> None:
        self.port = port or free_port()
        self.tls = tls
        self.requests: list[Request] = []
        self.status: int | Callable[[Request], int] = 200
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The base URL."""
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        req = Request(request.path, dict(request.headers), await request.read())
        status = self.status(req) if callable(self.status) else self.status
        if 200 <= status < 300:
            with self.lock:
                self.requests.append(req)
        return web.Response(status=status, text="ok" if status < 300 else "no")

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port, reuse_address=True, ssl_context=self.tls).start()

    async def _stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def up(self) -> WebhookServer:
        """Start listening."""
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        return self

    def down(self) -> None:
        """Stop listening and close every connection."""
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(10)

    def received(self, path: str | None = None) -> list[Request]:
        """The requests answered with a 2xx so far (on ``path`` only, if given)."""
        with self.lock:
            return [r for r in self.requests if path is None or r.path == path]

    def close(self) -> None:
        """Stop the server and its thread."""
        self.down()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()

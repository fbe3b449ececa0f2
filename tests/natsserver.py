"""A real ``nats-server -js`` on loopback for the nats receiver, fleet tests and bench."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

from pgcluster import free_port, wait_server

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


class NatsServer:
    """``nats-server -js -a 127.0.0.1 -p PORT -sd STORE``; restartable on the same port and store."""

    def __init__(self, base: Path, *args: str) -> None:
        self.base = base
        self.port = free_port()
        self.store = base / "jetstream"
        self.args = args
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = base / "nats-server.log"

    @property
    def url(self) -> str:
        """The server's nats:// URL."""
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> None:
        """Start the server and wait until it accepts connections and JetStream answers (no fixed sleep)."""
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port),
                                      "-sd", str(self.store), *self.args], stdout=log, stderr=subprocess.STDOUT)
        log.close()

        def ready() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                return s.recv(4096).startswith(b"INFO") and "Server is ready" in self.log_path.read_text()
        wait_server(self.proc, ready, self.log_path, "nats-server", timeout)

    def kill(self) -> None:
        """SIGKILL the server (what a crash does) and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        """Stop the server (SIGTERM, SIGKILL after 5 s)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.kill()
        self.proc = None


async def stream_messages(url: str, stream: str = "BUSD", **connect: Any) -> list[Any]:
    """Return every message of ``stream`` (``nats.aio.msg.Msg``, with headers), oldest first."""
    import nats

    nc = await nats.connect(url, **connect)
    try:
        js = nc.jetstream()
        info = await js.stream_info(stream)
        out = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1) if info.state.messages else ():
            out.append(await js.get_msg(stream, seq))
        return out
    finally:
        await nc.close()


def stream_count(url: str, stream: str = "BUSD") -> int:
    """Return how many messages ``stream`` holds (0 if it does not exist)."""
    async def count() -> int:
        import nats
        import nats.js.errors

        nc = await nats.connect(url)
        try:
            return int((await nc.jetstream().stream_info(stream)).state.messages)
        except nats.js.errors.NotFoundError:
            return 0
        finally:
            await nc.close()
    return asyncio.run(count())

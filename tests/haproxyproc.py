"""A real HAProxy (Debian's ``haproxy``) for tests: a generated configuration on 127.0.0.1 ports.

:class:`HAProxyProc` writes a configuration with a write backend and a read backend (``mode tcp``),
each server at ``127.0.0.1:PORT`` with PostgreSQL health checks (``option pgsql-check user U``)
unless ``check_user`` is empty, and the stats socket ``base/haproxy.sock`` at admin level; it runs
``haproxy -db`` in the foreground (no daemon) and stops it at :meth:`close`.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

from pgcluster import free_port, wait_server

CONFIG = """\
global
    stats socket {sock} mode 600 level admin
    stats timeout 10s

defaults
    mode tcp
    timeout connect 1s
    timeout client 30s
    timeout server 30s
    timeout check 1s

frontend fe_write
    bind 127.0.0.1:{write_port}
    default_backend {write_backend}

frontend fe_read
    bind 127.0.0.1:{read_port}
    default_backend {read_backend}

backend {write_backend}
{write_check}    default-server inter {inter} fall 2 rise 1 on-marked-down shutdown-sessions
{write_servers}
backend {read_backend}
    balance roundrobin
{read_check}    default-server inter {inter} fall 2 rise 1 on-marked-down shutdown-sessions
{read_servers}"""


class HAProxyProc:
    """HAProxy in front of ``servers`` (name to port on 127.0.0.1).

    Attributes:
        sock: the stats socket path.
        write_port, read_port: the frontends' ports on 127.0.0.1.
    """

    def __init__(self, base: Path, servers: dict[str, int], *, write_backend: str = "pg_write",
                 read_backend: str = "pg_read", check_user: str = "hc", read_check_user: str = "",
                 inter: str = "300ms") -> None:
        self.base = base
        self.sock = base / "haproxy.sock"
        self.config = base / "haproxy.cfg"
        self.log_path = base / "haproxy.log"
        self.write_port = free_port()
        self.read_port = free_port()
        self.write_backend = write_backend
        self.read_backend = read_backend

        def check(user: str) -> str:
            return f"    option pgsql-check user {user}\n" if user else ""

        def lines(checked: bool) -> str:
            return "".join(f"    server {name} 127.0.0.1:{port}{' check' if checked else ''}\n"
                           for name, port in servers.items())

        self.config.write_text(CONFIG.format(
            sock=self.sock, write_port=self.write_port, read_port=self.read_port, write_backend=write_backend,
            read_backend=read_backend, inter=inter, write_check=check(check_user),
            read_check=check(read_check_user or check_user), write_servers=lines(bool(check_user)),
            read_servers=lines(bool(read_check_user or check_user))))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10) -> None:
        """Start HAProxy and wait until its stats socket answers."""
        self.log = self.log_path.open("ab")
        self.proc = subprocess.Popen(["haproxy", "-db", "-f", str(self.config)], stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_server(self.proc, lambda: "be_name" in self.command("show servers state"), self.log_path, "haproxy",
                    timeout)

    def command(self, command: str) -> str:
        """Run one runtime API command and return the answer."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.sock))
            s.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def states(self) -> dict[str, dict[str, str]]:
        """Return ``BACKEND/SERVER`` -> ``{"op": ..., "admin": ...}`` from ``show servers state``."""
        from receivers.haproxy import parse_servers_state

        return {f"{r['be_name']}/{r['srv_name']}": {"op": r["op"], "admin": r["admin"]}
                for r in parse_servers_state(self.command("show servers state"))}

    def stop(self) -> None:
        """Stop HAProxy (SIGTERM, then SIGKILL)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.log.close()
        self.proc = None

    close = stop

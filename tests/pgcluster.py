"""Real PostgreSQL 15 servers for tests: a primary and a streaming standby managed by repmgr.

:class:`PgCluster` builds, in a temporary directory owned by ``postgres``, two clusters from Debian's
``postgresql-15`` binaries (``/usr/lib/postgresql/15/bin``), never Debian's own ``15/main``:

- ``node1``: the primary (``initdb``), ``repmgr primary register``;
- ``node2``: a streaming standby made with ``pg_basebackup -R`` (``application_name=node2`` in its
  ``primary_conninfo``, as repmgr's own clone sets it), ``repmgr standby register``.

Both listen on 127.0.0.1 on free ports, with their unix sockets in the temporary directory, tuned to
start fast (``fsync = off``, small ``shared_buffers``) and to report replication often
(``wal_receiver_status_interval = 1s``). PostgreSQL refuses to run as root, so every server and tool
runs as the ``postgres`` user (``runuser``) when the tests run as root.

Users (:data:`USERS`, passwords in the DSNs :meth:`PgCluster.dsn` returns):

============ ======================================================================== =================
user         what                                                                     pg_hba
============ ======================================================================== =================
``postgres`` superuser                                                                trust
``repmgr``   superuser, replication, owns database ``repmgr`` (the ``repmgr`` schema) trust
``hc``       HAProxy ``pgsql-check`` user, password stored as MD5                     md5
``app``      read-write user, owns database ``app``                                   scram-sha-256
``ro``       read-only user (``pg_read_all_data``) on database ``app``                scram-sha-256
============ ======================================================================== =================

``hc``'s password is stored as MD5 because HAProxy's ``pgsql-check`` passes only on an
``AuthenticationOk`` or ``AuthenticationMD5Password`` reply (a SCRAM request fails the check), so an
``md5`` line in ``pg_hba.conf`` allows it and a ``reject`` line denies it. :data:`HBA` is the
``pg_hba.conf`` both nodes start with (:meth:`PgCluster.hba_path`).

Use the ``pg_cluster`` fixture of ``tests/conftest.py`` (one fresh pair per test module), or::

    with PgCluster() as pg:      # create() on enter, close() on exit
        pg.sql("node1", "SELECT 1")
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psycopg

PG_BIN = Path("/usr/lib/postgresql/15/bin")
NODES = ("node1", "node2")
USERS = {"postgres": "", "repmgr": "", "hc": "hc-secret", "app": "app-secret", "ro": "ro-secret"}
"""User name to password (empty: trust authentication)."""
DATABASES = {"postgres": "postgres", "repmgr": "repmgr", "hc": "postgres", "app": "app", "ro": "app"}
"""The database :meth:`PgCluster.dsn` connects a user to by default."""

HBA = """\
# TYPE  DATABASE     USER             ADDRESS       METHOD
local   all          all                            trust
host    replication  repmgr           127.0.0.1/32  trust
host    all          postgres,repmgr  127.0.0.1/32  trust
host    all          hc               127.0.0.1/32  md5
host    all          all              127.0.0.1/32  scram-sha-256
"""

SETTINGS = """
# tests/pgcluster.py
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sockets}'
max_connections = 40
shared_buffers = 16MB
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = replica
wal_log_hints = on
max_wal_senders = 8
max_replication_slots = 8
wal_keep_size = 128MB
hot_standby = on
wal_receiver_status_interval = 1s
shared_preload_libraries = 'repmgr'
dynamic_shared_memory_type = posix
log_min_messages = warning
log_line_prefix = '%m [%p] '
"""

REPMGR_CONF = """\
node_id={node_id}
node_name='{node}'
conninfo='host=127.0.0.1 port={port} user=repmgr dbname=repmgr connect_timeout=2'
data_directory='{data}'
pg_bindir='{bindir}'
use_replication_slots=false
log_level='WARNING'
promote_check_interval=1
promote_check_timeout=30
"""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_server(proc: subprocess.Popen[bytes], ready: Callable[[], bool], log_path: Path, what: str,
                timeout: float) -> None:
    """Wait until ``ready()`` (a probe of the server itself; ``OSError`` counts as not yet), failing with
    the log's tail if ``proc`` exits or ``timeout`` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited {proc.returncode}:\n{log_path.read_text()[-2000:]}")
        try:
            if ready():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not ready after {timeout} s:\n{log_path.read_text()[-2000:]}")
        time.sleep(0.02)


class PgError(RuntimeError):
    """A PostgreSQL tool failed; the message has its command, output and the server log's tail."""


class PgCluster:
    """Two PostgreSQL 15 nodes (``node1`` primary, ``node2`` standby) registered with repmgr.

    Attributes:
        base: the temporary directory (data dirs ``base/node1``, ``base/node2``, sockets in
            ``base/sock``, logs ``base/node1.log``, repmgr configuration ``base/node1.repmgr.conf``).
        nodes: the node names.
    """

    nodes: tuple[str, ...] = NODES

    def __init__(self, base: Path | None = None) -> None:
        self.base = base or Path(tempfile.mkdtemp(prefix="pg", dir="/tmp"))
        self.sockets = self.base / "sock"
        self._ports = {node: free_port() for node in NODES}
        self._as_postgres = os.geteuid() == 0
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        self._env["LC_ALL"] = "C.UTF-8"

    def __enter__(self) -> PgCluster:
        try:
            self.create()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- where things are ----------------------------------------------------------------------

    def port(self, node: str) -> int:
        """Return the TCP port ``node`` listens on (127.0.0.1)."""
        return self._ports[node]

    def data_dir(self, node: str) -> Path:
        """Return ``node``'s data directory."""
        return self.base / node

    def hba_path(self, node: str) -> Path:
        """Return ``node``'s ``pg_hba.conf`` (reload with ``SELECT pg_reload_conf()``)."""
        return self.data_dir(node) / "pg_hba.conf"

    def log_path(self, node: str) -> Path:
        """Return ``node``'s server log."""
        return self.base / f"{node}.log"

    def repmgr_conf(self, node: str) -> Path:
        """Return ``node``'s ``repmgr.conf``."""
        return self.base / f"{node}.repmgr.conf"

    def node_id(self, node: str) -> int:
        """Return ``node``'s repmgr node id (1 for node1, 2 for node2)."""
        return NODES.index(node) + 1

    def dsn(self, node: str, user: str = "repmgr", dbname: str | None = None) -> str:
        """Return a libpq DSN for ``user`` on ``node`` (database: :data:`DATABASES` unless given)."""
        parts = [f"host=127.0.0.1 port={self.port(node)} user={user}",
                 f"dbname={dbname or DATABASES.get(user, 'postgres')} connect_timeout=2"]
        if USERS.get(user):
            parts.append(f"password={USERS[user]}")
        return " ".join(parts)

    # -- running things ------------------------------------------------------------------------

    def _run(self, *argv: str | Path, node: str | None = None, check: bool = True,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run a command as ``postgres`` in :attr:`base`; raise :class:`PgError` when it fails."""
        cmd = [str(a) for a in argv]
        full = ["runuser", "-u", "postgres", "--", *cmd] if self._as_postgres else cmd
        res = subprocess.run(full, cwd=self.base, env=self._env, capture_output=True, text=True, timeout=timeout)
        if check and res.returncode != 0:
            log = ""
            if node is not None and self.log_path(node).exists():
                log = "\n--- server log tail ---\n" + self.log_path(node).read_text(errors="replace")[-2000:]
            raise PgError(f"{' '.join(cmd)} exited {res.returncode}:\n{res.stdout}{res.stderr}{log}")
        return res

    def sql(self, node: str, query: str, params: Sequence[Any] | None = None, user: str = "postgres",
            dbname: str | None = None) -> list[tuple[Any, ...]]:
        """Run one statement on ``node`` (autocommit) and return its rows (``[]`` when it has none)."""
        with psycopg.connect(self.dsn(node, user, dbname), autocommit=True) as conn:
            cur = conn.execute(query.encode(), params)  # bytes: a literal '%' in the query is not a placeholder
            return list(cur.fetchall()) if cur.description is not None else []

    def is_running(self, node: str) -> bool:
        """Return whether ``node``'s postmaster runs (``pg_ctl status``)."""
        return self._run(PG_BIN / "pg_ctl", "-D", self.data_dir(node), "status", check=False).returncode == 0

    def start(self, node: str) -> None:
        """Start ``node`` and wait until it accepts connections."""
        self._run(PG_BIN / "pg_ctl", "-D", self.data_dir(node), "-l", self.log_path(node), "-w", "-t", "60",
                  "start", node=node)

    def stop(self, node: str, mode: str = "fast") -> None:
        """Stop ``node`` (``mode``: smart, fast or immediate) and wait until it is gone."""
        self._run(PG_BIN / "pg_ctl", "-D", self.data_dir(node), "-m", mode, "-w", "-t", "60", "stop", node=node)

    def promote(self, node: str, repmgr: bool = True) -> subprocess.CompletedProcess[str]:
        """Promote standby ``node``: ``repmgr standby promote`` (records ``standby_promote`` in
        ``repmgr.events``; refuses while the primary is reachable), or ``pg_ctl promote`` with
        ``repmgr=False``. Returns once ``node`` runs as a primary.
        """
        if repmgr:
            return self._run(PG_BIN / "repmgr", "-f", self.repmgr_conf(node), "standby", "promote", node=node)
        return self._run(PG_BIN / "pg_ctl", "-D", self.data_dir(node), "-w", "-t", "60", "promote", node=node)

    def repmgr(self, node: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``repmgr -f <node's repmgr.conf> ARGS...`` as ``postgres``."""
        return self._run(PG_BIN / "repmgr", "-f", self.repmgr_conf(node), *args, node=node, check=check)

    def in_recovery(self, node: str) -> bool:
        """Return ``pg_is_in_recovery()`` on ``node``."""
        return bool(self.sql(node, "SELECT pg_is_in_recovery()")[0][0])

    def system_identifier(self, node: str = "node1") -> str:
        """Return the cluster's system identifier (as text), read on ``node``."""
        return str(self.sql(node, "SELECT system_identifier FROM pg_control_system()")[0][0])

    def wait_streaming(self, standby: str = "node2", primary: str = "node1", timeout: float = 30) -> None:
        """Wait until ``primary`` shows ``standby`` streaming in ``pg_stat_replication``."""
        deadline = time.monotonic() + timeout
        while not self.sql(primary, "SELECT 1 FROM pg_stat_replication WHERE application_name = %s "
                                    "AND state = 'streaming'", [standby]):
            if time.monotonic() > deadline:
                raise PgError(f"{standby} is not streaming from {primary} after {timeout} s")
            time.sleep(0.05)

    # -- building and removing -----------------------------------------------------------------

    def create(self) -> None:
        """Build and start both nodes, create the users and register them with repmgr."""
        if self._as_postgres:
            pw = pwd.getpwnam("postgres")
            os.chown(self.base, pw.pw_uid, pw.pw_gid)
        self.base.chmod(0o755)
        self._run("mkdir", "-m", "0700", self.sockets)
        self._init_primary()
        self._clone_standby()

    def _settings(self, node: str) -> str:
        return SETTINGS.format(port=self.port(node), sockets=self.sockets)

    def _write(self, path: Path, text: str, append: bool = False) -> None:
        """Write a file as its owner would (postgres), so the servers can read it."""
        with path.open("a" if append else "w") as f:
            f.write(text)
        if self._as_postgres:
            shutil.chown(path, "postgres", "postgres")

    def _write_repmgr_conf(self, node: str) -> None:
        self._write(self.repmgr_conf(node), REPMGR_CONF.format(
            node_id=self.node_id(node), node=node, port=self.port(node), data=self.data_dir(node), bindir=PG_BIN))

    def _init_primary(self) -> None:
        node = "node1"
        data = self.data_dir(node)
        self._run(PG_BIN / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-instructions")
        self._write(data / "postgresql.conf", self._settings(node), append=True)
        self._write(self.hba_path(node), HBA)
        self.start(node)
        statements = [
            "CREATE ROLE repmgr SUPERUSER REPLICATION LOGIN",
            "CREATE DATABASE repmgr OWNER repmgr",
            "SET password_encryption = 'md5'",
            f"CREATE ROLE hc LOGIN PASSWORD '{USERS['hc']}'",
            "SET password_encryption = 'scram-sha-256'",
            f"CREATE ROLE app LOGIN PASSWORD '{USERS['app']}'",
            f"CREATE ROLE ro LOGIN PASSWORD '{USERS['ro']}'",
            "CREATE DATABASE app OWNER app",
            "GRANT pg_read_all_data TO ro",
        ]
        with psycopg.connect(self.dsn(node, "postgres"), autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement.encode())
        self._write_repmgr_conf(node)
        self.repmgr(node, "primary", "register")

    def _clone_standby(self) -> None:
        node = "node2"
        data = self.data_dir(node)
        self._run(PG_BIN / "pg_basebackup", "-D", data, "-X", "stream", "-c", "fast", "-R", "--no-sync",
                  "-d", f"host=127.0.0.1 port={self.port('node1')} user=repmgr application_name={node}")
        self._write(data / "postgresql.conf", self._settings(node), append=True)
        self.start(node)
        self._write_repmgr_conf(node)
        self.wait_streaming(node, "node1")
        self.repmgr(node, "standby", "register")

    def recreate(self) -> None:
        """Start over: stop both servers, remove everything and :meth:`create` again on the same ports
        (so DSNs stay valid; about as long as the first build)."""
        self._stop_all()
        for path in self.base.iterdir():
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        self.create()

    def close(self) -> None:
        """Stop every server still running (immediately) and remove the temporary directory."""
        self._stop_all()
        shutil.rmtree(self.base, ignore_errors=True)

    def _stop_all(self) -> None:
        for node in NODES:
            pidfile = self.data_dir(node) / "postmaster.pid"
            if not pidfile.exists():
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._run(PG_BIN / "pg_ctl", "-D", self.data_dir(node), "-m", "immediate", "-w", "-t", "10", "stop",
                          check=False, timeout=20)
            if pidfile.exists():  # pg_ctl failed: the postmaster's pid is the pid file's first line
                with contextlib.suppress(OSError, ValueError, IndexError):
                    os.kill(int(pidfile.read_text().split()[0]), signal.SIGKILL)

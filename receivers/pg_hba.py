"""Receiver ``pg_hba``: lets HAProxy's health checks through to this PostgreSQL node, or not.

It acts on the ``PG_ROUTING_DECISION`` events of the ``pgcluster`` receiver (of the node named
``node``; every decision of this busd when ``node`` is empty). HAProxy sends a node writes only
while its health check, logging in as ``rw_user``, passes; so this receiver keeps a block of
``pg_hba.conf`` lines for the health-check users from each of ``haproxy_addresses``:

- ``rw_user`` with ``allow_method`` (``md5``...) when the decision is ``allow_writes``, else
  ``reject``;
- ``ro_user`` (if set) with ``allow_method`` when ``allow_ro`` and the decision allows reads (an
  agreed primary or standby), else ``reject``.

The block is marked::

    # BEGIN busd managed block -- do not edit
    host    all    hc    10.0.0.5/32    md5
    # END busd managed block

and goes at the **top** of the file, because PostgreSQL uses the first line that matches a
connection: below a catch-all line such as ``host all all 0.0.0.0/0 md5`` it would never be
reached. A block that is already in the file is replaced where it is (an operator may move it).
Nothing outside the block is ever changed, byte for byte (comments, odd spacing, CRLF line ends,
a missing final newline): the file is handled as bytes and the block uses the file's own line
end. The file is replaced atomically (temporary file, fsync, rename) keeping its owner and mode;
before the first change the original is copied once to ``pg_hba.conf.busd-orig``. Then it runs
``SELECT pg_reload_conf()`` (psycopg, ``dsn``). A file whose markers are broken (a BEGIN without
END, or two blocks) is left alone and the error logged. A write or reload that fails is retried
with backoff until it works or a newer decision replaces it.

At start, a file without the block gets a block that denies everything: a node that does not
know yet must not take writes. ``busctl status`` counts ``written``, ``reloaded``,
``write_failed`` and ``reload_failed``.

Options: ``hba_file`` (required), ``dsn`` (libpq connection string for the reload; empty: libpq's
defaults and ``PG*`` variables), ``node``, ``haproxy_addresses`` (IP addresses or networks,
required), ``rw_user`` (required), ``ro_user``, ``allow_ro``, ``database`` (default ``all``),
``connection_type`` (``host``, ``hostssl``, ``hostnossl``), ``allow_method`` (``md5``,
``scram-sha-256``, ``password``, ``trust``), ``reload_timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import shutil
from typing import Any

import psycopg

from bus.confedit import write_file
from bus.config import Option
from bus.event import Event
from bus.plugin import Receiver, run
from receivers._retry import Outage

FILTER = {"system": ["postgres"], "event_type": ["PG_ROUTING_DECISION"]}

OPTIONS = {
    "hba_file": Option(str, Option.REQUIRED, "the pg_hba.conf to manage"),
    "dsn": Option(str, "", "libpq connection string for SELECT pg_reload_conf() (empty: libpq defaults)"),
    "node": Option(str, "", "act on decisions about this node only (empty: every decision of this busd)"),
    "haproxy_addresses": Option(list, Option.REQUIRED, "addresses or networks HAProxy's health checks come from"),
    "rw_user": Option(str, Option.REQUIRED, "HAProxy's health-check user of the write backend"),
    "ro_user": Option(str, "", "HAProxy's health-check user of the read backend (empty: none)"),
    "allow_ro": Option(bool, False, "let ro_user in on nodes whose decision allows reads"),
    "database": Option(str, "all", "the database column of the lines"),
    "connection_type": Option(str, "host", "the type column of the lines", ("host", "hostssl", "hostnossl")),
    "allow_method": Option(str, "md5", "method that lets a health check in",
                           ("md5", "scram-sha-256", "password", "trust")),
    "reload_timeout": Option(float, 5.0, "seconds to connect and reload"),
}

BEGIN = b"# BEGIN busd managed block -- do not edit"
END = b"# END busd managed block"
DENY = "reject"


class BlockError(ValueError):
    """The file's markers are broken: the block cannot be found without guessing."""


def _network(address: str) -> str:
    return str(ipaddress.ip_network(address, strict=False))


def check_options(options: dict[str, Any]) -> None:
    """Check the addresses and user names (raises ``ValueError("key: reason")``)."""
    if not options["haproxy_addresses"]:
        raise ValueError("haproxy_addresses: give at least one address")
    for i, address in enumerate(options["haproxy_addresses"]):
        try:
            _network(address)
        except (TypeError, ValueError):
            raise ValueError(f"haproxy_addresses[{i}]: {address!r} is not an IP address or network") from None
    for key in ("rw_user", "ro_user", "database"):
        if any(c.isspace() or c == "#" for c in options[key]):
            raise ValueError(f"{key}: {options[key]!r} must not contain spaces or '#'")
    if not options["rw_user"]:
        raise ValueError("rw_user: must not be empty")
    if options["allow_ro"] and not options["ro_user"]:
        raise ValueError("allow_ro: needs ro_user")


def find_block(data: bytes) -> tuple[int, int] | None:
    """Return the byte range of the managed block (markers and their line ends included), or ``None``.

    Raises:
        BlockError: a BEGIN without END, an END without BEGIN, or more than one block.
    """
    spans: list[tuple[int, int]] = []
    start: int | None = None
    offset = 0
    for line in data.splitlines(keepends=True):
        text = line.rstrip(b"\r\n").rstrip()
        if text == BEGIN:
            if start is not None:
                raise BlockError("a second BEGIN marker before the END marker")
            start = offset
        elif text == END:
            if start is None:
                raise BlockError("an END marker without a BEGIN marker")
            spans.append((start, offset + len(line)))
            start = None
        offset += len(line)
    if start is not None:
        raise BlockError("a BEGIN marker without its END marker")
    if len(spans) > 1:
        raise BlockError(f"{len(spans)} managed blocks")
    return spans[0] if spans else None


def newline_of(data: bytes) -> bytes:
    """Return the file's line end: CRLF when its first line ends so, else LF."""
    end = data.find(b"\n")
    return b"\r\n" if end > 0 and data[end - 1: end] == b"\r" else b"\n"


def render_block(lines: list[str], newline: bytes) -> bytes:
    """Return the block with its markers, every line ended by ``newline``."""
    return b"".join(line + newline for line in [BEGIN, *(x.encode() for x in lines), END])


def replace_block(data: bytes, lines: list[str]) -> bytes:
    """Return ``data`` with the block holding ``lines``: replaced in place, or inserted at the top.

    Every byte outside the block is kept.
    """
    nl = newline_of(data)
    span = find_block(data)
    block = render_block(lines, nl)
    if span is None:
        return block + data
    start, end = span
    if end == len(data) and not data.endswith((b"\n", b"\r")):
        block = block[: -len(nl)]  # the END marker was the last line, without a line end: keep it so
    return data[:start] + block + data[end:]


def hba_lines(options: dict[str, Any], allow_writes: bool, allow_reads: bool) -> list[str]:
    """Return the block's lines for a decision."""
    allow = options["allow_method"]
    users = [(options["rw_user"], allow if allow_writes else DENY)]
    if options["ro_user"]:
        users.append((options["ro_user"], allow if options["allow_ro"] and allow_reads else DENY))
    rows = [(options["connection_type"], options["database"], user, _network(address), method)
            for address in options["haproxy_addresses"] for user, method in users]
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    return ["  ".join(r[i].ljust(width[i]) for i in range(4)) + "  " + r[4] for r in rows]


class PgHba(Receiver):
    """Keep the managed block of ``pg_hba.conf`` in line with the routing decisions."""

    def __init__(self, env: Any = None) -> None:
        super().__init__(env)
        self.file = self.path(self.options["hba_file"])
        self.wanted: list[str] | None = None
        self.outage = Outage(self.log, "pg_hba_apply")
        self._retry: asyncio.Task[None] | None = None

    async def setup(self) -> None:
        """Deny everything at start if the file has no block yet (unsure: no writes)."""
        try:
            data = self.file.read_bytes()
            if find_block(data) is None:
                self.log.info("pg_hba_initial_deny", file=str(self.file))
                await self.apply(hba_lines(self.options, False, False))
        except (OSError, BlockError) as exc:
            self.log.error("pg_hba_unreadable", file=str(self.file), error=str(exc))

    async def teardown(self) -> None:
        """Stop retrying."""
        if self._retry is not None:
            self._retry.cancel()

    async def handle(self, event: Event) -> None:
        """Apply one routing decision."""
        if event.get("event_type") != "PG_ROUTING_DECISION":
            return
        node = self.options["node"]
        if node and event.get("dev_name") != node:
            return
        ext = event.get("extensions") or {}
        lines = hba_lines(self.options, ext.get("outcome") == "allow_writes", bool(ext.get("allow_reads")))
        await self.apply(lines)

    async def apply(self, lines: list[str]) -> bool:
        """Write the block (if it changed) and reload PostgreSQL; on failure retry later. Return success."""
        self.wanted = lines
        if self._retry is not None and self._retry is not asyncio.current_task():
            self._retry.cancel()
            self._retry = None
        try:
            changed = await asyncio.to_thread(self._write, lines)
        except (OSError, BlockError) as exc:
            self.count("write_failed")
            self._schedule(self.outage.failed(str(exc), file=str(self.file)))
            return False
        if changed:
            self.count("written")
            self.log.info("pg_hba_written", file=str(self.file), lines=lines)
        try:
            await self._reload()
        except (psycopg.Error, OSError, TimeoutError) as exc:
            self.count("reload_failed")
            self._schedule(self.outage.failed(f"pg_reload_conf() failed: {exc}".strip(), file=str(self.file)))
            return False
        self.count("reloaded")
        self.outage.succeeded(file=str(self.file))
        return True

    def _write(self, lines: list[str]) -> bool:
        """Replace the block in the file (bytes in, bytes out); return whether the file changed."""
        path = self.file.resolve()
        data = path.read_bytes()
        new = replace_block(data, lines)
        if new == data:
            return False
        backup = path.with_name(path.name + ".busd-orig")
        if not backup.exists():
            shutil.copy2(path, backup)
            st = path.stat()
            with contextlib.suppress(PermissionError):
                os.chown(backup, st.st_uid, st.st_gid)
        write_file(path, new)
        return True

    async def _reload(self) -> None:
        timeout = self.options["reload_timeout"]
        async with asyncio.timeout(timeout):
            conn = await psycopg.AsyncConnection.connect(self.options["dsn"], autocommit=True,
                                                         connect_timeout=max(1, int(timeout)))
        async with conn, asyncio.timeout(timeout):
            await conn.execute("SELECT pg_reload_conf()")

    def _schedule(self, delay: float) -> None:
        async def again() -> None:
            await asyncio.sleep(delay)
            if self.wanted is not None:
                await self.apply(self.wanted)

        self._retry = asyncio.create_task(again(), name="pg-hba-retry")


if __name__ == "__main__":
    run(PgHba)

"""Receiver ``haproxy``: routes PostgreSQL traffic at once through HAProxy's runtime API.

HAProxy's health checks (``option pgsql-check``) find the new primary by themselves, but only
after ``inter`` x ``rise``; this receiver tells HAProxy the moment busd knows. On the stats socket
(``socket``: a unix socket path, or ``tcp://HOST:PORT``) it sets each PostgreSQL server of the
``write_backend`` and ``read_backend`` to ``ready``, ``drain`` or ``maint``:

- ``PG_ROUTING_DECISION`` (of the ``pgcluster`` receiver) about node N, whose server is
  ``servers[N]``: in the write backend, ``ready`` when the outcome is ``allow_writes``, else
  ``deny_state`` (``maint`` by default: no new connections and no checks; ``drain`` lets
  established sessions finish); with ``exclusive`` (default), an ``allow_writes`` also puts every
  other server of the write backend in ``deny_state``, so writes never have two targets while
  the other node's busd catches up (it lets go of them, without changing them, once this node no
  longer takes writes). In the read backend, ``ready`` when reads are allowed, else ``deny_state``.
- ``PG_DOWN`` about node N: N's servers go to ``maint`` in both backends; a later decision brings
  them back.

With ``force_health`` (default), a server set ``ready`` is also declared healthy
(``set server B/S health up``), so traffic flows before the next check; the checks still run
and take it out again if it does not answer. Commands are idempotent; the state wanted for each
server is kept, and what could not be set (HAProxy down, socket missing) is retried with backoff
until it works, with one error line per outage; it is never fatal. After each change the
receiver reads ``show servers state`` back into its status (``busctl status`` counts
``commands`` and ``command_failed``).

Options: ``socket`` (required), ``write_backend``, ``read_backend`` (at least one), ``servers``
(table of node name to server name, required), ``deny_state``, ``exclusive``, ``force_health``,
``timeout`` (seconds per command).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bus.config import Option
from bus.event import Event
from bus.plugin import Receiver, run
from receivers._retry import Outage

FILTER = {"system": ["postgres"], "event_type": ["PG_ROUTING_DECISION", "PG_DOWN"]}

OPTIONS = {
    "socket": Option(str, Option.REQUIRED, "HAProxy's stats socket: a unix socket path or tcp://HOST:PORT"),
    "write_backend": Option(str, "", "the backend that takes writes"),
    "read_backend": Option(str, "", "the backend that takes reads"),
    "servers": Option(dict, Option.REQUIRED, "node name (dev_name of the events) -> HAProxy server name"),
    "deny_state": Option(str, "maint", "state of a server that must not take traffic", ("maint", "drain")),
    "exclusive": Option(bool, True, "allow_writes on one node puts the other write servers in deny_state"),
    "force_health": Option(bool, True, "declare a server healthy when it is set ready"),
    "timeout": Option(float, 2.0, "seconds one command may take"),
    "verify_interval": Option(float, 5.0, "seconds between reads of HAProxy's states; what differs is set again"),
}

ADMIN_FLAGS = {0x01: "maint", 0x02: "maint(inherited)", 0x04: "maint(config)", 0x08: "drain",
               0x10: "drain(inherited)", 0x20: "maint(resolution)", 0x40: "maint(health)"}
OP_STATES = {"0": "stopped", "1": "starting", "2": "running", "3": "stopping"}


def check_options(options: dict[str, Any]) -> None:
    """Check backends and servers (raises ``ValueError("key: reason")``)."""
    if not options["write_backend"] and not options["read_backend"]:
        raise ValueError("write_backend: give write_backend, read_backend or both")
    for node, server in options["servers"].items():
        if not isinstance(server, str) or not server or any(c.isspace() or c in "/;" for c in server):
            raise ValueError(f"servers.{node}: {server!r} is not an HAProxy server name")
    for key in ("write_backend", "read_backend"):
        if any(c.isspace() or c in "/;" for c in options[key]):
            raise ValueError(f"{key}: {options[key]!r} is not an HAProxy backend name")
    for key in ("timeout", "verify_interval"):
        if options[key] <= 0:
            raise ValueError(f"{key}: must be positive")


def parse_servers_state(text: str) -> list[dict[str, Any]]:
    """Parse ``show servers state``: one dict per server with the header's column names.

    ``srv_op_state`` and ``srv_admin_state`` are also given in words as ``op`` and ``admin``.
    """
    header: list[str] = []
    rows: list[dict[str, Any]] = []
    for line in text.splitlines():
        if line.startswith("#"):
            header = line[1:].split()
            continue
        fields = line.split()
        if not header or len(fields) < 7:
            continue
        row: dict[str, Any] = dict(zip(header, fields, strict=False))
        row["op"] = OP_STATES.get(row.get("srv_op_state", ""), row.get("srv_op_state"))
        try:
            admin = int(row.get("srv_admin_state", "0"))
        except ValueError:
            admin = 0
        row["admin"] = ",".join(name for flag, name in ADMIN_FLAGS.items() if admin & flag) or "ready"
        rows.append(row)
    return rows


def _admin_is(admin: str, state: str) -> bool:
    """Whether an ``admin`` state read back (see :func:`parse_servers_state`) is the ``state`` we set."""
    return admin == "ready" if state == "ready" else any(flag.startswith(state) for flag in admin.split(","))


class RuntimeAPI:
    """One command per connection to HAProxy's stats socket (non-interactive mode)."""

    def __init__(self, address: str, timeout: float) -> None:
        self.address = address
        self.timeout = timeout

    async def command(self, command: str) -> str:
        """Run one command and return HAProxy's answer.

        Raises:
            OSError: the socket cannot be reached (``TimeoutError`` when it does not answer in time).
        """
        async def run() -> str:
            if self.address.startswith("tcp://"):
                host, _, port = self.address[len("tcp://"):].rpartition(":")
                reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
            else:
                reader, writer = await asyncio.open_unix_connection(self.address)
            try:
                writer.write(command.encode() + b"\n")
                await writer.drain()
                return (await reader.read()).decode(errors="replace")
            finally:
                writer.close()

        async with asyncio.timeout(self.timeout):
            return await run()


class HAProxy(Receiver):
    """Set PostgreSQL servers ready, drained or in maintenance from the routing decisions."""

    def __init__(self, env: Any = None) -> None:
        super().__init__(env)
        opts = self.options
        address = opts["socket"]
        self.api = RuntimeAPI(address if address.startswith("tcp://") else str(self.path(address)), opts["timeout"])
        self.backends = [b for b in (opts["write_backend"], opts["read_backend"]) if b]
        self.wanted: dict[tuple[str, str], str] = {}
        self.applied: dict[tuple[str, str], str] = {}
        self.state: list[dict[str, Any]] = []
        self.outage = Outage(self.log, "haproxy")
        self._retry: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._unknown: set[str] = set()
        self._verifier: asyncio.Task[None] | None = None

    async def setup(self) -> None:
        """Read HAProxy's server states once (an unreachable HAProxy is only logged)."""
        try:
            await self._read_state()
        except OSError as exc:
            self.log.warning("haproxy_unreachable_at_start", socket=self.api.address, error=str(exc))
        self._write_status()
        self._verifier = asyncio.create_task(self._verify_loop(), name="haproxy-verify")

    async def teardown(self) -> None:
        """Stop retrying and verifying."""
        for task in (self._retry, self._verifier):
            if task is not None:
                task.cancel()

    async def _verify_loop(self) -> None:
        """Set again what HAProxy no longer has (it restarted, or someone changed it by hand)."""
        while True:
            await asyncio.sleep(self.options["verify_interval"])
            if not self.wanted or self.outage.active:
                continue
            try:
                await self._read_state()
            except OSError:
                continue  # the next command reports the outage
            actual = {(r["backend"], r["server"]): r["admin"] for r in self.state}
            drifted = [k for k, state in self.wanted.items() if k in actual and not _admin_is(actual[k], state)]
            if drifted:
                self.log.warning("haproxy_state_drifted", servers=[f"{b}/{s}" for b, s in drifted])
                for k in drifted:
                    self.applied.pop(k, None)
                await self.apply()

    def server(self, node: str) -> str | None:
        """Return the HAProxy server of a node (``None``, logged once, when it is not configured)."""
        server = self.options["servers"].get(node)
        if server is None and node not in self._unknown:
            self._unknown.add(node)
            self.log.warning("haproxy_unknown_node", node=node, servers=sorted(self.options["servers"]))
        return server

    def wanted_for(self, event: Event) -> tuple[dict[tuple[str, str], str], list[tuple[str, str]]]:
        """Return the server states one event asks for, and the states this receiver no longer insists on.

        The other write servers put in ``deny_state`` by an exclusive ``allow_writes`` are released
        (not changed in HAProxy, just no longer kept so) once this node no longer takes writes: their
        own nodes' busd decide for them, and a verification here must not undo that.
        """
        opts = self.options
        node = event.get("dev_name") or ""
        server = self.server(node)
        if server is None:
            return {}, []
        deny = opts["deny_state"]
        others = [(opts["write_backend"], s) for s in opts["servers"].values() if s != server and opts["write_backend"]]
        if event.get("event_type") == "PG_DOWN":
            return {(backend, server): "maint" for backend in self.backends}, others
        ext = event.get("extensions") or {}
        out: dict[tuple[str, str], str] = {}
        release: list[tuple[str, str]] = []
        if opts["write_backend"]:
            writes = ext.get("outcome") == "allow_writes"
            out[(opts["write_backend"], server)] = "ready" if writes else deny
            if writes and opts["exclusive"]:
                out.update(dict.fromkeys(others, deny))
            else:
                release = others
        if opts["read_backend"]:
            out[(opts["read_backend"], server)] = "ready" if ext.get("allow_reads") else deny
        return out, release

    async def handle(self, event: Event) -> None:
        """Apply one routing decision or PG_DOWN."""
        if event.get("event_type") not in ("PG_ROUTING_DECISION", "PG_DOWN"):
            return
        wanted, release = self.wanted_for(event)
        for key in release:
            self.wanted.pop(key, None)
            self.applied.pop(key, None)
        if not wanted:
            return
        self.wanted.update(wanted)
        self.log.info("haproxy_wanted", event_type=event["event_type"], node=event.get("dev_name"),
                      states={f"{b}/{s}": st for (b, s), st in wanted.items()})
        await self.apply()

    async def apply(self) -> bool:
        """Send the commands for every server whose wanted state is not applied yet; return success."""
        async with self._lock:
            if self._retry is not None and self._retry is not asyncio.current_task():
                self._retry.cancel()
                self._retry = None
            pending = {k: v for k, v in self.wanted.items() if self.applied.get(k) != v}
            try:
                for (backend, server), state in pending.items():
                    await self._set(backend, server, state)
                    self.applied[(backend, server)] = state
                if pending:
                    await self._read_state()
            except OSError as exc:
                self.count("command_failed")
                self._schedule(self.outage.failed(str(exc) or type(exc).__name__, socket=self.api.address))
                self._write_status()
                return False
            self.outage.succeeded(socket=self.api.address)
            self._write_status()
            return True

    async def _set(self, backend: str, server: str, state: str) -> None:
        commands = [f"set server {backend}/{server} state {state}"]
        if state == "ready" and self.options["force_health"]:
            commands.append(f"set server {backend}/{server} health up")
        for command in commands:
            started = time.monotonic()
            answer = (await self.api.command(command)).strip()
            self.count("commands")
            if answer:
                # HAProxy answers a good "set server" with nothing; anything else is its refusal
                self.count("command_refused")
                self.log.error("haproxy_command_refused", command=command, answer=answer[:300])
            else:
                self.log.info("haproxy_command", command=command, took_ms=round((time.monotonic() - started) * 1000, 2))

    async def _read_state(self) -> None:
        rows: list[dict[str, Any]] = []
        for backend in self.backends:
            rows += parse_servers_state(await self.api.command(f"show servers state {backend}"))
        self.state = [{"backend": r.get("be_name"), "server": r.get("srv_name"), "op": r["op"], "admin": r["admin"]}
                      for r in rows]

    def _schedule(self, delay: float) -> None:
        async def again() -> None:
            await asyncio.sleep(delay)
            await self.apply()

        self._retry = asyncio.create_task(again(), name="haproxy-retry")

    def _write_status(self) -> None:
        self.write_status({
            "socket": self.api.address, "hostname": self.hostname,
            "wanted": {f"{b}/{s}": st for (b, s), st in self.wanted.items()},
            "applied": {f"{b}/{s}": st for (b, s), st in self.applied.items()},
            "servers": self.state, "failing": self.outage.active,
        })


if __name__ == "__main__":
    run(HAProxy)

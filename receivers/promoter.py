"""Receiver ``promoter``: simple high availability for DRBD resources, like drbd-reactor's promoter.

It follows the synthetic events of the ``drbd`` parser (each carries the resource's complete
``state``) and, per configured resource:

- when the resource becomes promotable (``may_promote`` true while Secondary) it waits
  ``sleep-before-promote-factor`` times (the worst local disk state's delay: Diskless, Attaching,
  Detaching, Failed, Negotiating, DUnknown 6 s, Inconsistent 3, Outdated 2, Consistent 1, UpToDate 0,
  plus this node's position in ``preferred-nodes``, plus 2 with ``on-quorum-loss = "freeze"``),
  checks it still may promote, promotes it (``drbdadm primary RES``) and starts ``start`` in order;
  if a start fails it stops what started in reverse order and demotes;
- when a volume loses quorum it stops the services in reverse order and demotes
  (``on-quorum-loss = "shutdown"``), or freezes them (``"freeze"``: ``systemctl freeze``, thawed when
  quorum returns; stopped if DRBD forces the frozen Primary to Secondary);
- when the resource is already Primary at the first event (busd restarted), it starts the units
  again in order (a no-op for active ones) and manages them (systemd runner);
- when a started unit is no longer active (checked every ``monitor_interval`` seconds) it stops
  the services and demotes, so that another node takes over;
- with ``on-disk-detach = "fail-over"``, a Primary that loses its disk while a peer is UpToDate
  stops and demotes; with ``preferred-nodes`` (policy ``always``), a Primary hands over to a more
  preferred peer once that peer's disk is UpToDate.

Demoting is ``drbdadm secondary RES``, then (``secondary-force``, default true)
``drbdsetup secondary --force RES``; if both fail, ``on-drbd-demote-failure`` runs
``systemctl reboot|poweroff|exit`` with ``--force`` (``-force``) or ``--force --force``
(``-immediate``). ``drbdadm``, ``drbdsetup`` and ``systemctl`` are options, so tests use fakes.

Options: ``resources`` (a table of resource name to its table, in drbd-reactor's vocabulary:
``start``, ``stop``, ``runner``, ``preferred-nodes``, ``preferred-nodes-policy``, ``on-quorum-loss``,
``on-drbd-demote-failure``, ``on-disk-detach``, ``secondary-force``, ``sleep-before-promote-factor``,
``stop-services-on-exit``, ``adjust-resource-on-start``; ``dependencies-as``, ``target-as``,
``fencing-promote-delay`` and ``on-stop-failure`` are accepted and ignored), ``drbdadm``,
``drbdsetup``, ``systemctl``, ``command_timeout``, ``monitor_interval``, ``retry_interval``.

Unlike drbd-reactor, ``runner = "systemd"`` does not generate a ``drbd-services@RES.target`` with
drop-ins: it runs ``systemctl start UNIT`` for each unit in order and ``systemctl stop UNIT`` in
reverse order, and checks ``systemctl is-active UNIT`` itself. Each resource has its own asyncio
task, so a sleep or a slow command never blocks the receiver or another resource.
``busctl promoter status`` shows each resource's role, may-promote, services and last actions.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bus.config import Option, check_table
from bus.event import Event
from bus.log import get_logger
from bus.plugin import Receiver, run, stop_process
from receivers._drbd import flag, well_formed

log = get_logger("promoter")

FILTER = {"system": ["drbd"]}

OPTIONS = {
    "resources": Option(dict, Option.REQUIRED, "resource name -> its table (start, stop, runner, ...)"),
    "drbdadm": Option(str, "drbdadm", "drbdadm program (primary, secondary, adjust)"),
    "drbdsetup": Option(str, "drbdsetup", "drbdsetup program (secondary --force)"),
    "systemctl": Option(str, "systemctl", "systemctl program (start, stop, is-active, freeze, thaw, reboot...)"),
    "command_timeout": Option((int, float), 120.0, "seconds one command may take before it is killed (a failure)"),
    "monitor_interval": Option((int, float), 20.0, "seconds between checks that started units are still active, "
                                                   "and retries of a promotable resource (0: off)"),
    "retry_interval": Option((int, float), 20.0, "least seconds between two start attempts of one resource"),
}

DISK_SLEEP = {"Diskless": 6, "Attaching": 6, "Detaching": 6, "Failed": 6, "Negotiating": 6, "DUnknown": 6,
              "Unknown": 6, "Inconsistent": 3, "Outdated": 2, "Consistent": 1, "UpToDate": 0}
"""drbd-reactor's seconds to wait before promoting, by the worst local disk state."""

FAILURE_ACTIONS = {
    "none": None,
    "reboot": ["reboot"], "reboot-force": ["reboot", "--force"], "reboot-immediate": ["reboot", "--force", "--force"],
    "poweroff": ["poweroff"], "poweroff-force": ["poweroff", "--force"],
    "poweroff-immediate": ["poweroff", "--force", "--force"],
    "exit": ["exit"], "exit-force": ["exit", "--force"],
}
"""``on-drbd-demote-failure`` values (systemd's FailureAction=) and the systemctl arguments they run."""

RESOURCE_OPTIONS = {
    "start": Option(list, [], "systemd units (runner systemd) or shell commands (runner shell), started in order"),
    "stop": Option(list, [], "what stops them (default: start's units in reverse order)"),
    "runner": Option(str, "systemd", "how start/stop entries run", ("systemd", "shell")),
    "preferred-nodes": Option(list, [], "host names, most preferred first"),
    "preferred-nodes-policy": Option(str, "always", "always: also hand over to a more preferred peer",
                                     ("always", "start-only")),
    "on-quorum-loss": Option(str, "shutdown", "stop and demote, or freeze the services", ("shutdown", "freeze")),
    "on-drbd-demote-failure": Option(str, "none", "what to do when demoting fails", tuple(FAILURE_ACTIONS)),
    "on-disk-detach": Option(str, "ignore", "fail-over: a Primary without disk hands over to an UpToDate peer",
                             ("ignore", "fail-over")),
    "secondary-force": Option(bool, True, "demote with drbdsetup secondary --force when drbdadm secondary fails"),
    "sleep-before-promote-factor": Option((int, float), 1, "scales the wait before promoting"),
    "stop-services-on-exit": Option(bool, False, "stop the services and demote when the plugin stops"),
    "adjust-resource-on-start": Option(bool, True, "run drbdadm adjust RES when the plugin starts"),
    # drbd-reactor settings of its generated systemd units: accepted so its tables translate, no effect here
    "dependencies-as": Option(str, "Requires", "ignored (no generated units)"),
    "target-as": Option(str, "Requires", "ignored (no generated units)"),
    "fencing-promote-delay": Option(int, 5, "ignored (quorum is assumed, not fencing)"),
    "on-stop-failure": Option(str, "", "ignored (deprecated in drbd-reactor too)"),
}
IGNORED = ("dependencies-as", "target-as", "fencing-promote-delay", "on-stop-failure")


def check_options(options: dict[str, Any]) -> None:
    """Check the ``resources`` table (raises ``ValueError("key: reason")``)."""
    for name, table in options["resources"].items():
        ResourceConfig.from_table(name, table)
    for key in ("command_timeout", "retry_interval"):
        if options[key] <= 0:
            raise ValueError(f"{key}: must be positive")
    if options["monitor_interval"] < 0:
        raise ValueError("monitor_interval: must be 0 (off) or positive")


@dataclass(frozen=True)
class ResourceConfig:
    """One resource's table, checked."""

    name: str
    start: tuple[str, ...]
    stop: tuple[str, ...] | None
    runner: str
    preferred_nodes: tuple[str, ...]
    preferred_policy: str
    on_quorum_loss: str
    on_demote_failure: str
    on_disk_detach: str
    secondary_force: bool
    factor: float
    stop_on_exit: bool
    adjust: bool

    @classmethod
    def from_table(cls, name: str, table: Any) -> ResourceConfig:
        """Build from a ``resources.NAME`` table; raises ``ValueError("resources.NAME.key: reason")``."""
        where = f"resources.{name}"
        check_table(where, table, RESOURCE_OPTIONS)
        values = {k: o.default for k, o in RESOURCE_OPTIONS.items()}
        for key, value in table.items():
            if RESOURCE_OPTIONS[key].type is list and not all(isinstance(v, str) and v.strip() for v in value):
                raise ValueError(f"{where}.{key}: must be an array of non-empty strings")
            values[key] = value
        if values["sleep-before-promote-factor"] < 0:
            raise ValueError(f"{where}.sleep-before-promote-factor: must not be negative")
        runner = values["runner"]
        for entry in values["start"]:
            if runner == "systemd" and entry.startswith("ocf:"):
                raise ValueError(f"{where}.start: {entry!r}: OCF resource agents (ocf.rs@) are not supported; "
                                 "start a unit that runs the agent")
            if runner == "systemd" and ("/" in entry or " " in entry.strip()):
                raise ValueError(f"{where}.start: {entry!r} is not a systemd unit name (use systemd-escape "
                                 "for mount units, or runner = \"shell\" for commands)")
        if runner == "shell" and values["start"] and not values["stop"]:
            raise ValueError(f"{where}.stop: required with runner = \"shell\" (the commands that stop what "
                             "start started, in order)")
        if runner == "shell" and values["on-quorum-loss"] == "freeze":
            raise ValueError(f"{where}.on-quorum-loss: freeze needs runner = \"systemd\" (systemctl freeze)")
        return cls(name=name, start=tuple(values["start"]), stop=tuple(values["stop"]) or None, runner=runner,
                   preferred_nodes=tuple(values["preferred-nodes"]), preferred_policy=values["preferred-nodes-policy"],
                   on_quorum_loss=values["on-quorum-loss"], on_demote_failure=values["on-drbd-demote-failure"],
                   on_disk_detach=values["on-disk-detach"], secondary_force=values["secondary-force"],
                   factor=float(values["sleep-before-promote-factor"]), stop_on_exit=values["stop-services-on-exit"],
                   adjust=values["adjust-resource-on-start"])


def sleep_before_promote(state: dict[str, Any], cfg: ResourceConfig, hostname: str) -> float:
    """Return the seconds to wait before promoting (drbd-reactor's ``get_sleep_before_promote_ms``)."""
    disk = max((DISK_SLEEP.get(str(d.get("disk-state")), 6) for d in state.get("devices") or []), default=0)
    nodes = cfg.preferred_nodes
    position = nodes.index(hostname) if hostname in nodes else len(nodes)
    freeze = 2 if cfg.on_quorum_loss == "freeze" and state.get("role") == "Secondary" else 0
    return (disk + position + freeze) * cfg.factor


@dataclass
class CommandResult:
    """What a command did."""

    argv: list[str]
    rc: int
    output: str

    @property
    def ok(self) -> bool:
        """Whether it exited 0."""
        return self.rc == 0

    def describe(self) -> str:
        """One line: the command and how it ended."""
        how = "ok" if self.ok else ("timed out" if self.rc == -signal.SIGKILL else f"exit status {self.rc}")
        return f"{' '.join(self.argv)}: {how}"


async def run_command(argv: list[str], timeout: float) -> CommandResult:
    """Run ``argv`` (stdin from /dev/null, output captured); a timeout kills its process group."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        return CommandResult(argv, 127, f"cannot run {argv[0]}: {exc.strerror or exc}")
    try:
        async with asyncio.timeout(timeout):
            out, _ = await proc.communicate()
    except (TimeoutError, asyncio.CancelledError) as exc:
        if not await stop_process(proc, group=True, grace=0):
            log.error("command_not_reaped", command=argv, pid=proc.pid,
                      reason="still running well after SIGKILL (uninterruptible sleep?)")
        if isinstance(exc, asyncio.CancelledError):
            raise
        return CommandResult(argv, -signal.SIGKILL, f"timed out after {timeout:g} s")
    rc = proc.returncode if proc.returncode is not None else -1
    return CommandResult(argv, rc, out.decode(errors="replace").strip()[-2000:])


@dataclass
class Worker:
    """One resource: its latest DRBD state, its services, and the task that acts on them one at a time."""

    cfg: ResourceConfig
    plugin: Promoter
    state: dict[str, Any] | None = None
    destroyed: bool = False
    services: dict[str, str] = field(default_factory=dict)
    active: bool = False
    frozen: bool = False
    busy: str = ""
    last_start: float = -math.inf
    history: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=20))
    queue: asyncio.Queue[tuple[str, str]] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.services = {unit: "stopped" for unit in self.cfg.start}
        self.log = self.plugin.log.bind(resource=self.cfg.name)

    # -- what the events say -------------------------------------------------------------------

    def observe(self, state: dict[str, Any] | None) -> None:
        """Take the resource's new state and queue the actions its changes call for."""
        before, self.state = self.state, state
        self.destroyed = state is None
        if state is None:
            return
        cfg = self.cfg
        role = state.get("role")
        old_role = before.get("role") if before else None
        if flag(state.get("may_promote")) and role == "Secondary" and not (before and flag(before.get("may_promote"))):
            self.want("promote", "may promote")
        if before is None and role == "Primary" and not self.active and cfg.runner == "systemd":
            self.want("adopt", "Primary when the promoter started")
        old_devices = {d.get("volume"): d for d in (before or {}).get("devices") or []}
        for dev in state.get("devices") or []:
            old = old_devices.get(dev.get("volume"))
            if old is None:
                continue
            volume = dev.get("volume")
            if flag(old.get("quorum")) and not flag(dev.get("quorum")):
                self.want("quorum-lost", f"volume {volume} lost quorum")
            elif not flag(old.get("quorum")) and flag(dev.get("quorum")) and role == "Primary":
                self.want("quorum-regained", f"volume {volume} regained quorum")
            elif (cfg.on_disk_detach == "fail-over" and role == "Primary" and old.get("disk-state") != "Diskless"
                  and dev.get("disk-state") == "Diskless" and not flag(old.get("client"))
                  and not flag(dev.get("client"))):
                self.want("disk-detached", f"volume {volume} lost its disk")
        if old_role == "Primary" and role == "Secondary":
            self.want("became-secondary", "DRBD demoted the resource")
        if cfg.preferred_nodes and cfg.preferred_policy == "always" and role == "Primary":
            for peer in self._newly_uptodate_peers(before, state):
                self.want("preferred-peer", f"more preferred node {peer} is UpToDate")

    def _newly_uptodate_peers(self, before: dict[str, Any] | None, state: dict[str, Any]) -> list[str]:
        nodes = self.cfg.preferred_nodes
        hostname = self.plugin.hostname
        mine = nodes.index(hostname) if hostname in nodes else len(nodes)
        old = {(c.get("peer-node-id"), pd.get("volume")): pd.get("peer-disk-state")
               for c in (before or {}).get("connections") or [] for pd in c.get("peer_devices") or []}
        out = []
        for conn in state.get("connections") or []:
            name = conn.get("name")
            if name not in nodes or nodes.index(name) >= mine:
                continue
            for pd in conn.get("peer_devices") or []:
                if (pd.get("peer-disk-state") == "UpToDate" and not flag(pd.get("peer-client"))
                        and old.get((conn.get("peer-node-id"), pd.get("volume"))) != "UpToDate"):
                    out.append(str(name))
                    break
        return out

    def want(self, action: str, reason: str) -> None:
        """Queue an action for the resource's task."""
        if action != "monitor":
            self.log.info("promoter_wants", action=action, reason=reason)
        self.queue.put_nowait((action, reason))

    # -- the resource's task -------------------------------------------------------------------

    async def run(self) -> None:
        """Act on queued actions one at a time, in order."""
        if self.cfg.adjust:
            res = await self.command([self.plugin.options["drbdadm"], "adjust", self.cfg.name])
            self.record("adjust", res.ok, "plugin start", res.describe())
        handlers: dict[str, Callable[[str], Any]] = {
            "promote": self.promote, "adopt": self.adopt, "quorum-lost": self.quorum_lost,
            "quorum-regained": self.quorum_regained, "became-secondary": self.became_secondary,
            "disk-detached": self.hand_over, "preferred-peer": self.hand_over, "monitor": self.monitor,
        }
        while True:
            action, reason = await self.queue.get()
            try:
                await handlers[action](reason)
            except Exception:
                self.log.exception("promoter_action_failed", action=action)
                self.record(action, False, reason, "internal error (see log)")
            finally:
                self.busy = ""
                self.plugin.publish_status()

    def may_promote_now(self) -> bool:
        """Whether the latest state allows promoting here (and nothing runs here already)."""
        st = self.state
        return bool(st) and not self.active and flag(st.get("may_promote")) and st.get("role") == "Secondary"

    async def promote(self, reason: str) -> None:
        """Wait the sleep, re-check, promote, start the services in order; roll back on failure."""
        if not self.may_promote_now():
            return
        assert self.state is not None
        loop = asyncio.get_running_loop()
        delay = sleep_before_promote(self.state, self.cfg, self.plugin.hostname)
        retry = self.plugin.options["retry_interval"]
        if loop.time() - self.last_start + delay < retry:
            # drbd-reactor's MIN_SECS_PROMOTE: no busy loop of start failures; the monitor tick retries
            self.record("promote", False, reason, f"deferred: last start attempt less than {retry:g} s ago")
            return
        if delay > 0:
            self.busy = f"waiting {delay:g} s before promoting"
            self.plugin.publish_status()
            await asyncio.sleep(delay)
        if not self.may_promote_now():
            self.record("promote", False, reason, f"skipped: no longer promotable after waiting {delay:g} s")
            return
        self.last_start = loop.time()
        self.busy = "promoting"
        self.plugin.publish_status()
        res = await self.command([self.plugin.options["drbdadm"], "primary", self.cfg.name])
        if not res.ok:
            self.record("promote", False, reason, f"{res.describe()} (another node may have won)")
            return
        await self.start_services("promote", reason, f"promoted after {delay:g} s, ")

    async def start_services(self, action: str, reason: str, what: str = "") -> None:
        """Start the services in order; if one fails, stop those that started in reverse order and demote."""
        self.active = True
        self.busy = "starting services"
        started: list[str] = []
        for entry in self.cfg.start:
            if not await self.start_one(entry):
                self.busy = "rolling back"
                await self.stop_services(started, rollback=True)
                demoted = await self.demote()
                self.active = False
                self.record("start", False, reason, f"start of {entry} failed; stopped {len(started)} started, "
                            + ("demoted" if demoted else "demote failed"))
                return
            started.append(entry)
        self.record(action, True, reason, f"{what}started {len(started)} services")

    async def adopt(self, reason: str) -> None:
        """Already Primary when the promoter started (busd restarted): start the units again, in order.

        ``systemctl start`` of an active unit does nothing, so this takes over services that still
        run and completes a half-done start, as drbd-reactor starts its target at start-up.
        """
        if not self.active and self.state and self.state.get("role") == "Primary":
            await self.start_services("adopt", reason)

    async def start_one(self, entry: str) -> bool:
        """Start one unit or command; record its state."""
        opts = self.plugin.options
        argv = [opts["systemctl"], "start", entry] if self.cfg.runner == "systemd" else ["sh", "-c", entry]
        self.services[entry] = "starting"
        self.plugin.publish_status()
        res = await self.command(argv)
        self.services[entry] = "started" if res.ok else "failed"
        return res.ok

    async def stop_services(self, started: list[str] | None = None, *, rollback: bool = False) -> bool:
        """Stop in reverse order (``started``: only those); an explicit ``stop`` list runs as given."""
        opts = self.plugin.options
        ok = True
        if self.cfg.runner == "shell":
            entries = list(self.cfg.stop or ())
            for entry in entries:
                ok = (await self.command(["sh", "-c", entry])).ok and ok
            for entry in self.cfg.start:
                self.services[entry] = "stopped"
            return ok
        units = list(self.cfg.stop) if self.cfg.stop else list(reversed(self.cfg.start if started is None else started))
        for unit in units:
            res = await self.command([opts["systemctl"], "stop", unit])
            ok = ok and res.ok
            if unit in self.services:
                self.services[unit] = "stopped" if res.ok else "stop failed"
        if rollback:
            return ok
        for unit in self.cfg.start:
            if self.services[unit] in ("started", "frozen", "inactive"):
                self.services[unit] = "stopped"
        self.frozen = False
        return ok

    async def demote(self) -> bool:
        """Demote; with ``secondary-force`` retry forced; run ``on-drbd-demote-failure`` if all failed."""
        opts = self.plugin.options
        res = await self.command([opts["drbdadm"], "secondary", self.cfg.name])
        if res.ok:
            return True
        if self.cfg.secondary_force:
            res = await self.command([opts["drbdsetup"], "secondary", "--force", self.cfg.name])
            if res.ok:
                return True
        args = FAILURE_ACTIONS[self.cfg.on_demote_failure]
        if args is not None:
            self.log.error("promoter_demote_failed_escalating", action=self.cfg.on_demote_failure)
            failure = await self.command([opts["systemctl"], *args])
            self.record("on-drbd-demote-failure", failure.ok, "demote failed", failure.describe())
        else:
            self.log.error("promoter_demote_failed", output=res.output)
        return False

    async def shutdown(self, action: str, reason: str) -> None:
        """Stop every service in reverse order, then demote (if Primary)."""
        self.busy = "stopping services"
        self.plugin.publish_status()
        stopped = await self.stop_services()
        demoted = True
        if self.state is None or self.state.get("role") != "Secondary":
            self.busy = "demoting"
            demoted = await self.demote()
        self.active = False
        self.record(action, stopped and demoted, reason,
                    ("stopped services" if stopped else "stopping failed") + (", demoted" if demoted else ", demote failed"))

    def runs_here(self) -> bool:
        """Whether services run here (started by us) or the resource is Primary here."""
        return self.active or bool(self.state and self.state.get("role") == "Primary")

    async def quorum_lost(self, reason: str) -> None:
        """Shut down, or freeze the services."""
        if not self.runs_here():
            self.record("quorum-lost", True, reason, "nothing runs here")
            return
        if self.cfg.on_quorum_loss == "shutdown":
            await self.shutdown("quorum-lost", reason)
            return
        units = [u for u in reversed(self.cfg.start) if not u.endswith(".mount")]
        for unit in units:
            res = await self.command([self.plugin.options["systemctl"], "freeze", unit])
            if res.ok:
                self.services[unit] = "frozen"
            else:  # systemd refuses to freeze a unit without processes: fine
                self.log.warning("promoter_freeze_failed", unit=unit, output=res.output)
        self.frozen = True
        self.record("freeze", True, reason, f"froze {', '.join(units) or 'nothing'}")

    async def quorum_regained(self, reason: str) -> None:
        """Thaw what quorum loss froze."""
        if not self.frozen:
            return
        for unit in self.cfg.start:
            if self.services.get(unit) == "frozen":
                res = await self.command([self.plugin.options["systemctl"], "thaw", unit])
                self.services[unit] = "started" if res.ok else "thaw failed"
        self.frozen = False
        self.record("thaw", True, reason, "thawed the services")

    async def became_secondary(self, reason: str) -> None:
        """DRBD made us Secondary (a frozen Primary forced out): stop what still runs."""
        if self.active or self.frozen:
            self.busy = "stopping services"
            ok = await self.stop_services()
            self.active = False
            self.record("stop", ok, reason, "stopped services (no longer Primary)")

    async def hand_over(self, reason: str) -> None:
        """Stop and demote so that another node takes over."""
        if self.runs_here():
            await self.shutdown("hand-over", reason)

    async def monitor(self, reason: str) -> None:
        """Check that started units are active; retry promoting a resource that still may promote."""
        opts = self.plugin.options
        if self.active and not self.frozen and self.cfg.runner == "systemd":
            for unit in self.cfg.start:
                res = await self.command([opts["systemctl"], "is-active", unit], quiet=True)
                if not res.ok:
                    self.services[unit] = "inactive"
                    await self.shutdown("service-failed", f"{unit} is not active ({res.output or res.rc})")
                    return
        elif self.may_promote_now() and asyncio.get_running_loop().time() - self.last_start >= opts["retry_interval"]:
            await self.promote("retry: still may promote")

    async def stop_on_exit(self) -> None:
        """``stop-services-on-exit``: stop and demote what runs here."""
        if self.cfg.stop_on_exit and self.runs_here():
            await self.shutdown("exit", "plugin stopping (stop-services-on-exit)")

    # -- helpers -------------------------------------------------------------------------------

    async def command(self, argv: list[str], *, quiet: bool = False) -> CommandResult:
        """Run a command with the plugin's timeout and log it."""
        res = await run_command(argv, self.plugin.options["command_timeout"])
        if not res.ok:
            self.log.warning("promoter_command_failed", argv=argv, rc=res.rc, output=res.output)
        elif not quiet:
            self.log.info("promoter_command", argv=argv)
        return res

    def record(self, action: str, ok: bool, reason: str, detail: str) -> None:
        """Remember an action for ``busctl promoter status`` and log it."""
        self.history.append({"time": time.time(), "action": action, "ok": ok, "reason": reason, "detail": detail})
        (self.log.info if ok else self.log.warning)("promoter_action", action=action, ok=ok, reason=reason,
                                                     detail=detail)
        self.plugin.publish_status()

    def status(self) -> dict[str, Any]:
        """This resource's entry in the plugin's status."""
        st = self.state or {}
        devices = st.get("devices") or []
        return {
            "role": "destroyed" if self.destroyed else st.get("role", "unknown"),
            "may_promote": flag(st.get("may_promote")),
            "quorum": all(flag(d.get("quorum")) for d in devices) if devices else None,
            "disk_states": [d.get("disk-state") for d in devices],
            "runner": self.cfg.runner,
            "services": [{"name": name, "state": state} for name, state in self.services.items()],
            "active": self.active,
            "frozen": self.frozen,
            "busy": self.busy,
            "last_action": self.history[-1] if self.history else None,
            "history": list(self.history),
        }


class Promoter(Receiver):
    """Promote DRBD resources and start their services; stop and demote when they must go."""

    def __init__(self, env: Any = None) -> None:
        super().__init__(env)
        self.workers: dict[str, Worker] = {}
        self._monitor: asyncio.Task[None] | None = None
        self._last_status: dict[str, Any] | None = None

    async def setup(self) -> None:
        """Start one task per resource and the monitor."""
        for name, table in self.options["resources"].items():
            cfg = ResourceConfig.from_table(name, table)
            ignored = [k for k in IGNORED if k in table]
            if ignored:
                self.log.info("promoter_ignored_settings", resource=name, keys=ignored)
            worker = self.workers[name] = Worker(cfg, self)
            worker.task = asyncio.create_task(worker.run(), name=f"promoter-{name}")
        if self.options["monitor_interval"] > 0:
            self._monitor = asyncio.create_task(self._tick(), name="promoter-monitor")
        self.publish_status()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.options["monitor_interval"])
            for worker in self.workers.values():
                idle = worker.queue.empty() and not worker.busy
                if idle and (worker.active or worker.may_promote_now()):
                    worker.want("monitor", "periodic check")

    def handle(self, event: Event) -> None:
        """Feed a DRBD event's resource state to that resource's worker (never blocks)."""
        ext = event.get("extensions") or {}
        worker = self.workers.get(str(ext.get("resource", "")))
        if worker is None:
            return
        if event.get("event_type") == "DRBD_RESOURCE_DESTROYED":
            worker.observe(None)
        elif well_formed(ext.get("state")):
            worker.observe(ext["state"])
        elif "state" in ext:
            self.count("bad_state")
            self.log.warning("drbd_state_malformed", resource=worker.cfg.name, event_id=event.get("event_id"))
        self.publish_status()

    def publish_status(self) -> None:
        """Write the status file for ``busctl promoter status`` when it changed."""
        status = {"hostname": self.hostname, "resources": {n: w.status() for n, w in self.workers.items()}}
        if status != self._last_status:
            self._last_status = status
            self.write_status(status)

    async def teardown(self) -> None:
        """Cancel the tasks; with ``stop-services-on-exit``, stop and demote what runs here."""
        if self._monitor is not None:
            self._monitor.cancel()
        for worker in self.workers.values():
            if worker.task is not None:
                worker.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker.task
        await asyncio.gather(*(w.stop_on_exit() for w in self.workers.values()))


if __name__ == "__main__":
    run(Promoter)

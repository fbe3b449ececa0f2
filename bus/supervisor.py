"""The supervisor: one asyncio task per plugin process, restarting it with exponential backoff.

States: ``starting`` -> ``running`` -> (exit) -> ``restarting`` -> ``starting``...; a plugin that
crashes ``max_fast_crashes`` times in a row, each time within ``min_uptime`` seconds, is ``failed``
and left alone until a reload. A plugin that exits with status 0 is restarted too (with the same
growing delay when it exits quickly) but never marked failed. ``stopped`` is what busd asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bus import protocol
from bus.config import MainConfig, PluginConfig
from bus.log import get_logger

__all__ = ["PluginProcess", "Supervisor"]

log = get_logger("supervisor")
_PR_SET_PDEATHSIG = 1
_LINE_LIMIT = 1024 * 1024


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    # uvloop's spawn leaves copies of busd's own stdio (and any other descriptor without
    # close-on-exec) open in the child; a plugin gets 0, 1 and 2 only. Closing them here would
    # break uvloop's own set-up after this hook, so they are only marked to close at exec.
    with contextlib.suppress(Exception):
        for name in os.listdir("/proc/self/fd"):
            if int(name) > 2:
                with contextlib.suppress(OSError):
                    os.set_inheritable(int(name), False)


@dataclass
class PluginProcess:
    """The supervised state of one plugin instance."""

    config: PluginConfig
    state: str = "starting"
    pid: int | None = None
    restarts: int = 0
    fast_crashes: int = 0
    fast_exits: int = 0
    started_at: float = 0.0
    last_exit: str = ""
    proc: asyncio.subprocess.Process | None = None
    task: asyncio.Task[None] | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def as_dict(self) -> dict[str, Any]:
        """Return the state for ``busctl status``."""
        return {
            "name": self.config.name,
            "type": self.config.type,
            "command": self.config.builtin or " ".join(self.config.exec or ()),
            "state": self.state,
            "pid": self.pid,
            "restarts": self.restarts,
            "uptime": round(time.time() - self.started_at, 3) if self.state == "running" else None,
            "last_exit": self.last_exit,
        }


def _describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


class Supervisor:
    """Starts, restarts and stops plugin processes.

    Args:
        main: the daemon settings (runtime dir, host name, restart policy).
        on_exit: called with a plugin's name each time its process ends.
    """

    def __init__(self, main: MainConfig, on_exit: Callable[[str], None]) -> None:
        self.main = main
        self.on_exit = on_exit
        self.plugins: dict[str, PluginProcess] = {}

    def environment(self, pconf: PluginConfig) -> dict[str, str]:
        """Return the environment of a plugin process: busd's own plus the ``BUS_*`` variables."""
        rd = self.main.runtime_dir
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)
        env.pop("WATCHDOG_USEC", None)
        env.pop("WATCHDOG_PID", None)
        env.update({
            "BUS_PLUGIN": pconf.name,
            "BUS_PLUGIN_TYPE": pconf.type,
            "BUS_PLUGIN_CONFIG": pconf.table_json(),
            "BUS_HOSTNAME": self.main.hostname,
            "BUS_EVENTS": protocol.endpoint(rd, protocol.EVENTS),
            "BUS_CONTROL": protocol.endpoint(rd, protocol.CONTROL),
            "BUS_LOG_LEVEL": self.main.log_level,
            "BUS_RUNTIME_DIR": rd,
            "BUS_STATE_DIR": self.main.state_dir,
            "BUS_CONFIG_DIR": os.path.dirname(pconf.file),
        })
        if pconf.type in ("collector", "parser"):
            env["BUS_INGEST"] = protocol.ingest_endpoint(rd, pconf.name)
        if pconf.type == "parser":
            env["BUS_INPUT"] = protocol.endpoint(rd, protocol.INPUT)
        return env

    def start(self, pconf: PluginConfig) -> PluginProcess:
        """Start supervising a plugin (no-op for a disabled one)."""
        pp = PluginProcess(pconf, state="starting" if pconf.enabled else "disabled")
        self.plugins[pconf.name] = pp
        if pconf.enabled:
            pp.task = asyncio.create_task(self._supervise(pp), name=f"plugin-{pconf.name}")
        return pp

    async def _supervise(self, pp: PluginProcess) -> None:
        name = pp.config.name
        main = self.main
        while not pp.stopping.is_set():
            pp.state = "starting"
            pp.started_at = time.time()
            env = self.environment(pp.config)
            try:
                # in the directory of its configuration file, like its relative path options
                pp.proc = await asyncio.create_subprocess_exec(
                    *pp.config.command(), env=env, cwd=env["BUS_CONFIG_DIR"], stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
                    preexec_fn=_die_with_parent, limit=_LINE_LIMIT)
            except OSError as exc:
                rc_text = f"cannot start: {exc.strerror or exc}"
                pp.proc = None
                log.error("plugin_start_failed", plugin=name, command=pp.config.command(), error=rc_text)
            else:
                pp.pid = pp.proc.pid
                pp.state = "running"
                log.info("plugin_started", plugin=name, pid=pp.pid, type=pp.config.type)
                assert pp.proc.stdout is not None and pp.proc.stderr is not None
                readers = [asyncio.create_task(self._pipe(name, pp.proc.stderr, "stderr")),
                           asyncio.create_task(self._pipe(name, pp.proc.stdout, "stdout"))]
                rc = await pp.proc.wait()
                await asyncio.gather(*readers, return_exceptions=True)
                rc_text = _describe_exit(rc)
                pp.pid = None
                self.on_exit(name)
                if pp.stopping.is_set():
                    break
            pp.last_exit = rc_text
            uptime = time.time() - pp.started_at
            # every exit is restarted (SPEC); the delay grows with quick exits of any kind, but only
            # quick crashes (non-zero status) can make a plugin "failed"
            clean = rc_text == "exit status 0"
            pp.fast_exits = pp.fast_exits + 1 if uptime < main.min_uptime else 1
            pp.fast_crashes = 0 if clean else (pp.fast_crashes + 1 if uptime < main.min_uptime else 1)
            if pp.fast_crashes >= main.max_fast_crashes:
                pp.state = "failed"
                log.error("plugin_failed", plugin=name, status=rc_text, crashes=pp.fast_crashes,
                          reason=f"{pp.fast_crashes} crashes in a row, each within {main.min_uptime:g} s")
                return
            delay = min(main.restart_delay_max, main.restart_delay * 2 ** (pp.fast_exits - 1))
            pp.state = "restarting"
            (log.info if clean else log.warning)("plugin_exited" if clean else "plugin_crashed", plugin=name,
                                                 status=rc_text, uptime=round(uptime, 3), restart_in=round(delay, 3))
            try:
                async with asyncio.timeout(delay):
                    await pp.stopping.wait()
            except TimeoutError:
                pp.restarts += 1
        pp.state = "stopped"

    async def _pipe(self, name: str, stream: asyncio.StreamReader, which: str) -> None:
        """Re-log each line a plugin writes, tagged with its name (JSON lines keep their fields)."""
        while True:
            try:
                raw = await stream.readline()
            except ValueError:  # a line longer than the limit: take what is there
                raw = await stream.read(_LINE_LIMIT)
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if not line:
                continue
            fields: dict[str, Any] = {}
            if line.startswith("{"):
                try:
                    fields = json.loads(line)
                except ValueError:
                    fields = {}
            if isinstance(fields, dict) and isinstance(fields.get("event"), str):
                level = str(fields.pop("level", "info"))
                message = fields.pop("event")
                for key in ("timestamp", "component", "plugin"):
                    fields.pop(key, None)
                emit = getattr(log, level if level in ("debug", "info", "warning", "error", "critical") else "info")
                emit(message, plugin=name, **fields)
            else:
                log.info("plugin_output", plugin=name, stream=which, line=line)

    async def stop(self, name: str, timeout: float | None = None) -> None:
        """Stop one plugin: SIGTERM to its process group, SIGKILL after ``timeout`` (``stop_timeout``)."""
        timeout = self.main.stop_timeout if timeout is None else timeout
        pp = self.plugins.pop(name, None)
        if pp is None:
            return
        pp.stopping.set()
        proc = pp.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(timeout):
                    await proc.wait()
            except TimeoutError:
                log.warning("plugin_kill", plugin=name, reason=f"still running {timeout:g} s after SIGTERM")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        if pp.task is not None:
            try:
                async with asyncio.timeout(1.0):
                    await pp.task
            except (TimeoutError, asyncio.CancelledError):
                pp.task.cancel()
        pp.state = "stopped"
        log.info("plugin_stopped", plugin=name)

    async def stop_all(self, plugin_type: str | None = None, timeout: float | None = None) -> None:
        """Stop every plugin (of ``plugin_type``) concurrently."""
        names = [n for n, p in self.plugins.items() if plugin_type in (None, p.config.type)]
        await asyncio.gather(*(self.stop(name, timeout) for name in names))

    def status(self) -> list[dict[str, Any]]:
        """Return every plugin's state."""
        return [pp.as_dict() for pp in self.plugins.values()]

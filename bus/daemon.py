"""busd's main loop: load the configuration, run the broker and the supervisor, obey signals.

SIGHUP and ``busctl reload`` take the same path (:meth:`Daemon.reload`); SIGTERM, SIGINT and
``busctl stop`` the same path to shutdown, so there is one way to do each thing.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import signal
import time
from pathlib import Path
from typing import IO, Any

from bus import __version__, runtime, sdnotify
from bus.broker import Broker
from bus.config import Config, PluginConfig, load, socket_gid
from bus.exceptions import AlreadyRunning, ConfigError
from bus.log import configure, get_logger, hide_secrets
from bus.supervisor import Supervisor

__all__ = ["Daemon", "run"]

log = get_logger("busd")
_SHUTDOWN_BUDGET = 4.5
_DRAIN_MAX_WAIT = 0.75


class Daemon:
    """One running busd.

    Args:
        config: the validated configuration to start with.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.broker = Broker(config.main.runtime_dir, config.main.hostname,
                             replay_buffer=config.main.replay_buffer, parser_queue=config.main.parser_queue,
                             dedup_window=config.main.dedup_window,
                             replay_buffer_bytes=config.main.replay_buffer_bytes,
                             parser_queue_bytes=config.main.parser_queue_bytes,
                             socket_gid=socket_gid(config.main))
        self.supervisor = Supervisor(config.main, self.broker.plugin_stopped)
        self.stopping = asyncio.Event()
        self.reloads = 0
        self.last_reload_error = ""
        self._reload_lock = asyncio.Lock()

    def _plugin_map(self, config: Config) -> dict[str, Any]:
        return {n: (p.type, p.filter) for n, p in config.plugins.items()}

    async def run(self) -> None:
        """Serve until asked to stop."""
        loop = asyncio.get_running_loop()
        await self.broker.start()
        self.broker.handlers.update(status=self._op_status, plugins=self._op_plugins, reload=self._op_reload,
                                    stop=self._op_stop)
        self.broker.set_plugins(self._plugin_map(self.config))
        for pconf in self.config.plugins.values():
            self.supervisor.start(pconf)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        for warning in self.config.warnings:
            log.warning("config_warning", message=warning)
        log.info("busd_ready", version=__version__, config=self.config.path, runtime_dir=self.config.main.runtime_dir,
                 plugins=len(self.config.plugins), pid=os.getpid())
        sdnotify.notify("READY=1", f"STATUS=serving {len(self.config.plugins)} plugins", f"MAINPID={os.getpid()}")
        watchdog = sdnotify.watchdog_interval()
        wd_task = asyncio.create_task(self._watchdog(watchdog)) if watchdog else None
        await self.stopping.wait()
        started = time.monotonic()
        sdnotify.notify("STOPPING=1", "STATUS=stopping plugins")
        log.info("busd_stopping")
        if wd_task is not None:
            wd_task.cancel()
        await self._shutdown(started + _SHUTDOWN_BUDGET)
        await self.broker.close()
        log.info("busd_stopped", seconds=round(time.monotonic() - started, 3))

    async def _shutdown(self, deadline: float) -> None:
        """Stop producers first, let parsers and receivers catch up briefly, then stop them.

        In-flight events thus reach their receivers on a clean stop; the whole stop stays under
        ``_SHUTDOWN_BUDGET`` seconds (SIGKILL for plugins that ignore SIGTERM).
        """
        phases = [("collector", None), ("parser", self.broker.parsers_idle), ("receiver", self.broker.receivers_idle)]
        for i, (ptype, idle) in enumerate(phases):
            left = len(phases) - i
            if idle is not None:
                wait_until = time.monotonic() + min(_DRAIN_MAX_WAIT, (deadline - time.monotonic()) / (2 * left))
                while not idle() and time.monotonic() < wait_until:
                    await asyncio.sleep(0.02)
            timeout = min(self.config.main.stop_timeout, max(0.1, (deadline - time.monotonic()) / left))
            await self.supervisor.stop_all(ptype, timeout)

    async def _watchdog(self, interval: float) -> None:
        while True:
            sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def reload(self) -> dict[str, Any]:
        """Re-read the configuration; restart only plugins whose table changed; keep all on error."""
        async with self._reload_lock:
            sdnotify.reloading()
            try:
                new = load(self.config.path)
                for key in ("runtime_dir", "socket_group"):
                    if getattr(new.main, key) != getattr(self.config.main, key):
                        raise ConfigError(new.path, f"main.{key}", "cannot change on reload; restart busd")
            except ConfigError as exc:
                self.last_reload_error = str(exc)
                log.error("reload_refused", error=str(exc), kept=self.config.path)
                sdnotify.notify("READY=1", f"STATUS=reload refused: {exc}")
                return {"ok": False, "error": f"reload refused, old configuration kept: {exc}"}
            old = self.config
            main_changed = old.main != new.main
            # a failed plugin is retried on every reload: the operator may have fixed what it needed
            changed = [n for n, p in new.plugins.items() if n in old.plugins and (
                _differs(old.plugins[n], p) or main_changed or self._state(n) == "failed")]
            removed = [n for n in old.plugins if n not in new.plugins]
            added = [n for n in new.plugins if n not in old.plugins]
            await asyncio.gather(*(self.supervisor.stop(n) for n in (*removed, *changed)))
            self.config = new
            self.supervisor.main = new.main
            self.broker.hostname = new.main.hostname
            self.broker.resize(new.main.replay_buffer, new.main.parser_queue, new.main.dedup_window,
                               new.main.replay_buffer_bytes, new.main.parser_queue_bytes)
            self.broker.set_plugins(self._plugin_map(new))
            configure(new.main.log_level)
            hide_secrets(new.secrets())
            for name in (*changed, *added):
                self.supervisor.start(new.plugins[name])
            self.reloads += 1
            self.last_reload_error = ""
            for warning in new.warnings:
                log.warning("config_warning", message=warning)
            log.info("reloaded", added=added, removed=removed, restarted=changed,
                     kept=len(new.plugins) - len(added) - len(changed))
            sdnotify.notify("READY=1", f"STATUS=serving {len(new.plugins)} plugins")
            return {"ok": True, "added": added, "removed": removed, "restarted": changed}

    def _state(self, name: str) -> str:
        pp = self.supervisor.plugins.get(name)
        return pp.state if pp is not None else ""

    # -- control operations --------------------------------------------------------------------

    async def _op_status(self, msg: dict[str, Any]) -> dict[str, Any]:
        plugins = []
        for entry in self.supervisor.status():
            entry.update(self.broker.plugin_status(entry["name"]))
            plugins.append(entry)
        return {"ok": True, "version": __version__, "pid": os.getpid(), "config": self.config.path,
                "hostname": self.config.main.hostname, "runtime_dir": self.config.main.runtime_dir,
                "reloads": self.reloads, "last_reload_error": self.last_reload_error,
                "broker": self.broker.status(), "plugins": plugins}

    async def _op_plugins(self, msg: dict[str, Any]) -> dict[str, Any]:
        return {"ok": True, "plugins": [
            {"name": p.name, "type": p.type, "builtin": p.builtin, "exec": list(p.exec or ()), "file": p.file,
             "enabled": p.enabled} for p in self.config.plugins.values()]}

    async def _op_reload(self, msg: dict[str, Any]) -> dict[str, Any]:
        return await self.reload()

    async def _op_stop(self, msg: dict[str, Any]) -> dict[str, Any]:
        self.stopping.set()
        return {"ok": True}


def _differs(a: PluginConfig, b: PluginConfig) -> bool:
    return a.table != b.table


LOCK_FILE = "busd.pid"
"""In the runtime dir: the pid of the busd serving it, locked (``flock``) while it runs."""


def claim_runtime_dir(runtime_dir: str) -> IO[str]:
    """Lock ``runtime_dir`` for this busd and write its pid there; keep the returned file open while serving.

    A second busd on the same directory would bind the same socket paths and silently take them
    from the first (whose plugins and clients then talk to two brokers). The lock goes with the
    process, however it ends (SIGKILL too), so a restart never finds a stale one.

    Raises:
        AlreadyRunning: another busd holds the directory, naming its pid.
    """
    os.makedirs(runtime_dir, mode=0o750, exist_ok=True)
    lock = open(Path(runtime_dir) / LOCK_FILE, "a+")  # held open (and locked) for the daemon's life
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        pid = lock.read().strip() or "?"
        lock.close()
        raise AlreadyRunning(f"another busd (pid {pid}) is serving {runtime_dir}: stop it first, or give this one "
                       "a runtime_dir of its own") from None
    lock.truncate(0)
    lock.write(f"{os.getpid()}\n")
    lock.flush()
    return lock


def run(config: Config) -> None:
    """Run busd in the foreground on uvloop (asyncio's loop when uvloop is missing).

    Raises:
        AlreadyRunning: another busd is serving the same runtime dir (see :func:`claim_runtime_dir`).
    """
    lock = claim_runtime_dir(config.main.runtime_dir)
    configure(config.main.log_level)
    hide_secrets(config.secrets())
    try:
        with runtime.runner() as runner:
            runner.run(Daemon(config).run())
    finally:
        lock.close()

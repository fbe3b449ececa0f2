"""The Python plugin SDK: :class:`Collector`, :class:`Parser`, :class:`Receiver` and :func:`run`.

A plugin reads everything it needs from the environment busd gives it (``BUS_PLUGIN``,
``BUS_PLUGIN_CONFIG``, ``BUS_INGEST``, ``BUS_INPUT``, ``BUS_EVENTS``, ``BUS_CONTROL``,
``BUS_HOSTNAME``); the SDK handles sockets, acknowledgements, replay and shutdown, so a plugin
only says what to do with an event::

    from bus.plugin import Parser, run

    class Upper(Parser):
        def handle(self, event):
            if "error" in event["msg"]:
                return self.event("demo", "DEMO_ERROR", event["msg"], severity="error")

    if __name__ == "__main__":
        run(Upper)
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import os
import signal
import socket
import sys
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import zmq
import zmq.asyncio

from bus import protocol, runtime
from bus.client import ControlClient, Publisher, Subscriber
from bus.config import SDK_OPTIONS, builtin_filter, builtin_secret_keys, plugin_options
from bus.event import KINDS, Event, new_event
from bus.exceptions import BadInput
from bus.filter import Filter
from bus.flood import FloodControl
from bus.log import configure, get_logger, hide_secrets
from bus.secrets import secret_values
from bus.zsock import Readiness, has_message, recv_message, sync_context

__all__ = ["Collector", "Parser", "Plugin", "Receiver", "derive_id", "run", "stop_process", "stop_tasks", "write_atomic"]

HandleResult = Event | Iterable[Event] | None

BAD_INPUT_FLUSH = 0.5
"""Seconds between a new bad input and its count reaching the status file (one write per burst)."""


def derive_id(parent_id: str, plugin: str, index: int) -> str:
    """Return a UUID-formatted id derived from a parent event: the same input gives the same id.

    This makes a parser's outputs recognisable when its input is delivered again after a crash.
    """
    x = hashlib.blake2b(f"{parent_id}/{plugin}/{index}".encode(), digest_size=16).hexdigest()
    return f"{x[:8]}-{x[8:12]}-5{x[13:16]}-{x[16:20]}-{x[20:]}"


async def stop_process(proc: asyncio.subprocess.Process, *, group: bool = False, grace: float = 1.0,
                       reap_timeout: float = 5.0) -> bool:
    """Stop a command the plugin started: SIGTERM, SIGKILL after ``grace`` seconds, then reap it.

    Args:
        proc: the command.
        group: signal its whole process group (it was started with ``start_new_session=True``),
            so that what it started goes with it; the group gets SIGKILL even after a clean exit.
        grace: seconds between SIGTERM and SIGKILL; 0 sends SIGKILL at once.
        reap_timeout: seconds to wait for the exit after SIGKILL. A process in uninterruptible
            sleep (``drbdadm`` on a hung device) only dies when its I/O ends, and the plugin must
            not hang with it.

    Returns:
        Whether the command has exited (``False``: it outlived ``reap_timeout`` after SIGKILL).
    """
    def send(sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)

    if proc.returncode is not None and not group:
        return True
    if grace > 0:
        send(signal.SIGTERM)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await proc.wait()
    send(signal.SIGKILL)
    if proc.returncode is None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(reap_timeout):
                await proc.wait()
    return proc.returncode is not None


async def stop_tasks(tasks: list[asyncio.Task[Any]], log: Any, event: str) -> None:
    """Cancel ``tasks`` and wait for each; one that had failed is logged as ``event`` with its traceback."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception:
            log.exception(event, task=task.get_name())


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` atomically (temporary file + rename), creating its directory."""
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Plugin:
    """Common base: environment, options, logging, and publishing.

    Attributes:
        name: the instance name (``BUS_PLUGIN``).
        config: the plugin's configuration table.
        options: for a built-in plugin, its ``OPTIONS`` defaults overlaid with ``config``;
            otherwise ``config`` without the keys busd itself uses.
        hostname: the host name to put in events.
        log: a structlog logger bound to the plugin's name.
        bad_inputs: how many inputs of each kind :meth:`bad_input` counted.
    """

    type: ClassVar[str] = ""
    publish_batch: ClassVar[int] = 500
    """Most events in one publish request of :meth:`emit` (lower it for big events: a held request costs its bytes)."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.env = env
        self.name = env.get("BUS_PLUGIN", self.__class__.__name__.lower())
        self.config: dict[str, Any] = json.loads(env.get("BUS_PLUGIN_CONFIG") or "{}")
        builtin = self.config.get("builtin")
        if builtin and self.type:
            self.options = plugin_options(self.type, builtin, self.config)
        else:
            self.options = {k: v for k, v in self.config.items()
                            if k not in ("type", "builtin", "exec", "filter", "enabled") and k not in SDK_OPTIONS}
        self.hostname = env.get("BUS_HOSTNAME") or socket.gethostname()
        self.log = get_logger().bind(plugin=self.name)
        self.ctx = zmq.asyncio.Context.instance()
        self._control: ControlClient | None = None
        self._publisher: Publisher | None = None
        self.bad_inputs: Counter[str] = Counter()
        self._own_status: Mapping[str, Any] = {}
        self._bad_flush: asyncio.TimerHandle | None = None

    @property
    def control(self) -> ControlClient:
        """The control client (``BUS_CONTROL``), created on first use."""
        if self._control is None:
            self._control = ControlClient(self.env["BUS_CONTROL"], self.ctx)
        return self._control

    @property
    def publisher(self) -> Publisher:
        """The acknowledged publisher behind :meth:`emit`, created on first use (``publish_linger`` applies)."""
        if self._publisher is None:
            linger = float(self.config.get("publish_linger") or SDK_OPTIONS["publish_linger"].default)
            self._publisher = Publisher(self.control, self.name, batch=self.publish_batch, linger=linger)
        return self._publisher

    def path(self, value: str) -> Path:
        """Resolve a path option: relative paths are relative to the file that configures the plugin."""
        return Path(self.env.get("BUS_CONFIG_DIR", ".")) / value

    @property
    def state_dir(self) -> Path | None:
        """This plugin's own directory under ``[main] state_dir`` (``$BUS_STATE_DIR/<plugin>``), created
        on first use; ``None`` outside busd. Files that must outlive a reboot go here."""
        base = self.env.get("BUS_STATE_DIR")
        if not base:
            return None
        path = Path(base) / self.name
        path.mkdir(mode=0o750, parents=True, exist_ok=True)
        return path

    def state_file(self, kind: str = "state") -> Path | None:
        """Return where this plugin keeps its ``kind`` file (``None`` outside busd).

        ``state`` is what a plugin needs after a restart: ``<state_dir>/state.json`` (under
        ``$BUS_RUNTIME_DIR/state/`` when busd gives no state directory); ``status`` is what it shows
        to ``busctl`` (see :meth:`write_status`), in ``$BUS_RUNTIME_DIR/status/<plugin>.json``.
        """
        if kind == "state" and self.env.get("BUS_STATE_DIR"):
            state_dir = self.state_dir
            assert state_dir is not None
            return state_dir / "state.json"
        runtime_dir = self.env.get("BUS_RUNTIME_DIR")
        return Path(runtime_dir) / kind / f"{self.name}.json" if runtime_dir else None

    def write_status(self, status: Mapping[str, Any]) -> None:
        """Publish this plugin's own status for ``busctl`` (written atomically; errors are logged).

        The counts of :meth:`bad_input` are added as ``bad_input`` (kind to number).
        """
        self._own_status = status
        if self._bad_flush is not None:
            self._bad_flush.cancel()
            self._bad_flush = None
        path = self.state_file("status")
        if path is None:
            return
        extra = {"bad_input": dict(self.bad_inputs)} if self.bad_inputs else {}
        try:
            write_atomic(path, json.dumps({"plugin": self.name, "updated": time.time(), **status, **extra},
                                          default=str))
        except OSError as exc:
            self.log.warning("status_write_failed", path=str(path), error=str(exc))

    def bad_input(self, kind: str, detail: str, *, log: bool = True, **where: Any) -> None:
        """Count one input this plugin could not use and skips (a garbage line, a malformed datagram).

        ``kind`` is a short key naming the defect, ``detail`` what exactly was wrong and ``where``
        where it was (``path=``, ``line=``, ``seq=``, ``sender=``, ``event_id=``...). The first of
        each kind is logged as ``bad_input`` with all of them (unless ``log`` is false: a plugin
        with its own rate-limited log); every one is counted, in :attr:`bad_inputs` and within
        :data:`BAD_INPUT_FLUSH` seconds in the status file ``busctl status`` shows.
        """
        self.bad_inputs[kind] += 1
        if log and self.bad_inputs[kind] == 1:
            self.log.warning("bad_input", kind=kind, error=detail, **where,
                             note="skipped; later inputs of this kind are counted, not logged")
        if self._bad_flush is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # outside a running plugin (a unit test): the next write_status shows it
                return
            self._bad_flush = loop.call_later(BAD_INPUT_FLUSH, self._flush_bad_input)

    def _flush_bad_input(self) -> None:
        self._bad_flush = None
        self.write_status(self._own_status)

    def event(self, system: str, event_type: str, msg: str = "", **fields: Any) -> Event:
        """Build an event from this plugin (``kind`` raw for collectors, synthetic otherwise).

        ``source`` is this plugin's name, as the broker would set it. A parser's event gets no
        ``event_id`` yet (``""``): the one returned from :meth:`Parser.handle` is given an id
        derived from its input, one published with :meth:`emit` a new one.
        """
        fields.setdefault("kind", "raw" if self.type == "collector" else "synthetic")
        fields.setdefault("hostname", self.hostname)
        if self.type == "parser":
            fields.setdefault("event_id", "")
        event = new_event(system, event_type, msg, **fields)
        event["source"] = self.name
        return event

    async def emit(self, event: Event) -> None:
        """Publish an event, acknowledged by the broker (resent if busd restarts)."""
        await self.publisher.emit(event)

    async def emit_many(self, events: list[Event]) -> None:
        """Publish several events at once: cheaper per event than :meth:`emit` when they are at hand together."""
        await self.publisher.emit_many(events)

    async def setup(self) -> None:
        """Called once before the plugin starts working; override to open files or sockets."""

    async def teardown(self) -> None:
        """Called once at shutdown; override to release what :meth:`setup` opened."""

    async def main(self) -> None:
        """The plugin's work; each base class provides it."""
        raise NotImplementedError

    async def close(self) -> None:
        """Flush what is not acknowledged yet (up to 1 s), the bad-input counts, and close sockets."""
        if self._bad_flush is not None:
            self._flush_bad_input()
        if self.bad_inputs:
            self.log.info("bad_input_skipped", counts=dict(self.bad_inputs))
        if self._publisher is not None and not await self._publisher.close(1.0):
            self.log.warning("unacknowledged_at_exit", events=self._publisher.pending())
        if self._control is not None:
            self._control.close()


class Collector(Plugin):
    """Produces raw events: override :meth:`run` and call ``await self.emit(event)``."""

    type = "collector"

    async def run(self) -> None:
        """Produce events until cancelled."""
        raise NotImplementedError

    async def main(self) -> None:
        """Run the collector; when :meth:`run` returns, flush and exit."""
        await self.run()


class Parser(Plugin):
    """Turns routed events into synthetic events: override :meth:`handle`.

    ``handle`` may be a plain or an ``async`` method and returns ``None``, one event or an iterable
    of events. Their ids are derived from the input's, and they are sent together with the
    acknowledgement of the input, so a parser killed mid-stream neither loses nor duplicates output.

    A parser that correlates several inputs into one output (the lines of one SCSI failure)
    overrides :meth:`hold` to keep the inputs of an open group unacknowledged, so they are
    delivered again if it dies, and :meth:`tick` to close groups that timed out.

    An input ``handle`` refuses with :class:`~bus.exceptions.BadInput` is counted by its kind
    (:meth:`Plugin.bad_input`); any other exception is logged with its traceback and counted as
    ``handle_failed``. Either way the input is acknowledged and the next one handled.
    """

    type = "parser"
    window: ClassVar[int] = 4000
    tick_interval: ClassVar[float | None] = None
    """Seconds between calls of :meth:`tick` (``None``: never)."""

    delivery: int = 0
    """The number of the delivery being handled (what :meth:`hold` returns)."""

    def handle(self, event: Event) -> HandleResult | Any:
        """Return the synthetic events that ``event`` gives (``None`` for none)."""
        raise NotImplementedError

    def hold(self) -> int | None:
        """Return the :attr:`delivery` of the oldest input whose outputs are not out yet (``None``: none).

        That delivery and every later one stay unacknowledged.
        """
        return None

    def tick(self, now: float) -> HandleResult | Any:
        """Return events for state that timed out (called every :attr:`tick_interval` seconds).

        Their ``event_id`` is kept as given: derive it (:func:`derive_id`) from the inputs so a
        redelivery after a crash yields the same id, which the broker then drops as a duplicate.
        """
        return None

    async def main(self) -> None:
        """Receive deliveries, handle each event, and acknowledge them with the outputs."""
        sock = sync_context(self.ctx).socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.connect(self.env["BUS_INPUT"])
        ready = Readiness(sock)
        await ready.send(protocol.packb({"op": "hello", "plugin": self.name, "window": self.window}))
        handle = self.handle
        is_async = inspect.iscoroutinefunction(handle)
        name = self.name
        hostname = self.hostname
        interval = self.tick_interval
        loop = asyncio.get_running_loop()
        next_tick = loop.time() + interval if interval else float("inf")
        unacked: deque[int] = deque()
        acked = 0
        outputs: list[Event] = []

        def collect(result: Any, parent_id: str | None) -> None:
            if result is None:
                return
            for index, out in enumerate((result,) if isinstance(result, dict) else result):
                if parent_id is not None:
                    out["event_id"] = derive_id(parent_id, name, index)
                out["kind"] = "synthetic"
                out["source"] = name
                # validated by the broker, which logs and counts a bad one under this plugin
                out.setdefault("hostname", hostname)
                outputs.append(out)

        try:
            while True:
                timeout = max(0.0, next_tick - loop.time()) if interval else None
                # every delivery waiting (up to 64) is handled before one acknowledgement covers them all
                waiting = await ready.wait(timeout)
                for _ in range(64 if waiting else 0):
                    if not has_message(sock):
                        break
                    msg = protocol.unpackb(recv_message(sock)[-1])
                    if msg.get("op") == "error":
                        self.log.error("broker_refused", error=msg.get("error"))
                        return
                    if msg.get("op") != "events":
                        continue
                    self.delivery = msg["upto"]
                    unacked.append(self.delivery)
                    for event in msg["events"]:
                        try:
                            result = await handle(event) if is_async else handle(event)  # type: ignore[misc]
                            collect(result, event.get("event_id", ""))
                        except BadInput as exc:
                            self.bad_input(exc.kind, exc.detail, event_id=event.get("event_id"))
                        except Exception as exc:
                            self.log.exception("handle_failed", event_id=event.get("event_id"))
                            self.bad_input("handle_failed", f"{type(exc).__name__}: {exc}", log=False,
                                           event_id=event.get("event_id"))
                if interval and loop.time() >= next_tick:
                    next_tick = loop.time() + interval
                    try:
                        collect(self.tick(time.time()), None)
                    except Exception:
                        self.log.exception("tick_failed")
                held = self.hold()
                upto = acked
                while unacked and (held is None or unacked[0] < held):
                    upto = unacked.popleft()
                if upto != acked or outputs:
                    await ready.send(protocol.packb({"op": "ack", "upto": upto, "events": outputs}))
                    acked, outputs = upto, []
        finally:
            ready.close()
            sock.close()


class Receiver(Plugin):
    """Acts on published events: override :meth:`handle`.

    Events arrive in order, filtered by the plugin's ``filter`` (default: synthetic events), and
    after a restart the receiver resumes where it stopped (events still in the broker's replay
    buffer are delivered; what fell out arrives as one ``BUS_EVENTS_LOST`` event).

    With ``flood_window`` set in the plugin's table, repeats of one ``(event_type, device)`` within
    that many seconds reach :meth:`handle` as the first event plus one summary (see
    :class:`bus.flood.FloodControl`).

    Attributes:
        counters: the receiver's own counters (name to number), shown by ``busctl status``.
    """

    type = "receiver"

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__(env)
        spec = self.config.get("filter")
        if spec is None and isinstance(self.config.get("builtin"), str):
            spec = builtin_filter(self.type, self.config["builtin"])  # as busd itself reads the table
        self.filter = Filter.parse(spec, default_kinds=("synthetic",))
        self.subscriber: Subscriber | None = None
        self.counters: dict[str, int] = {}
        self._is_async = inspect.iscoroutinefunction(self.handle)
        window = self.config.get("flood_window") or 0
        self.flood: FloodControl | None = None
        if window > 0:
            self.flood = FloodControl(window, clock=lambda: asyncio.get_running_loop().time())

    def handle(self, event: Event) -> Any:
        """Act on one event (plain or ``async``); an exception is logged and counted, not fatal."""
        raise NotImplementedError

    handle_batch: Callable[[list[Event]], Any] | None = None
    """Optionally, a method taking a list of events (plain or ``async``), called instead of
    :meth:`handle` with whatever arrived together, in order (one SQLite transaction per batch,
    say). An exception counts every event of the batch as failed. Not used with ``flood_window``.
    """

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the counter ``name`` (``busctl status`` shows the counters)."""
        self.counters[name] = self.counters.get(name, 0) + n
        if self.subscriber is not None:
            self.subscriber.soon()

    async def _handle(self, event: Event, stats: dict[str, Any]) -> None:
        try:
            if self._is_async:
                await self.handle(event)
            else:
                self.handle(event)
        except Exception:
            stats["failed"] += 1
            self.log.exception("handle_failed", event_id=event.get("event_id"))

    async def main(self) -> None:
        """Subscribe and hand every matching event to :meth:`handle`."""
        kinds = tuple(k for k in KINDS if self.filter.wants_kind(k))
        self.subscriber = sub = Subscriber(self.env["BUS_EVENTS"], self.control, kinds, plugin=self.name)
        sub.stats["counters"] = self.counters
        stats = sub.stats
        flood = self.flood
        if flood is None and (self.handle_batch is not None or not self._is_async):
            await self._main_batches(sub, self.handle_batch or self._handle_each)
            return
        wants = self.filter.wants
        if flood is None:  # an async handle(): progress after each event, a slow one resumes where it was
            async for delivery in sub:
                if wants(delivery.event):
                    await self._handle(delivery.event, stats)
                sub.done(delivery)
            return
        # summaries are handed on from a timer too: the lock keeps handle() calls one at a time
        lock = asyncio.Lock()
        stats["flood_suppressed"] = 0
        timer = asyncio.create_task(self._flood_timer(flood, lock, stats), name="flood-timer")
        try:
            async for delivery in sub:
                if wants(delivery.event):
                    for out in flood.offer(delivery.event):
                        async with lock:
                            await self._handle(out, stats)
                    stats["flood_suppressed"] = flood.suppressed
                sub.done(delivery)
        finally:
            timer.cancel()
            # open windows are closed at once: their counts would be lost with the process
            for out in flood.flush():
                await self._handle(out, stats)

    def _handle_each(self, events: list[Event]) -> None:
        """A plain :meth:`handle` as a batch: each event on its own, a failure counted for that event."""
        assert self.subscriber is not None  # main() set it before the first batch
        handle, stats = self.handle, self.subscriber.stats
        for event in events:
            try:  # what _handle does, without a coroutine per event
                handle(event)
            except Exception:
                stats["failed"] += 1
                self.log.exception("handle_failed", event_id=event.get("event_id"))

    async def _main_batches(self, sub: Subscriber, handle_batch: Callable[[list[Event]], Any]) -> None:
        """The loop of a receiver with a plain :meth:`handle` or a :attr:`handle_batch`: one call per run."""
        is_async = inspect.iscoroutinefunction(handle_batch)
        select = self.filter.select
        stats = sub.stats
        async for runs in sub.runs():
            for run in runs:
                events = select(run.events)
                if events:
                    try:
                        if is_async:
                            await handle_batch(events)
                        else:
                            handle_batch(events)
                    except Exception:
                        stats["failed"] += len(events)
                        self.log.exception("handle_failed", event_id=events[0].get("event_id"), events=len(events))
                sub.done_run(run)

    async def _flood_timer(self, flood: FloodControl, lock: asyncio.Lock, stats: dict[str, Any]) -> None:
        """Hand on the summaries of windows that ended, even when no further event arrives."""
        loop = asyncio.get_running_loop()
        while True:
            deadline = flood.next_deadline()
            # a window opened while sleeping a whole window ends after this wake-up, never before
            await asyncio.sleep(flood.window if deadline is None else max(0.0, deadline - loop.time()))
            summaries = flood.expire(loop.time())
            if summaries:
                async with lock:
                    for out in summaries:
                        await self._handle(out, stats)

    async def close(self) -> None:
        """Report final progress, then close."""
        if self.subscriber is not None:
            await self.subscriber.report()
            self.subscriber.close()
        await super().close()


async def _amain(plugin: Plugin) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await plugin.setup()
        await plugin.main()
    except asyncio.CancelledError:
        plugin.log.info("plugin_stopping")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        try:
            await plugin.teardown()
        finally:
            await plugin.close()


def run(cls: type[Plugin], env: Mapping[str, str] | None = None) -> None:
    """Run a plugin class as the main program of its process (uvloop when available).

    Logs JSON lines to stderr, which busd merges into its own log.
    """
    env = os.environ if env is None else env
    configure(env.get("BUS_LOG_LEVEL", "info"), json=True, plugin=env.get("BUS_PLUGIN", cls.__name__))
    plugin = cls(env)
    builtin = plugin.config.get("builtin")
    hide_secrets(secret_values(plugin.config, builtin_secret_keys(plugin.type, builtin if isinstance(builtin, str) else None)))
    with runtime.runner() as runner:
        try:
            runner.run(_amain(plugin))
        except Exception:
            plugin.log.exception("plugin_crashed")
            sys.exit(1)

"""Collector ``drbd``: DRBD's state changes, one raw event per ``drbdsetup events2`` line.

It runs ``command`` (default ``drbdsetup events2 --full --poll --timestamps``), writes ``n`` to its
stdin every ``statistics_poll_interval`` seconds so that drbdsetup prints fresh statistics (I/O
counters, out-of-sync, resync progress), and turns every line it prints into one raw event:

- ``system`` ``drbd``, ``kind`` raw, ``event_type`` ``DRBD_EVENTS2``, severity info, ``msg`` the line;
- ``dev_name`` ``res`` or ``res/volume``, ``dev_wwid`` ``drbd:res`` or ``drbd:res/volume``;
- ``extensions``: ``action`` (``exists``, ``create``, ``change``, ``destroy``, ``call``,
  ``response``), ``object`` (``resource``, ``device``, ``connection``, ``peer-device``, ``path``,
  ``helper``, or ``-`` for ``exists -``, the end of the initial dump), ``fields`` (every
  ``key:value`` as strings; a value is split from its key on the first ``:``, so
  ``local:ipv4:1.2.3.4:7020`` keeps its colons), ``old`` (only for ``key:old->new`` fields: the old
  values), ``timestamp`` (the ``--timestamps`` prefix, when present; it also sets the event's
  time) and ``run`` (an id of this drbdsetup process: a new run starts with a new ``exists`` dump).

Unknown keys are kept. Lines that are not events2 lines (an unknown action or object, a field
without ``:``, a missing or non-integer ``name``/``volume``/``peer-node-id``/``minor``, invalid
UTF-8, over 64 KiB) are skipped: the first of each kind is logged as ``bad_line`` with the line, all
are counted (``bad_lines`` in the status file ``busctl`` reads, ``$BUS_RUNTIME_DIR/status/NAME.json``).

When the command exits (or cannot start), its exit status and the lines it wrote on stderr are
logged and it is started again after ``restart_delay`` seconds, doubling up to
``restart_delay_max``; a run that lasted 10 s or more (``STABLE_RUN``) resets the delay. Every
start prints the complete state again (``exists`` lines), from which the ``drbd`` parser rebuilds
and reconciles what it knows.

Options: ``command`` (a list: program and arguments), ``statistics_poll_interval`` (seconds, 0 to
never poll), ``restart_delay``, ``restart_delay_max``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bus.config import Option
from bus.event import Event
from bus.exceptions import BadInput
from bus.plugin import Collector, run, stop_process

OPTIONS = {
    "command": Option(list, ["drbdsetup", "events2", "--full", "--poll", "--timestamps"],
                      "program and arguments that print events2 lines (tests point it at a replay program)"),
    "statistics_poll_interval": Option(float, 60.0, "seconds between two 'n' written to the command's stdin "
                                                    "(fresh statistics); 0: never"),
    "restart_delay": Option(float, 1.0, "first delay before restarting the command after it exited, seconds"),
    "restart_delay_max": Option(float, 60.0, "longest restart delay, seconds"),
}

ACTIONS = ("exists", "create", "change", "destroy", "call", "response")
OBJECTS = ("resource", "device", "connection", "peer-device", "path", "helper")
REQUIRED_KEYS = {
    "resource": ("name",),
    "device": ("name", "volume"),
    "connection": ("name", "peer-node-id"),
    "peer-device": ("name", "peer-node-id", "volume"),
    "path": ("name", "peer-node-id", "local", "peer"),
    "helper": ("name", "helper"),
}
INTEGER_KEYS = ("volume", "peer-node-id", "minor")
MAX_LINE = 65536
STABLE_RUN = 10.0
"""Seconds a run must last for the restart delay to start again from ``restart_delay``."""
STATUS_INTERVAL = 1.0
"""Seconds between two writes of the status file (when it changed)."""

_TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?$")
_INTEGER = re.compile(r"-?\d+$")




@dataclass(slots=True)
class Line:
    """One parsed events2 line."""

    action: str
    object: str
    fields: dict[str, str] = field(default_factory=dict)
    old: dict[str, str] = field(default_factory=dict)
    timestamp: str | None = None

    def dev_name(self) -> str:
        """Return ``res`` or ``res/volume`` (empty for ``exists -``)."""
        name = self.fields.get("name", "")
        volume = self.fields.get("volume")
        return f"{name}/{volume}" if name and volume is not None else name


def parse_line(text: str) -> Line:
    """Parse one ``drbdsetup events2`` line (without its newline).

    Shapes: ``[TIMESTAMP] ACTION OBJECT key:value...``, ``exists -``; a value is split from its key on
    the first ``:``; a ``key:old->new`` value gives ``new`` in ``fields`` and ``old`` in ``old``.

    Raises:
        BadInput: ``unknown_action``, ``unknown_object``, ``bad_field``, ``missing_key`` or
            ``bad_integer``, with what was wrong.
    """
    words = text.split()
    timestamp = None
    if words and _TIMESTAMP.match(words[0]):
        timestamp = words.pop(0)
    if not words:
        raise BadInput("unknown_action", "a timestamp and nothing else")
    action = words[0]
    if action not in ACTIONS:
        raise BadInput("unknown_action", f"{action[:40]!r} is not one of {', '.join(ACTIONS)}")
    if len(words) < 2:
        raise BadInput("unknown_object", f"nothing after {action!r}")
    obj = words[1]
    if obj == "-":
        if action != "exists":
            raise BadInput("unknown_object", f"'-' only follows 'exists', not {action!r}")
        return Line(action, obj, timestamp=timestamp)
    if obj not in OBJECTS:
        raise BadInput("unknown_object", f"{obj[:40]!r} is not one of {', '.join(OBJECTS)}")
    if (obj == "helper") != (action in ("call", "response")):
        raise BadInput("unknown_object", f"{action!r} does not go with {obj!r} (helpers are called and respond)")
    line = Line(action, obj, timestamp=timestamp)
    for word in words[2:]:
        key, sep, value = word.partition(":")
        if not sep or not key:
            raise BadInput("bad_field", f"{word[:60]!r} is not key:value")
        old, arrow, new = value.partition("->")
        if arrow:
            line.old[key] = old
            value = new
        line.fields[key] = value
    for key in REQUIRED_KEYS[obj]:
        if not line.fields.get(key):
            raise BadInput("missing_key", f"{action} {obj} without {key!r}")
    for key in INTEGER_KEYS:
        number = line.fields.get(key)
        if number is not None and not _INTEGER.match(number):
            raise BadInput("bad_integer", f"{key}:{number[:40]} is not an integer")
    if obj == "helper" and "status" in line.fields and not _INTEGER.match(line.fields["status"]):
        raise BadInput("bad_integer", f"status:{line.fields['status'][:40]} is not an integer")
    return line


def parse_timestamp(text: str) -> float | None:
    """Return the epoch seconds of a ``--timestamps`` prefix (``None`` if it is not a valid time)."""
    try:
        return datetime.fromisoformat(text.replace(",", ".")).timestamp()
    except ValueError:
        return None


class Drbd(Collector):
    """Run ``drbdsetup events2`` and emit its lines; restart it when it exits."""

    def __init__(self, env: Any = None) -> None:
        super().__init__(env)
        self.command: list[str] = list(self.options["command"])
        self.bad_counts: collections.Counter[str] = collections.Counter()
        self.lines = 0
        self.runs = 0
        self.run_id = ""
        self.pid: int | None = None
        self.last_exit: dict[str, Any] | None = None
        self._status_dirty = True

    # -- lines to events ------------------------------------------------------------------------

    def line_event(self, text: str, line: Line) -> Event:
        """Return the raw ``DRBD_EVENTS2`` event of a parsed line."""
        ext: dict[str, Any] = {"action": line.action, "object": line.object, "fields": line.fields,
                               "run": self.run_id}
        if line.old:
            ext["old"] = line.old
        ts = None
        if line.timestamp is not None:
            ext["timestamp"] = line.timestamp
            ts = parse_timestamp(line.timestamp)
        dev = line.dev_name()
        return self.event("drbd", "DRBD_EVENTS2", text, dev_name=dev, dev_wwid=f"drbd:{dev}" if dev else "",
                          timestamp=ts, extensions=ext)

    def on_bad(self, bad: BadInput, text: str) -> None:
        """Count a skipped line; log the first of each kind with the line."""
        self.bad_counts[bad.kind] += 1
        self._status_dirty = True
        if self.bad_counts[bad.kind] == 1:
            self.log.warning("bad_line", kind=bad.kind, error=bad.detail, line=text[:300], run=self.runs,
                             note="skipped; later lines of this kind are counted, not logged")

    async def handle_line(self, raw: bytes) -> None:
        """Decode, parse and emit one line (bad lines are counted and skipped)."""
        try:
            text = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            self.on_bad(BadInput("invalid_utf8", f"not UTF-8 at offset {exc.start}"),
                        raw.decode("utf-8", "backslashreplace"))
            return
        if not text.strip():
            return
        try:
            line = parse_line(text)
        except BadInput as exc:
            self.on_bad(exc, text)
            return
        self.lines += 1
        self._status_dirty = True
        await self.emit(self.line_event(text, line))

    # -- the command ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the command again and again, with backoff between runs."""
        opts = self.options
        delay = opts["restart_delay"]
        status = asyncio.create_task(self._status_loop(), name="status")
        try:
            while True:
                started = time.monotonic()
                await self.run_once()
                ran = time.monotonic() - started
                if ran >= STABLE_RUN:
                    delay = opts["restart_delay"]
                self.log.info("command_restarting", delay=round(delay, 3), ran=round(ran, 3))
                await asyncio.sleep(delay)
                delay = min(delay * 2, opts["restart_delay_max"])
        finally:
            status.cancel()
            self.write_own_status()

    async def run_once(self) -> None:
        """Start the command, read it until it exits, and log how it ended."""
        self.runs += 1
        self.run_id = f"{uuid.uuid4().hex[:12]}-{self.runs}"
        self._status_dirty = True
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, limit=MAX_LINE)
        except OSError as exc:
            self.last_exit = {"error": str(exc), "at": time.time()}
            self.log.error("command_failed_to_start", command=self.command, error=str(exc))
            return
        self.pid = proc.pid
        self.log.info("command_started", command=self.command, pid=proc.pid, run=self.run_id)
        assert proc.stdout is not None and proc.stderr is not None
        stderr_lines: list[str] = []
        helpers = [asyncio.create_task(self._poll(proc), name="poll"),
                   asyncio.create_task(self._stderr(proc.stderr, stderr_lines), name="stderr")]
        try:
            await self._read(proc.stdout)
            code = await proc.wait()
            with contextlib.suppress(TimeoutError):  # a child of the command may hold stderr open
                async with asyncio.timeout(1.0):
                    await asyncio.shield(helpers[1])
        except BaseException:
            await stop_process(proc)
            raise
        finally:
            for task in helpers:
                task.cancel()
            self.pid = None
        self.last_exit = {"status": code, "at": time.time(), "stderr": stderr_lines[-5:]}
        self._status_dirty = True
        self.log.warning("command_exited", command=self.command, status=code, stderr=stderr_lines[-20:])

    async def _read(self, stdout: asyncio.StreamReader) -> None:
        while True:
            try:
                raw = await stdout.readline()
            except ValueError:  # longer than MAX_LINE: asyncio dropped what it buffered
                self.on_bad(BadInput("too_long", f"a line over {MAX_LINE} bytes"), "")
                continue
            if not raw:
                return
            await self.handle_line(raw)

    async def _stderr(self, stderr: asyncio.StreamReader, keep: list[str]) -> None:
        while True:
            try:
                raw = await stderr.readline()
            except ValueError:
                continue
            if not raw:
                return
            text = raw.decode("utf-8", "backslashreplace").rstrip()
            keep.append(text)
            del keep[:-20]
            self.log.warning("command_stderr", line=text[:500])

    async def _poll(self, proc: asyncio.subprocess.Process) -> None:
        """Write ``n`` every ``statistics_poll_interval`` seconds (drbdsetup then prints statistics)."""
        interval = self.options["statistics_poll_interval"]
        if interval <= 0 or proc.stdin is None:
            return
        while True:
            await asyncio.sleep(interval)
            try:
                proc.stdin.write(b"n\n")
                await proc.stdin.drain()
            except (BrokenPipeError, ConnectionResetError):
                return

    # -- status ---------------------------------------------------------------------------------

    def write_own_status(self) -> None:
        """Publish counters and the command's state for ``busctl``."""
        self._status_dirty = False
        self.write_status({"command": self.command, "pid": self.pid, "runs": self.runs, "run": self.run_id,
                           "lines": self.lines, "bad_lines": dict(self.bad_counts), "last_exit": self.last_exit})

    async def _status_loop(self) -> None:
        while True:
            if self._status_dirty:
                self.write_own_status()
            await asyncio.sleep(STATUS_INTERVAL)

    async def close(self) -> None:
        """Flush, then log what was skipped."""
        await super().close()
        if self.bad_counts:
            self.log.info("bad_lines_skipped", counts=dict(self.bad_counts))


def check_options(options: dict[str, Any]) -> None:
    """Refuse an empty command and negative delays."""
    command = options["command"]
    if not command or not all(isinstance(a, str) and a for a in command):
        raise ValueError("command: must be a non-empty array of non-empty strings")
    if options["statistics_poll_interval"] < 0:
        raise ValueError(f"statistics_poll_interval: must be 0 or more, got {options['statistics_poll_interval']}")
    for key in ("restart_delay", "restart_delay_max"):
        if options[key] <= 0:
            raise ValueError(f"{key}: must be positive, got {options[key]}")


if __name__ == "__main__":
    run(Drbd)

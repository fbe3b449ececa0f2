"""Collector ``drbd``: DRBD's state changes, from the lines ``drbdsetup events2`` prints.

It runs ``command`` (default ``drbdsetup events2 --full --poll --timestamps``), writes ``n`` to its
stdin every ``statistics_poll_interval`` seconds so that drbdsetup prints fresh statistics (I/O
counters, out-of-sync, resync progress), and turns what it prints into raw events. A line that
comes on its own (the usual case: DRBD reports a state change) is one raw event:

- ``system`` ``drbd``, ``kind`` raw, ``event_type`` ``DRBD_EVENTS2``, severity info, ``msg`` the line;
- ``dev_name`` ``res`` or ``res/volume``, ``dev_wwid`` ``drbd:res`` or ``drbd:res/volume``;
- ``extensions``: ``action`` (``exists``, ``create``, ``change``, ``destroy``, ``call``,
  ``response``), ``object`` (``resource``, ``device``, ``connection``, ``peer-device``, ``path``,
  ``helper``, or ``-`` for ``exists -``, the end of the initial dump), ``fields`` (every
  ``key:value`` as strings; a value is split from its key on the first ``:``, so
  ``local:ipv4:1.2.3.4:7020`` keeps its colons), ``old`` (only for ``key:old->new`` fields: the old
  values), ``timestamp`` (the ``--timestamps`` prefix, when present; it also sets the event's
  time) and ``run`` (an id of this drbdsetup process: a new run starts with a new ``exists`` dump).

When lines come faster than one at a time (one read of the pipe brings ``BATCH_MIN`` lines or more:
a big initial dump, statistics of many devices, a benchmark), each run of up to ``BATCH_LINES``
consecutive lines (``BATCH_BYTES`` at most) becomes one raw event ``DRBD_EVENTS2_BATCH`` instead:
``msg`` ``"N events2 lines"``, no device, the time it was read, and ``extensions`` ``lines`` (the
lines, in order, each exactly as printed, ``--timestamps`` prefix included) and ``run``. The
``drbd`` parser handles each line of a batch as if it had come alone. This keeps the bus at a few
thousand events a second when drbdsetup prints hundreds of thousands of lines (the broker's work is
per event), and the pipe is read only as fast as busd acknowledges them (:meth:`Plugin.emit` waits
when the publisher's window is full), so a fast drbdsetup waits on its pipe instead of filling
memory.

Unknown keys are kept. Lines that are not events2 lines (an unknown action or object, a field
without ``:``, a missing or non-integer ``name``/``volume``/``peer-node-id``/``minor``, invalid
UTF-8, over 64 KiB) are skipped, in batches too: the first of each kind is logged as ``bad_input``
with the line, all are counted (``bad_input``, and as before ``bad_lines``, in the status file
``busctl status`` shows, ``$BUS_RUNTIME_DIR/status/NAME.json``). A line is checked by :func:`parse_line`, or, when it only
differs from one already checked in values that cannot make it invalid (statistics), by that
line's :class:`Template` (one regular expression match instead of splitting every field).

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
import contextlib
import re
import time
import uuid
from collections.abc import Collection
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

BATCH_TYPE = "DRBD_EVENTS2_BATCH"
"""``event_type`` of a raw event that carries a run of lines (``extensions.lines``)."""
READ_SIZE = 65536
"""Bytes asked of the pipe at once."""
BATCH_MIN = 32
"""Fewest complete lines in one read that are batched; fewer are one event each, as they come."""
BATCH_LINES = 128
"""Most lines in one batch event."""
BATCH_BYTES = 16384
"""Most characters of lines in one batch event: busd's queues count events, so an event stays small."""
PUBLISH_BATCH = 16
"""Most events in one publish request: 16 batches of up to 16 KiB keep what busd holds per request small."""
TEMPLATE_KEY = 64
"""Characters after the timestamp that pick a line's templates (drbdsetup prints statistics after them)."""
TEMPLATES_MAX = 4096
"""Templates kept before the cache starts over (each distinct state of each object makes one)."""

_ACTIONS = frozenset(ACTIONS)
_OBJECTS = frozenset(OBJECTS)
_TIMESTAMP_RE = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?"
_TIMESTAMP = re.compile(_TIMESTAMP_RE + "$")
_INTEGER = re.compile(r"-?\d+$")
_VALUE = r"([^\s>]*)"
"""A value a template lets vary: anything but blanks and ``>`` (so never ``old->new``)."""
_FIXED_KEYS = frozenset({"name", "volume", "peer-node-id", "minor", "conn-name", "local", "peer", "helper", "status"})
"""Keys :func:`parse_line` checks or identifies an object by: a template keeps their values."""



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
    if words and words[0][:1].isdigit() and _TIMESTAMP.match(words[0]):  # an action starts with a letter
        timestamp = words[0]
        del words[0]
    if not words:
        raise BadInput("unknown_action", "a timestamp and nothing else")
    action = words[0]
    obj = words[1] if len(words) > 1 else None
    _check_head(action, obj)
    if obj == "-":
        return Line(action, obj, timestamp=timestamp)
    pairs = [word.split(":", 1) for word in words[2:]]
    try:
        fields = dict(pairs)  # a word without ":" makes a 1-list: ValueError
    except ValueError:
        fields = {}
    if len(fields) != len(pairs) or "" in fields or "->" in text:  # the rare cases, word by word
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
        fields = line.fields
    else:
        line = Line(action, obj, fields, timestamp=timestamp)
    return _check_keys(line)


def _check_head(action: Any, obj: Any) -> None:
    """Refuse an action or object events2 does not have, or the two in a pairing it never prints."""
    if type(action) is not str or action not in _ACTIONS:
        raise BadInput("unknown_action", f"{str(action)[:40]!r} is not one of {', '.join(ACTIONS)}")
    if obj is None:
        raise BadInput("unknown_object", f"nothing after {action!r}")
    if obj == "-":
        if action != "exists":
            raise BadInput("unknown_object", f"'-' only follows 'exists', not {action!r}")
        return
    if type(obj) is not str or obj not in _OBJECTS:
        raise BadInput("unknown_object", f"{str(obj)[:40]!r} is not one of {', '.join(OBJECTS)}")
    if (obj == "helper") != (action in ("call", "response")):
        raise BadInput("unknown_object", f"{action!r} does not go with {obj!r} (helpers are called and respond)")


def _check_keys(line: Line) -> Line:
    """Refuse a line of a known object without its required keys or with a non-integer integer key."""
    action, obj, fields = line.action, line.object, line.fields
    for key in REQUIRED_KEYS[obj]:
        if not fields.get(key):
            raise BadInput("missing_key", f"{action} {obj} without {key!r}")
    for key in INTEGER_KEYS:
        number = fields.get(key)
        if number is not None and not (number.isdecimal() or (number[:1] == "-" and number[1:].isdecimal())):
            raise BadInput("bad_integer", f"{key}:{number[:40]} is not an integer")
    if obj == "helper" and "status" in fields and not _INTEGER.match(fields["status"]):
        raise BadInput("bad_integer", f"status:{fields['status'][:40]} is not an integer")
    return line


def line_from_extensions(ext: dict[str, Any]) -> Line:
    """Return the line a ``DRBD_EVENTS2`` event's ``extensions`` describe, checked as :func:`parse_line`
    checks a line (the event may come from a replay or another producer, not from this collector).

    Raises:
        BadInput: ``unknown_action``, ``unknown_object``, ``bad_field`` (``fields`` or ``old`` not a
            map of strings, ``run`` not a string), ``missing_key`` or ``bad_integer``.
    """
    action, obj = ext.get("action"), ext.get("object")
    _check_head(action, obj)
    if obj == "-":
        return Line(action, "-")
    fields = {} if ext.get("fields") is None else ext["fields"]
    old = {} if ext.get("old") is None else ext["old"]
    for what, value in (("fields", fields), ("old", old)):
        if not isinstance(value, dict) or not all(type(k) is str and type(v) is str for k, v in value.items()):
            raise BadInput("bad_field", f"extensions.{what} is not a map of strings: {str(value)[:60]}")
    if ext.get("run") is not None and type(ext["run"]) is not str:
        raise BadInput("bad_field", f"extensions.run {str(ext['run'])[:40]!r} is not a string")
    return _check_keys(Line(action, obj, fields, old))


def template_key(text: str) -> str:
    """Return the first ``TEMPLATE_KEY`` characters of a line after its timestamp.

    Lines of one object start alike (``change peer-device name:r0 peer-node-id:1 conn-name:b``), so
    this picks the few :class:`Template` a line may match.
    """
    start = text.find(" ") + 1 if text[:1].isdigit() else 0
    return text[start:start + TEMPLATE_KEY]


@dataclass(slots=True, eq=False)
class Template:
    """A checked line with its varying values left open: lines that match it parse the same way.

    ``regex`` matches the line after its ``--timestamps`` prefix: every word as it was, except the
    values of ``keys`` (in the order of the line), which may be anything without blanks or ``>``.
    A line that matches differs from the checked one in those values only, so it is valid too, and
    its fields are the checked line's with those values replaced (``match.groups()``).
    """

    key: str
    regex: re.Pattern[str]
    keys: tuple[str, ...]
    line: Line
    owner: Any = None
    """What the user of the template keeps with it (the ``drbd`` parser: the object it updates)."""

    @classmethod
    def of(cls, text: str, line: Line, varying: Collection[str] | None = None) -> Template | None:
        """Return the template of a parsed line whose values of ``varying`` keys (``None``: any) may change.

        ``None`` for a line that is not in drbdsetup's own form (single spaces, no ``old->new``) or
        has no such key. Keys that identify an object or that :func:`parse_line` checks never vary.
        """
        if line.old or line.object == "-":
            return None
        words = text.split(" ")
        if line.timestamp is not None:
            del words[0]
        if words != text.split()[1 if line.timestamp is not None else 0:]:
            return None
        parts = [re.escape(words[0]), re.escape(words[1])]
        keys = []
        for word in words[2:]:
            key = word.partition(":")[0]
            if (varying is None or key in varying) and key not in _FIXED_KEYS:
                parts.append(re.escape(key) + ":" + _VALUE)
                keys.append(key)
            else:
                parts.append(re.escape(word))
        if not keys:
            return None
        return cls(template_key(text), re.compile(" ".join(parts)), tuple(keys), line)


class Templates:
    """Templates by :func:`template_key`, newest first; at most ``TEMPLATES_MAX`` (then it starts over)."""

    def __init__(self) -> None:
        self.by_key: dict[str, list[Template]] = {}
        self.size = 0
        self.last_timestamp = ""  # the last timestamp found valid: consecutive lines often share it

    def add(self, template: Template) -> None:
        """Keep a template (before the others of its key)."""
        if self.size >= TEMPLATES_MAX:
            self.clear()
        self.by_key.setdefault(template.key, []).insert(0, template)
        self.size += 1

    def clear(self) -> None:
        """Forget every template."""
        self.by_key.clear()
        self.size = 0

    def find(self, text: str) -> tuple[Template, re.Match[str]] | None:
        """Return the template a line matches, with the match (``None``: none does)."""
        start = 0
        if text[:1].isdigit():  # a --timestamps prefix, checked as parse_line checks it
            start = text.find(" ") + 1
            last = self.last_timestamp
            if start - 1 != len(last) or not text.startswith(last):
                timestamp = text[:start - 1]
                if not start or not _TIMESTAMP.match(timestamp):
                    return None
                self.last_timestamp = timestamp
        for template in self.by_key.get(text[start:start + TEMPLATE_KEY], ()):
            m = template.regex.fullmatch(text, start)
            if m is not None:
                return template, m
        return None


def parse_timestamp(text: str) -> float | None:
    """Return the epoch seconds of a ``--timestamps`` prefix (``None`` if it is not a valid time)."""
    try:
        return datetime.fromisoformat(text.replace(",", ".")).timestamp()
    except ValueError:
        return None


class Drbd(Collector):
    """Run ``drbdsetup events2`` and emit its lines; restart it when it exits."""

    publish_batch = PUBLISH_BATCH

    def __init__(self, env: Any = None) -> None:
        super().__init__(env)
        self.command: list[str] = list(self.options["command"])
        self.lines = 0
        self.runs = 0
        self.run_id = ""
        self.pid: int | None = None
        self.last_exit: dict[str, Any] | None = None
        self.templates = Templates()
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

    def batch_event(self, lines: list[str]) -> Event:
        """Return the raw ``DRBD_EVENTS2_BATCH`` event of a run of checked lines."""
        return self.event("drbd", BATCH_TYPE, f"{len(lines)} events2 lines",
                          extensions={"lines": lines, "run": self.run_id})

    def on_bad(self, bad: BadInput, text: str) -> None:
        """Count a skipped line (:meth:`bad_input`) with the line itself."""
        self._status_dirty = True
        self.bad_input(bad.kind, bad.detail, line=text[:300], run=self.runs)

    async def handle_line(self, raw: bytes) -> None:
        """Decode, parse and emit one line (bad lines are counted and skipped)."""
        text = self._decode(raw)
        if text is None or not text.strip():
            return
        try:
            line = parse_line(text)
        except BadInput as exc:
            self.on_bad(exc, text)
            return
        self.lines += 1
        self._status_dirty = True
        await self.emit(self.line_event(text, line))

    def _decode(self, raw: bytes) -> str | None:
        """Return a line as text without its line end (``None``, counted: too long or not UTF-8)."""
        if len(raw) > MAX_LINE:
            self.on_bad(BadInput("too_long", f"a line over {MAX_LINE} bytes"), "")
            return None
        try:
            return raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as exc:
            self.on_bad(BadInput("invalid_utf8", f"not UTF-8 at offset {exc.start}"),
                        raw.decode("utf-8", "backslashreplace"))
            return None

    async def handle_chunk(self, chunk: bytes) -> None:
        """Handle complete lines read at once (``chunk`` without its last newline).

        Fewer than ``BATCH_MIN`` lines are handled one by one (:meth:`handle_line`); more are
        checked (bad ones counted and skipped) and emitted as batches of consecutive lines.
        """
        raws = chunk.split(b"\n")
        if len(raws) < BATCH_MIN:
            for raw in raws:
                await self.handle_line(raw)
            return
        texts: list[str | None]
        try:
            if len(chunk) > MAX_LINE and max(map(len, raws)) > MAX_LINE:
                raise ValueError("a line is too long")
            texts = list(chunk.decode("utf-8").split("\n"))
        except ValueError:  # UnicodeDecodeError too: line by line, to count the bad ones
            texts = [self._decode(raw) for raw in raws]
        good: list[str] = []
        find = self.templates.find
        for text in texts:
            if text is None:
                continue
            if find(text) is not None:  # differs from a checked line in values only
                good.append(text)
                continue
            text = text.rstrip("\r\n")
            if not text.strip():
                continue
            try:
                line = parse_line(text)
            except BadInput as exc:
                self.on_bad(exc, text)
                continue
            good.append(text)
            template = Template.of(text, line)
            if template is not None:
                self.templates.add(template)
        if not good:
            return
        self.lines += len(good)
        self._status_dirty = True
        start, n = 0, len(good)
        while start < n:
            end, size = start, 0
            while end < n and end - start < BATCH_LINES and size < BATCH_BYTES:
                size += len(good[end])
                end += 1
            if end - start == 1:
                await self.emit(self.line_event(good[start], parse_line(good[start])))
            else:
                await self.emit(self.batch_event(good[start:end]))
            start = end

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
        """Read the command's stdout in chunks of complete lines, each handled before the next read.

        Handling waits while busd has not acknowledged enough (:meth:`emit`), so reading does too,
        and a command printing faster than the bus takes its lines blocks on the full pipe.
        """
        rest = b""
        skipping = False  # throwing away the rest of a line over MAX_LINE
        while True:
            data = await stdout.read(READ_SIZE)
            if not data:
                if rest and not skipping:
                    await self.handle_line(rest)  # a last line without its newline
                return
            end = data.rfind(b"\n")
            if end < 0:
                if not skipping:
                    rest += data
            else:
                chunk: bytes | None
                chunk, rest = rest + data[:end], data[end + 1:]
                if skipping:  # the chunk's first line is the end of the long one
                    first = chunk.find(b"\n")
                    chunk = None if first < 0 else chunk[first + 1:]
                    skipping = False
                if chunk is not None:
                    await self.handle_chunk(chunk)
            if len(rest) > MAX_LINE:
                self.on_bad(BadInput("too_long", f"a line over {MAX_LINE} bytes"), "")
                skipping, rest = True, b""

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
                           "lines": self.lines, "bad_lines": dict(self.bad_inputs), "last_exit": self.last_exit})

    async def _status_loop(self) -> None:
        while True:
            if self._status_dirty:
                self.write_own_status()
            await asyncio.sleep(STATUS_INTERVAL)



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

"""Collector ``kmsg``: the kernel log, one raw event per ``/dev/kmsg`` record.

Options:

- ``path`` (default ``/dev/kmsg``): the kernel's log device, or a regular file or FIFO holding records
  in the same text format (one record per line, its dictionary on following lines that start with a
  space). A file is followed like ``tail -F``: records appended later are read, and a file that is
  truncated or replaced is read again from its start. A relative path is relative to the
  configuration file.
- ``since_boot`` (default false): false starts at the end (only records logged after the collector
  started); true reads the whole kernel buffer (or the whole file) first.

Each record ``PRIO,SEQ,USEC,FLAGS;MESSAGE`` (the message escapes unprintable bytes as ``\\xNN``; a
multi-line printk arrives as one record with ``\\x0a`` inside), followed by ``KEY=VALUE`` dictionary
lines, becomes one event: system ``kmsg``, event_type ``KMSG``, ``msg`` the message with its escapes
decoded (a multi-line record keeps its newlines), severity from the level (0-3 error, 4 warn, 5-7
info), ``timestamp`` the wall-clock time of the record (boot time + USEC), ``dev_name`` empty, and
``extensions`` ``level`` (PRIO & 7), ``facility`` (PRIO >> 3), ``seq``, ``usec``, ``flags`` and every
dictionary entry (``SUBSYSTEM``, ``DEVICE``, ...) as a string.

Resuming: the last sequence number busd acknowledged is kept, with the boot id, in
``$BUS_RUNTIME_DIR/state/NAME.json``; a restarted collector goes on with the next record (a reboot
starts afresh). A valid state wins over ``since_boot``. Event ids are derived from the boot id, the
path and the sequence number, so records sent again after a crash are dropped by busd as resends.

Lost records are reported, never hidden: when the kernel overwrote records before they were read
(``EPIPE`` from ``/dev/kmsg``), or the first record after a restart is not the one after the saved
one, a ``KMSG_GAP`` event (severity warn, ``extensions`` ``from_seq``, ``to_seq``, ``missed``) says
which. Garbage (no ``;``, non-integer fields, invalid UTF-8, NUL bytes, a dictionary line before
any record, a record longer than 8 KiB) is counted, logged once per kind with its line or sequence
number, and skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bus.config import Option
from bus.event import Event
from bus.exceptions import BadInput
from bus.plugin import Collector, derive_id, run, write_atomic
from collectors._io import readable

OPTIONS = {
    "path": Option(str, "/dev/kmsg", "the kernel log device, or a regular file or FIFO of records in its text format"),
    "since_boot": Option(bool, False, "read the whole kernel buffer (or file) first; false: only new records"),
}

MAX_RECORD = 8192
"""Longest record accepted, in bytes (the kernel's own limit for one ``/dev/kmsg`` record)."""
IDLE_FLUSH = 0.2
"""Seconds without input after which a record read from a file or FIFO is taken as complete."""
FILE_POLL = 0.2
"""Seconds between two looks at a regular file that is at its end."""
STATE_INTERVAL = 0.25
"""Seconds between two writes of the resume state (when it changed)."""
READ_SIZE = 65536
BOOT_ID = "/proc/sys/kernel/random/boot_id"

_HEADER = re.compile(rb"(\d{1,10}),(\d{1,20}),(\d{1,20}),([^,;]*)(?:,[^;]*)?;")
_ESCAPE = re.compile(rb"\\x([0-9a-fA-F]{2})")


def severity_of(level: int) -> str:
    """Return the event severity of a syslog level: 0-3 error, 4 warn, 5-7 info."""
    return "error" if level <= 3 else "warn" if level == 4 else "info"


def unescape(raw: bytes) -> str:
    """Decode the kernel's ``\\xNN`` escapes, then the bytes as UTF-8 (bad sequences replaced)."""
    if b"\\x" in raw:
        raw = _ESCAPE.sub(lambda m: bytes((int(m[1], 16),)), raw)
    return raw.decode("utf-8", "replace")




@dataclass(slots=True)
class Record:
    """One parsed ``/dev/kmsg`` record."""

    level: int
    facility: int
    seq: int
    usec: int
    flags: str
    msg: str
    fields: dict[str, str] = field(default_factory=dict)
    line: int = 0
    size: int = 0


@dataclass(slots=True)
class Bad:
    """A skipped line: what was wrong, and where (file line number and/or record seq when known)."""

    kind: str
    detail: str
    line: int = 0
    seq: int | None = None


def check_line(raw: bytes) -> None:
    """Refuse a line that is too long, holds a NUL byte or is not UTF-8.

    Raises:
        BadInput: ``too_long``, ``nul_byte`` or ``invalid_utf8``.
    """
    if len(raw) > MAX_RECORD:
        raise BadInput("too_long", f"{len(raw)} bytes, the limit is {MAX_RECORD}")
    nul = raw.find(0)
    if nul >= 0:
        raise BadInput("nul_byte", f"NUL byte at offset {nul}")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput("invalid_utf8", f"not UTF-8 at offset {exc.start}") from None


def parse_header(raw: bytes) -> Record:
    """Parse a record's first line ``PRIO,SEQ,USEC,FLAGS[,...];MESSAGE``.

    Raises:
        BadInput: ``no_semicolon``, ``bad_header`` or a :func:`check_line` defect.
    """
    check_line(raw)
    m = _HEADER.match(raw)
    if m is None:
        if b";" not in raw:
            raise BadInput("no_semicolon", "no ';' between the PRIO,SEQ,USEC,FLAGS prefix and the message")
        raise BadInput("bad_header", f"prefix {raw.partition(b';')[0].decode()[:60]!r} is not PRIO,SEQ,USEC,FLAGS "
                                     "with integer PRIO, SEQ and USEC")
    prio = int(m[1])
    return Record(prio & 7, prio >> 3, int(m[2]), int(m[3]), m[4].decode(), unescape(raw[m.end():]), size=len(raw))


def parse_dictionary_line(raw: bytes) -> tuple[str, str]:
    """Parse a continuation line `` KEY=VALUE`` (the leading space included).

    Raises:
        BadInput: ``bad_dictionary`` or a :func:`check_line` defect.
    """
    check_line(raw)
    key, sep, value = raw[1:].partition(b"=")
    if not sep or not key.strip():
        raise BadInput("bad_dictionary", "a continuation line is not ' KEY=VALUE'")
    return unescape(key), unescape(value)


class Assembler:
    """Groups lines of the ``/dev/kmsg`` text format into records.

    A line that does not start with a space begins a record; the lines after it that do are its
    dictionary. A record is complete when the next one begins, or when :meth:`flush` says so.
    Defective lines go to ``on_bad``; the dictionary lines of a refused record go with it.
    """

    def __init__(self, on_bad: Callable[[Bad], None]) -> None:
        self.on_bad = on_bad
        self.pending: Record | None = None
        self._skipping = False

    def feed(self, raw: bytes, line: int = 0) -> Record | None:
        """Take one line (without its newline); return the record it completes, if any."""
        if not raw.strip():
            return None
        pending = self.pending
        if raw[0] == 0x20:  # a dictionary line
            if pending is None:
                if not self._skipping:
                    self.on_bad(Bad("orphan_continuation", "a dictionary line before any record", line))
                return None
            try:
                key, value = parse_dictionary_line(raw)
            except BadInput as exc:
                self.on_bad(Bad(exc.kind, exc.detail, line, pending.seq))
                return None
            pending.size += len(raw) + 1
            if pending.size > MAX_RECORD:
                self.on_bad(Bad("too_long", f"record with its dictionary exceeds {MAX_RECORD} bytes",
                                pending.line, pending.seq))
                self.pending, self._skipping = None, True
                return None
            pending.fields[key] = value
            return None
        done = self.flush()
        try:
            record = parse_header(raw)
        except BadInput as exc:
            self.on_bad(Bad(exc.kind, exc.detail, line))
            self._skipping = True
            return done
        record.line = line
        self.pending, self._skipping = record, False
        return done

    def flush(self) -> Record | None:
        """Return the record being assembled (its dictionary taken as complete), if any."""
        record, self.pending = self.pending, None
        return record

    def dropped(self, start: bytes) -> Record | None:
        """A line that ``start`` began was dropped before it got here (too long, :class:`Lines` reported it).

        If it began a record, it is taken as a refused record line: the record being assembled is
        complete (and returned), and the dictionary lines that follow are skipped with the dropped one.
        """
        if start[:1] == b" ":
            return None
        self._skipping = True
        return self.flush()

    def feed_chunk(self, lines: Lines, data: bytes) -> list[Record]:
        """Split ``data`` with ``lines`` and take its lines; return the records they complete."""
        out = [record for number, line in lines.feed(data) if (record := self.feed(line, number)) is not None]
        if lines.dropped is not None:  # what was dropped is the chunk's last (unfinished) line
            done = self.dropped(lines.dropped)
            lines.dropped = None
            if done is not None:
                out.append(done)
        return out


class Lines:
    """Splits a byte stream into numbered lines; a line growing past ``MAX_RECORD`` is dropped.

    Attributes:
        number: the number of the last complete line.
        drop_rest: the stream up to the next newline is the rest of a line dropped already.
        dropped: the first bytes of the line this :meth:`feed` dropped, if any (for
            :meth:`Assembler.feed_chunk`, which clears it: the lines after a dropped record's first
            line are its dictionary).
    """

    def __init__(self, on_bad: Callable[[Bad], None]) -> None:
        self.on_bad = on_bad
        self.number = 0
        self.partial = b""
        self.drop_rest = False
        self.dropped: bytes | None = None

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Return the complete lines in ``data`` (with what came before), as ``(number, line)``."""
        parts = (self.partial + data).split(b"\n")
        self.partial = parts.pop()
        out = []
        for part in parts:
            self.number += 1
            if self.drop_rest:  # the end of a line dropped already
                self.drop_rest = False
                continue
            out.append((self.number, part))
        if len(self.partial) > MAX_RECORD:
            if not self.drop_rest:
                self.on_bad(Bad("too_long", f"line longer than {MAX_RECORD} bytes", self.number + 1))
                self.dropped = self.partial[:1]
            self.drop_rest = True
            self.partial = b""
        return out

    def reset(self) -> None:
        """Start over (the file was truncated or replaced): an unfinished last line is reported."""
        if self.partial and not self.drop_rest:
            self.on_bad(Bad("truncated", "the file ended in the middle of this line", self.number + 1))
        self.partial, self.number, self.drop_rest = b"", 0, False


def boot_id() -> str:
    """Return this boot's id (``""`` when the kernel does not say)."""
    try:
        return Path(BOOT_ID).read_text().strip()
    except OSError:
        return ""


class Kmsg(Collector):
    """Emit one raw event per kernel log record, resuming after a restart without loss or repeat."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        super().__init__(env)
        self.source = self.path(self.options["path"])
        self.boot_id = boot_id()
        self.boot_time = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
        self.id_base = f"kmsg:{self.boot_id}:{self.source}"
        # record ids: a hash of (boot, path, instance) once, then the sequence number in the last
        # 12 hex digits -- the same record always gets the same id, without hashing per record
        self.id_prefix = derive_id(self.id_base, self.name, 0)[:24]
        self.state_path = self.state_file()
        self.last_seq: int | None = None
        """The newest record handled (emitted, or skipped as already emitted)."""
        self.acked_seq: int | None = None
        self.saved_seq: int | None = None
        self.check_gap = False
        self.from_start = bool(self.options["since_boot"])
        self.assembler = Assembler(self.on_bad)
        self._problems: set[str] = set()

    # -- resume state ---------------------------------------------------------------------------

    def load_state(self) -> int | None:
        """Return the saved sequence number if the state file is valid for this boot and path."""
        if self.state_path is None:
            return None
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            self.log.warning("state_unreadable", path=str(self.state_path), error=str(exc))
            return None
        seq = data.get("seq") if isinstance(data, dict) else None
        if type(seq) is not int or seq < 0:
            reason = "no valid 'seq'"
        elif data.get("boot_id") != self.boot_id:
            reason = "saved during another boot"
        elif data.get("path") != str(self.source):
            reason = f"saved for another path ({data.get('path')!r})"
        else:
            return seq
        self.log.info("state_ignored", path=str(self.state_path), reason=reason)
        return None

    def save_state(self) -> None:
        """Write the last acknowledged sequence number atomically (tmp + rename), if it changed."""
        if self.state_path is None or self.acked_seq is None or self.acked_seq == self.saved_seq:
            return
        state = {"boot_id": self.boot_id, "path": str(self.source), "seq": self.acked_seq}
        try:
            write_atomic(self.state_path, json.dumps(state))
        except OSError as exc:
            self.problem("state_write_failed", path=str(self.state_path), error=str(exc))
            return
        self.saved_seq = self.acked_seq

    def on_acked(self, events: list[Event]) -> None:
        """Note how far busd acknowledged (called by the publisher, in emission order)."""
        for event in events:
            if event["event_type"] == "KMSG":
                self.acked_seq = event["extensions"]["seq"]

    async def _save_loop(self) -> None:
        while True:
            await asyncio.sleep(STATE_INTERVAL)
            self.save_state()

    # -- records to events ----------------------------------------------------------------------

    def on_bad(self, bad: Bad) -> None:
        """Count a skipped line (:meth:`bad_input`) with where it was."""
        where: dict[str, int | None] = {"line": bad.line} if bad.line else {}
        where.update({"seq": bad.seq} if bad.seq is not None else {"after_seq": self.last_seq})
        self.bad_input(bad.kind, bad.detail, path=str(self.source), **where)

    def problem(self, what: str, **info: object) -> None:
        """Log a problem with the input once until it goes away (the caller retries)."""
        if what not in self._problems:
            self._problems.add(what)
            self.log.error(what, **info)

    def record_event(self, record: Record) -> Event:
        """Return the raw ``KMSG`` event of a record."""
        extensions: dict[str, object] = dict(record.fields)
        extensions.update(level=record.level, facility=record.facility, seq=record.seq, usec=record.usec,
                          flags=record.flags)
        return self.event("kmsg", "KMSG", record.msg, severity=severity_of(record.level),
                          timestamp=self.boot_time + record.usec / 1e6, extensions=extensions,
                          event_id=f"{self.id_prefix}{record.seq & 0xFFFF_FFFF_FFFF:012x}")

    def gap_event(self, first: int | None, last: int, why: str) -> Event:
        """Return a ``KMSG_GAP`` event for the lost records ``first..last`` (``first`` None: unknown)."""
        missed = None if first is None else last - first + 1
        count = "an unknown number of" if missed is None else str(missed)
        span = f"up to seq {last}" if first is None else f"seq {first}..{last}"
        return self.event("kmsg", "KMSG_GAP", f"{count} kernel log records ({span}) were lost: {why}",
                          severity="warn", extensions={"from_seq": first, "to_seq": last, "missed": missed},
                          event_id=derive_id(f"{self.id_base}:gap", self.name, last))

    async def handle(self, record: Record | None, overrun: bool = False) -> None:
        """Emit a record unless already emitted; first report the records lost before it."""
        if record is None:
            return
        last = self.last_seq
        if last is not None and record.seq <= last:
            return
        if overrun or self.check_gap:
            first = None if last is None else last + 1
            if first is None or record.seq > first:
                why = ("overwritten in the kernel's buffer before they were read" if overrun
                       else "not in the log any more when the collector resumed")
                await self.emit(self.gap_event(first, record.seq - 1, why))
            self.check_gap = False
        self.last_seq = record.seq
        await self.emit(self.record_event(record))

    # -- reading --------------------------------------------------------------------------------

    async def setup(self) -> None:
        """Load the resume state and follow acknowledgements."""
        saved = self.load_state()
        if saved is not None:
            self.last_seq = self.acked_seq = self.saved_seq = saved
            self.check_gap = self.from_start = True
            self.log.info("resuming", after_seq=saved, state=str(self.state_path))
        self.publisher.on_acked = self.on_acked

    async def run(self) -> None:
        """Read the configured path forever (waiting for it to appear, reopening it when replaced)."""
        saver = asyncio.create_task(self._save_loop(), name="kmsg-state")
        try:
            while True:
                try:
                    mode = os.stat(self.source).st_mode
                    if stat.S_ISCHR(mode):
                        await self.read_device()
                    elif stat.S_ISFIFO(mode):
                        await self.read_fifo()
                    else:
                        await self.follow_file()
                    self._problems.discard("cannot_read")
                except OSError as exc:
                    self.problem("cannot_read", path=str(self.source), error=str(exc), note="retrying every second")
                    await asyncio.sleep(1.0)
                self.from_start = True  # what appears at the path later is read from its start
        finally:
            saver.cancel()

    async def read_device(self) -> None:
        """Read ``/dev/kmsg``: each ``read()`` returns one record."""
        fd = os.open(self.source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.lseek(fd, 0, os.SEEK_SET if self.from_start else os.SEEK_END)
            self.log.info("kmsg_reading", path=str(self.source), start="buffer" if self.from_start else "end")
            overrun = False
            while True:
                try:
                    data = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    await readable(fd)
                    continue
                except BrokenPipeError:  # records were overwritten; the position moved past them
                    self.log.warning("kmsg_overrun", after_seq=self.last_seq)
                    overrun = True
                    continue
                if not data:
                    return
                assembler = self.assembler
                for line in data.rstrip(b"\n").split(b"\n"):
                    await self.handle(assembler.feed(line))
                record = assembler.flush()
                if record is not None:
                    await self.handle(record, overrun)
                    overrun = False
        finally:
            os.close(fd)

    async def _lines(self, lines: Lines, data: bytes) -> None:
        for record in self.assembler.feed_chunk(lines, data):
            await self.handle(record)

    async def read_fifo(self) -> None:
        """Read a FIFO as a stream of lines, whoever writes to it and however often they reopen it."""
        # Opened for writing too, so that the last writer closing it is no end of file.
        fd = os.open(self.source, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        lines = Lines(self.on_bad)
        self.log.info("kmsg_reading", path=str(self.source), start="fifo")
        try:
            while True:
                try:
                    data = os.read(fd, READ_SIZE)
                except BlockingIOError:
                    if self.assembler.pending is None:
                        await readable(fd)
                    elif not await readable(fd, IDLE_FLUSH):
                        await self.handle(self.assembler.flush())
                    continue
                await self._lines(lines, data)
        finally:
            os.close(fd)

    async def follow_file(self) -> None:
        """Follow a regular file like ``tail -F``; return when it is replaced or removed."""
        with open(self.source, "rb", buffering=0) as f:
            opened = os.fstat(f.fileno())
            lines = Lines(self.on_bad)
            if not self.from_start:  # skip to the end, counting lines so that problems are reported where they are
                tail = b"\n"
                for chunk in iter(lambda: f.read(READ_SIZE), b""):
                    lines.number += chunk.count(b"\n")
                    tail = chunk
                lines.drop_rest = not tail.endswith(b"\n")  # a line being written is not a whole line
            self.log.info("kmsg_reading", path=str(self.source), start="start" if self.from_start else "end",
                          line=lines.number + 1)
            idle = 0.0
            while True:
                data = f.read(READ_SIZE)
                if data:
                    idle = 0.0
                    await self._lines(lines, data)
                    continue
                if idle >= IDLE_FLUSH:
                    await self.handle(self.assembler.flush())
                await asyncio.sleep(FILE_POLL)
                idle += FILE_POLL
                try:
                    now = os.stat(self.source)
                except FileNotFoundError:
                    now = None
                if now is None or (now.st_ino, now.st_dev) != (opened.st_ino, opened.st_dev):
                    await self._lines(lines, f.read())  # what was written to it before the switch
                    await self.handle(self.assembler.flush())
                    lines.reset()
                    self.log.info("kmsg_file_replaced" if now else "kmsg_file_removed", path=str(self.source))
                    return
                if now.st_size < f.tell():
                    await self.handle(self.assembler.flush())
                    lines.reset()
                    f.seek(0)
                    self.log.info("kmsg_file_truncated", path=str(self.source))

    async def close(self) -> None:
        """Flush, then save how far busd acknowledged, so the next run resumes exactly there."""
        await super().close()
        self.save_state()


if __name__ == "__main__":
    run(Kmsg)

"""Parser ``block``: one ``BLK_IO_ERROR`` event per block-layer I/O error line of the kernel log.

Input: raw kernel log events (the default filter takes raw ``kmsg`` events: records of the
``kmsg`` collector, or dmesg/syslog lines replayed as ``system = "kmsg"``).

Lines understood (every kernel from 2.6 to 6.x):

- request errors, with or without the function prefix of older kernels::

    end_request: I/O error, dev sdc, sector 0                                    (up to 3.x)
    blk_update_request: critical medium error, dev sdc, sector 10000             (3.x to 5.x, later
        with "op 0x0:(READ) flags 0x0 phys_seg 1 prio class 0")
    print_req_error: I/O error, dev sdf, sector 9984                             (4.14 to 4.20)
    I/O error, dev sda, sector 123 op 0x1:(WRITE) flags 0x800 phys_seg 1 prio class 2   (5.18+)

  The error kind is the block layer's status text: ``I/O error``, ``critical medium error``,
  ``critical target error``, ``recoverable transport error``, ``timeout error``...
- buffer-cache errors: ``Buffer I/O error on device sdf, logical block 4960`` and
  ``Buffer I/O error on dev dm-0, logical block 8, async page read``.
- ``buffer_io_error: 506 callbacks suppressed`` (also ``print_req_error:``, ``blk_update_request:``,
  ``blk_print_req_error:``) is the kernel's rate limiter saying it dropped that many messages of the
  kind: it is **not** an event; the count goes into ``suppressed`` of the next event of that kind
  (buffer or request error), since the kernel prints it just before the first message it lets
  through again. The dropped messages may have been about other devices.

Event: ``system = "block"``, ``event_type = "BLK_IO_ERROR"``, ``dev_name``/``dev_wwid`` of the
device in the line (from sysfs), severity ``error`` (lost I/O), except ``warn`` for the statuses
that mean the I/O is retried (``recoverable transport error`` as seen below dm-multipath,
``nonblocking retry error``, ``dm internal retry error``). ``extensions``:

- ``error``: the kind (``"critical medium error"``); ``function``: the kernel function that
  printed it (``blk_update_request``, ``""`` for 5.18+ lines, ``buffer_io_error`` for buffer errors)
- ``sector`` (512-byte sectors, request errors) or ``logical_block`` (filesystem blocks, buffer errors)
- ``op``: ``READ``, ``WRITE``, ``FLUSH``, ``DISCARD``... when the line says it (buffer errors:
  from ``async page read``/``lost async page write``), with ``op_code``, ``flags``, ``phys_seg``,
  ``prio_class`` when printed, and ``detail`` (``"async page read"``) for buffer errors
- ``suppressed``: see above; plus ``kernel_name``, ``raw_event_id`` and ``kmsg_seq`` (kmsg input)

Options: ``sysfs_root``, ``dev_root`` (where sysfs and /dev are; tests point them at a fake tree).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from bus.event import Event
from bus.plugin import run
from parsers._kernel import KERNEL_OPTIONS, KernelParser, kernel_filter

OPTIONS = {**KERNEL_OPTIONS}

_REQUEST_ERROR = re.compile(
    r"(?:(?P<function>end_request|blk_update_request|print_req_error|blk_print_req_error): )?"
    r"(?P<error>[A-Za-z/ ]{1,40}? error), dev (?P<dev>[\w.:!-]+), sector (?P<sector>\d+)(?=\s|$)"
    r"(?: op 0x(?P<op_code>[0-9a-f]+):\((?P<op>\w+)\))?"
    r"(?: flags (?P<flags>(?:0x)?[0-9a-f]+))?"
    r"(?: phys_seg (?P<phys_seg>\d+))?"
    r"(?: prio class (?P<prio_class>\d+))?")
"""A request-level I/O error line, from its start (fields a later kernel may append are ignored)."""

_BUFFER_ERROR = re.compile(
    r"Buffer I/O error on (?:device|dev) (?P<dev>[\w.:!-]+), logical block (?P<block>\d+)(?:, (?P<detail>.+))?")
_SUPPRESSED = re.compile(
    r"(?P<function>buffer_io_error|print_req_error|blk_update_request|blk_print_req_error|end_request): "
    r"(?P<count>\d+) callbacks suppressed")
_RETRIED = frozenset({"recoverable transport error", "nonblocking retry error", "dm internal retry error"})


@dataclass(frozen=True)
class RequestError:
    """What a request-level I/O error line says."""

    dev: str
    sector: int
    error: str
    function: str
    details: dict[str, Any]
    """``op``, ``op_code``, ``flags``, ``phys_seg``, ``prio_class``: those the line prints."""


def parse_request_error(line: str) -> RequestError | None:
    """Parse ``blk_update_request: I/O error, dev sdc, sector 10000 op 0x0:(READ) ...`` and its relatives."""
    m = _REQUEST_ERROR.match(line)
    if m is None:
        return None
    details: dict[str, Any] = {}
    if m["op"]:
        details["op"] = m["op"]
        details["op_code"] = int(m["op_code"], 16)
    if m["flags"]:
        details["flags"] = m["flags"] if m["flags"].startswith("0x") else "0x" + m["flags"]
    for key in ("phys_seg", "prio_class"):
        if m[key]:
            details[key] = int(m[key])
    return RequestError(m["dev"], int(m["sector"]), m["error"], m["function"] or "", details)


class Block(KernelParser):
    """Block-layer I/O errors: one event per line."""

    SYSTEM = "block"
    KEYWORDS = ("error, dev ", "Buffer I/O error", "_error: ", "blk_update_request: ")

    def __init__(self, env: Any = None) -> None:
        super().__init__(env)
        self.suppressed = {"buffer": 0, "request": 0}
        """Messages the kernel's rate limiter dropped, to report with the next event of each kind."""

    def parse_line(self, line: str, raw: Event) -> list[Event] | None:
        """Return one ``BLK_IO_ERROR`` for an I/O error line; remember a ``callbacks suppressed`` count."""
        if line.startswith("Buffer I/O error"):
            m = _BUFFER_ERROR.fullmatch(line)
            if m is None:
                return None
            detail = m["detail"] or ""
            ext: dict[str, Any] = {"error": "I/O error", "function": "buffer_io_error", "logical_block": int(m["block"])}
            if detail:
                ext["detail"] = detail
                op = "WRITE" if "write" in detail else "READ" if "read" in detail else ""
                if op:
                    ext["op"] = op
            where = f"logical block {m['block']}" + (f" ({detail})" if detail else "")
            return [self._event(raw, "buffer", m["dev"], "Buffer I/O error", where, ext)]
        if line.endswith("callbacks suppressed"):
            s = _SUPPRESSED.fullmatch(line)
            if s is not None:
                kind = "buffer" if s["function"] == "buffer_io_error" else "request"
                self.suppressed[kind] += int(s["count"])
            return None
        req = parse_request_error(line)
        if req is None:
            return None
        ext = {"error": req.error, "function": req.function, "sector": req.sector, **req.details}
        where = f"{req.details['op']} sector {req.sector}" if "op" in req.details else f"sector {req.sector}"
        return [self._event(raw, "request", req.dev, req.error, where, ext)]

    def _event(self, raw: Event, kind: str, dev: str, error: str, where: str, ext: dict[str, Any]) -> Event:
        suppressed, self.suppressed[kind] = self.suppressed[kind], 0
        name = self.sysfs.name(dev) or dev
        msg = f"{name if name == dev else f'{name} ({dev})'}: {error}, {where}"
        if suppressed:
            ext["suppressed"] = suppressed
            msg += f" ({suppressed} similar messages suppressed before)"
        severity = "warn" if error in _RETRIED else "error"
        return self.synth(raw, "BLK_IO_ERROR", severity, dev, msg, **ext)


FILTER = kernel_filter(Block)


if __name__ == "__main__":
    run(Block)

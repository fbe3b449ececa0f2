"""Parser ``scsi``: one event per failed SCSI command, and an event when a SCSI disk goes offline.

Input: raw kernel log events (the default filter takes raw ``kmsg`` events: records of the
``kmsg`` collector, or dmesg/syslog lines replayed as ``system = "kmsg"``).

A failed command prints four or five lines, which this parser correlates into **one** event::

    sd 6:0:0:0: [sdf] tag#2 FAILED Result: hostbyte=DID_OK driverbyte=DRIVER_SENSE
    sd 6:0:0:0: [sdf] tag#2 Sense Key : Not Ready [current]
    sd 6:0:0:0: [sdf] tag#2 Add. Sense: Logical unit communication failure
    sd 6:0:0:0: [sdf] tag#2 CDB: Write(10) 2a 00 00 00 27 00 00 00 40 00
    print_req_error: I/O error, dev sdf, sector 9984

Every shape of 2.6 to 6.x kernels parses: with and without ``tag#N``, one or two spaces after
``[sdX]``, ``Result:`` with or without ``FAILED``, ``[descriptor]`` sense, ``CDB: Read(10) 28 00``
and ``CDB: Read(10): 28 00``, and the optional ``Unhandled sense code`` line of old kernels. The
lines of one command share the device and tag (kernels without ``tag#``: the device), so the
group key is ``(sdX, tag)``. A group closes when:

- the block layer's I/O error line for its device arrives (``print_req_error:``,
  ``blk_update_request:``, ``end_request:`` or the bare 5.18+ ``I/O error, dev sdf, sector ...``;
  it adds ``sector``, ``io_error`` and ``op``; with several open groups on the device, the one
  whose CDB range holds the sector wins, else the oldest);
- a line of a new command arrives for the same device and tag (the kernel prints a command's
  lines in a fixed order, Result, Sense Key, Add. Sense, CDB: a line that is not later in that
  order than what the group holds starts a new command);
- ``correlation_window`` seconds pass (the group is closed by the next tick).

Option ``correlation_window`` (default 0.5 s): the kernel prints the lines of one command from one
completion, microseconds apart, so the window only has to absorb the transport (collector batches
of at most 10 ms, broker delivery, a busy 2-core host); most groups are closed earlier by their
block-layer line, so the window only delays commands the block layer does not report (sense data
of a command the kernel retries or ends quietly). Inputs of an open group stay unacknowledged.

Events (``system = "scsi"``, ``dev_name``/``dev_wwid``: the ``sdX`` in brackets, from sysfs):

- ``SCSI_MEDIUM_ERROR`` (error): sense key Medium Error
- ``SCSI_HARDWARE_ERROR`` (error): sense key Hardware Error
- ``SCSI_NOT_READY`` (error): sense key Not Ready
- ``SCSI_SENSE_ERROR``: any other sense key (``sense_key`` says which); warn for Recovered Error,
  No Sense and Unit Attention, else error
- ``SCSI_COMMAND_FAILED`` (error): a failed command without sense data (``hostbyte=DID_NO_CONNECT``,
  ``DID_TIME_OUT``...): transport or host trouble rather than the medium, so not a sense error
- ``SCSI_DEVICE_OFFLINE`` (error): ``rejecting I/O to offline device``, ``Device offlined - not
  ready after error recovery`` and any other ``[sdX] ... offline`` line (the disk comes from
  ``/sys/bus/scsi/devices/H:C:T:L/block`` when the line has no ``[sdX]``); one event per line
  (a receiver's ``flood_window`` collapses a flood of them)

``extensions`` of a command event: ``hctl`` (``"6:0:0:0"``), ``tag`` (int, when printed),
``result`` (a map of the Result line's ``hostbyte``, ``driverbyte``, ``cmd_age``...), ``sense_key``,
``sense_flags`` (``["current", "descriptor"]``), ``asc`` (the additional sense text), ``cdb``
(``"Write(10) 2a 00 00 00 27 00 00 00 40 00"``), ``command`` (``"Write(10)"``), ``lba`` and ``blocks``
(decoded from READ/WRITE/VERIFY/WRITE SAME/SYNCHRONIZE CACHE CDBs), ``sector``, ``io_error`` and
``op`` (from the block line), ``lines`` (how many lines made it), plus ``kernel_name``,
``raw_event_id`` and ``kmsg_seq`` of the first line. Offline events: ``hctl``, ``tag``, ``reason``
(the line's text). Only keys whose value is known are present.

Options: ``correlation_window``, ``sysfs_root``, ``dev_root``.
"""

from __future__ import annotations

import re
from typing import Any

from bus.config import Option
from bus.event import Event
from bus.plugin import run
from parsers._kernel import KERNEL_OPTIONS, Group, KernelParser, kernel_filter
from parsers.block import parse_request_error

OPTIONS = {
    **KERNEL_OPTIONS,
    "correlation_window": Option(float, 0.5, "seconds the lines of one failed command may take to arrive"),
}


def check_options(options: dict[str, Any]) -> None:
    """Refuse a window that is not positive or longer than a minute (inputs stay unacknowledged meanwhile)."""
    window = options["correlation_window"]
    if not 0 < window <= 60:
        raise ValueError(f"correlation_window: must be more than 0 and at most 60 seconds, got {window}")


_LINE = re.compile(r"(?:sd|scsi) (?P<hctl>\d+:\d+:\d+:\d+): (?:\[(?P<dev>[\w-]+)\] +)?(?:tag#(?P<tag>\d+) +)?(?P<rest>.+)")
_RESULT = re.compile(r"(?:FAILED )?Result: (?P<pairs>\w+=.*)")
_PAIR = re.compile(r"(\w+)=(\S+)")
_SENSE = re.compile(r"Sense Key ?: (?P<key>.+?)(?P<flags>(?: \[\w+\])*)")
_ASC = re.compile(r"Add\. Sense: (?P<asc>.+)")
_CDB = re.compile(r"CDB: (?:(?P<command>.*?):? )?(?P<bytes>[0-9a-fA-F]{2}(?: [0-9a-fA-F]{2})*)")
_UNHANDLED = re.compile(r"Unhandled (?:sense|error) code")

# The order in which the kernel prints the lines of one command.
_UNHANDLED_STAGE, _RESULT_STAGE, _SENSE_STAGE, _ASC_STAGE, _CDB_STAGE = range(5)
_STAGE = "_stage"

_SENSE_TYPES = {"Medium Error": "SCSI_MEDIUM_ERROR", "Hardware Error": "SCSI_HARDWARE_ERROR",
                "Not Ready": "SCSI_NOT_READY"}
_MILD_SENSE = frozenset({"Recovered Error", "No Sense", "Unit Attention"})

# opcode -> (first LBA byte, LBA bytes, first length byte, length bytes)
_CDB_LAYOUT: dict[int, tuple[int, int, int, int]] = {
    **dict.fromkeys((0x08, 0x0A), (1, 3, 4, 1)),                            # READ(6), WRITE(6)
    **dict.fromkeys((0x28, 0x2A, 0x2E, 0x2F, 0x35, 0x41), (2, 4, 7, 2)),    # READ/WRITE/VERIFY(10), SYNC CACHE, WRITE SAME
    **dict.fromkeys((0xA8, 0xAA, 0xAE, 0xAF), (2, 4, 6, 4)),                # the 12-byte forms
    **dict.fromkeys((0x88, 0x8A, 0x8E, 0x8F, 0x91, 0x93), (2, 8, 10, 4)),   # the 16-byte forms
}


def decode_cdb(data: bytes) -> tuple[int, int] | None:
    """Return ``(lba, blocks)`` of a block READ/WRITE/VERIFY/... CDB, or ``None`` for other commands."""
    layout = _CDB_LAYOUT.get(data[0]) if data else None
    if layout is None:
        return None
    lba_at, lba_len, len_at, len_len = layout
    if len(data) < len_at + len_len:
        return None
    lba = int.from_bytes(data[lba_at:lba_at + lba_len], "big")
    blocks = int.from_bytes(data[len_at:len_at + len_len], "big")
    if lba_len == 3:  # 6-byte CDB: 21-bit LBA, and 0 blocks means 256
        lba, blocks = lba & 0x1FFFFF, blocks or 256
    return lba, blocks


class Scsi(KernelParser):
    """Correlates the lines of a failed SCSI command into one event; reports offline devices."""

    SYSTEM = "scsi"
    KEYWORDS = ("Result: ", "Sense Key", "Add. Sense", "CDB: ", "Unhandled ", "offline", "error, dev ")
    correlation_window = 0.5

    def parse_line(self, line: str, raw: Event) -> list[Event] | None:
        """Add a SCSI line to its command's group, or close a group with its block-layer line."""
        if not line.startswith(("sd ", "scsi ")):
            return self._block_line(line) if self.groups.groups else None
        m = _LINE.fullmatch(line)
        if m is None:
            return None
        hctl, tag, rest = m["hctl"], m["tag"], m["rest"]
        dev = m["dev"] or self.sysfs.scsi_disk(hctl)
        if r := _RESULT.fullmatch(rest):
            return self._add(raw, dev, hctl, tag, _RESULT_STAGE, result=dict(_PAIR.findall(r["pairs"])))
        if s := _SENSE.fullmatch(rest):
            return self._add(raw, dev, hctl, tag, _SENSE_STAGE, sense_key=s["key"].strip(),
                             sense_flags=re.findall(r"\[(\w+)\]", s["flags"]))
        if a := _ASC.fullmatch(rest):
            return self._add(raw, dev, hctl, tag, _ASC_STAGE, asc=a["asc"].strip())
        if c := _CDB.fullmatch(rest):
            return self._add(raw, dev, hctl, tag, _CDB_STAGE, **_cdb_fields(c["command"] or "", c["bytes"]))
        if _UNHANDLED.fullmatch(rest):
            return self._add(raw, dev, hctl, tag, _UNHANDLED_STAGE)
        if "offline" in rest and (m["dev"] or rest.startswith(("rejecting I/O", "Device offlined"))):
            ext: dict[str, Any] = {"hctl": hctl, "reason": rest}
            if tag is not None:
                ext["tag"] = int(tag)
            return [self.synth(raw, "SCSI_DEVICE_OFFLINE", "error", dev,
                               f"{dev or hctl}: SCSI device offline ({rest})", **ext)]
        return None

    def _add(self, raw: Event, dev: str, hctl: str, tag: str | None, stage: int, **fields: Any) -> list[Event] | None:
        """Put one line into the group of its command, closing the previous command's group first."""
        key = (dev or hctl, tag or "")
        out = []
        group = self.groups.get(key)
        if group is not None and group.fields[_STAGE] >= stage:
            self.groups.close(key)
            event = self.close_group(group)
            if event is not None:
                out.append(event)
            group = None
        if group is None:
            group = self.groups.open(key, raw, self.delivery)
            group.fields.update(dev=dev, hctl=hctl)
            if tag is not None:
                group.fields["tag"] = int(tag)
        group.fields.update(fields)
        group.fields[_STAGE] = stage
        group.lines += 1
        return out or None

    def _block_line(self, line: str) -> list[Event] | None:
        """Close the open group the block layer's I/O error line reports on (it gives the sector)."""
        req = parse_request_error(line)
        if req is None:
            return None
        candidates = [g for g in self.groups.groups.values() if g.fields["dev"] == req.dev]
        if not candidates:
            return None
        group = next((g for g in candidates if _holds(g, req.sector)), candidates[0])
        self.groups.close(group.key)
        group.fields.update(sector=req.sector, io_error=req.error)
        if "op" in req.details:
            group.fields["op"] = req.details["op"]
        group.lines += 1
        event = self.close_group(group)
        return [event] if event is not None else None

    def close_group(self, group: Group) -> Event | None:
        """Make the event of one failed command (``None`` for a lone ``Unhandled sense code`` line)."""
        ext = {k: v for k, v in group.fields.items() if k not in (_STAGE, "dev")}
        if group.fields[_STAGE] == _UNHANDLED_STAGE and group.lines == 1:
            return None
        ext["lines"] = group.lines
        dev = group.fields["dev"]
        sense_key = ext.get("sense_key")
        if sense_key:
            event_type = _SENSE_TYPES.get(sense_key, "SCSI_SENSE_ERROR")
            severity = "warn" if sense_key in _MILD_SENSE else "error"
            what = f"SCSI {sense_key}" + (f" ({ext['asc']})" if "asc" in ext else "")
        else:
            event_type, severity = "SCSI_COMMAND_FAILED", "error"
            result = ext.get("result", {})
            reason = " ".join(f"{k}={v}" for k, v in result.items() if k in ("hostbyte", "driverbyte"))
            what = "SCSI command failed" + (f" ({reason})" if reason else "")
        command = ext.get("command", "I/O")
        if "sector" in ext:
            what += f", {command} sector {ext['sector']}"
        elif "lba" in ext:
            what += f", {command} LBA {ext['lba']}"
        elif "command" in ext:
            what += f", {command}"
        return self.synth(group.first, event_type, severity, dev, f"{dev or ext['hctl']}: {what}", **ext)


def _cdb_fields(command: str, hex_bytes: str) -> dict[str, Any]:
    data = bytes.fromhex(hex_bytes)
    fields: dict[str, Any] = {"cdb": f"{command} {hex_bytes}" if command else hex_bytes}
    if command:
        fields["command"] = command
    decoded = decode_cdb(data)
    if decoded is not None:
        fields["lba"], fields["blocks"] = decoded
    return fields


def _holds(group: Group, sector: int) -> bool:
    """Whether the block layer's 512-byte ``sector`` lies in the group's CDB range (512 B or 4 KiB blocks)."""
    lba, blocks = group.fields.get("lba"), group.fields.get("blocks")
    if lba is None or blocks is None:
        return False
    return any(lba * k <= sector < (lba + max(blocks, 1)) * k for k in (1, 8))


FILTER = kernel_filter(Scsi)


if __name__ == "__main__":
    run(Scsi)

"""Helpers for the kernel parsers' unit tests: build a parser on a FakeSys, feed it raw events, expire groups."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

from conftest import wait_for
from fakesys import FakeSys
from kernel_input import kmsg_events

from bus.config import load
from bus.event import Event, new_event
from parsers._kernel import KernelParser

SAMPLES = Path(__file__).resolve().parent.parent.parent / "shared" / "samples"
_seq = itertools.count(5000)


def make(cls: type[KernelParser], builtin: str, fake: FakeSys, **options: Any) -> KernelParser:
    """Instantiate a built-in kernel parser the way busd configures it, pointed at ``fake``."""
    config = {"builtin": builtin, **fake.options, **options}
    return cls({"BUS_PLUGIN": builtin, "BUS_PLUGIN_CONFIG": json.dumps(config), "BUS_HOSTNAME": "testhost"})


def line_event(text: str, system: str = "kmsg") -> Event:
    """A raw event as the ``replay`` collector makes from a dmesg/syslog text line."""
    return new_event(system, "LINE", text, extensions={"file": "test", "line": 1})


def kmsg_event(text: str, seq: int | None = None, level: int = 3) -> Event:
    """A raw event as the ``kmsg`` collector makes from one /dev/kmsg record (``\\n`` kept inside)."""
    seq = next(_seq) if seq is None else seq
    return new_event("kmsg", "KMSG", text, extensions={"level": level, "facility": 0, "seq": seq, "usec": 1000 * seq,
                                                       "flags": "-"})


def feed(parser: KernelParser, *lines: str, kmsg: bool = False) -> list[Event]:
    """Hand each line to the parser as its own raw event, in one delivery each; return what it emitted."""
    out: list[Event] = []
    for text in lines:
        parser.delivery += 1
        result = parser.handle(kmsg_event(text) if kmsg else line_event(text))
        out.extend(result or [])
    return out


def expire(parser: KernelParser, timeout: float = 5.0) -> list[Event]:
    """Tick until every open group has timed out; return the events the ticks made."""
    out: list[Event] = []

    def closed() -> bool:
        out.extend(parser.tick(time.time()) or [])
        return not parser.groups.groups

    wait_for(closed, timeout, "correlation groups to time out")
    return out


def kmsg_records(path: Path) -> list[Event]:
    """Parse a /dev/kmsg dump into raw events, with the kmsg collector's own record parser."""
    return kmsg_events(path.read_text())


def only(events: list[Event]) -> Event:
    """The one event of a list (fails the test otherwise)."""
    assert len(events) == 1, [e["event_type"] + ": " + e["msg"] for e in events]
    return events[0]


def summary(event: Event) -> tuple[str, str, str, str]:
    """``(event_type, severity, dev_name, dev_wwid)`` of an event."""
    return event["event_type"], event["severity"], event["dev_name"], event["dev_wwid"]


def load_parser_config(tmp_path: Path, builtin: str, extra: str = "") -> Any:
    """Load a configuration with one built-in parser ``x`` (no filter: its default) plus ``extra`` TOML lines."""
    path = tmp_path / "busd.toml"
    path.write_text(f'[main]\nruntime_dir = "/tmp/x"\n[plugins.x]\ntype = "parser"\nbuiltin = "{builtin}"\n{extra}\n')
    return load(path).plugins["x"]

"""The kernel parsers' unit tests: raw events shaped like the kmsg, replay and udev collectors',
parsers built the way busd configures them, and feeding, ticking and reading their outputs."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

from conftest import wait_for
from fakesys import FakeSys

from bus.config import load
from bus.event import Event, new_event
from bus.plugin import Parser
from collectors.kmsg import Assembler, Bad
from parsers._kernel import KernelParser

SAMPLES = Path(__file__).resolve().parent.parent.parent / "shared" / "samples"
BOOT = 1_700_000_000.0
"""The epoch second the fake kernel booted at (kmsg ``usec`` count from there)."""

_ids = itertools.count(1)
_seq = itertools.count(5000)


def sample(name: str) -> str:
    """Return the text of a file in ../shared/samples."""
    return (SAMPLES / name).read_text()


def kmsg_events(text: str) -> list[Event]:
    """Turn ``/dev/kmsg`` records into raw kmsg events, parsed by the kmsg collector's own code."""
    def refuse(bad: Bad) -> None:
        raise ValueError(f"bad kmsg test input at line {bad.line}: {bad.kind}: {bad.detail}")
    assembler = Assembler(refuse)
    records = [assembler.feed(line.encode(), n) for n, line in enumerate(text.splitlines(), 1)]
    records.append(assembler.flush())
    return [raw("kmsg", "KMSG", r.msg, BOOT + r.usec / 1e6,
                {"level": r.level, "facility": r.facility, "seq": r.seq, "usec": r.usec, "flags": r.flags, **r.fields})
            for r in records if r is not None]


def line_events(text: str, start: float = BOOT) -> list[Event]:
    """Turn dmesg/syslog text into the replay collector's raw events (one per line, 1 ms apart)."""
    return [raw("kmsg", "LINE", line, start + i / 1000, {"line": i + 1})
            for i, line in enumerate(ln for ln in text.splitlines() if ln.strip())]


def uevent(props: dict[str, Any], timestamp: float = BOOT) -> Event:
    """A raw udev event with these uevent properties."""
    return raw("udev", "UEVENT", f"{props.get('ACTION', 'change')} {props.get('DEVPATH', '')}", timestamp, props)


def raw(system: str, event_type: str, msg: str, timestamp: float, extensions: dict[str, Any]) -> Event:
    """A raw event with a fresh id, as the broker would deliver it."""
    event = new_event(system, event_type, msg, timestamp=timestamp, kind="raw", hostname="testhost",
                      extensions=dict(extensions))
    event["source"] = system
    event["event_id"] = f"00000000-0000-4000-8000-{next(_ids):012x}"
    return event


def make(cls: type[Parser], builtin: str, fake: FakeSys | None = None, **options: Any) -> Any:
    """Instantiate a built-in parser class directly, as busd would start it (pointed at ``fake``'s sysfs)."""
    config = {"builtin": builtin, **(fake.options if fake is not None else {}), **options}
    return cls({"BUS_PLUGIN": builtin, "BUS_PLUGIN_CONFIG": json.dumps(config), "BUS_HOSTNAME": "testhost"})


def feed(parser: Parser, *items: str | Event | list[Event], kmsg: bool = False) -> list[Event]:
    """Hand events to ``parser.handle``, each as its own delivery, and return every output.

    ``items`` are events, lists of events, or text lines: a line becomes the replay collector's
    event (:func:`line_event`), or with ``kmsg`` the kmsg collector's (:func:`kmsg_event`).
    """
    out: list[Event] = []
    for item in items:
        for event in item if isinstance(item, list) else [item]:
            if isinstance(event, str):
                event = kmsg_event(event) if kmsg else line_event(event)
            parser.delivery += 1
            result = parser.handle(event)
            if result:
                out.extend([result] if isinstance(result, dict) else result)
    return out


def line_event(text: str, system: str = "kmsg") -> Event:
    """A raw event as the ``replay`` collector makes from a dmesg/syslog text line."""
    return new_event(system, "LINE", text, extensions={"file": "test", "line": 1})


def kmsg_event(text: str, seq: int | None = None, level: int = 3) -> Event:
    """A raw event as the ``kmsg`` collector makes from one /dev/kmsg record (``\\n`` kept inside)."""
    seq = next(_seq) if seq is None else seq
    return new_event("kmsg", "KMSG", text, extensions={"level": level, "facility": 0, "seq": seq, "usec": 1000 * seq,
                                                       "flags": "-"})


def expire(parser: KernelParser, timeout: float = 5.0) -> list[Event]:
    """Tick until every open group has timed out; return the events the ticks made."""
    out: list[Event] = []

    def closed() -> bool:
        out.extend(parser.tick(time.time()) or [])
        return not parser.groups.groups

    wait_for(closed, timeout, "correlation groups to time out")
    return out


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

"""Raw events shaped like the kmsg and replay collectors' (and udev's), for the kernel parsers' unit tests."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from bus.event import Event, new_event
from bus.plugin import Parser
from collectors.kmsg import Assembler, Bad

SAMPLES = Path(__file__).resolve().parent.parent.parent / "shared" / "samples"
BOOT = 1_700_000_000.0
"""The epoch second the fake kernel booted at (kmsg ``usec`` count from there)."""

_ids = itertools.count(1)


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


def make(cls: type[Parser], builtin: str, **options: Any) -> Any:
    """Instantiate a built-in parser class directly, as busd would start it."""
    config = {"builtin": builtin, **options}
    return cls({"BUS_PLUGIN": builtin, "BUS_PLUGIN_CONFIG": json.dumps(config), "BUS_HOSTNAME": "testhost"})


def feed(parser: Parser, events: list[Event]) -> list[Event]:
    """Hand events to ``parser.handle`` one by one, each as its own delivery; return every output."""
    out: list[Event] = []
    for number, event in enumerate(events, 1):
        parser.delivery = number
        result = parser.handle(event)
        if result:
            out.extend([result] if isinstance(result, dict) else result)
    return out

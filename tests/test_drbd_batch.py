"""DRBD at full speed: runs of events2 lines in one raw event (``DRBD_EVENTS2_BATCH``).

The parser must give exactly the synthetic events (and the state) it gives for the same lines one
by one, whatever the batch size, also for lines its templates skip (statistics) and garbage among
them; a batch delivered again after a crash gives the same outputs; and through a real busd, a
command printing thousands of lines at once is batched and still yields the exact events.
"""

from __future__ import annotations

import asyncio
import glob
import json
import random
from pathlib import Path
from typing import Any

import pytest
from conftest import PY, Bus
from test_drbd import DUMP, END, SAMPLES, brief, env

from bus.event import Event
from collectors.drbd import BATCH_TYPE, Drbd, Template, Templates, parse_line
from parsers.drbd import DrbdParser

DATA = Path(__file__).resolve().parent / "data" / "drbd"
STATS = [
    "2024-05-02T10:02:00.{n:06d}+00:00 change device name:r0 volume:0 minor:7 disk:UpToDate client:no quorum:yes "
    "open:no size:1000 read:{n} written:{w} al-writes:1 bm-writes:0 upper-pending:0 lower-pending:{p} "
    "al-suspended:no blocked:no",
    "2024-05-02T10:02:00.{n:06d}+00:00 change peer-device name:r0 peer-node-id:1 conn-name:beta volume:0 "
    "replication:Established peer-disk:UpToDate peer-client:no resync-suspended:no received:{n} sent:{w} "
    "out-of-sync:{p} pending:0 unacked:0",
    "2024-05-02T10:02:00.{n:06d}+00:00 change connection name:r0 peer-node-id:1 conn-name:beta connection:Connected "
    "role:Primary congested:no ap-in-flight:{p} rs-in-flight:0",
]
CHANGES = [
    "change device name:r0 volume:0 disk:Failed", "change device name:r0 volume:0 disk:UpToDate",
    "change connection name:r0 peer-node-id:1 connection:Connecting",
    "change connection name:r0 peer-node-id:1 connection:Connected",
    "change peer-device name:r0 peer-node-id:1 volume:0 replication:SyncSource peer-disk:Inconsistent done:10.5",
    "change peer-device name:r0 peer-node-id:1 volume:0 replication:Established peer-disk:UpToDate done:100.00",
    "change resource name:r0 role:Primary", "change resource name:r0 role:Secondary",
    # garbage values where statistics go: as line by line, the latest value that converts stays
    "2024-05-02T10:02:00.000001+00:00 change device name:r0 volume:0 minor:7 disk:UpToDate client:no quorum:yes "
    "open:no size:1000 read:x written:5 al-writes:1 bm-writes:0 upper-pending:0 lower-pending:0 al-suspended:no "
    "blocked:no",
    "exists -", "call helper name:r0 helper:split-brain",
]


def stream(count: int, seed: int = 5) -> list[str]:
    """The dump, then statistics of every object with state changes and garbage values now and then."""
    rnd = random.Random(seed)
    lines = list(DUMP)
    for n in range(count):
        if rnd.random() < 0.02:
            lines.append(rnd.choice(CHANGES))
        else:
            lines.append(STATS[n % 3].format(n=n, w=2 * n, p=n % 5))
    return lines


def without_ids(events: list[Event]) -> list[Event]:
    """The events without what names the raw event they came from (the only thing batching changes)."""
    out = []
    for e in events:
        e = {k: v for k, v in e.items() if k not in ("event_id", "timestamp", "line")}  # times: tested on their own
        e["extensions"] = {k: v for k, v in e["extensions"].items() if k not in ("raw_event_id", "raw_line")}
        out.append(e)
    return out


def one_by_one(lines: list[str]) -> tuple[list[Event], DrbdParser]:
    collector, parser = Drbd(env("drbd")), DrbdParser(env("drbd"))
    collector.run_id = "run-1"
    out: list[Event] = []
    for text in lines:
        events = parser.handle(collector.line_event(text, parse_line(text)))
        for event in events:
            event["line"] = text  # for the test only: the line that caused it
        out += events
    return out, parser


def batched(lines: list[str], size: int) -> tuple[list[Event], DrbdParser, list[Event]]:
    collector, parser = Drbd(env("drbd")), DrbdParser(env("drbd"))
    collector.run_id = "run-1"
    out: list[Event] = []
    raws = [collector.batch_event(lines[i:i + size]) for i in range(0, len(lines), size)]
    for raw in raws:
        out += parser.handle(raw)
    return out, parser, raws


def scenarios() -> list[list[str]]:
    files = sorted(glob.glob(str(SAMPLES / "drbd-events2*.txt")) + glob.glob(str(DATA / "*.txt")))
    return [[line for line in Path(f).read_text().splitlines() if line.strip() and not line.startswith("#")]
            for f in files]


@pytest.mark.parametrize("size", [2, 7, 128])
def test_a_batch_gives_exactly_the_events_of_its_lines_one_by_one(size: int) -> None:
    for lines in [*scenarios(), stream(6000)]:
        expected, alone = one_by_one(lines)
        got, parser, raws = batched(lines, size)
        assert without_ids(got) == without_ids(expected)
        assert parser.resources == alone.resources  # statistics included
        # each event names its batch and, in it, the line that caused it
        lines_of = {r["event_id"]: r["extensions"]["lines"] for r in raws}
        assert [lines_of[e["extensions"]["raw_event_id"]][e["extensions"]["raw_line"]] for e in got] == \
            [e["line"] for e in expected]


def test_the_timestamps_are_those_of_the_lines() -> None:
    lines = [*DUMP, "2024-05-02T10:01:02+00:00 change resource name:r0 role:Primary", "change resource name:r0 role:Secondary"]
    got, _, raws = batched(lines, 100)
    assert [e["event_type"] for e in got] == ["DRBD_INITIAL_STATE", "DRBD_ROLE_CHANGED", "DRBD_ROLE_CHANGED"]
    assert got[1]["timestamp"] == pytest.approx(1714644062.0)
    assert got[2]["timestamp"] == raws[0]["timestamp"]  # no prefix: the time the batch was read
    assert [e["extensions"]["raw_line"] for e in got] == [5, 6, 7]


def test_statistics_lines_are_matched_by_templates_not_parsed() -> None:
    lines = stream(3000, seed=9)
    _, parser, _ = batched([line for line in lines if line not in CHANGES], 500)
    assert parser.templates.size == 3  # one per object: every later statistics line matched one
    text = STATS[0].format(n=1, w=2, p=3)
    template = Template.of(text, parse_line(text), {"read", "written"})
    assert template is not None and template.keys == ("read", "written")
    templates = Templates()
    templates.add(template)
    found = templates.find(STATS[0].format(n=1, w=99, p=3).replace("read:1 ", "read:77 "))
    assert found is not None and found[1].groups() == ("77", "99")
    assert templates.find(text.replace("disk:UpToDate", "disk:Failed")) is None  # another state: parsed
    assert templates.find(text.replace("read:1", "read:1->2")) is None  # old->new: parsed
    assert templates.find("2024-05-02T10:02+00:00" + text[32:]) is None  # not a timestamp: parsed (refused)


def test_a_batch_delivered_again_after_a_crash_gives_the_same_outputs(tmp_path: Path) -> None:
    environ = {**env("drbd"), "BUS_RUNTIME_DIR": str(tmp_path)}
    collector = Drbd(env("drbd"))
    collector.run_id = "run-1"
    first = DrbdParser(environ)
    asyncio.run(first.setup())
    first.handle(collector.batch_event(DUMP))
    first.hold()  # acknowledged
    raw = collector.batch_event([STATS[0].format(n=1, w=2, p=0), "change resource name:r0 role:Primary",
                                 STATS[1].format(n=2, w=4, p=0), "change device name:r0 volume:0 disk:Failed"])
    emitted = first.handle(raw)
    first.hold()  # state and outputs saved, then the parser dies before the acknowledgement
    assert brief(emitted) == [("DRBD_ROLE_CHANGED", "info", "r0"), ("DRBD_DISK_STATE_CHANGED", "error", "r0/0")]
    second = DrbdParser(environ)
    asyncio.run(second.setup())
    assert second.handle(raw) == emitted  # the same events: the SDK derives the same ids from them


def generator(tmp_path: Path, lines: list[str]) -> list[str]:
    """A command that prints ``lines`` in one write, then waits for stdin to close."""
    script = tmp_path / "burst.txt"
    script.write_text("\n".join(lines) + "\n")
    code = f"import sys; sys.stdout.write(open({str(script)!r}).read()); sys.stdout.flush(); sys.stdin.read()"
    return [PY, "-c", code]


def test_a_burst_through_busd_is_batched_and_gives_the_exact_events(bus: Bus, tmp_path: Path) -> None:
    lines = [*stream(5000, seed=3), "change resource name:r0 role:Primary", "call helper name:END helper:end-of-scenario"]
    expected, _ = one_by_one(lines)
    bus.write({"drbd-events": {"type": "collector", "builtin": "drbd", "command": generator(tmp_path, lines)},
               "drbd": {"type": "parser", "builtin": "drbd"}})
    bus.start()
    events = bus.tail(len(expected), "--system", "drbd", last=len(expected))
    assert brief(events) == brief(expected) and brief(events)[-1] == END
    assert [e["extensions"]["new"] for e in events] == [e["extensions"]["new"] for e in expected]
    assert [e["extensions"]["state"] for e in events] == [e["extensions"]["state"] for e in expected]
    raw = bus.tail(5, "--kind", "raw", "--system", "drbd", last=5)
    assert any(e["event_type"] == BATCH_TYPE and len(e["extensions"]["lines"]) > 1 for e in raw)
    status: dict[str, Any] = json.loads((bus.runtime_dir / "status" / "drbd-events.json").read_text())
    assert status["bad_lines"] == {}

"""Flood control (``flood_window``), the SDK's for every receiver: the class, then through a real busd."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest
from conftest import Bus, ev, plugin_cmd, read_lines, wait_for

from bus.event import new_event
from bus.flood import FloodControl
from bus.plugin import Receiver


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def io_error(dev: str = "sdb", severity: str = "error", **kw: Any) -> dict[str, Any]:
    """A synthetic I/O error event on ``dev``."""
    return new_event("block", "BLK_IO_ERROR", f"I/O error on {dev}", severity=severity, kind="synthetic",
                     dev_name=dev, hostname="h", **kw)


def test_first_event_then_one_summary() -> None:
    """The first event goes on at once, repeats are counted, the window's end gives one summary."""
    clock = Clock()
    flood = FloodControl(5, clock=clock)
    first = io_error(dev_wwid="naa.1", extensions={"sector": 0})
    assert flood.offer(first) == [first]
    repeats = []
    for i in range(1, 10):
        clock.now += 0.1
        repeats.append(io_error(severity="warn" if i == 3 else "info", dev_wwid="naa.1", extensions={"sector": i}))
        assert flood.offer(repeats[-1]) == []
    assert flood.suppressed == 9 and flood.next_deadline() == 105.0
    assert flood.expire(104.99) == []
    clock.now = 105.0
    (summary,) = flood.expire()
    assert summary["event_type"] == "BLK_IO_ERROR" and summary["system"] == "block"
    assert (summary["dev_name"], summary["dev_wwid"], summary["hostname"]) == ("sdb", "naa.1", "h")
    assert summary["severity"] == "warn"  # the highest among the suppressed repeats
    assert summary["msg"] == "9 more BLK_IO_ERROR on sdb in 5 s (flood control)"
    assert summary["extensions"] == {"sector": 9, "flood_count": 9, "flood_first": repeats[0]["timestamp"],
                                     "flood_last": repeats[-1]["timestamp"], "flood_summary": True}
    assert summary["event_id"] not in {e["event_id"] for e in [first, *repeats]}
    assert flood.next_deadline() is None and not flood.windows
    # the window restarts with the next event, handed on at once
    again = io_error(dev_wwid="naa.1")
    assert flood.offer(again) == [again] and flood.next_deadline() == 110.0


def test_no_repeat_no_summary_and_keys_are_independent() -> None:
    """A window without repeats ends silently; keys are (event_type, dev_wwid or dev_name)."""
    clock = Clock()
    flood = FloodControl(1, clock=clock)
    a, b = io_error("sda"), io_error("sdb")
    other_type = new_event("block", "BLK_TIMEOUT", dev_name="sda", kind="synthetic")
    same_wwid_a, same_wwid_b = io_error("sdx", dev_wwid="naa.7"), io_error("sdy", dev_wwid="naa.7")
    for event in (a, b, other_type, same_wwid_a):
        assert flood.offer(event) == [event]
    assert flood.offer(same_wwid_b) == []  # same WWID: same disk under another name
    clock.now += 1
    (summary,) = flood.expire()
    assert summary["dev_wwid"] == "naa.7" and summary["dev_name"] == "sdx" and summary["extensions"]["flood_count"] == 1


def test_overdue_window_is_closed_before_the_next_event() -> None:
    """When the timer is late, offer() itself returns the summary first, then the new event."""
    clock = Clock()
    flood = FloodControl(1, clock=clock)
    flood.offer(io_error())
    flood.offer(io_error())
    clock.now += 2
    new = io_error()
    summary, handed = flood.offer(new)
    assert summary["extensions"]["flood_summary"] is True and handed is new


def test_events_lost_are_never_collapsed() -> None:
    """BUS_EVENTS_LOST always goes on: each one reports a different lost range."""
    flood = FloodControl(10, clock=Clock())
    lost = [new_event("bus", "BUS_EVENTS_LOST", kind="synthetic") for _ in range(3)]
    assert [flood.offer(e) for e in lost] == [[e] for e in lost]
    assert flood.suppressed == 0 and not flood.windows


def test_memory_is_bounded() -> None:
    """At most max_keys windows are open: beyond, the oldest closes early; ended windows are forgotten."""
    clock = Clock()
    flood = FloodControl(60, clock=clock, max_keys=100)
    flood.offer(io_error("d0"))
    flood.offer(io_error("d0"))
    out = []
    for i in range(1, 1000):
        out += flood.offer(io_error(f"d{i}"))
    assert len(flood.windows) == 100
    (summary,) = [e for e in out if e["extensions"].get("flood_summary")]
    assert summary["extensions"]["flood_count"] == 1 and summary["dev_name"] == "d0"
    assert len(out) == 999 + 1
    clock.now += 60
    assert flood.expire() == [] and not flood.windows
    flood.offer(io_error("x"))
    flood.offer(io_error("x"))
    assert [s["dev_name"] for s in flood.flush()] == ["x"]


def test_receiver_without_flood_window_has_none() -> None:
    """flood_window is off by default, and read from the plugin's table otherwise."""
    def receiver(table: dict[str, Any]) -> Receiver:
        return Receiver({"BUS_PLUGIN": "r", "BUS_PLUGIN_CONFIG": json.dumps({"type": "receiver", **table})})
    assert receiver({"exec": ["x"]}).flood is None
    flood = receiver({"exec": ["x"], "flood_window": 2.5}).flood
    assert flood is not None and flood.window == 2.5
    assert "flood_window" not in receiver({"exec": ["x"], "flood_window": 2.5}).options
    with pytest.raises(ValueError, match="flood_window"):
        FloodControl(0)


def test_flood_through_busd(bus: Bus) -> None:
    """1000 identical events and a few others: the first, the others, and one summary of 999."""
    out = bus.base / "out.jsonl"
    bus.write({"rec": {"type": "receiver", "exec": plugin_cmd("recorder"), "out": str(out), "flood_window": 1}})
    bus.start()
    bus.wait_running("rec")
    flood = [ev("block", "BLK_IO_ERROR", f"I/O error, sector {i}", severity="error", dev_name="sdb",
                dev_wwid="naa.5000c500a1b2c3d4", kind="synthetic", extensions={"sector": i}) for i in range(1000)]
    others = [ev("block", "BLK_IO_ERROR", "I/O error", severity="error", dev_name="sdc", kind="synthetic"),
              ev("mdraid", "MD_DISK_FAILURE", "disk failure", severity="error", dev_name="md0", kind="synthetic"),
              ev("block", "BLK_TIMEOUT", "timeout", severity="warn", dev_name="sdb", kind="synthetic")]
    bus.emit(flood[:500] + others + flood[500:])
    # no event comes after the burst: the summary is sent by the window's timer
    wait_for(lambda: any(r["ext"].get("flood_summary") for r in map(json.loads, read_lines(out))),
             what="the flood summary")
    records = [json.loads(line) for line in read_lines(out)]
    assert len(records) == 5
    assert records[0]["msg"] == "I/O error, sector 0" and records[0]["dev_name"] == "sdb"
    assert Counter((r["type"], r["dev_name"]) for r in records[1:4]) == {
        ("BLK_IO_ERROR", "sdc"): 1, ("MD_DISK_FAILURE", "md0"): 1, ("BLK_TIMEOUT", "sdb"): 1}
    summary = records[4]
    assert summary["type"] == "BLK_IO_ERROR" and summary["dev_name"] == "sdb" and summary["system"] == "block"
    assert summary["ext"]["flood_count"] == 999 and summary["ext"]["sector"] == 999
    assert summary["ext"]["flood_first"] <= summary["ext"]["flood_last"]
    assert summary["msg"] == "999 more BLK_IO_ERROR on sdb in 1 s (flood control)"
    wait_for(lambda: bus.plugin("rec")["dropped"].get("flood_suppressed") == 999,
             what="flood_suppressed=999 in busctl status")
    assert "flood_suppressed=999" in bus.run("busctl", "status").stdout
    wait_for(lambda: bus.plugin("rec")["events_out"] == 1003, what="1003 events handled in busctl status")

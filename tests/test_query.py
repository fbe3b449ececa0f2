"""bus.query: the time words and the match every reader of past events shares."""

from __future__ import annotations

import pytest

from bus.event import new_event
from bus.filter import Filter
from bus.query import Query, QueryError, parse_time

NOW = 1_764_583_200.0  # 2025-12-01T10:00:00Z


@pytest.mark.parametrize(("text", "expected"), [
    ("now", NOW), ("30s", NOW - 30), ("10m", NOW - 600), ("1h", NOW - 3600), ("2d", NOW - 172_800),
    ("1.5h", NOW - 5400), ("1w ago", NOW - 604_800), ("2025-12-01T10:00", NOW), ("2025-12-01T10:00Z", NOW),
    ("2025-12-01 11:00:00+01:00", NOW), ("2025-12-01", NOW - 36_000), ("1764583200", NOW),
])
def test_parse_time_words(text: str, expected: float) -> None:
    assert parse_time(text, now=NOW) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["yesterdayish", "10 parsecs", "", "2025-13-01"])
def test_parse_time_refuses_with_the_option_named(text: str) -> None:
    with pytest.raises(QueryError, match=f"^--until {text!r}: expected a duration"):
        parse_time(text, now=NOW, what="--until")


def test_query_match_every_word() -> None:
    ev = new_event(system="multipath", event_type="DM_MPATH_PATH_FAILED", severity="warn", kind="synthetic",
                   dev_name="mpatha", dev_wwid="3600a0b80001", hostname="node2", timestamp=NOW)
    flt = Filter.parse({"system": "multipath", "severity": "warn", "event_type": "DM_MPATH_*"})
    assert Query(flt, since=NOW, until=NOW + 1, devs=("mpatha",), hosts=("node2",)).match(ev)
    assert Query(flt, devs=("3600a0b80001",)).match(ev)  # a WWID names the device as well
    assert not Query(flt, since=NOW + 0.001).match(ev)
    assert not Query(flt, until=NOW).match(ev)  # until is exclusive
    assert not Query(flt, devs=("sdf",)).match(ev)
    assert not Query(flt, hosts=("node1",)).match(ev)
    assert not Query(Filter.parse({"severity": "error"})).match(ev)

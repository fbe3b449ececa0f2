"""Bad input is counted by kind in ``busctl status`` and the plugin goes on (``Plugin.bad_input``)."""

from __future__ import annotations

import json

from conftest import Bus, plugin_cmd, wait_for


def test_parser_bad_input_is_counted_in_busctl_status_and_the_next_input_handled(bus: Bus) -> None:
    """BadInput from handle() and any other exception are counted by kind, logged once each, never fatal."""
    bus.write({"picky": {"type": "parser", "exec": plugin_cmd("picky"), "filter": {"system": "t"}}})
    bus.start()
    bus.wait_running("picky")
    msgs = ["bad_a one", "good 1", "bad_a two", "bad_b", "crash", "crash", "bad_a three", "good 2"]
    bus.emit([{"system": "t", "event_type": "X", "kind": "raw", "msg": m} for m in msgs])
    assert [e["msg"] for e in bus.tail(2, "--event-type", "PICKY_OK")] == ["good 1", "good 2"]
    counts = {"bad_a": 3, "bad_b": 1, "handle_failed": 2}
    entry = wait_for(lambda: (p := bus.plugin("picky")).get("bad_input") == counts and p,
                     what="bad-input counts in busctl status --json")
    # a parser's events_out are the deliveries to it, its events_in what it published
    assert (entry["state"], entry["restarts"], entry["events_out"], entry["events_in"]) == ("running", 0, len(msgs), 2)
    assert entry["delivery"]["pending"] == 0  # refused inputs are acknowledged like handled ones
    logged = [r for r in bus.log_records() if r.get("event") == "bad_input"]
    assert [(r["kind"], r["error"]) for r in logged] == [("bad_a", "refused 'bad_a one'"), ("bad_b", "refused 'bad_b'")]
    assert all(r["plugin"] == "picky" and r["event_id"] for r in logged)
    failed = [r for r in bus.log_records() if r.get("event") == "handle_failed"]
    assert [r["exception"][0]["exc_type"] for r in failed] == ["KeyError", "KeyError"]
    text = bus.run("busctl", "status").stdout
    assert "bad input skipped: bad_a=3,bad_b=1,handle_failed=2" in text


def test_counts_are_flushed_when_the_plugin_stops(bus: Bus) -> None:
    """A plugin stopped right after bad input still leaves its counts in the status file."""
    bus.write({"picky": {"type": "parser", "exec": plugin_cmd("picky"), "filter": {"system": "t"}}})
    bus.start()
    bus.wait_running("picky")
    bus.emit([{"system": "t", "event_type": "X", "kind": "raw", "msg": m} for m in ("bad_z", "good")])
    bus.tail(1, "--event-type", "PICKY_OK")
    bus.stop()
    status = bus.runtime_dir / "status" / "picky.json"
    assert json.loads(status.read_text())["bad_input"] == {"bad_z": 1}
    assert any(r.get("event") == "bad_input_skipped" and r["counts"] == {"bad_z": 1} for r in bus.log_records())

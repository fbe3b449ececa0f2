"""The Python SDK examples of docs/plugins.md run as real plugins under a real busd."""

from __future__ import annotations

import sys

from conftest import ROOT, Bus, ev, read_lines, wait_for

EXAMPLES = ROOT / "examples" / "python"


def test_sdk_examples_work_together(bus: Bus) -> None:
    """The heartbeat collector, the error parser and the file receiver each do what docs/plugins.md says."""
    out = bus.base / "events.log"
    bus.write({
        "heartbeat": {"type": "collector", "exec": [sys.executable, str(EXAMPLES / "heartbeat_collector.py")],
                      "interval": 0.2},
        "errors": {"type": "parser", "exec": [sys.executable, str(EXAMPLES / "error_parser.py")],
                   "filter": {"kind": "raw", "system": ["kmsg"]}},
        "file": {"type": "receiver", "exec": [sys.executable, str(EXAMPLES / "file_receiver.py")], "path": str(out),
                 "filter": {"kind": "all", "event_type": ["HEARTBEAT", "LINE_WITH_ERROR"]}},
    })
    bus.start()
    bus.wait_running("errors")
    bus.emit([ev("kmsg", "LINE", "Buffer I/O error on device sdf", dev_name="sdf"), ev("kmsg", "LINE", "all fine")])
    wait_for(lambda: any("LINE_WITH_ERROR" in line for line in read_lines(out)), what="parser output in file")
    wait_for(lambda: sum("HEARTBEAT" in line for line in read_lines(out)) >= 2, what="two heartbeats")
    lines = read_lines(out)
    errors = [line for line in lines if "LINE_WITH_ERROR" in line]
    assert len(errors) == 1 and errors[0].endswith("error LINE_WITH_ERROR Buffer I/O error on device sdf")
    assert not any("all fine" in line for line in lines)

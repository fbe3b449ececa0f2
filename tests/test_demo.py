"""The README's first command: `make demo` starts busd on the shipped demo configuration and bus-tail prints events."""

from __future__ import annotations

import os
import subprocess

import psutil
from conftest import ROOT

INCIDENT = ["SCSI_NOT_READY", "BLK_IO_ERROR", "DM_MPATH_PATH_FAILED", "DM_MPATH_ALL_PATHS_DOWN",
            "FS_REMOUNT_READ_ONLY", "DM_MPATH_PATH_REINSTATED", "FS_MOUNTED"]


def test_make_demo_streams_the_incident_and_stops_busd() -> None:
    """`make demo DEMO_COUNT=12`: one readable line per synthetic event of the incident, then busd is stopped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUS_")}
    proc = subprocess.run(["make", "--no-print-directory", "demo", "DEMO_COUNT=12"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if " demo-node " in line]
    assert len(lines) == 12, proc.stdout
    for event_type in INCIDENT:
        assert any(f"/{event_type} " in line for line in lines), f"{event_type} missing from:\n{proc.stdout}"
    assert all(line.rstrip().endswith("]") for line in lines)  # "[parser]" closes each readable line
    left = [p.pid for p in psutil.process_iter(["cmdline", "cwd"])
            if p.info["cwd"] == str(ROOT) and "conf/demo/busd.toml" in (p.info["cmdline"] or [])
            and any(part.endswith("busd") for part in p.info["cmdline"][:2])]
    assert not left, f"busd still running after make demo: {left}"

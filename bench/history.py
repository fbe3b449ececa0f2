#!/usr/bin/env python3
"""busd history benchmark: the SQLite store's insert rate and ``busctl query`` over 1 million events.

Run from the repository root: ``.venv/bin/python bench/history.py`` (part of ``make bench``).

1. Insert rate: 200 000 events through :meth:`bus.history.History.insert_many` in batches of 500
   (what one delivery of the bus brings), with every index. Target: at least 50 000 events/s.
2. Query: a database of 1 000 000 events over the last 30 days (20 systems, 10% warn, 2% error),
   built with the store, then the real ``busctl query --since 1h --system scsi --severity warn``
   command, timed from start to exit. Target: under 0.5 s, command start included.
"""

from __future__ import annotations

import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import ROOT, save_rows, say

sys.path.insert(0, str(ROOT))
from bus.event import new_event
from bus.history import History

BIN = Path(sys.executable).parent
SYSTEMS = ["scsi", "block", "multipath", "lvm", "fs", "mdraid", "drbd", "gluster", "postgres", "udev"] + [
    f"sys{i}" for i in range(10)]


def events(n: int, now: float, span: float, rng: random.Random) -> list[dict[str, object]]:
    out = []
    for i in range(n):
        r = rng.random()
        sev = "error" if r < 0.02 else "warn" if r < 0.12 else "info"
        out.append(new_event(rng.choice(SYSTEMS), f"EVENT_{i % 50}", f"event {i} on a device", severity=sev,
                             kind="synthetic", hostname="node1", dev_name=f"sd{chr(97 + i % 26)}",
                             dev_wwid=f"naa.{i % 26:04d}", timestamp=now - span + span * i / n))
    return out


def main() -> None:
    rng = random.Random(13)
    rows: list[tuple[str, str, str, str, bool | None]] = []
    with tempfile.TemporaryDirectory(prefix="bushist") as tmp:
        base = Path(tmp)
        db = History.open(base / "rate.sqlite")
        batch = events(200_000, time.time(), 3600, rng)
        started = time.perf_counter()
        for i in range(0, len(batch), 500):
            db.insert_many(batch[i:i + 500])
        rate = len(batch) / (time.perf_counter() - started)
        db.close()
        ok = rate >= 50_000
        say(f"history insert: {rate:,.0f} events/s in batches of 500 (target >= 50 000) {'PASS' if ok else 'FAIL'}")
        rows.append(("history insert (store, batches of 500)", f"{rate:,.0f}/s", "-", ">= 50 000/s", ok))

        path = base / "state" / "hist" / "history.sqlite"
        db = History.open(path)
        now = time.time()
        for chunk in range(10):  # 30 days, oldest first, in ten slices
            part = events(100_000, now - 30 * 86400 * (9 - chunk) / 10, 30 * 86400 / 10, rng)
            for i in range(0, len(part), 5000):
                db.insert_many(part[i:i + 5000])
        db.close()
        conf = base / "busd.toml"
        conf.write_text(f'[main]\nruntime_dir = "{base}/run"\nstate_dir = "{base}/state"\n\n'
                        '[plugins.hist]\ntype = "receiver"\nbuiltin = "history"\n')
        cmd = [str(BIN / "busctl"), "--config", str(conf), "query", "--since", "1h", "--system", "scsi",
               "--severity", "warn", "--json"]
        best = float("inf")
        lines = 0
        for _ in range(3):
            started = time.perf_counter()
            res = subprocess.run(cmd, capture_output=True, text=True, check=True)
            best = min(best, time.perf_counter() - started)
            lines = len(res.stdout.splitlines())
        ok = best < 0.5
        say(f"busctl query over 1 000 000 events: {best:.3f} s, {lines} events (target < 0.5 s) "
            f"{'PASS' if ok else 'FAIL'}")
        rows.append(("busctl query --since 1h (1M events)", f"{best:.3f} s", "-", "< 0.5 s", ok))
    save_rows("history", "history (SQLite store, busctl query)", "-", rows)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Print the tables every bench of ``make bench`` saved (``$BENCH_RESULTS``, default ``.run/bench``), one after another.

Each bench prints its own details as it runs; this is the summary at the end: busd beside what it is
measured against (the bare pyzmq pipelines, drbd-reactor's figures), the target and PASS or FAIL.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ORDER = ("core", "cli", "drbd", "umh")


def main() -> int:
    out = Path(os.environ.get("BENCH_RESULTS", ROOT / ".run" / "bench"))
    files = sorted(out.glob("*.json"), key=lambda f: (ORDER.index(f.stem) if f.stem in ORDER else len(ORDER), f.stem))
    if not files:
        print(f"no bench results in {out}")
        return 1
    print("\n==================== make bench: summary ====================")
    for f in files:
        data = json.loads(f.read_text())
        print(f"\n{data['title']}")
        print(f"  {'measure':52} {'busd':>24} {data['other']:>24}  {'target':26} verdict")
        for r in data["rows"]:
            verdict = "" if r["pass"] is None else ("PASS" if r["pass"] else "FAIL")
            print(f"  {r['measure']:52} {r['busd']:>24} {r['other']:>24}  {r['target']:26} {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

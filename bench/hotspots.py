#!/usr/bin/env python3
"""Profile busd and the SDK plugins under one benchmark phase with py-spy (sampling, no code changes).

    .venv/bin/pip install py-spy          # not a project dependency
    .venv/bin/python bench/hotspots.py --rate 1000 --seconds 12     # paced phase
    .venv/bin/python bench/hotspots.py --rate 0 --n 50000            # full speed

Starts busd with the bench plugins (``bench/run.py``'s :class:`BusRun`), starts the phase, records each
process (busd, collector, parser, receiver) with ``py-spy record --format raw`` for ``--record``
seconds, and prints per process the functions with the most samples: self (own code) and inclusive.
The collapsed stacks are kept in ``--out`` (default ``/tmp/busd-profile``) for flame graphs.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import PY, BusRun


def summarize(path: Path, top: int) -> str:
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        total += n
        frames = [f for f in stack.split(";") if f]
        # drop the thread name frame py-spy puts first
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        self_c[_short(frames[-1])] += n
        for f in set(map(_short, frames)):
            incl[f] += n
    lines = [f"  samples: {total}", "  self:"]
    lines += [f"    {100 * c / total:5.1f}%  {f}" for f, c in self_c.most_common(top)]
    lines.append("  inclusive:")
    lines += [f"    {100 * c / total:5.1f}%  {f}" for f, c in incl.most_common(top + 10)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    # "func (path/to/file.py:123)" -> "func (file.py:123)"
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    if "site-packages/" in where:
        where = where.split("site-packages/", 1)[1]
    elif "/work/" in where or "/bus/" in where:
        where = "/".join(where.split("/")[-2:])
    else:
        where = where.split("/")[-1]
    return f"{name} ({where})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=1000, help="events/s; 0 = full speed")
    ap.add_argument("--n", type=int, default=0, help="events (default rate * seconds, or 200000 at full speed)")
    ap.add_argument("--seconds", type=float, default=12)
    ap.add_argument("--record", type=float, default=0, help="seconds to record (default: seconds - 3)")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--rate-hz", type=int, default=250, help="py-spy sampling rate")
    ap.add_argument("--out", default="/tmp/busd-profile")
    a = ap.parse_args()
    pyspy = shutil.which("py-spy") or str(Path(PY).parent / "py-spy")
    if not Path(pyspy).exists():
        raise SystemExit("py-spy not found: .venv/bin/pip install py-spy")
    n = a.n or (int(a.rate * a.seconds) if a.rate else 200_000)
    record = a.record or (max(2.0, a.seconds - 3) if a.rate else 6.0)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    run = BusRun("profile", [{"count": n, "rate": a.rate}])
    try:
        tree = run.start()
        time.sleep(1.0)
        run.go()
        time.sleep(1.0 if a.rate else 0.2)
        procs = {}
        for role, p in tree.procs.items():
            procs[role] = subprocess.Popen(
                [pyspy, "record", "--pid", str(p.pid), "--duration", str(int(record)), "--rate", str(a.rate_hz),
                 "--format", "raw", "--output", str(out / f"{role}.txt"), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for p in procs.values():
            p.wait(record + 30)
        res = run.wait_phase(0, n / 1000 + 60, stall=8)
        r = res.get("receiver") or {}
        print(f"phase: rate {a.rate:g}, n {n}, receiver saw {res['seen_ids']}, lost {res['lost_ids']}"
              f"{', incomplete: ' + res['incomplete'] if res['incomplete'] else ''}")
        if r.get("unique") and res.get("collector"):
            print(f"  throughput {r['unique'] / (r['last_recv'] - res['collector']['first_emit']):,.0f} events/s")
    finally:
        run.stop()
        run.cleanup(False)
    for role in procs:
        f = out / f"{role}.txt"
        print(f"\n=== {role} ({f}) ===")
        print(summarize(f, a.top) if f.exists() else "  (no profile)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""busd umh benchmark: user mode helper actions per second, order per resource, SIGTERM under load.

Run from the repository root: ``.venv/bin/python bench/umh.py`` (about 30 s on a 2-core machine).

A real busd runs this file as an ``exec`` collector (``--collector``: on SIGUSR1 it emits a burst of
events as fast as the SDK's Publisher goes, spread round-robin over ``--resources`` devices, event
type and size read from ``go.json``) and the built-in ``umh`` receiver (``max_concurrent = 8``,
``max_queued = 32``) with these rules:

1. ``UMH_TRUE`` runs ``["/bin/true"]`` (an argv list: no shell). The clock runs from the burst's
   start until busd has logged the last ``command_done``. For comparison (no target), ``UMH_SH_TRUE``
   runs the same program as ``exec /bin/true``, through ``/bin/sh -c``: two programs started per action.
2. ``UMH_LINE`` runs ``echo "$BUS_DEV_NAME $BUS_MSG" >> FILE`` (needs a shell: ``/bin/sh -c``), one
   line per action; the clock stops when the file has every line (its rate is shown, the target
   is run 1's). Then the lines of each resource must be in event order.
3. ``UMH_TRUE`` again, and once a quarter of the burst has run, SIGTERM to busd while commands run
   and more wait, plus one command of a ``stubborn`` resource that ignores SIGTERM. Measured: the time
   until busd has exited; afterwards no command may be left running.

Each run also prints the CPU seconds of busd, the collector, the receiver and the commands it
reaped: the machine's other load moves actions/s a lot, CPU per action much less. ``--profile FILE``
records the receiver with py-spy during run 1 (``pip install py-spy``; collapsed stacks).

drbd-reactor's umh plugin, measured on this machine: 169-293 actions/s (one ``sh`` fork per match).
Targets: >= 1 000 actions/s, order kept per resource, SIGTERM exit < 5 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent.parent))
from run import BUSD, PY, ROOT, BusdProcess, cpu_delta, save_rows, say, toml_str, wait_for  # noqa: E402

from bus import protocol  # noqa: E402
from bus.client import request  # noqa: E402

REACTOR = "169-293"
TARGET = 1000.0
SIGTERM_LIMIT = 5.0
MARKER = "UMH_BENCH_DIR"
"""Set by every rule's ``env``: how the bench finds commands that outlived busd."""


# -- the collector (this file, run by busd) -------------------------------------------------------------

def collector_main() -> None:
    """Run as busd's ``exec`` collector: emit one burst per SIGUSR1, as described in ``go.json``."""
    from bus.plugin import Collector, run

    class BurstCollector(Collector):
        async def run(self) -> None:
            out = Path(self.options["out"])
            go = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, go.set)
            (out / "collector.ready").write_text(str(os.getpid()))
            while True:
                await go.wait()
                go.clear()
                spec = json.loads((out / "go.json").read_text())
                resources = [f"res{r}" for r in range(spec["resources"])]
                for extra in spec.get("extra", []):
                    await self.emit(self.event("bench", extra["event_type"], "x", dev_name=extra["dev_name"]))
                for i in range(spec["count"]):
                    await self.emit(self.event("bench", spec["event_type"], str(i),
                                               dev_name=resources[i % len(resources)]))

    run(BurstCollector)


# -- the bench ------------------------------------------------------------------------------------------

class UmhRun(BusdProcess):
    """busd with the burst collector and a umh receiver."""

    label = "umh bench"

    def __init__(self, resources: int, max_concurrent: int, max_queued: int) -> None:
        self.resources = resources
        self.dir = Path(tempfile.mkdtemp(prefix="busu", dir="/tmp"))
        self.out = self.dir / "out"
        self.out.mkdir()
        self.lines = self.out / "lines.txt"
        self.runtime = self.dir / "run"
        self.config = self.dir / "busd.toml"
        self.log = self.dir / "busd.log"
        env = f"env = {{ {MARKER} = {toml_str(str(self.dir))} }}"
        self.config.write_text(f"""\
[main]
runtime_dir = {toml_str(str(self.runtime))}
hostname = "bench"

[plugins.burst]
type = "collector"
exec = [{toml_str(PY)}, {toml_str(str(HERE))}, "--collector"]
out = {toml_str(str(self.out))}

[plugins.umh]
type = "receiver"
builtin = "umh"
filter = {{ system = ["bench"], kind = ["raw"] }}
max_concurrent = {max_concurrent}
max_queued = {max_queued}
timeout = 60.0
rules = [
  {{ name = "true", event_type = "UMH_TRUE", command = ["/bin/true"], {env} }},
  {{ name = "sh-true", event_type = "UMH_SH_TRUE", command = "exec /bin/true", {env} }},
  {{ name = "line", event_type = "UMH_LINE", command = {toml_str(f'echo "$BUS_DEV_NAME $BUS_MSG" >> {self.lines}')}, {env} }},
  {{ name = "stubborn", event_type = "UMH_STUBBORN", command = "trap '' TERM; exec sleep 30", {env} }},
]
""")
        self.control = protocol.endpoint(self.runtime, protocol.CONTROL)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_offset = 0
        self.done_seen = 0

    def status(self) -> dict[str, Any]:
        return asyncio.run(request(self.control, {"op": "status"}, 5.0))

    def plugins(self) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in self.status()["plugins"]}

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.log.open("wb") as logf:
            self.proc = subprocess.Popen([BUSD, "--config", str(self.config)], stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                         start_new_session=True)

        def up() -> bool:
            try:
                ps = self.plugins()
            except Exception:
                return False
            return (all(ps.get(n, {}).get("state") == "running" for n in ("burst", "umh"))
                    and "acked" in ps["umh"] and (self.out / "collector.ready").exists())
        if not wait_for(up, 30, 0.1):
            self.fail("plugins did not start")
        ps = self.plugins()
        self.pids = {"busd": self.status()["pid"], "burst": ps["burst"]["pid"], "umh": ps["umh"]["pid"]}
        self.collector_pid = int((self.out / "collector.ready").read_text())

    def cpu(self) -> dict[str, float]:
        out = {}
        for role, pid in self.pids.items():
            try:
                t = psutil.Process(pid).cpu_times()
                out[role] = t.user + t.system
                if role == "umh":  # the commands it started and reaped
                    out["commands"] = t.children_user + t.children_system
            except psutil.Error:
                out[role] = 0.0
        return out

    def burst(self, event_type: str, count: int, extra: list[dict[str, str]] | None = None) -> float:
        spec = {"event_type": event_type, "count": count, "resources": self.resources, "extra": extra or []}
        (self.out / "go.json").write_text(json.dumps(spec))
        t0 = time.monotonic()
        os.kill(self.collector_pid, signal.SIGUSR1)
        return t0

    def commands_done(self) -> int:
        """``command_done`` records busd has logged so far (read incrementally)."""
        with self.log.open("rb") as f:
            f.seek(self.log_offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self.log_offset += end
        self.done_seen += data[:end].count(b'"event": "command_done"')
        return self.done_seen

    def line_count(self) -> int:
        if not self.lines.exists():
            return 0
        with self.lines.open("rb") as f:
            return f.read().count(b"\n")


    def sigterm(self) -> float:
        """SIGTERM to busd; return the seconds until it exited."""
        assert self.proc is not None
        t0 = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.fail("busd still running 30 s after SIGTERM")
        return time.monotonic() - t0

    def leftovers(self) -> list[str]:
        """Kill and describe the commands (found by the rules' marker variable) still running."""
        marker = f"{MARKER}={self.dir}".encode()
        left = []
        for pid in (int(d) for d in os.listdir("/proc") if d.isdigit()):
            try:
                if marker not in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    continue
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                continue
            left.append(f"{pid} {cmdline.strip()}")
        return left



def order_kept(lines: list[str], resources: int) -> tuple[bool, int]:
    """Whether each resource's lines are in event order; and how many lines are out of order."""
    last: dict[str, int] = {}
    bad = 0
    for line in lines:
        res, seq = line.split()
        if int(seq) < last.get(res, -1):
            bad += 1
        last[res] = int(seq)
    return bad == 0 and len(last) == resources, bad


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collector", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--events", type=int, default=5000, help="events (= actions) per run")
    ap.add_argument("--resources", type=int, default=8, help="devices the events are spread over")
    ap.add_argument("--max-concurrent", type=int, default=8)
    ap.add_argument("--max-queued", type=int, default=32)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--profile", metavar="FILE", help="py-spy the umh process during run 1 (collapsed stacks)")
    a = ap.parse_args()
    if a.collector:
        collector_main()
        return 0
    n = a.events
    say(f"umh bench: {n} events per run over {a.resources} resources, "
        f"max_concurrent = {a.max_concurrent}, max_queued = {a.max_queued}")
    run = UmhRun(a.resources, a.max_concurrent, a.max_queued)
    rows: list[tuple[str, str, str]] = []
    ok = True
    try:
        run.start()

        # 1. /bin/true as an argv list
        spy = None
        if a.profile:
            spy = subprocess.Popen([str(Path(PY).parent / "py-spy"), "record", "--nonblocking", "--format", "raw",
                                    "-r", "200", "-o", a.profile, "-p", str(run.pids["umh"])],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)  # py-spy attaches
        cpu0 = run.cpu()
        t0 = run.burst("UMH_TRUE", n)
        if not wait_for(lambda: run.commands_done() >= n, 120, 0.02):
            run.fail(f"only {run.done_seen} of {n} commands done within 120 s")
        took = time.monotonic() - t0
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        cpu = cpu_delta(cpu0, run.cpu())
        rate_true = n / took
        per_action = sum(cpu.values()) / n
        say(f"  /bin/true (no shell): {rate_true:,.0f} actions/s ({took:.2f} s); CPU "
            + ", ".join(f"{k} {v:.2f} s" for k, v in cpu.items())
            + f" ({1000 * per_action:.2f} ms per action: at most {psutil.cpu_count() / per_action:,.0f}/s "
            f"on {psutil.cpu_count()} idle cores)")
        rows.append(("actions/s, /bin/true without a shell", f"{rate_true:,.0f}",
                     "PASS" if rate_true >= TARGET else "FAIL"))
        ok &= rate_true >= TARGET

        # 1b. the same program through the shell, as every command ran before (for comparison only)
        done_before = run.commands_done()
        cpu0 = run.cpu()
        t0 = run.burst("UMH_SH_TRUE", n)
        if not wait_for(lambda: run.commands_done() >= done_before + n, 120, 0.02):
            run.fail(f"only {run.done_seen - done_before} of {n} commands done within 120 s")
        took = time.monotonic() - t0
        cpu = cpu_delta(cpu0, run.cpu())
        rate_sh_true = n / took
        say(f"  sh -c 'exec /bin/true': {rate_sh_true:,.0f} actions/s ({took:.2f} s); CPU "
            + ", ".join(f"{k} {v:.2f} s" for k, v in cpu.items())
            + f" ({1000 * sum(cpu.values()) / n:.2f} ms per action)")
        rows.append(("actions/s, /bin/true through sh -c (info)", f"{rate_sh_true:,.0f}", "-"))

        # 2. a shell command writing one line per action
        done_before = run.commands_done()
        cpu0 = run.cpu()
        t0 = run.burst("UMH_LINE", n)
        if not wait_for(lambda: run.line_count() >= n, 120, 0.02):
            run.fail(f"only {run.line_count()} of {n} lines written within 120 s")
        took = time.monotonic() - t0
        cpu = cpu_delta(cpu0, run.cpu())
        rate_line = n / took
        lines = run.lines.read_text().splitlines()
        kept, bad = order_kept(lines, a.resources)
        say(f"  sh -c 'echo ... >> file': {rate_line:,.0f} actions/s ({took:.2f} s); CPU "
            + ", ".join(f"{k} {v:.2f} s" for k, v in cpu.items())
            + f"; {len(lines)} lines, {bad} out of order per resource")
        rows.append(("actions/s, sh -c 'echo ... >> file' (info)", f"{rate_line:,.0f}", "-"))
        rows.append(("order per resource kept", f"{bad} of {len(lines)} out of order", "PASS" if kept else "FAIL"))
        ok &= kept
        wait_for(lambda: run.commands_done() >= done_before + n, 30, 0.02)

        # 3. SIGTERM under load
        done_before = run.commands_done()
        run.burst("UMH_TRUE", n, extra=[{"event_type": "UMH_STUBBORN", "dev_name": "stubborn"}])
        if not wait_for(lambda: run.commands_done() >= done_before + n // 4, 60, 0.01):
            run.fail("the third burst did not start")
        took = run.sigterm()
        left = run.leftovers()
        say(f"  SIGTERM after {run.done_seen - done_before} of {n} actions: busd exited in {took:.2f} s, "
            f"status {run.proc.returncode if run.proc else '?'}, commands left running: {left or 'none'}")
        rows.append(("SIGTERM under load: busd exit", f"{took:.2f} s", "PASS" if took < SIGTERM_LIMIT else "FAIL"))
        rows.append(("commands left after busd exited", str(len(left)), "PASS" if not left else "FAIL"))
        ok &= took < SIGTERM_LIMIT and not left
    finally:
        run.stop()
        run.cleanup(a.keep)

    say()
    width = max(len(r[0]) for r in rows)
    say(f"  {'measure':<{width}}  {'busd umh':>22}  {'drbd-reactor':>12}  target")
    for name, value, verdict in rows:
        reactor = f"{REACTOR}" if name.startswith("actions/s") else ""
        say(f"  {name:<{width}}  {value:>22}  {reactor:>12}  {verdict}")
    say(f"  targets: >= {TARGET:,.0f} actions/s, order kept per resource, SIGTERM exit < {SIGTERM_LIMIT:g} s: "
        + ("PASS" if ok else "FAIL"))
    targets = {"actions/s, /bin/true without a shell": f">= {TARGET:,.0f}", "order per resource kept": "kept",
               "SIGTERM under load: busd exit": f"< {SIGTERM_LIMIT:g} s", "commands left after busd exited": "0"}
    save_rows("umh", "umh: commands run for matching events (bench/umh.py)", "drbd-reactor 1.11",
              [(name, value, f"{REACTOR}" if name.startswith("actions/s") else "", targets.get(name, ""),
                None if verdict not in ("PASS", "FAIL") else verdict == "PASS") for name, value, verdict in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())

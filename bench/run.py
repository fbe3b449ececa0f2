#!/usr/bin/env python3
"""busd benchmark: throughput, latency, CPU and memory of a real busd with SDK plugins, and a bare reference.

Run from the repository root: ``.venv/bin/python bench/run.py`` (``make bench``). It takes about 1.5 minutes on
a 2-core machine and prints labelled numbers, then a summary of the project's targets.

What runs:

* a real ``busd`` (``.venv/bin/busd --config FILE``) with three ``exec`` plugins written with the SDK
  (``bench/plugins/``): a collector that emits phases of events through :class:`bus.client.Publisher`
  when told to (SIGUSR1) and otherwise idles, a pass-through parser (one synthetic event per input,
  keeping the input's timestamp and id as ``extensions.parent``), and a receiver that records every
  parent id and its latency (``time.time()`` at receipt - the collector's ``timestamp``) and writes
  a result file per phase once it has seen every id of the phase;
* ``bench/reference.py``: a bare pyzmq + msgpack pipeline of the same four-process shape.

busd's phases, all in one busd:

idle (CPU, RSS); 1k and 5k events/s paced phases (latency, also split into its collector -> parser and
parser -> receiver halves; CPU over the steady part); two full-speed phases, N=50 000 (fits in busd's
default ``parser_queue`` of 100 000) and N=200 000; idle after load (CPU, RSS with the replay rings full).
A phase that stops making progress, or drains with ids missing, is reported with busd's drop counters and
the collector's Publisher state.

Loss is counted by event id: the collector writes every id it emitted, the receiver every parent id it
saw; ``lost`` = emitted ids never seen. Throughput = distinct ids seen / (last receipt - first emit).
CPU is user+system time of busd and every process under it (psutil); RSS is resident memory.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PY = sys.executable
BUSD = str(Path(PY).parent / "busd") if (Path(PY).parent / "busd").exists() else (shutil.which("busd") or "busd")

sys.path.insert(0, str(ROOT))
from bus import protocol  # noqa: E402
from bus.client import request  # noqa: E402

PLUGIN_NAMES = {"collector": "col", "parser": "pass", "receiver": "rcv"}


# -- small helpers ------------------------------------------------------------------------------------

def say(text: str = "") -> None:
    print(text, flush=True)


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def lat_line(lat: list[float]) -> str:
    ms = [x * 1000 for x in lat]
    if not ms:
        return "no samples"
    return f"p50 {pct(ms, 50):.2f} ms   p99 {pct(ms, 99):.2f} ms   max {max(ms):.2f} ms   (n={len(ms)})"


def mb(n: float) -> str:
    return f"{n / 2**20:.1f} MB"


def read_ids(path: Path) -> set[str]:
    return {line for line in path.read_text().split("\n") if line} if path.exists() else set()


def wait_for(pred: Any, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


def toml_str(s: str) -> str:
    return json.dumps(s)


# -- process-tree measurements --------------------------------------------------------------------------

def cpu_seconds(p: psutil.Process) -> float:
    """Time ``p`` has been on a CPU (all its threads): ``/proc/PID/task/*/schedstat``, else psutil."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{p.pid}/task"):
            with open(f"/proc/{p.pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        try:
            t = p.cpu_times()
            return float(t.user + t.system)
        except psutil.Error:
            return 0.0


class Tree:
    """busd and its plugin processes, by role."""

    def __init__(self, busd_pid: int, plugin_pids: dict[str, int]) -> None:
        self.procs: dict[str, psutil.Process] = {"busd": psutil.Process(busd_pid)}
        for role, pid in plugin_pids.items():
            self.procs[role] = psutil.Process(pid)

    def all(self) -> dict[str, psutil.Process]:
        """Roles plus any other descendant of busd (there should be none)."""
        out = dict(self.procs)
        known = {p.pid for p in out.values()}
        try:
            for child in self.procs["busd"].children(recursive=True):
                if child.pid not in known:
                    out[f"pid{child.pid}"] = child
        except psutil.Error:
            pass
        return out

    def cpu(self) -> dict[str, float]:
        """CPU seconds of each process, from the scheduler's nanosecond counters where it has them.

        psutil's user+system times tick in 10 ms steps, too coarse for an idle bus (a few ms per second).
        """
        out = {}
        for role, p in self.all().items():
            out[role] = cpu_seconds(p)
        return out

    def rss(self) -> dict[str, int]:
        out = {}
        for role, p in self.all().items():
            try:
                out[role] = p.memory_info().rss
            except psutil.Error:
                out[role] = 0
        return out


def cpu_delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b.get(k, 0.0) - a.get(k, 0.0) for k in b}


def cpu_breakdown(d: dict[str, float], seconds: float) -> str:
    return ", ".join(f"{k} {100 * v / seconds:.1f}%" for k, v in d.items())


def rss_breakdown(r: dict[str, int]) -> str:
    return ", ".join(f"{k} {mb(v)}" for k, v in r.items())


class RssSampler(threading.Thread):
    """Samples RSS of the tree every ``interval`` seconds, keeping the maximum per process."""

    def __init__(self, tree: Tree, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.tree = tree
        self.interval = interval
        self.max: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for k, v in self.tree.rss().items():
                self.max[k] = max(self.max.get(k, 0), v)
            self.stop.wait(self.interval)


# -- one busd with the bench plugins ----------------------------------------------------------------------

class BusdProcess:
    """What every bench's busd shares: stopped as systemd stops it, its log shown when the bench fails.

    Subclasses set ``label``, ``proc`` (the busd process, or ``None``), ``log`` (its log file) and
    ``dir`` (everything the bench wrote).
    """

    label = "bench"
    proc: subprocess.Popen[bytes] | None = None
    log: Path
    dir: Path

    def stop(self) -> None:
        """SIGTERM busd and wait; SIGKILL its process group after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def cleanup(self, keep: bool) -> None:
        """Remove the bench's directory (configuration, runtime dir, logs), unless asked to keep it."""
        if keep:
            say(f"  kept {self.dir}")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    def fail(self, why: str) -> NoReturn:
        """Stop busd and end the bench with ``why`` and the tail of busd's log."""
        tail = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
        self.stop()
        raise SystemExit(f"{self.label}: {why}\n--- busd log (tail) ---\n{tail}")


class BusRun(BusdProcess):
    """A busd started on a generated configuration, with the bench collector, parser and receiver."""

    def __init__(self, label: str, phases: list[dict[str, float]], *, linger: float | None = None) -> None:
        self.label = label
        self.phases = phases
        self.dir = Path(tempfile.mkdtemp(prefix="bus", dir="/tmp"))
        self.out = self.dir / "out"
        self.out.mkdir()
        self.runtime = self.dir / "run"
        self.config = self.dir / "busd.toml"
        self.log = self.dir / "busd.log"
        plugins = BENCH / "plugins"
        phase_toml = ", ".join(f"{{ count = {int(p['count'])}, rate = {float(p['rate'])} }}" for p in phases)
        self.config.write_text(f"""\
[main]
runtime_dir = {toml_str(str(self.runtime))}
hostname = "bench"
log_level = "info"

[plugins.col]
type = "collector"
exec = [{toml_str(PY)}, {toml_str(str(plugins / "collector.py"))}]
out = {toml_str(str(self.out))}
phases = [{phase_toml}]
{f"publish_linger = {linger}" if linger else ""}

[plugins.pass]
type = "parser"
exec = [{toml_str(PY)}, {toml_str(str(plugins / "passthrough.py"))}]
filter = {{ system = ["bench"], kind = ["raw"] }}

[plugins.rcv]
type = "receiver"
exec = [{toml_str(PY)}, {toml_str(str(plugins / "receiver.py"))}]
out = {toml_str(str(self.out))}
filter = {{ system = ["bench"], kind = ["synthetic"] }}
""")
        self.control = protocol.endpoint(self.runtime, protocol.CONTROL)
        self.proc: subprocess.Popen[bytes] | None = None
        self.tree: Tree | None = None

    def status(self, timeout: float = 5.0) -> dict[str, Any]:
        return asyncio.run(request(self.control, {"op": "status"}, timeout))

    def start(self) -> Tree:
        env = dict(os.environ)
        env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        with self.log.open("wb") as logf:
            self.proc = subprocess.Popen([BUSD, "--config", str(self.config)], stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                         start_new_session=True)
        ok = wait_for(lambda: (self.out / "collector.ready").exists() and (self.out / "receiver.ready").exists(),
                      30)
        if not ok or self.proc.poll() is not None:
            self.fail("busd or its plugins did not start")
        st: dict[str, Any] = {}

        def ready() -> bool:
            nonlocal st
            try:
                st = self.status(2)
            except Exception:
                return False
            plugins = {p["name"]: p for p in st["plugins"]}
            return (all(plugins.get(n, {}).get("state") == "running" for n in PLUGIN_NAMES.values())
                    and plugins["pass"].get("delivery", {}).get("connected", False)
                    and "acked" in plugins["rcv"])
        if not wait_for(ready, 20, 0.2):
            self.fail("plugins not running/connected")
        plugins = {p["name"]: p for p in st["plugins"]}
        self.tree = Tree(st["pid"], {role: plugins[name]["pid"] for role, name in PLUGIN_NAMES.items()})
        self.collector_pid = int((self.out / "collector.ready").read_text())
        self.receiver_pid = int((self.out / "receiver.ready").read_text())
        return self.tree

    def go(self) -> float:
        os.kill(self.collector_pid, signal.SIGUSR1)
        return time.time()

    def progress(self) -> dict[str, Any]:
        """Published heads, the parser's delivery state, the receiver's progress and drop counters."""
        st = self.status(3)
        plugins = {p["name"]: p for p in st["plugins"]}
        deliv = plugins["pass"].get("delivery", {})
        return {"raw": st["broker"]["head"]["raw"], "synthetic": st["broker"]["head"]["synthetic"],
                "handled": int(plugins["rcv"].get("events_out", 0)), "lag": plugins["rcv"].get("lag", 0),
                "pending": deliv.get("pending", 0), "in_flight": deliv.get("in_flight", 0),
                "dropped": {n: p["dropped"] for n, p in plugins.items() if p.get("dropped")}}

    def wait_phase(self, k: int, timeout: float, *, stall: float = 6.0) -> dict[str, Any]:
        """Wait for the receiver's result of phase ``k``.

        Gives up after ``timeout`` s, when nothing moved for ``stall`` s, or when everything is drained
        (collector acknowledged, parser queue empty, receiver caught up) but ids are missing (loss).
        """
        done = self.out / f"receiver-{k}.json"
        cfile = self.out / f"collector-{k}.json"
        deadline = time.monotonic() + timeout
        last: tuple[Any, ...] | None = None
        last_change = drained_since = time.monotonic()
        next_poll = time.monotonic() + 0.5
        why = ""
        while not done.exists():
            now = time.monotonic()
            if now > deadline:
                why = "timeout"
                break
            if now >= next_poll:
                next_poll = now + 0.5
                try:
                    pr = self.progress()
                except Exception:
                    continue
                key = (pr["raw"], pr["synthetic"], pr["handled"], pr["pending"], pr["in_flight"])
                if key != last:
                    last, last_change = key, now
                drained = cfile.exists() and pr["pending"] == 0 and pr["in_flight"] == 0 and pr["lag"] == 0
                if not drained:
                    drained_since = now
                elif now - drained_since > 1.5:
                    why = "drained with ids missing"
                    break
                if now - last_change > stall:
                    why = f"no progress for {stall:g} s"
                    break
            time.sleep(0.05)
        result: dict[str, Any] = {"incomplete": why}
        if why:
            os.kill(self.collector_pid, signal.SIGUSR2)
            os.kill(self.receiver_pid, signal.SIGUSR1)
            wait_for(lambda: done.exists() and (self.out / "collector-state.json").exists(), 5)
            try:
                result["publisher"] = json.loads((self.out / "collector-state.json").read_text())
                (self.out / "collector-state.json").unlink()
            except Exception:
                result["publisher"] = {}
        try:
            result["progress"] = self.progress()
        except Exception:
            result["progress"] = {}
        result["receiver"] = json.loads(done.read_text()) if done.exists() else None
        wait_for(cfile.exists, 0.1 if why else 3)
        result["collector"] = json.loads(cfile.read_text()) if cfile.exists() else None
        emitted = read_ids(self.out / f"collector-{k}.ids")
        seen = read_ids(self.out / f"receiver-{k}.ids")
        result["emitted_ids"] = len(emitted)
        result["seen_ids"] = len(seen)
        result["lost_ids"] = len(emitted - seen) if emitted else None
        result["unknown_ids"] = len(seen - emitted) if emitted else None
        return result



def phase_summary(res: dict[str, Any], n: int) -> dict[str, Any]:
    """Derived numbers of one phase: throughput, loss, duplicates, latencies."""
    r, c = res.get("receiver"), res.get("collector")
    out: dict[str, Any] = {"n": n, "incomplete": res["incomplete"], "publisher": res.get("publisher"),
                           "progress": res.get("progress", {})}
    out["seen"] = res["seen_ids"]
    out["lost"] = res["lost_ids"] if res["lost_ids"] is not None else n - res["seen_ids"]
    out["collector_done"] = c is not None
    out["duplicates"] = (r["received"] - r["unique"]) if r else 0
    out["lat"] = r["latencies"] if r else []
    out["lat_in"] = r.get("lat_in", []) if r else []
    out["lat_out"] = r.get("lat_out", []) if r else []
    out["lost_notices"] = r.get("lost_notices", 0) if r else 0
    if r and c and r["unique"]:
        out["seconds"] = r["last_recv"] - c["first_emit"]
        out["rate"] = r["unique"] / out["seconds"]
        out["emit_rate"] = c["count"] / max(1e-9, c["last_emit"] - c["first_emit"])
        out["acked_rate"] = c["count"] / max(1e-9, c["acked_at"] - c["first_emit"])
        out["timeline"] = {"first_recv": r["first_recv"] - c["first_emit"], "last_emit": c["last_emit"] - c["first_emit"],
                           "acked": c["acked_at"] - c["first_emit"], "last_recv": r["last_recv"] - c["first_emit"]}
    elif r and r["unique"]:
        out["seconds"] = r["last_recv"] - r["first_recv"]
    return out


def publisher_stalled(s: dict[str, Any]) -> bool:
    """The collector never got all acknowledgements although its replies are waiting in its socket."""
    pub = s.get("publisher") or {}
    return not s["collector_done"] and pub.get("inflight", 0) > 0 and bool(pub.get("zmq_events", 0) & 1)


def full_phase_report(s: dict[str, Any]) -> None:
    pr = s.get("progress") or {}
    drops = pr.get("dropped", {})
    if "rate" in s:
        say(f"[1] end to end, full speed, N={s['n']}: {s['rate']:,.0f} events/s   lost {s['lost']} of {s['n']}"
            f"   duplicates {s['duplicates']}   ({s['seconds']:.2f} s first emit -> last receipt; collector emitted "
            f"at {s['emit_rate']:,.0f}/s, broker acked at {s['acked_rate']:,.0f}/s)")
    else:
        say(f"[1] end to end, full speed, N={s['n']}: DID NOT COMPLETE - receiver saw {s['seen']} of "
            f"{s['n']} ids, lost {s['lost']}")
    if s.get("cpu_per_10k"):
        per = s["cpu_per_10k"]
        say(f"    CPU-s per 10 000 events at full speed: {sum(per.values()):.3f} ["
            + ", ".join(f"{k} {v:.3f}" for k, v in per.items()) + "]")
    tl = s.get("timeline")
    if tl:
        say(f"    timeline from first emit: last emit +{tl['last_emit']:.2f} s, all acknowledged +{tl['acked']:.2f} s, "
            f"first receipt +{tl['first_recv']:.2f} s, last receipt +{tl['last_recv']:.2f} s")
    if s["incomplete"]:
        say(f"    incomplete: {s['incomplete']}; collector all acknowledged: {s['collector_done']}; "
            f"publisher {s.get('publisher')}")
    if publisher_stalled(s):
        say("    PUBLISHER STALL: acknowledgements sit unread in the collector's DEALER (ZMQ_EVENTS has POLLIN) "
            "while the Publisher resends its window")
    say(f"    busd counters: heads raw {pr.get('raw')} synthetic {pr.get('synthetic')}; dropped {drops or 'none'}")
    if s["lat"]:
        say(f"    latency during full speed: {lat_line(s['lat'])}")


# -- the reference pipeline ---------------------------------------------------------------------------------

def reference(n: int, rate: float, *, cpu_window: float = 0.0, idle: float = 2.0,
              measure_idle: float = 0.0) -> dict[str, Any]:
    """Run the bare pipeline once; with ``cpu_window``, measure its CPU over that many steady seconds."""
    d = Path(tempfile.mkdtemp(prefix="bus", dir="/tmp"))
    ref = str(BENCH / "reference.py")
    common = ["--dir", str(d), "--out", str(d), "--n", str(n), "--rate", str(rate), "--idle", str(idle)]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for role in ("broker", "parser", "receiver"):
            procs[role] = subprocess.Popen([PY, ref, role, *common], stdin=subprocess.DEVNULL)
        if not wait_for(lambda: all((d / f"{r}.ready").exists() for r in ("broker", "parser", "receiver")), 20):
            raise SystemExit("reference pipeline did not start")
        out: dict[str, Any] = {}
        if measure_idle:
            idle_ps = {r: psutil.Process(p.pid) for r, p in procs.items()}
            time.sleep(1.0)
            a0, ta = {r: cpu_seconds(p) for r, p in idle_ps.items()}, time.monotonic()
            time.sleep(measure_idle)
            a1, tb = {r: cpu_seconds(p) for r, p in idle_ps.items()}, time.monotonic()
            out["idle_cpu"] = 100 * (sum(a1.values()) - sum(a0.values())) / (tb - ta)
            out["idle_rss"] = {r: p.memory_info().rss for r, p in idle_ps.items()}
        time.sleep(0.3)
        procs["collector"] = subprocess.Popen([PY, ref, "collector", *common], stdin=subprocess.DEVNULL)
        if cpu_window:
            ps = {r: psutil.Process(p.pid) for r, p in procs.items()}

            def cpu() -> dict[str, float]:
                return {r: cpu_seconds(p) for r, p in ps.items()}
            time.sleep(1.3)   # the collector connects (0.3 s), then one second into the traffic
            a, ta = cpu(), time.monotonic()
            time.sleep(cpu_window)
            b, tb = cpu(), time.monotonic()
            busy = sum(b.values()) - sum(a.values())
            out["cpu_pct"] = 100 * busy / (tb - ta)
            out["cpu_per_10k"] = busy / ((tb - ta) * rate) * 10_000
            out["cpu_parts"] = cpu_breakdown(cpu_delta(a, b), tb - ta)
        last: dict[str, float] = {}
        peak: dict[str, int] = {}
        stop = threading.Event()
        if not cpu_window:  # full speed: the CPU of each process, read until it exits (then it stays)
            watched = {r: psutil.Process(p.pid) for r, p in procs.items()}

            def sample() -> None:
                while not stop.is_set():
                    for r, proc in watched.items():
                        v = cpu_seconds(proc)
                        if v:  # 0 once the process is gone: keep its last reading
                            last[r] = v
                        with contextlib.suppress(psutil.Error):
                            peak[r] = max(peak.get(r, 0), proc.memory_info().rss)
                    stop.wait(0.01)
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
        procs["collector"].wait(n / max(rate, 1000) + 120)
        procs["receiver"].wait(60 + n / 5000)
        stop.set()
        if last:
            out["cpu_per_10k_full"] = {r: 10_000 * v / n for r, v in last.items()}
            out["peak_rss"] = peak
        c = json.loads((d / "collector.json").read_text())
        r = json.loads((d / "receiver.json").read_text())
        emitted, seen = read_ids(d / "collector.ids"), read_ids(d / "receiver.ids")
        out.update({"n": n, "seen": len(seen), "lost": len(emitted - seen), "duplicates": r["received"] - r["unique"],
                    "lat": r["latencies"], "emit_rate": n / max(1e-9, c["last_emit"] - c["first_emit"])})
        if r["unique"]:
            out["seconds"] = r["last_recv"] - c["first_emit"]
            out["rate"] = r["unique"] / out["seconds"]
        return out
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.terminate()
        for p in procs.values():
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(d, ignore_errors=True)


# -- main ---------------------------------------------------------------------------------------------------

def paced_phase(run: BusRun, tree: Tree, k: int, rate: float, secs: float) -> dict[str, Any]:
    n = int(rate * secs)
    go = run.go()
    # steady-state CPU window: skip the first and the last second of the phase
    time.sleep(max(0.0, go + 1.0 - time.time()))
    ca, ta = tree.cpu(), time.monotonic()
    time.sleep(max(0.0, go + secs - 1.0 - time.time()))
    cb, tb = tree.cpu(), time.monotonic()
    s = phase_summary(run.wait_phase(k, secs + 30), n)
    d = cpu_delta(ca, cb)
    busy = sum(d.values())
    s["cpu_pct"] = 100 * busy / (tb - ta)
    s["cpu_per_10k"] = busy / ((tb - ta) * rate) * 10_000
    s["cpu_parts"] = cpu_breakdown(d, tb - ta)
    s["cpu_window"] = tb - ta
    return s


def paced_report(rate: float, s: dict[str, Any]) -> None:
    say(f"[2] latency at {rate:g} events/s ({s['n']} events): {lat_line(s['lat'])}   lost {s['lost']}"
        f"{'   INCOMPLETE: ' + s['incomplete'] if s['incomplete'] else ''}")
    if s["lat_in"]:
        say(f"    collector -> parser:  {lat_line(s['lat_in'])}")
        say(f"    parser -> receiver:   {lat_line(s['lat_out'])}")
    say(f"    CPU at {rate:g} events/s (steady {s['cpu_window']:.1f} s window): {s['cpu_pct']:.1f}% of one core, "
        f"{s['cpu_per_10k']:.3f} CPU-s per 10 000 events   [{s['cpu_parts']}]")


def full_phase(run: BusRun, tree: Tree, k: int, n: int) -> tuple[dict[str, Any], dict[str, int]]:
    sampler = RssSampler(tree)
    sampler.start()
    c0 = tree.cpu()
    run.go()
    res = run.wait_phase(k, n / 2000 + 60)
    c1 = tree.cpu()
    sampler.stop.set()
    sampler.join()
    summary = phase_summary(res, n)
    # CPU per event at full speed: steadier than the rate on a machine whose speed drifts
    summary["cpu_per_10k"] = {role: 10_000 * v / n for role, v in cpu_delta(c0, c1).items()}
    return summary, dict(sampler.max)


def idle_after(run: BusRun, tree: Tree, seconds: float, R: dict[str, Any]) -> None:
    time.sleep(1.5)
    c0, t0 = tree.cpu(), time.monotonic()
    time.sleep(seconds)
    c1, t1 = tree.cpu(), time.monotonic()
    d = cpu_delta(c0, c1)
    rss = tree.rss()
    R["idle_cpu_after"] = 100 * sum(d.values()) / (t1 - t0)
    R["idle_rss_after"] = rss
    say(f"[5] idle CPU after load ({t1 - t0:.1f} s): {R['idle_cpu_after']:.2f}% of one core"
        f"   [{cpu_breakdown(d, t1 - t0)}]")
    say(f"[6] idle RSS after load (replay rings full): busd {mb(rss['busd'])}   plugins: "
        f"{rss_breakdown({k: v for k, v in rss.items() if k != 'busd'})}")


def git_version() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "bus"], cwd=ROOT, capture_output=True,
                               text=True, timeout=5).stdout.strip()
        return (head or "?") + (" (bus/ modified)" if dirty else "")
    except Exception:
        return "?"


def main() -> int:
    ap = argparse.ArgumentParser(description="busd benchmark (see the module docstring)")
    ap.add_argument("--n", type=int, default=200_000, help="events of the big full-speed phase (default 200000)")
    ap.add_argument("--n-small", type=int, default=50_000,
                    help="events of the small full-speed phase, below busd's parser_queue (default 50000)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each paced phase (default 10)")
    ap.add_argument("--idle", type=float, default=5.0, help="length of each idle measurement (default 5)")
    ap.add_argument("--no-reference", action="store_true", help="skip the bare pyzmq pipeline")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directories (configs, logs, results)")
    a = ap.parse_args()

    t_start = time.monotonic()
    R: dict[str, Any] = {}
    secs = a.seconds
    say(f"busd benchmark: {psutil.cpu_count()} CPUs, python {sys.version.split()[0]}, busd {BUSD}, "
        f"commit {git_version()}")
    say(f"full speed N={a.n} and N={a.n_small}; paced phases {secs:g} s; idle windows {a.idle:g} s")

    # ---------------------------------------------------------------- busd
    say("\n=== busd + SDK plugins ===")
    run = BusRun("busd", [{"count": int(1000 * secs), "rate": 1000}, {"count": int(5000 * secs), "rate": 5000},
                           {"count": a.n_small, "rate": 0}, {"count": a.n, "rate": 0}])
    try:
        tree = run.start()
        say(f"    {run.dir}  pids: " + ", ".join(f"{k} {p.pid}" for k, p in tree.procs.items()))
        time.sleep(2.0)
        c0, t0 = tree.cpu(), time.monotonic()
        time.sleep(a.idle)
        c1, t1 = tree.cpu(), time.monotonic()
        rss = tree.rss()
        d = cpu_delta(c0, c1)
        R["idle_cpu"] = 100 * sum(d.values()) / (t1 - t0)
        R["idle_rss"] = rss
        say(f"[5] idle CPU, busd + plugins, fresh ({t1 - t0:.1f} s): {R['idle_cpu']:.2f}% of one core"
            f"   [{cpu_breakdown(d, t1 - t0)}]")
        say(f"[6] idle RSS, fresh: busd {mb(rss['busd'])}   plugins: "
            f"{rss_breakdown({k: v for k, v in rss.items() if k != 'busd'})}")

        stuck = False
        for k, rate in ((0, 1000.0), (1, 5000.0)):
            s = R[f"paced_{int(rate)}"] = paced_phase(run, tree, k, rate, secs)
            paced_report(rate, s)
            if rate == 1000:
                say(f"[4] CPU seconds per 10 000 events at 1k events/s (busd + plugins): {s['cpu_per_10k']:.3f} s")
            if not s["collector_done"]:
                stuck = True
                say(f"    (the collector is stuck: publisher {s['publisher']}; later phases skipped)")
                break
            time.sleep(0.5)

        for k, n in ((2, a.n_small), (3, a.n)) if not stuck else ():
            s, rmax = full_phase(run, tree, k, n)
            R[f"full_{n}"] = s
            full_phase_report(s)
            say(f"[6] RSS under full-speed load (max): busd {mb(rmax.get('busd', 0))}   plugins: "
                f"{rss_breakdown({k: v for k, v in rmax.items() if k != 'busd'})}")
            R.setdefault("load_rss", {})
            for key, v in rmax.items():
                R["load_rss"][key] = max(v, R["load_rss"].get(key, 0))
            if not s["collector_done"]:
                stuck = True
                say("    (the collector is stuck; later phases skipped)")
                break
            time.sleep(0.5)
        if not stuck:
            idle_after(run, tree, a.idle, R)
    finally:
        run.stop()
        run.cleanup(a.keep)

    # ---------------------------------------------------------------- busd, low latency
    say("\n=== busd, collector with publish_linger = 0.001 (latency before CPU) ===")
    run = BusRun("busd-linger", [{"count": int(1000 * secs), "rate": 1000}], linger=0.001)
    try:
        tree = run.start()
        time.sleep(1.0)
        s = R["paced_1000_linger"] = paced_phase(run, tree, 0, 1000.0, secs)
        paced_report(1000.0, s)
    finally:
        run.stop()
        run.cleanup(a.keep)

    # ---------------------------------------------------------------- reference
    if not a.no_reference:
        say("\n=== reference: bare pyzmq + msgpack, 4 processes, one message per event ===")
        for n in (a.n_small, a.n):
            ref = R[f"ref_{n}"] = reference(n, 0, measure_idle=a.idle if n == a.n_small else 0.0)
            say(f"[3] reference, full speed, N={n}: {ref.get('rate', 0):,.0f} events/s   lost {ref['lost']} of {n}"
                f"   duplicates {ref['duplicates']}   (collector sent at {ref['emit_rate']:,.0f}/s)")
            say(f"    latency during full speed: {lat_line(ref['lat'])}")
            per = ref.get("cpu_per_10k_full") or {}
            if per:
                say(f"    CPU-s per 10 000 events at full speed: {sum(per.values()):.3f} ["
                    + ", ".join(f"{k} {v:.3f}" for k, v in per.items()) + "]")
        for rate in (1000.0, 5000.0):
            n = int(rate * min(secs, 6.0))
            rr = R[f"ref_paced_{int(rate)}"] = reference(n, rate, cpu_window=min(secs, 6.0) - 2)
            say(f"[3] reference at {rate:g} events/s ({n} events): {lat_line(rr['lat'])}   lost {rr['lost']}")
            say(f"    CPU: {rr['cpu_pct']:.1f}% of one core, {rr['cpu_per_10k']:.3f} CPU-s per 10 000 events"
                f"   [{rr['cpu_parts']}]")

    summary(a, R)
    say(f"\nbenchmark took {time.monotonic() - t_start:.0f} s")
    return 0


def summary(a: argparse.Namespace, R: dict[str, Any]) -> None:
    nan = float("nan")
    say("\n=== summary ===")
    cands = [(f"N={n}", R.get(f"full_{n}")) for n in (a.n, a.n_small)]
    for label, s in cands:
        if s is None:
            continue
        say(f"1. end to end ({label}): " + (f"{s['rate']:,.0f} events/s" if "rate" in s else "did not complete")
            + f", lost {s['lost']} of {s['n']}" + ("  [publisher stall]" if publisher_stalled(s) else ""))
    lossless = [(label, s) for label, s in cands if s and "rate" in s and s["lost"] == 0 and s["collector_done"]]
    best_label, best = max(lossless, key=lambda x: x[1]["rate"], default=("none", {}))
    for rate in (1000, 5000):
        s = R.get(f"paced_{rate}", {})
        say(f"2. latency at {rate // 1000}k events/s: {lat_line(s.get('lat', []))}, lost {s.get('lost')}")
    ref = R.get(f"ref_{a.n}")
    if ref:
        best_ref = max((R[k] for k in R if k.startswith("ref_") and "paced" not in k), key=lambda r: r.get("rate", 0))
        say(f"3. reference, full speed: {ref.get('rate', 0):,.0f} events/s (N={a.n}, lost {ref['lost']}), best "
            f"{best_ref.get('rate', 0):,.0f} events/s; busd best lossless / reference best = "
            f"{best.get('rate', 0) / best_ref['rate'] if best_ref.get('rate') else nan:.2f}")
        rp = R.get("ref_paced_1000")
        if rp:
            say(f"   reference at 1k events/s: {rp['cpu_pct']:.1f}% of one core, {rp['cpu_per_10k']:.3f} CPU-s per "
                f"10 000 events; p99 latency at 5k {pct([x * 1000 for x in R['ref_paced_5000']['lat']], 99):.2f} ms")
    p1 = R.get("paced_1000", {})
    say(f"4. CPU per 10 000 events at 1k events/s: {p1.get('cpu_per_10k', nan):.3f} CPU-s "
        f"({p1.get('cpu_pct', nan):.1f}% of one core)")
    say(f"5. idle CPU: {R.get('idle_cpu', nan):.2f}% of one core fresh, {R.get('idle_cpu_after', nan):.2f}% after load")
    idle, after, load = R.get("idle_rss", {}), R.get("idle_rss_after", {}), R.get("load_rss", {})
    say(f"6. busd RSS: {mb(idle.get('busd', 0))} idle fresh, {mb(load.get('busd', 0))} max under load, "
        f"{mb(after.get('busd', 0))} idle after load")
    say("   (collector and receiver RSS include the bench's own per-event records: ids, latencies)")
    for role in ("collector", "parser", "receiver"):
        say(f"   {role:9s} RSS: {mb(idle.get(role, 0))} idle fresh, {mb(load.get(role, 0))} max under load, "
            f"{mb(after.get(role, 0))} idle after load")

    table(a, R, best, best_label)


def _lat3(s: dict[str, Any] | None) -> str:
    lat = [x * 1000 for x in (s or {}).get("lat", [])]
    return f"{pct(lat, 50):.2f} / {pct(lat, 99):.2f} / {max(lat):.2f}" if lat else "-"


def table(a: argparse.Namespace, R: dict[str, Any], best: dict[str, Any], best_label: str) -> None:
    """busd and the bare reference side by side, with the targets of issue 12; also saved as JSON."""
    nan = float("nan")
    refs = [R[k] for k in R if k.startswith("ref_") and "paced" not in k]
    ref_best = max(refs, key=lambda r: r.get("rate", 0), default={})
    ratio = best.get("rate", 0) / ref_best["rate"] if ref_best.get("rate") else nan
    p1, p5, pl = R.get("paced_1000", {}), R.get("paced_5000", {}), R.get("paced_1000_linger", {})
    r1, r5 = R.get("ref_paced_1000", {}), R.get("ref_paced_5000", {})
    ref_small = R.get(f"ref_{a.n_small}", {})
    full = R.get(f"full_{a.n}", {})
    ref_full = R.get(f"ref_{a.n}", {})
    idle_cpu = max(R.get("idle_cpu", nan), R.get("idle_cpu_after", 0.0))
    load_rss = R.get("load_rss", {})
    lat1 = [x * 1000 for x in p1.get("lat", [])]
    lat5 = [x * 1000 for x in p5.get("lat", [])]
    p50_1k, p99_5k = (pct(lat1, 50) if lat1 else nan), (pct(lat5, 99) if lat5 else nan)
    lost = sum(int(R.get(k, {}).get("lost") or 0) for k in R if k.startswith(("full_", "paced_")))

    def cpu10k(per: dict[str, float] | None) -> str:
        return f"{sum(per.values()):.3f}" if per else "-"
    rows = [
        ("end to end, full speed (events/s, best lossless)", f"{best.get('rate', 0):,.0f} ({best_label})",
         f"{ref_best.get('rate', 0):,.0f}", ">= 50 000 and >= 1.5x",
         best.get("rate", 0) >= 50_000 and ratio >= 1.5),
        ("  busd / reference", f"{ratio:.2f}x", "1.00x", ">= 1.5x", ratio >= 1.5),
        ("events lost (all phases)", str(lost), str(sum(int(r.get("lost") or 0) for r in refs)), "0", lost == 0),
        ("CPU-s per 10 000 events at full speed", cpu10k(full.get("cpu_per_10k")),
         cpu10k(ref_full.get("cpu_per_10k_full")), "-", None),
        ("latency at 1k/s, p50 / p99 / max (ms)", _lat3(p1), _lat3(r1), "p50 < 2", p50_1k < 2),
        ("latency at 5k/s, p50 / p99 / max (ms)", _lat3(p5), _lat3(r5), "p99 < 5", p99_5k < 5),
        ("CPU at 1k/s (% of one core)", f"{p1.get('cpu_pct', nan):.1f}", f"{r1.get('cpu_pct', nan):.1f}", "< 20",
         p1.get("cpu_pct", nan) < 20),
        ("  publish_linger = 1 ms: latency at 1k/s (ms)", _lat3(pl), "", "p50 < 2", None),
        ("  publish_linger = 1 ms: CPU at 1k/s (%)", f"{pl.get('cpu_pct', nan):.1f}", "", "< 20", None),
        ("CPU idle (% of one core)", f"{idle_cpu:.2f}", f"{ref_small.get('idle_cpu', nan):.2f}", "< 0.5",
         idle_cpu < 0.5),
        ("RSS idle, busd / reference broker (MB)", f"{R.get('idle_rss', {}).get('busd', 0) / 2**20:.1f}",
         f"{ref_small.get('idle_rss', {}).get('broker', 0) / 2**20:.1f}", "< 60",
         R.get("idle_rss", {}).get("busd", 1e12) < 60 * 2**20),
        ("RSS peak under load, busd / reference broker (MB)", f"{load_rss.get('busd', 0) / 2**20:.1f}",
         f"{max((r.get('peak_rss', {}).get('broker', 0) for r in refs), default=0) / 2**20:.1f}",
         "bounded (see docs/operators.md, Memory)", None),
    ]
    say("\n=== busd and the bare reference, side by side (issue 12 targets) ===")
    say(f"{'measure':52} {'busd':>24} {'reference':>24}  {'target':26} verdict")
    for name, ours, theirs, target, ok in rows:
        verdict = "" if ok is None else ("PASS" if ok else "FAIL")
        say(f"{name:52} {ours:>24} {theirs:>24}  {target:26} {verdict}")
    save_rows("core", "busd + SDK plugins against the bare pyzmq pipeline (bench/run.py)", "reference", rows)


def save_rows(name: str, title: str, other: str, rows: list[tuple[str, str, str, str, bool | None]]) -> None:
    """Keep one bench's table rows (measure, busd, the other, target, pass) for ``bench/report.py``."""
    out = Path(os.environ.get("BENCH_RESULTS", ROOT / ".run" / "bench"))
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps({"title": title, "other": other, "rows": [
        {"measure": n, "busd": o, "other": t, "target": g, "pass": k} for n, o, t, g, k in rows]}))


if __name__ == "__main__":
    sys.exit(main())

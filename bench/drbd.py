#!/usr/bin/env python3
"""busd DRBD benchmark: ``drbdsetup events2`` change lines at full speed, collector to Prometheus.

Run from the repository root: ``.venv/bin/python bench/drbd.py`` (about a minute on 2 cores).

A real busd runs the built-in ``drbd`` collector, whose ``command`` is this file's ``generate``
mode (a stand-in for ``drbdsetup events2 --full --poll --timestamps --statistics``), the built-in
``drbd`` parser and the built-in ``prometheus`` receiver. Once every plugin is up, the generator
prints, as fast as the pipe takes them: the initial dump (``exists`` lines of ``--resources``
resources, each with a device, a connection, a peer device and a path, then ``exists -``), then
``--lines`` change lines cycling statistics updates of the peer device, device and connection of
each resource, with a state change now and then (every ``--state-every`` lines a resource's
promotion score moves, which the parser reports as ``DRBD_RESOURCE_CHANGED``). The last of those
lines promotes ``bench0`` to Primary after a statistics line with a marker value of ``written``.
The clock runs from the generator's first write until ``/metrics`` shows both (the prometheus
receiver handled the last line); the generator then goes on printing statistics at full speed.

Reported: lines/s end to end; CPU seconds per process; peak RSS of busd and every plugin (sampled
every 0.1 s from the first line to the SIGTERM); then busd gets SIGTERM while the generator is
still writing at full speed, and the time until busd has exited is measured. The table shows
drbd-reactor 1.11's figures on the same kind of machine beside (236k lines/s, RSS 74-471 MB with
its unbounded queue) and PASS/FAIL against the targets: >= 250 000 lines/s, RSS < 100 MB per
process, exit < 5 s after SIGTERM.
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
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BUSD, PY, ROOT, BusdProcess, RssSampler, Tree, cpu_delta, mb, save_rows, say, toml_str, wait_for

sys.path.insert(0, str(ROOT))
from bus import protocol
from bus.client import request

TS = "2024-05-02T10:02:00.000000+00:00"
MARK_WRITTEN = 987_654_321
"""The ``written`` (KiB) of ``bench0``'s last statistics line before its promotion."""
REACTOR = {"lines_s": 236_000, "rss": "74-471 MB"}
TARGET_RATE, TARGET_RSS, TARGET_EXIT = 250_000, 100 * 2**20, 5.0


# -- the generator (the collector's command) ------------------------------------------------------

def dump(resources: int) -> list[str]:
    """The initial ``exists`` lines of every resource, then ``exists -``."""
    out = []
    for r in range(resources):
        name, peer = f"bench{r}", f"peer{r}"
        out += [
            f"{TS} exists resource name:{name} role:Secondary suspended:no force-io-failures:no may_promote:yes "
            f"promotion_score:10101",
            f"{TS} exists connection name:{name} peer-node-id:1 conn-name:{peer} connection:Connected role:Secondary "
            f"congested:no ap-in-flight:0 rs-in-flight:0",
            f"{TS} exists device name:{name} volume:0 minor:{1000 + r} backing_dev:/dev/vg0/{name} disk:UpToDate "
            f"client:no quorum:yes open:yes size:1048508 read:0 written:0 al-writes:0 bm-writes:0 upper-pending:0 "
            f"lower-pending:0 al-suspended:no blocked:no",
            f"{TS} exists peer-device name:{name} peer-node-id:1 conn-name:{peer} volume:0 replication:Established "
            f"peer-disk:UpToDate peer-client:no resync-suspended:no received:0 sent:0 out-of-sync:0 pending:0 "
            f"unacked:0",
            f"{TS} exists path name:{name} peer-node-id:1 conn-name:{peer} local:ipv4:10.0.0.1:{7000 + r} "
            f"peer:ipv4:10.0.0.2:{7000 + r} established:yes",
        ]
    return [*out, f"{TS} exists -"]


def changes(count: int, resources: int, state_every: int, base: int = 0) -> list[str]:
    """``count`` change lines: statistics of each object in turn, a promotion score move every ``state_every``."""
    out = []
    for i in range(count):
        n = base + i
        r = (i // 3) % resources
        name, peer = f"bench{r}", f"peer{r}"
        if state_every and i % state_every == state_every - 1:
            out.append(f"{TS} change resource name:{name} promotion_score:{10101 + (i // state_every) % 2}")
        elif i % 3 == 0:
            out.append(f"{TS} change peer-device name:{name} peer-node-id:1 conn-name:{peer} volume:0 "
                       f"replication:Established peer-disk:UpToDate peer-client:no resync-suspended:no "
                       f"received:{n} sent:{2 * n} out-of-sync:0 pending:{n % 4} unacked:{n % 3}")
        elif i % 3 == 1:
            out.append(f"{TS} change device name:{name} volume:0 minor:{1000 + r} disk:UpToDate client:no quorum:yes "
                       f"open:yes size:1048508 read:{n} written:{2 * n} al-writes:{n // 64} bm-writes:0 "
                       f"upper-pending:{n % 5} lower-pending:{n % 2} al-suspended:no blocked:no")
        else:
            out.append(f"{TS} change connection name:{name} peer-node-id:1 conn-name:{peer} connection:Connected "
                       f"role:Secondary congested:no ap-in-flight:{n % 7} rs-in-flight:0")
    return out


def generate(a: argparse.Namespace) -> int:
    """Wait for the go FIFO, then print the dump, ``--lines`` change lines, the marker, and statistics forever."""
    with open(a.go) as go:  # blocks until the bench opens it for writing
        go.read(1)
    block = ("\n".join(changes(a.block, a.resources, a.state_every)) + "\n").encode()
    per_block = a.block
    out = sys.stdout.buffer
    Path(a.started).write_text(f"{time.time():.6f}\n")
    try:
        out.write(("\n".join(dump(a.resources)) + "\n").encode())
        left = a.lines - 1 - 1  # the marker statistics line and the promotion are the last two
        while left >= per_block:
            out.write(block)
            left -= per_block
        if left:
            out.write(("\n".join(changes(left, a.resources, a.state_every)) + "\n").encode())
        out.write((f"{TS} change device name:bench0 volume:0 minor:1000 disk:UpToDate client:no quorum:yes open:yes "
                   f"size:1048508 read:1 written:{MARK_WRITTEN} al-writes:1 bm-writes:0 upper-pending:0 "
                   f"lower-pending:0 al-suspended:no blocked:no\n"
                   f"{TS} change resource name:bench0 role:Primary may_promote:no promotion_score:10102\n").encode())
        out.flush()
        # then full speed until stopped: bench0's counters stay above the marker
        tail = ("\n".join(changes(a.block, a.resources, a.state_every, base=MARK_WRITTEN)) + "\n").encode()
        while True:
            out.write(tail)
    except (BrokenPipeError, ConnectionResetError):
        return 0


# -- the bench ------------------------------------------------------------------------------------

class DrbdRun(BusdProcess):
    """busd with the drbd collector on the generator, the drbd parser and the prometheus receiver."""

    label = "drbd bench"

    def __init__(self, a: argparse.Namespace) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="busdrbd", dir="/tmp"))
        self.runtime = self.dir / "run"
        self.go = self.dir / "go"
        os.mkfifo(self.go)
        self.started = self.dir / "started"
        self.config = self.dir / "busd.toml"
        self.log = self.dir / "busd.log"
        command = [PY, str(Path(__file__).resolve()), "generate", "--go", str(self.go), "--started", str(self.started),
                   "--lines", str(a.lines), "--resources", str(a.resources), "--state-every", str(a.state_every)]
        main_extra = "".join(f"{k} = {v}\n" for k, v in (("replay_buffer", a.replay_buffer),
                                                         ("parser_queue", a.parser_queue),
                                                         ("replay_buffer_bytes", a.replay_buffer_bytes),
                                                         ("parser_queue_bytes", a.parser_queue_bytes)) if v)
        self.config.write_text(f"""\
[main]
runtime_dir = {toml_str(str(self.runtime))}
hostname = "bench"
log_level = "info"
{main_extra}
[plugins.drbd-events]
type = "collector"
builtin = "drbd"
command = [{", ".join(toml_str(c) for c in command)}]
statistics_poll_interval = 0

[plugins.drbd]
type = "parser"
builtin = "drbd"

[plugins.prom]
type = "receiver"
builtin = "prometheus"
address = "127.0.0.1:0"
drbdadm = ""
""")
        self.control = protocol.endpoint(self.runtime, protocol.CONTROL)
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def plugins(self) -> dict[str, dict[str, Any]]:
        st = asyncio.run(request(self.control, {"op": "status"}, 5.0))
        return {p["name"]: p for p in st["plugins"]}

    def start(self) -> Tree:
        with self.log.open("wb") as logf:
            self.proc = subprocess.Popen([BUSD, "--config", str(self.config)], stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        names = ("drbd-events", "drbd", "prom")
        status = self.runtime / "status" / "prom.json"

        def up() -> bool:
            try:
                ps = self.plugins()
            except Exception:
                return False
            return (all(ps.get(n, {}).get("state") == "running" for n in names)
                    and ps["drbd"].get("delivery", {}).get("connected") and "acked" in ps["prom"]
                    and status.exists())
        if not wait_for(up, 30, 0.1):
            self.fail("plugins did not start")
        self.url = f"http://{json.loads(status.read_text())['listening'][0]}/metrics"
        ps = self.plugins()
        pids = {n: ps[n]["pid"] for n in names}
        tree = Tree(ps["drbd-events"]["pid"], {})  # for the generator, a child of the collector
        generator = next(iter(tree.procs["busd"].children()), None)
        busd = Tree(self.proc.pid, pids)
        if generator is not None:
            busd.procs["generator"] = generator
        return busd

    def metrics(self) -> str:
        try:
            with urllib.request.urlopen(self.url, timeout=5) as r:
                return str(r.read().decode())
        except OSError:
            return ""

    def marked(self) -> bool:
        """Whether /metrics shows the last line (bench0 Primary) and the marker statistics before it."""
        text = self.metrics()
        role = 'drbd_resource_role{drbd_resource_role="Primary",name="bench0"} 1.0'
        if role not in text:
            return False
        for line in text.splitlines():
            if line.startswith('drbd_device_written_bytes_total{') and 'name="bench0"' in line:
                return float(line.rsplit(" ", 1)[1]) >= MARK_WRITTEN * 1024
        return False




def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode")
    g = sub.add_parser("generate", help="the collector's command (used by the bench itself)")
    g.add_argument("--go", required=True)
    g.add_argument("--started", required=True)
    for p in (ap, g):
        p.add_argument("--lines", type=int, default=2_000_000)
        p.add_argument("--resources", type=int, default=4)
        p.add_argument("--state-every", type=int, default=1000, help="a state change every N lines (0: never)")
    g.add_argument("--block", type=int, default=6000, help="change lines generated once and printed again and again")
    ap.add_argument("--replay-buffer", type=int, default=0, help="main.replay_buffer (0: busd's default)")
    ap.add_argument("--replay-buffer-bytes", type=int, default=0, help="main.replay_buffer_bytes (0: busd's default)")
    ap.add_argument("--parser-queue-bytes", type=int, default=0, help="main.parser_queue_bytes (0: busd's default)")
    ap.add_argument("--parser-queue", type=int, default=0, help="main.parser_queue (0: busd's default)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = ap.parse_args()
    if a.mode == "generate":
        return generate(a)
    run = DrbdRun(a)
    say(f"drbd bench: {a.lines:,} events2 lines ({a.resources} resources, a state change every {a.state_every} lines)"
        f", replay_buffer {a.replay_buffer or 'default'}, parser_queue {a.parser_queue or 'default'}")
    try:
        tree = run.start()
        sampler = RssSampler(tree)
        sampler.start()
        cpu0 = tree.cpu()
        with open(run.go, "w") as go:  # the generator starts now
            go.write("g")
        if not wait_for(run.marked, 300, 0.05):
            run.fail("the last line did not reach /metrics within 300 s")
        t_end = time.time()
        t0 = float(run.started.read_text())
        elapsed = t_end - t0
        cpu = cpu_delta(cpu0, tree.cpu())
        rate = a.lines / elapsed
        ps = run.plugins()
        # under full load still (the generator goes on): SIGTERM busd
        time.sleep(1.0)
        assert run.proc is not None
        t_term = time.monotonic()
        run.proc.send_signal(signal.SIGTERM)
        try:
            run.proc.wait(30)
            exit_s = time.monotonic() - t_term
        except subprocess.TimeoutExpired:
            exit_s = float("inf")
        sampler.stop.set()
        rss = dict(sampler.max)
        col, par, rcv = ps["drbd-events"], ps["drbd"], ps["prom"]
        say(f"  end to end: {rate:,.0f} lines/s ({elapsed:.2f} s); collector events {col['events_in']:,} "
            f"({a.lines / max(1, col['events_in']):.0f} lines per raw event), parser out {par['events_in']:,} "
            f"synthetic, receiver handled {rcv.get('events_out', 0):,}; dropped "
            f"{ {n: p['dropped'] for n, p in ps.items() if p.get('dropped')} or 'none'}")
        total = sum(cpu.values())
        say(f"  CPU: {total:.2f} s ({1e6 * total / a.lines:.2f} us per line): "
            + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()))
        say("  peak RSS: " + ", ".join(f"{k} {mb(v)}" for k, v in rss.items()))
        say(f"  SIGTERM under load: busd exited after {exit_s:.2f} s with status {run.proc.returncode}")
        procs = {k: v for k, v in rss.items() if k != "generator"}
        worst = max(procs.values())
        rows = [("lines/s end to end", f"{rate:,.0f}", f"{REACTOR['lines_s']:,}", f">= {TARGET_RATE:,}",
                 verdict(rate >= TARGET_RATE)),
                ("peak RSS per process", f"{mb(worst)} (max)", REACTOR["rss"], "< 100 MB", verdict(worst < TARGET_RSS)),
                ("exit after SIGTERM", f"{exit_s:.2f} s", "-", "< 5 s", verdict(exit_s < TARGET_EXIT))]
        say()
        say(f"  {'':22} {'busd':>16} {'drbd-reactor 1.11':>18} {'target':>12}")
        for label, ours, theirs, target, ok in rows:
            say(f"  {label:22} {ours:>16} {theirs:>18} {target:>12}  {ok}")
        save_rows("drbd", "DRBD: events2 lines, drbd collector -> parser -> prometheus (bench/drbd.py)",
                  "drbd-reactor 1.11", [(label, ours, theirs, target, ok == "PASS") for label, ours, theirs, target, ok in rows])
        return 0
    finally:
        run.stop()
        run.cleanup(a.keep)


if __name__ == "__main__":
    sys.exit(main())

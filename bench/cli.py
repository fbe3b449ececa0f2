#!/usr/bin/env python3
"""The command-line path: JSON Lines into ``bus-emit`` -> busd -> ``bus-tail --json``, against a bare pyzmq pipeline.

Run from the repository root: ``.venv/bin/python bench/cli.py`` (part of ``make bench``).

busd's leg is what a new user tries first: a real ``busd`` with no plugins, ``bus-tail --json --count N``
writing to a file, and ``N`` JSON events (``system``, ``event_type``, ``kind``, ``severity``, ``dev_name``,
``msg``, ``extensions.seq``; no ``event_id``, so ``bus-emit`` fills the defaults) piped into ``bus-emit``.

The reference does the same two hops with the same JSON in and out, as bare as pyzmq gets: an emitter
(``json.loads`` + ``msgpack.packb`` per line, one PUSH message per event), a forwarder (PULL -> PUB, the
bytes untouched) and a tail (SUB, ``msgpack.unpackb``, ``json.dumps``, a line out per event). Every
process is its own, like busd's.

Both legs start with one warm-up event that the tail must print (so the subscription is live), then the
clock runs from starting the emitter to the tail having written all ``N`` events. Loss and duplicates
are counted by ``extensions.seq`` in the tail's output. CPU is user+system of each process (``wait4``
for the emitter and the tail, psutil for busd). The legs alternate, ``--repeat`` times each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BUSD, PY, ROOT, save_rows, say, toml_str, wait_for

BIN = Path(PY).parent


def events_file(path: Path, n: int) -> None:
    """Write ``n`` JSON Lines events, as a user's script would produce them."""
    with path.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"system": "bench", "event_type": "CLI_EVENT", "kind": "synthetic",
                                "severity": "warn", "dev_name": f"sd{chr(97 + i % 26)}",
                                "msg": f"command-line bench event {i}", "extensions": {"seq": i}}) + "\n")


def count_output(path: Path, n: int) -> dict[str, int]:
    """Count the timed events the tail printed (by ``extensions.seq``), past the warm-up line."""
    seqs: list[int] = []
    for line in path.read_text().splitlines():
        ev = json.loads(line)
        if ev.get("event_type") == "CLI_EVENT":
            seqs.append(ev["extensions"]["seq"])
    distinct = set(seqs)
    return {"printed": len(seqs), "lost": n - len(distinct & set(range(n))), "duplicated": len(seqs) - len(distinct)}


def lines_in(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def cpu_of(rusage: Any) -> float:
    return float(rusage.ru_utime + rusage.ru_stime)


def reap(proc: subprocess.Popen[bytes], timeout: float) -> tuple[int, float]:
    """Wait for ``proc`` (up to ``timeout`` s, then kill it); return its exit status and CPU seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            proc.returncode = os.waitstatus_to_exitcode(status)
            return proc.returncode, cpu_of(ru)
        time.sleep(0.002)
    proc.kill()
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return -9, cpu_of(ru)


# -- busd's leg ---------------------------------------------------------------------------------------

def busd_leg(work: Path, data: Path, n: int) -> dict[str, Any]:
    d = Path(tempfile.mkdtemp(prefix="buscli", dir=work))
    cfg = d / "busd.toml"
    cfg.write_text(f'[main]\nruntime_dir = {toml_str(str(d / "run"))}\nhostname = "bench"\nlog_level = "info"\n')
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    log = (d / "busd.log").open("wb")
    busd = subprocess.Popen([BUSD, "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    out = d / "tail.jsonl"
    try:
        if not wait_for(lambda: (d / "run" / "control.sock").exists(), 20):
            raise SystemExit("busd did not start: " + (d / "busd.log").read_text()[-2000:])
        with out.open("wb") as f:
            tail = subprocess.Popen([str(BIN / "bus-tail"), "--config", str(cfg), "--json", "--count", str(n + 1)],
                                    stdout=f, env=env)
        # the warm-up event, again until the tail has subscribed and printed it
        while lines_in(out) < 1:
            subprocess.run([str(BIN / "bus-emit"), "--config", str(cfg), "--system", "bench", "--event-type",
                            "WARMUP", "--kind", "synthetic", "--msg", "warm-up"], env=env, check=True)
            wait_for(lambda: lines_in(out) >= 1, 1.0, 0.01)
            if tail.poll() is not None:
                raise SystemExit("bus-tail exited early")
        bproc = psutil.Process(busd.pid)
        c0 = bproc.cpu_times()
        t0 = time.monotonic()
        with data.open("rb") as f:
            emit = subprocess.Popen([str(BIN / "bus-emit"), "--config", str(cfg)], stdin=f, env=env)
        status_tail, cpu_tail = reap(tail, 300)
        t1 = time.monotonic()
        status_emit, cpu_emit = reap(emit, 60)
        c1 = bproc.cpu_times()
        res = count_output(out, n)
        res.update(rate=n / (t1 - t0), seconds=t1 - t0, tail_status=status_tail, emit_status=status_emit,
                   cpu={"bus-emit": cpu_emit, "busd": (c1.user + c1.system) - (c0.user + c0.system),
                        "bus-tail": cpu_tail})
        return res
    finally:
        busd.terminate()
        try:
            busd.wait(10)
        except subprocess.TimeoutExpired:
            busd.kill()
        log.close()


# -- the bare reference -------------------------------------------------------------------------------

def role_emit(ep: str) -> None:
    import msgpack
    import zmq

    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 0)
    push.setsockopt(zmq.LINGER, -1)
    push.connect(ep + "-in")
    pack = msgpack.Packer().pack
    loads = json.loads
    for line in sys.stdin.buffer:
        push.send(pack(loads(line)))
    push.close()
    ctx.term()


def role_forward(ep: str) -> None:
    import zmq

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.RCVHWM, 0)
    pull.bind(ep + "-in")
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 0)
    pub.bind(ep + "-out")
    recv, send = pull.recv, pub.send
    while True:
        send(recv())


def role_tail(ep: str, n: int) -> None:
    import msgpack
    import zmq

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(ep + "-out")
    out = sys.stdout
    unpack, dumps = msgpack.unpackb, json.dumps
    for i in range(n):
        out.write(dumps(unpack(sub.recv()), separators=(",", ":"), ensure_ascii=False) + "\n")
        if i == 0:
            out.flush()  # the warm-up line shows the subscription is live
    out.flush()


def reference_leg(work: Path, data: Path, n: int) -> dict[str, Any]:
    d = Path(tempfile.mkdtemp(prefix="refcli", dir=work))
    ep = f"ipc://{d}/ref"
    me = [PY, str(Path(__file__).resolve()), "--role"]
    fwd = subprocess.Popen([*me, "forward", "--endpoint", ep], start_new_session=True)
    out = d / "tail.jsonl"
    try:
        with out.open("wb") as f:
            tail = subprocess.Popen([*me, "tail", "--endpoint", ep, "--n", str(n + 1)], stdout=f)
        warm = d / "warm.jsonl"
        warm.write_text(json.dumps({"system": "bench", "event_type": "WARMUP", "msg": "warm-up"}) + "\n")
        while lines_in(out) < 1:
            with warm.open("rb") as f:
                subprocess.run([*me, "emit", "--endpoint", ep], stdin=f, check=True)
            wait_for(lambda: lines_in(out) >= 1, 1.0, 0.01)
        fproc = psutil.Process(fwd.pid)
        c0 = fproc.cpu_times()
        t0 = time.monotonic()
        with data.open("rb") as f:
            emit = subprocess.Popen([*me, "emit", "--endpoint", ep], stdin=f)
        status_tail, cpu_tail = reap(tail, 300)
        t1 = time.monotonic()
        status_emit, cpu_emit = reap(emit, 60)
        c1 = fproc.cpu_times()
        res = count_output(out, n)
        res.update(rate=n / (t1 - t0), seconds=t1 - t0, tail_status=status_tail, emit_status=status_emit,
                   cpu={"emit": cpu_emit, "forward": (c1.user + c1.system) - (c0.user + c0.system),
                        "tail": cpu_tail})
        return res
    finally:
        fwd.kill()
        fwd.wait()


# -- report -------------------------------------------------------------------------------------------

def line(label: str, r: dict[str, Any], n: int) -> str:
    cpu = ", ".join(f"{k} {10_000 * v / n:.3f}" for k, v in r["cpu"].items())
    return (f"{label:9s} {r['rate']:>10,.0f} events/s   lost {r['lost']}   duplicated {r['duplicated']}   "
            f"({r['seconds']:.2f} s; CPU-s per 10 000 events: {cpu})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[50_000, 200_000], help="events per run (one leg per size)")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each leg, alternating")
    ap.add_argument("--role", choices=("emit", "forward", "tail"), help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.role == "emit":
        role_emit(a.endpoint)
        return 0
    if a.role == "forward":
        role_forward(a.endpoint)
        return 0
    if a.role == "tail":
        role_tail(a.endpoint, a.n[0])
        return 0
    work = Path(tempfile.mkdtemp(prefix="benchcli", dir="/tmp"))
    results: dict[int, Any] = {}
    for n in a.n:
        data = work / f"events-{n}.jsonl"
        events_file(data, n)
        say(f"command-line path: {n} JSON events, bus-emit -> busd -> bus-tail --json, against a bare pyzmq "
            f"two-hop pipeline ({a.repeat} runs each, alternating)")
        busd_runs: list[dict[str, Any]] = []
        ref_runs: list[dict[str, Any]] = []
        for _ in range(a.repeat):
            busd_runs.append(busd_leg(work, data, n))
            say(line("busd", busd_runs[-1], n))
            ref_runs.append(reference_leg(work, data, n))
            say(line("bare", ref_runs[-1], n))
        lossless = [r for r in busd_runs if r["lost"] == 0 and r["duplicated"] == 0]
        best = max((r["rate"] for r in lossless), default=0.0)
        ref_best = max(r["rate"] for r in ref_runs)
        ratio = best / ref_best if ref_best else 0.0
        results[n] = {"busd": busd_runs, "reference": ref_runs, "best": best, "reference_best": ref_best,
                      "ratio": ratio}
    say("")
    for n, r in results.items():
        say(f"  {'PASS' if r['ratio'] >= 1.5 else 'FAIL'} command line, N={n}: busd {r['best']:,.0f} events/s "
            f"(lossless), bare {r['reference_best']:,.0f} events/s: {r['ratio']:.2f}x (target >= 1.5x)")
    (work / "result.json").write_text(json.dumps({str(n): r for n, r in results.items()}))
    save_rows("cli", "command line: JSON Lines -> bus-emit -> busd -> bus-tail --json (bench/cli.py)",
              "bare pyzmq", [row for n, r in results.items() for row in (
                  (f"N={n}: events/s, zero loss", f"{r['best']:,.0f}", f"{r['reference_best']:,.0f}", "-", None),
                  (f"N={n}: busd / bare", f"{r['ratio']:.2f}x", "1.00x", ">= 1.5x", r["ratio"] >= 1.5))])
    say(f"  (results in {work / 'result.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

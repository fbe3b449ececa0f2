#!/usr/bin/env python3
"""busd fault matrix (issue 14): what each fault costs, counted by event id. ``make faults``, a few minutes.

Every row runs a real busd (``tests/conftest.py``'s :class:`Bus`) with real plugins, injects one fault
and counts by event id: the sender records every id it sent, the sink every id it got (``bench/plugins/
sink.py``, or the webhook server, or the history database). ``delivered`` = distinct ids seen,
``lost`` = sent - seen, ``duplicated`` = receipts - distinct. ``reported`` is what busd says it lost
(``missed`` of ``BUS_EVENTS_LOST`` events plus the documented drop counters of ``busctl status``).

The rule each row is checked against: nothing is lost unless a documented bound is exceeded, and then
busd says how many (``lost == reported``); duplicates only where the design promises at least once
(receivers across a restart, webhook deliveries), never from a parser or a producer's resend.

The table is printed and saved to ``.run/bench/faults.json`` (the format ``bench/report.py`` reads).
The script exits 1 when a row fails.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ROOT / "bench" / "plugins"
sys.path.insert(0, str(ROOT / "tests"))
from conftest import BIN, PY, Bus, outliving_plugins, plugin_cmd, read_lines, wait_for  # noqa: E402
from webhook_server import WebhookServer  # noqa: E402

N = 20_000


def bench_cmd(name: str) -> list[str]:
    """The ``exec`` argv of a plugin in bench/plugins/."""
    return [PY, str(PLUGINS / f"{name}.py")]


@dataclass
class Row:
    """One fault's figures and verdict."""

    fault: str
    sent: int
    delivered: int
    lost: int
    duplicated: int
    reported: int
    recover: str
    note: str
    dup_ok: bool = False
    ok: bool = field(init=False)

    def __post_init__(self) -> None:
        self.ok = self.lost == self.reported and (self.dup_ok or self.duplicated == 0)


def tally(fault: str, sent: list[str], receipts: list[str], reported: int, recover: str, note: str,
          dup_ok: bool = False) -> Row:
    """Count ``receipts`` against ``sent`` by id (receipts of ids never sent are ignored)."""
    wanted = set(sent)
    got = [i for i in receipts if i in wanted]
    seen = set(got)
    return Row(fault, len(wanted), len(seen), len(wanted - seen), len(got) - len(seen), reported, recover, note, dup_ok)


def sink_lines(path: Path) -> list[dict[str, Any]]:
    """The complete lines the sink wrote so far."""
    return [json.loads(line) for line in read_lines(path)]


def sink_ids(path: Path) -> list[str]:
    """Every event id the sink received (``BUS_EVENTS_LOST`` notices left out), in order."""
    return [r["id"] for r in sink_lines(path) if r["type"] != "BUS_EVENTS_LOST"]


def lost_notices(path: Path) -> int:
    """How many events the sink was told it missed (``BUS_EVENTS_LOST``)."""
    return sum(r.get("missed", 0) for r in sink_lines(path) if r["type"] == "BUS_EVENTS_LOST")


def pauses(path: Path, t_fault: float, window: float) -> list[tuple[float, float]]:
    """``(length, end)`` of every stretch without a receipt at the sink within ``window`` s after ``t_fault``.

    The first stretch runs from the fault to the first receipt.
    """
    times = [t_fault, *sorted(r["t"] for r in sink_lines(path) if t_fault <= r["t"] <= t_fault + window)]
    return [(b - a, b) for a, b in itertools.pairwise(times)] or [(float("nan"), float("nan"))]


def resumed_after(path: Path, t_fault: float, window: float = 10.0) -> float:
    """Seconds from ``t_fault`` to the end of the longest pause after it: when the stream flowed again."""
    return max(pauses(path, t_fault, window))[1] - t_fault


def longest_pause(path: Path, t_fault: float, window: float) -> float:
    """The longest time without a receipt at the sink within ``window`` seconds after ``t_fault``."""
    return max(pauses(path, t_fault, window))[0]


def dropped_total(bus: Bus, *, receivers_lost: bool = True) -> int:
    """busd's documented loss counters over every plugin: ``parser_queue_full`` and, for receivers, ``lost``."""
    total = 0
    for p in bus.status()["plugins"]:
        total += p["dropped"].get("parser_queue_full", 0)
        if receivers_lost and p["type"] == "receiver":
            total += p["dropped"].get("lost", 0)
    return total


@contextlib.contextmanager
def running_bus(plugins: dict[str, dict[str, Any]], main: dict[str, Any] | None = None, *,
                start: bool = True, base: Path | None = None) -> Iterator[Bus]:
    """A busd in a fresh short directory under /tmp, stopped and removed afterwards (plugins too)."""
    bus = Bus(base or Path(tempfile.mkdtemp(prefix="flt", dir="/tmp")))
    bus.write(plugins, main)
    try:
        if start:
            bus.start()
        yield bus
    finally:
        bus.close()
        outliving_plugins(bus.runtime_dir)
        shutil.rmtree(bus.base, ignore_errors=True)


class Emitter:
    """``bus-emit`` reading JSON Lines from a thread that writes ``count`` events at ``rate`` per second.

    Every id written to bus-emit's stdin counts as sent. ``hold`` (an Event) pauses the writer after
    ``hold_at`` events until it is set, for a fault in the middle of the stream.
    """

    def __init__(self, bus: Bus, count: int, rate: float, kind: str = "synthetic", size: int = 0) -> None:
        self.bus, self.count, self.rate, self.kind, self.size = bus, count, rate, kind, size
        self.ids: list[str] = []
        self.proc = subprocess.Popen([str(BIN / "bus-emit"), "--config", str(bus.config)], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.thread = threading.Thread(target=self._write, daemon=True)
        self.thread.start()

    def _write(self) -> None:
        assert self.proc.stdin is not None
        start = time.monotonic()
        pad = "x" * self.size
        for i in range(self.count):
            if self.rate:
                delay = start + i / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            event_id = str(uuid.uuid4())
            self.ids.append(event_id)
            self.proc.stdin.write(json.dumps({"system": "fault", "event_type": "F", "msg": f"{i} {pad}",
                                              "kind": self.kind, "event_id": event_id}) + "\n")
            self.proc.stdin.flush()
        self.proc.stdin.close()

    def wait(self, timeout: float = 120) -> None:
        """Wait until every event was written and bus-emit had them all acknowledged."""
        self.thread.join(timeout)
        rc = self.proc.wait(timeout)
        if rc != 0:
            raise AssertionError(f"bus-emit exited {rc}: {self.proc.stderr.read() if self.proc.stderr else ''}")


def settle(pred: Callable[[], bool], timeout: float) -> bool:
    """Wait for ``pred``; False (not an exception) when it does not come: the row reports what it saw."""
    try:
        wait_for(pred, timeout, "the row's end state")
        return True
    except AssertionError:
        return False


# -- rows ---------------------------------------------------------------------------------------------

def pipeline(victim: str) -> Row:
    """Rows 1 and 2: collector -> parser -> receiver, 20k events at 2 000/s; SIGKILL ``victim`` after 5 000."""
    out_dir = Path(tempfile.mkdtemp(prefix="fltc", dir="/tmp"))
    sink = out_dir / "sink.jsonl"
    plugins = {"col": {"type": "collector", "exec": bench_cmd("collector"), "out": str(out_dir),
                       "phases": [{"count": N, "rate": 2000}]},
               "tag": {"type": "parser", "exec": plugin_cmd("tag")},
               "sink": {"type": "receiver", "exec": bench_cmd("sink"), "out": str(sink)}}
    try:
        with running_bus(plugins) as bus:
            bus.wait_running("col", "tag", "sink")
            ready = out_dir / "collector.ready"
            wait_for(ready.exists, what="the collector ready")
            os.kill(int(ready.read_text()), signal.SIGUSR1)
            wait_for(lambda: len(read_lines(sink)) >= 5000, 60, "5 000 events through")
            name = "tag" if victim == "parser" else "sink"
            os.kill(bus.plugin(name)["pid"], signal.SIGKILL)
            t_kill = time.time()
            ids_file = out_dir / "collector-0.ids"
            wait_for(ids_file.exists, 90, "every event acknowledged to the collector")
            sent = [i for i in ids_file.read_text().split("\n") if i]
            settle(lambda: set(sent) <= set(sink_ids(sink)), 60)
            drained = max(r["t"] for r in sink_lines(sink)) - t_kill
            status = bus.plugin(name)
            reported = lost_notices(sink) + dropped_total(bus, receivers_lost=False)
            note = (f"SIGKILL after 5 000 received; restarts={status['restarts']}"
                    + (f", redelivered={status['delivery']['redelivered']}" if victim == "parser" else "")
                    + f"; recover = kill -> stream flowing again (last event {drained:.1f} s after the kill:"
                    " the paced stream ends)")
            if victim == "parser":
                return tally("1 parser SIGKILLed mid-stream", sent, sink_ids(sink), reported,
                             f"{resumed_after(sink, t_kill):.2f} s", note)
            return tally("2 receiver SIGKILLed mid-stream", sent, sink_ids(sink), reported,
                         f"{resumed_after(sink, t_kill):.2f} s", note + "; duplicates allowed (at least once "
                         "from the last progress report)", dup_ok=True)
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)


def busd_killed() -> Row:
    """Row 3: busd SIGKILLed and started again while bus-emit feeds it 6 000 events at 500/s."""
    with running_bus({}, start=False) as bus:
        sink = bus.base / "sink.jsonl"
        bus.write({"sink": {"type": "receiver", "exec": bench_cmd("sink"), "out": str(sink)}})
        bus.start()
        bus.wait_running("sink")
        emitter = Emitter(bus, 6000, 500)
        wait_for(lambda: len(read_lines(sink)) >= 2000, 30, "2 000 events through")
        bus.stop(signal.SIGKILL)
        t_kill = time.time()
        bus.notifications.clear()  # the first run's READY=1 must not count for the second
        bus.start()
        bus.wait_running("sink")
        t_up = time.time() - t_kill
        emitter.wait()
        settle(lambda: set(emitter.ids) <= set(sink_ids(sink)), 30)
        return tally("3 busd SIGKILLed under bus-emit", emitter.ids, sink_ids(sink), lost_notices(sink),
                     f"{resumed_after(sink, t_kill):.2f} s",
                     f"busd and its sink running again {t_up:.2f} s after the kill; recover = kill -> first event at the "
                     "sink from the new busd (bus-emit held its input meanwhile and resent the unacknowledged)")


def reload(changed: bool) -> Row:
    """Row 4: bus-emit at 1 000 raw events/s through a parser; SIGHUP after 4 s (the parser changed or not)."""
    with running_bus({}, start=False) as bus:  # started below, on the table it is then reloaded from
        sink = bus.base / "sink.jsonl"
        plugins = {"tag": {"type": "parser", "exec": plugin_cmd("tag")},
                   "sink": {"type": "receiver", "exec": bench_cmd("sink"), "out": str(sink)}}
        bus.write(plugins)
        bus.start()
        bus.wait_running("tag", "sink")
        pid = bus.plugin("tag")["pid"]
        emitter = Emitter(bus, 8000, 1000, kind="raw")
        wait_for(lambda: len(read_lines(sink)) >= 4000, 30, "4 000 events through")
        if changed:
            plugins["tag"]["generation"] = 2  # an option the parser ignores: a changed table all the same
            bus.write(plugins)
        assert bus.proc is not None
        bus.proc.send_signal(signal.SIGHUP)
        t_hup = time.time()
        if changed:
            wait_for(lambda: bus.plugin("tag")["pid"] != pid, what="the changed parser restarted")
        emitter.wait()
        settle(lambda: set(emitter.ids) <= set(sink_ids(sink)), 30)
        restarted = bus.plugin("tag")["pid"] != pid
        reported = lost_notices(sink) + dropped_total(bus)
        what = "parser's table changed" if changed else "nothing changed"
        return tally(f"4 SIGHUP reload at 1k/s, {what}", emitter.ids, sink_ids(sink), reported,
                     f"{longest_pause(sink, t_hup, 3.0):.3f} s",
                     f"parser restarted: {'yes' if restarted else 'no'}; recover = the longest pause in receipts "
                     "within 3 s of the SIGHUP (events arrive every 1 ms: 0.03 s is ordinary jitter)")


def webhook_table(bus: Bus, server: WebhookServer, state_dir: Path, **options: Any) -> None:
    """Configure one webhook receiver ``wh`` (every event) with one webhook ``h`` to ``server``."""
    table = {"type": "receiver", "builtin": "webhook", "state_dir": str(state_dir), "filter": {"kind": "all"},
             **options}
    bus.write({"wh": table}, extra=f'\n[[plugins.wh.webhooks]]\nurl = "{server.url}/h"\nname = "h"\nformat = "busd"\n')


def hook(bus: Bus) -> dict[str, Any]:
    """Webhook ``h``'s entry of the receiver's status file."""
    path = bus.runtime_dir / "status" / "wh.json"
    with contextlib.suppress(OSError, ValueError):
        return next((h for h in json.loads(path.read_text())["webhooks"] if h["name"] == "h"), {})
    return {}


def received_ids(server: WebhookServer) -> list[str]:
    """The ``X-Busd-Event-Id`` of every request the server accepted."""
    return [r.header("X-Busd-Event-Id") or "" for r in server.received()]


def webhook_down() -> Row:
    """Row 5: the webhook target down while 10 minutes' worth of events (10/s) arrive, compressed."""
    server = WebhookServer()
    try:
        with running_bus({}, start=False) as bus:
            webhook_table(bus, server, bus.base / "outbox", retry_max=2.0)
            bus.start()
            bus.wait_running("wh")
            emitter = Emitter(bus, 6000, 400)  # 600 s x 10 events/s, in 15 s
            emitter.wait()
            wait_for(lambda: hook(bus).get("depth") == 6000, 30, "6 000 events in the outbox")
            server.up()
            t_up = time.time()
            settle(lambda: set(emitter.ids) <= set(received_ids(server)) and hook(bus).get("depth") == 0, 60)
            drained = time.time() - t_up
            reported = int(bus.plugin("wh").get("counters", {}).get("dropped", 0))
            return tally("5 webhook target down (10 min, compressed)", emitter.ids, received_ids(server), reported,
                         f"{drained:.2f} s",
                         "compressed: 6 000 events (10 min at 10/s) sent at 400/s during a 15 s outage, retry_max "
                         "60 s -> 2 s; recover = target up -> outbox empty, every id received; at least once",
                         dup_ok=True)
    finally:
        server.close()


@contextlib.contextmanager
def full_tmpfs(base: Path, mib: int = 4) -> Iterator[tuple[Path, Path]]:
    """A tmpfs of ``mib`` MiB mounted at ``base/small``, unmounted afterwards; yields it and the filler's path."""
    mnt = base / "small"
    mnt.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(mnt)], check=True, capture_output=True)
    try:
        yield mnt, mnt / "filler"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(filler: Path) -> None:
    """Write zeros to ``filler`` until the filesystem is full."""
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)


def outbox_full_disk(mib: int) -> Row:
    """Row 6a: the webhook's outbox on a full ``mib`` MiB filesystem while 3 000 events arrive; space freed after."""
    server = WebhookServer().up()
    base = Path(tempfile.mkdtemp(prefix="flt", dir="/tmp"))
    try:
        with full_tmpfs(base, mib) as (mnt, filler), running_bus({}, start=False, base=base) as bus:
            webhook_table(bus, server, mnt)
            bus.start()
            bus.wait_running("wh")
            wait_for(lambda: hook(bus).get("depth") == 0, what="the outbox open")
            fill(filler)
            emitter = Emitter(bus, 3000, 0, size=200)
            wait_for(lambda: "outbox" in (hook(bus).get("last_error") or {}).get("error", ""), 30,
                     "the write error in the status")
            held = 3000 - len(set(received_ids(server)))
            filler.unlink()
            t_free = time.time()
            emitter.wait()
            done = settle(lambda: set(emitter.ids) <= set(received_ids(server)) and hook(bus).get("depth") == 0, 30)
            drained = time.time() - t_free
            reported = int(bus.plugin("wh").get("counters", {}).get("dropped", 0))
            wal = sum(f.stat().st_size for f in mnt.glob("wh/*-wal"))
            return tally(f"6a webhook outbox fs full ({mib} MiB)", emitter.ids, received_ids(server), reported,
                         f"{drained:.2f} s" if done else "never",
                         f"{mib} MiB tmpfs filled with dd; {held} events held (handle() retries the write every 1 s, "
                         f"busd's replay buffer keeps them); recover = space freed -> every id received (gave up "
                         f"after 30 s); WAL at the end {wal / 2**20:.1f} MiB; lag {bus.plugin('wh')['lag']}")
    finally:
        server.close()
        shutil.rmtree(base, ignore_errors=True)


def history_full_disk() -> Row:
    """Row 6b: the history database on a full filesystem while 3 000 events arrive; space freed after."""
    base = Path(tempfile.mkdtemp(prefix="flt", dir="/tmp"))
    try:
        with full_tmpfs(base) as (mnt, filler), running_bus({}, start=False, base=base) as bus:
            bus.write({"hist": {"type": "receiver", "builtin": "history", "filter": {"kind": "all"},
                                "path": str(mnt / "history.sqlite"), "max_bytes": 0}})
            bus.start()
            bus.wait_running("hist")

            def counter(name: str) -> int:
                return int(bus.plugin("hist").get("counters", {}).get(name, 0))

            fill(filler)
            emitter = Emitter(bus, 3000, 0, size=200)
            emitter.wait()
            wait_for(lambda: counter("pending") > 0, 30, "events pending on the full disk")
            pending = counter("pending")
            filler.unlink()
            t_free = time.time()
            settle(lambda: counter("stored") + counter("duplicates") >= 3000 and counter("pending") == 0, 60)
            drained = time.time() - t_free
            res = bus.run("busctl", "query", "--json")
            stored = [json.loads(line)["event_id"] for line in res.stdout.splitlines()]
            return tally("6b history filesystem full", emitter.ids, stored, counter("lost"), f"{drained:.2f} s",
                         f"4 MiB tmpfs filled with dd; {pending} events pending in memory (max_pending 100 000); "
                         f"recover = space freed -> pending 0, every id in busctl query; lost counter = "
                         f"{counter('lost')}")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def deaf_receiver() -> Row:
    """Row 7a: a receiver that subscribes and never reads, beside a sink; 30 000 events of 500 bytes."""
    with running_bus({}, start=False) as bus:
        sink = bus.base / "sink.jsonl"
        bus.write({"deaf": {"type": "receiver", "exec": bench_cmd("deaf")},
                   "sink": {"type": "receiver", "exec": bench_cmd("sink"), "out": str(sink)}},
                  main={"replay_buffer": 5000})
        bus.start()
        bus.wait_running("deaf", "sink")
        t0 = time.time()
        emitter = Emitter(bus, 30_000, 0, size=500)
        emitter.wait()
        settle(lambda: set(emitter.ids) <= set(sink_ids(sink)), 60)
        took = max(r["t"] for r in sink_lines(sink)) - t0
        status = {p["name"]: p for p in bus.status()["plugins"]}
        deaf = status["deaf"]
        broker = bus.status()["broker"]
        row = tally("7a receiver that never reads", emitter.ids, sink_ids(sink), lost_notices(sink),
                    f"{took:.2f} s",
                    f"the sink beside it got everything (recover = first send -> last receipt, nothing waited); "
                    f"the deaf one: lag={deaf.get('lag')}, its missed events are in no counter until it reads "
                    f"(ZeroMQ PUB drops at its HWM; replay_buffer 5 000 < 30 000 sent: on reading it would get "
                    f"BUS_EVENTS_LOST); producers held back={broker.get('held_back_requests', 0)}")
        return row


def deaf_parser() -> Row:
    """Row 7b: a parser that never reads its deliveries beside a working one; parser_queue 2 000, 10 000 events."""
    with running_bus({}, start=False) as bus:
        sink = bus.base / "sink.jsonl"
        bus.write({"deaf": {"type": "parser", "exec": bench_cmd("deaf")},
                   "tag": {"type": "parser", "exec": plugin_cmd("tag")},
                   "sink": {"type": "receiver", "exec": bench_cmd("sink"), "out": str(sink)}},
                  main={"parser_queue": 2000})
        bus.start()
        bus.wait_running("deaf", "tag", "sink")
        t0 = time.time()
        emitter = Emitter(bus, 10_000, 0, kind="raw")
        emitter.wait()
        settle(lambda: set(emitter.ids) <= set(sink_ids(sink)), 60)
        took = time.time() - t0
        status = bus.status()
        deaf = next(p for p in status["plugins"] if p["name"] == "deaf")
        full = deaf["dropped"].get("parser_queue_full", 0)
        # the deaf parser's own account: of the 10 000 events routed to it, busd keeps its queue (waiting
        # and delivered unacknowledged, at most parser_queue); the rest are dropped, counted as parser_queue_full
        kept = deaf["delivery"]["pending"]
        routed = [f"deaf:{i}" for i in range(10_000)]
        row = tally("7b parser that never reads", routed, routed[:kept], full, f"{took:.2f} s",
                    f"counted for the deaf parser: delivered = kept in its queue ({kept}, "
                    f"{deaf['delivery']['in_flight']} of them delivered unacknowledged), reported = parser_queue_full "
                    f"({full}); the working parser's sink got {len(set(sink_ids(sink)) & set(emitter.ids))} of "
                    f"10 000; bus-emit held back {status['broker'].get('held_back_requests', 0)} times, until busd "
                    "called the deaf parser stalled (10 s without an ack); recover = first send -> every event "
                    "at the sink")
        return row


ROWS: list[Callable[[], Row]] = [lambda: pipeline("parser"), lambda: pipeline("receiver"), busd_killed,
                                 lambda: reload(False), lambda: reload(True), webhook_down, lambda: outbox_full_disk(4),
                                 lambda: outbox_full_disk(16),
                                 history_full_disk, deaf_receiver, deaf_parser]


def print_table(rows: list[Row]) -> None:
    """Print the matrix."""
    head = f"{'fault':44} {'sent':>7} {'delivered':>9} {'lost':>6} {'dup':>5} {'reported':>8} {'recover':>9}  verdict"
    print("\n==================== make faults: the fault matrix ====================")
    print(head)
    for r in rows:
        print(f"{r.fault:44} {r.sent:>7} {r.delivered:>9} {r.lost:>6} {r.duplicated:>5} {r.reported:>8} "
              f"{r.recover:>9}  {'PASS' if r.ok else 'FAIL'}")
        print(f"    {r.note}")


def main() -> int:
    """Run every row (a row that breaks is a FAIL, the others still run), print and save the table."""
    if os.geteuid() != 0:
        print("make faults needs root (row 6 mounts a small tmpfs)")
        return 2
    started = time.monotonic()
    rows = []
    picked = [int(a) for a in sys.argv[1:]]  # row indexes (0-based) to run only those
    for run in (ROWS[i] for i in picked) if picked else ROWS:
        t = time.monotonic()
        try:
            row = run()
        except Exception as exc:
            row = Row(getattr(run, "__name__", "row"), 0, 0, 0, 0, -1, "-", f"ERROR: {exc!r}"[:300])
        print(f"{row.fault}: sent {row.sent} delivered {row.delivered} lost {row.lost} dup {row.duplicated} "
              f"reported {row.reported} recover {row.recover} -> {'PASS' if row.ok else 'FAIL'} "
              f"({time.monotonic() - t:.0f} s)", flush=True)
        rows.append(row)
    print_table(rows)
    print(f"\n{len(rows)} rows in {time.monotonic() - started:.0f} s; {sum(not r.ok for r in rows)} FAIL")
    out = ROOT / ".run" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "faults.json").write_text(json.dumps({
        "title": "Fault matrix (make faults): counted by event id", "other": "lost / dup / reported",
        "rows": [{"measure": r.fault, "busd": f"{r.delivered}/{r.sent} in {r.recover}",
                  "other": f"{r.lost} / {r.duplicated} / {r.reported}", "target": "lost == reported",
                  "pass": r.ok} for r in rows]}, indent=1))
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

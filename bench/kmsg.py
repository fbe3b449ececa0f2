#!/usr/bin/env python3
"""busd kmsg benchmark: 100 000 kernel log records from a file to synthetic events out.

Run from the repository root: ``.venv/bin/python bench/kmsg.py`` (part of ``make bench``).

A real busd runs the built-in ``kmsg`` collector on a file (``since_boot = true``), the six kernel
parsers with their default filters, and a receiver that counts synthetic events (``bench/plugins/
tally.py``). Once every plugin is up, 100 000 records in ``/dev/kmsg`` format are appended to the
file in one write: 90% noise lines of the kinds a busy host logs, 10% storage errors (SCSI failures
of four or five records each, block I/O errors, multipath path failures and reinstatements, ext4
and XFS errors, md disk failures, thin pool warnings). The clock runs from the write until the
collector has ingested every record, every parser has acknowledged everything routed to it and the
receiver has caught up. Reported: records/s end to end, synthetic events out, CPU seconds of busd and
its plugins per 1000 records (and per process), and peak RSS.
"""

# ruff: noqa: E501  (the record templates are real kernel lines, kept whole)
from __future__ import annotations

import argparse
import asyncio
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import BUSD, PY, ROOT, BusdProcess, RssSampler, Tree, cpu_delta, mb, say, toml_str, wait_for

sys.path.insert(0, str(ROOT))
from bus import protocol
from bus.client import request

PARSERS = ("scsi", "block", "multipath", "fs", "mdraid", "lvm")

NOISE = [
    "6,{seq},{usec},-;audit: type=1400 audit({t}:{n}): apparmor=\"DENIED\" operation=\"open\" profile=\"snap\" name=\"/proc/{n}/mounts\" pid={n} comm=\"snapd\"",
    "6,{seq},{usec},-;IPv6: ADDRCONF(NETDEV_CHANGE): veth{n}: link becomes ready",
    "6,{seq},{usec},-;br0: port 2(veth{n}) entered forwarding state",
    "6,{seq},{usec},-;usb 1-1.{m}: new high-speed USB device number {n} using ehci-pci\n SUBSYSTEM=usb\n DEVICE=c189:{n}",
    "4,{seq},{usec},-;TCP: request_sock_TCP: Possible SYN flooding on port 443. Sending cookies.",
    "6,{seq},{usec},-;systemd[1]: Started Session {n} of user root.",
    "5,{seq},{usec},-;kauditd_printk_skb: {m} callbacks suppressed",
    "6,{seq},{usec},-;nfs: server storage{m} OK",
    "7,{seq},{usec},-;eth0: renamed from veth{n}",
    "6,{seq},{usec},-;sd 2:0:0:{m}: [sd{d}] Write cache: enabled, read cache: enabled, doesn't support DPO or FUA",
]
ERRORS: list[list[str]] = [
    [  # a SCSI failure: five records, one SCSI event and one block event
        "3,{seq},{usec},-;sd 6:0:0:{m}: [sd{d}] tag#{n} FAILED Result: hostbyte=DID_OK driverbyte=DRIVER_SENSE\n SUBSYSTEM=scsi\n DEVICE=+scsi:6:0:0:{m}",
        "3,{seq},{usec},-;sd 6:0:0:{m}: [sd{d}] tag#{n} Sense Key : Medium Error [current]\n SUBSYSTEM=scsi\n DEVICE=+scsi:6:0:0:{m}",
        "3,{seq},{usec},-;sd 6:0:0:{m}: [sd{d}] tag#{n} Add. Sense: Unrecovered read error\n SUBSYSTEM=scsi\n DEVICE=+scsi:6:0:0:{m}",
        "3,{seq},{usec},-;sd 6:0:0:{m}: [sd{d}] tag#{n} CDB: Read(10) 28 00 00 00 27 10 00 00 01 00\n SUBSYSTEM=scsi\n DEVICE=+scsi:6:0:0:{m}",
        "3,{seq},{usec},-;blk_update_request: critical medium error, dev sd{d}, sector {n} op 0x0:(READ) flags 0x0 phys_seg 1 prio class 0",
    ],
    ["3,{seq},{usec},-;print_req_error: I/O error, dev sd{d}, sector {n}"],
    ["3,{seq},{usec},-;Buffer I/O error on device sd{d}, logical block {n}"],
    ["4,{seq},{usec},-;device-mapper: multipath: Failing path 8:{mm}."],
    ["5,{seq},{usec},-;device-mapper: multipath: Reinstating path 8:{mm}."],
    ["3,{seq},{usec},-;EXT4-fs error (device sd{d}1): ext4_find_entry:1455: inode #{n}: comm ls: reading directory lblock 0"],
    ["2,{seq},{usec},-;EXT4-fs (sd{d}1): Remounting filesystem read-only"],
    ["4,{seq},{usec},-;XFS (dm-{m}): metadata I/O error in \"xfs_trans_read_buf_map\" at daddr 0x{n:x} len 8 error 5"],
    ["1,{seq},{usec},-;md/raid1:md{m}: Disk failure on sd{d}1, disabling device.\\x0amd/raid1:md{m}: Operation continuing on 1 devices."],
    ["4,{seq},{usec},-;device-mapper: thin: 253:{m}: reached low water mark for data device: sending event."],
]


def generate(path: Path, total: int, error_share: float, seed: int = 7) -> dict[str, int]:
    """Write ``total`` kmsg records to ``path``; return how many were noise and error records."""
    rnd = random.Random(seed)
    seq, usec, lines = 1, 1_000_000, []
    counts = {"noise": 0, "error": 0}
    while seq <= total:
        storage = rnd.random() < error_share / 2.2  # a SCSI failure writes five records: keep the share right
        group = rnd.choice(ERRORS) if storage else [rnd.choice(NOISE)]
        group = group[: total - seq + 1]
        n, m, d = rnd.randrange(1, 60000), rnd.randrange(0, 8), rnd.choice("bcdefgh")
        for template in group:
            usec += rnd.randrange(5, 500)
            lines.append(template.format(seq=seq, usec=usec, n=n, m=m, d=d, mm=16 * m, t=1700000000 + seq))
            seq += 1
        counts["error" if storage else "noise"] += len(group)
    path.write_text("\n".join(lines) + "\n")
    return counts


class KmsgRun(BusdProcess):
    """busd with the kmsg collector on a file, the kernel parsers and a tally receiver."""

    label = "kmsg bench"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="busk", dir="/tmp"))
        self.runtime = self.dir / "run"
        self.feed = self.dir / "kmsg"
        self.feed.write_text("")
        self.config = self.dir / "busd.toml"
        self.log = self.dir / "busd.log"
        parsers = "".join(f'\n[plugins.{p}]\ntype = "parser"\nbuiltin = "{p}"\n' for p in PARSERS)
        self.config.write_text(f"""\
[main]
runtime_dir = {toml_str(str(self.runtime))}
hostname = "bench"

[plugins.kmsg]
type = "collector"
builtin = "kmsg"
path = {toml_str(str(self.feed))}
since_boot = true
{parsers}
[plugins.tally]
type = "receiver"
exec = [{toml_str(PY)}, {toml_str(str(ROOT / "bench" / "plugins" / "tally.py"))}]
""")
        self.control = protocol.endpoint(self.runtime, protocol.CONTROL)
        self.proc: subprocess.Popen[bytes] | None = None

    def status(self) -> dict[str, Any]:
        return asyncio.run(request(self.control, {"op": "status"}, 5.0))

    def plugins(self) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in self.status()["plugins"]}

    def start(self) -> Tree:
        with self.log.open("wb") as logf:
            self.proc = subprocess.Popen([BUSD, "--config", str(self.config)], stdin=subprocess.DEVNULL,
                                         stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        names = ("kmsg", "tally", *PARSERS)

        def up() -> bool:
            try:
                ps = self.plugins()
            except Exception:
                return False
            return (all(ps.get(n, {}).get("state") == "running" for n in names)
                    and all(ps[p].get("delivery", {}).get("connected") for p in PARSERS) and "acked" in ps["tally"])
        if not wait_for(up, 30, 0.2):
            self.fail("plugins did not start")
        st = self.status()
        ps = {p["name"]: p for p in st["plugins"]}
        return Tree(st["pid"], {n: ps[n]["pid"] for n in names})

    def drained(self, total: int) -> dict[str, Any] | None:
        ps = self.plugins()
        if ps["kmsg"]["events_in"] < total:
            return None
        if any(ps[p]["delivery"]["pending"] or ps[p]["delivery"]["in_flight"] for p in PARSERS):
            return None
        if ps["tally"].get("lag", 1):
            return None
        return ps




def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--errors", type=float, default=0.10, help="share of storage error records")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = ap.parse_args()
    run = KmsgRun()
    source = run.dir / "records.kmsg"
    counts = generate(source, a.records, a.errors)
    say(f"kmsg bench: {a.records} records ({counts['noise']} noise, {counts['error']} storage error records)")
    try:
        tree = run.start()
        sampler = RssSampler(tree)
        sampler.start()
        cpu0 = tree.cpu()
        t0 = time.monotonic()
        with run.feed.open("ab") as f:
            f.write(source.read_bytes())
        result: dict[str, Any] = {}

        def done() -> bool:
            nonlocal result
            result = run.drained(a.records) or {}
            return bool(result)
        if not wait_for(done, 300, 0.1):
            run.fail("records not drained within 300 s")
        elapsed = time.monotonic() - t0
        cpu = cpu_delta(cpu0, tree.cpu())
        sampler.stop.set()
        dropped = {n: p["dropped"] for n, p in result.items() if p.get("dropped")}
        say(f"  end to end: {a.records / elapsed:,.0f} records/s ({elapsed:.2f} s), "
            f"{sum(result[p]['events_out'] for p in PARSERS)} routed to parsers, "
            f"{sum(result[p]['events_in'] for p in PARSERS)} synthetic events out, "
            f"{result['tally'].get('events_out', 0)} received, dropped {dropped or 'none'}")
        say("  synthetic events per parser: " + ", ".join(f"{p} {result[p]['events_in']}" for p in PARSERS))
        total_cpu = sum(cpu.values())
        say(f"  CPU: {1000 * total_cpu / a.records * 1000:.1f} ms per 1000 records "
            f"({total_cpu:.2f} s in all: " + ", ".join(f"{k} {v:.2f}" for k, v in cpu.items()) + ")")
        say("  peak RSS: " + ", ".join(f"{k} {mb(v)}" for k, v in sampler.max.items()))
        target = a.records / elapsed >= 20_000
        say(f"  target >= 20 000 records/s end to end: {'met' if target else 'MISSED'}")
        return 0
    finally:
        run.stop()
        run.cleanup(a.keep)


if __name__ == "__main__":
    sys.exit(main())

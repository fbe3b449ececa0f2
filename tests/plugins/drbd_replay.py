"""A stand-in for ``drbdsetup events2 --poll``: prints recorded lines, answers ``n`` on stdin.

Usage: ``drbd_replay.py [--record FILE] [--on-n LINE]... [--chain] SCRIPT [SCRIPT...]``

The k-th start of the program plays the k-th SCRIPT (the last one for every later start); with
``--chain`` every SCRIPT but the last exits 0 at its end (so the next start plays the next); starts
are counted in the ``--record`` file, which also gets one line per ``n`` read on stdin
(``start K`` / ``n``). Each ``n`` prints the ``--on-n`` lines (nothing without them).

A script holds events2 lines, printed one by one and flushed, and directives:

- ``# sleep S``: wait S seconds;
- ``# stderr TEXT``: print TEXT on stderr;
- ``# wait-n``: wait until one more ``n`` was read on stdin (the k-th wait-n waits for the k-th n);
- ``# wait-file PATH``: wait until PATH exists (tests create it to let the replay go on);
- ``# exit N``: exit with status N;
- ``# block``: wait until stdin is closed, then exit 0 (also what happens at the end of a script);
- other lines starting with ``#`` and empty lines are skipped; ``#raw TEXT`` prints TEXT as is,
  ``#hex HEX`` prints the bytes HEX (for lines that are not UTF-8).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

_lock = threading.Lock()
_n_read = threading.Condition()
_n_count = 0  # how many "n" were read on stdin; each "# wait-n" consumes one
_stdin_closed = threading.Event()


def out(text: str, stream: object = None) -> None:
    """Print one line and flush (the collector reads line by line)."""
    with _lock:
        target = sys.stdout if stream is None else stream
        target.write(text + "\n")  # type: ignore[attr-defined]
        target.flush()  # type: ignore[attr-defined]


def record(path: str | None, text: str) -> None:
    if path:
        with open(path, "a") as f:
            f.write(f"{text} {time.time():.3f}\n")


def read_stdin(record_path: str | None, on_n: list[str]) -> None:
    global _n_count
    for line in sys.stdin:
        if line.strip() == "n":
            record(record_path, "n")
            for text in on_n:
                out(text)
            with _n_read:
                _n_count += 1
                _n_read.notify_all()
    _stdin_closed.set()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record")
    parser.add_argument("--on-n", action="append", default=[])
    parser.add_argument("--chain", action="store_true")
    parser.add_argument("scripts", nargs="+")
    args = parser.parse_args()
    starts = 0
    if args.record and os.path.exists(args.record):
        with open(args.record) as f:
            starts = sum(1 for line in f if line.startswith("start "))
    record(args.record, f"start {starts + 1}")
    index = min(starts, len(args.scripts) - 1)
    script = args.scripts[index]
    threading.Thread(target=read_stdin, args=(args.record, args.on_n), daemon=True).start()
    with open(script) as f:
        lines = f.read().splitlines()
    waited = 0
    for line in lines:
        if line.startswith("#raw "):
            out(line[5:])
        elif line.startswith("#hex "):
            with _lock:
                sys.stdout.buffer.write(bytes.fromhex(line[5:]) + b"\n")
                sys.stdout.flush()
        elif line.startswith("# sleep "):
            time.sleep(float(line.split()[2]))
        elif line.startswith("# stderr "):
            out(line[9:], sys.stderr)
        elif line.startswith("# wait-n"):
            waited += 1
            with _n_read:
                _n_read.wait_for(lambda n=waited: _n_count >= n)
        elif line.startswith("# wait-file "):
            path = line[12:].strip()
            while not os.path.exists(path):
                time.sleep(0.02)
        elif line.startswith("# exit "):
            return int(line.split()[2])
        elif line.startswith("# block"):
            break
        elif line.startswith("#") or not line.strip():
            continue
        else:
            out(line)
    if args.chain and index < len(args.scripts) - 1:
        return 0
    _stdin_closed.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A command for the umh tests: writes what it was started with to ``DIR/probe.<pid>.json``.

Usage: ``python umh_probe.py DIR [ARG...]``. The record holds its argv, ``/proc/self/cmdline``, its
whole environment (as execve gave it), its open file descriptors (what each points to), its pid, process group and
session, and its parent's command line. Written to a temporary name, then renamed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main() -> None:
    out = Path(sys.argv[1])
    fds = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            fds[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the directory listing's own descriptor, closed meanwhile
            continue
    record = {
        "argv": sys.argv,
        "cmdline": Path("/proc/self/cmdline").read_bytes().decode().split("\0")[:-1],
        # as execve gave it: Python itself may add LC_CTYPE to os.environ (PEP 538)
        "env": dict(v.split("=", 1) for v in Path("/proc/self/environ").read_bytes().decode().split("\0") if v),
        "fds": fds,
        "pid": os.getpid(),
        "pgid": os.getpgid(0),
        "sid": os.getsid(0),
        "parent": Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode().split("\0")[:-1],
    }
    target = out / f"probe.{os.getpid()}.json"
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, target)


if __name__ == "__main__":
    main()

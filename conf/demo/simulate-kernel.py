#!/usr/bin/env python3
"""Demo only: plays the kernel, appending the records of ``incident.kmsg`` to the file the ``kmsg``
collector follows, over and over, with fresh sequence numbers and timestamps.

Run by busd as an ``exec`` collector (``conf/demo/busd.toml``) so that ``make demo`` needs nothing but
busd; it emits no events itself. Argument: the file to append to.
"""

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    """Append the incident to ``sys.argv[1]`` in a loop."""
    target = Path(sys.argv[1])
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("")
    # sequence numbers grow across runs, like the kernel's within a boot: the collector keeps its
    # position in its state file and would skip numbers it has already seen
    seq = int(time.time() * 1000)
    while True:
        with target.open("a") as out:
            for line in (HERE / "incident.kmsg").read_text().splitlines():
                if line.startswith("# pause "):
                    out.flush()
                    time.sleep(float(line.split()[2]))
                elif line.startswith("#") or not line.strip():
                    continue
                elif line.startswith(" "):
                    out.write(line + "\n")
                else:
                    prio, _, _, rest = line.split(",", 3)
                    usec = int(time.clock_gettime(time.CLOCK_BOOTTIME) * 1e6)  # as the kernel counts
                    out.write(f"{prio},{seq},{usec},{rest}\n")
                    seq += 1
                    out.flush()
                    time.sleep(0.05)


if __name__ == "__main__":
    main()

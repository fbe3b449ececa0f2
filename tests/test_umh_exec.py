"""Receiver ``umh``, how commands run: without a shell when the rule allows, in order per resource,
stopped on timeout and when busd stops. Real busd, real processes."""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import Bus, ev, toml_value, wait_for

from bus.event import new_event
from receivers.umh import exec_argv, resource_key

PROBE = Path(__file__).resolve().parent / "umh_probe.py"
PY = sys.executable
MARKER = "UMH_TEST_MARKER"


def start(bus: Bus, rules: list[dict[str, Any]], **options: Any) -> None:
    """busd with a umh receiver on the ``test`` events (any kind) with these rules."""
    table = {"type": "receiver", "builtin": "umh", "filter": {"system": "test", "kind": "all"}, **options}
    bus.write({}, extra="[plugins.umh]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in table.items())
              + "rules = [" + ", ".join(toml_value(r) for r in rules) + "]\n")
    bus.start()
    bus.wait_running("umh")


def probes(directory: Path, count: int) -> list[dict[str, Any]]:
    """Wait for ``count`` probe records, return them."""
    files = wait_for(lambda: len(fs := sorted(directory.glob("probe.*.json"))) >= count and fs,
                     what=f"{count} probe records")
    return [json.loads(f.read_text()) for f in files]


def umh_records(bus: Bus, *events: str) -> list[dict[str, Any]]:
    return [r for r in bus.log_records() if r.get("plugin") == "umh" and r.get("event") in events]


def marked(value: str) -> list[psutil.Process]:
    """Processes whose environment holds ``MARKER=value`` (commands have no BUS_RUNTIME_DIR to find them by)."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and proc.environ().get(MARKER) == value:
                found.append(proc)
        except psutil.Error:
            continue
    return found


# -- the rule ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("command", "argv"), [
    ("/usr/bin/logger -t drbd 'resource web' \"is primary\"", ("/usr/bin/logger", "-t", "drbd", "resource web",
                                                               "is primary")),
    ("systemctl start --no-block app@web.service", ("systemctl", "start", "--no-block", "app@web.service")),
    ("drbdadm -- --overwrite-data-of-peer primary r0 x=1 %", ("drbdadm", "--", "--overwrite-data-of-peer", "primary",
                                                              "r0", "x=1", "%")),
    (["/bin/echo", "$HOME", "a;b"], ("/bin/echo", "$HOME", "a;b")),  # a list is the argv, never a shell
    ('logger "$BUS_MSG"', None),  # expansion
    ("echo hi > /tmp/x", None),  # redirection
    ("a | b", None), ("a && b", None), ("a; b", None), ("a &", None), ("(a)", None), ("a `b`", None),
    ("rm /tmp/*.log", None), ("ls ~", None), ("echo a\\ b", None), ("a # comment", None), ("a\nb", None),
    ("X=1 cmd", None),  # an assignment
    ("exit 3", None), ("cd /tmp", None), (". /etc/profile", None), ("if", None), ("wait", None),  # the shell's own
    ("echo 'unclosed", None),
])
def test_which_commands_run_without_a_shell(command: Any, argv: tuple[str, ...] | None) -> None:
    assert exec_argv(command) == argv


def test_the_queue_of_an_event_is_its_drbd_resource_or_its_device() -> None:
    volume = new_event("drbd", "DRBD_DISK_STATE_CHANGED", kind="synthetic", dev_name="web/0",
                       extensions={"resource": "web", "volume": 0})
    assert resource_key(volume) == resource_key(new_event("drbd", "DRBD_ROLE_CHANGED", kind="synthetic",
                                                          dev_name="web", extensions={"resource": "web"}))
    assert resource_key(volume) != resource_key(new_event("drbd", "X", extensions={"resource": "db"}))
    assert resource_key(new_event("scsi", "X", dev_name="sdb")) == resource_key(new_event("block", "Y", dev_name="sdb"))
    assert resource_key(new_event("scsi", "X", dev_name="sdb")) != resource_key(new_event("scsi", "X", dev_name="sdc"))


# -- through busd ---------------------------------------------------------------------------------

def test_a_plain_command_runs_without_a_shell_and_a_shell_command_with_one(bus: Bus, tmp_path: Path) -> None:
    plain, listed, shell = (tmp_path / d for d in ("plain", "listed", "shell"))
    for d in (plain, listed, shell):
        d.mkdir()
    start(bus, [
        {"name": "plain", "event_type": "PLAIN", "command": f"{PY} {PROBE} {plain} 'two  spaces' x=1"},
        {"name": "listed", "event_type": "LISTED", "command": [PY, str(PROBE), str(listed), "$BUS_MSG", "a b"]},
        {"name": "shell", "event_type": "SHELL", "command": f'{PY} {PROBE} {shell} "$BUS_MSG" && true'},
    ])
    bus.emit([ev("test", "PLAIN", "m1"), ev("test", "LISTED", "m2"), ev("test", "SHELL", "m3")])
    [p] = probes(plain, 1)
    [li] = probes(listed, 1)
    [sh] = probes(shell, 1)

    # split like a shell would, executed directly: the program is argv[0], its parent is the receiver
    assert p["cmdline"] == [PY, str(PROBE), str(plain), "two  spaces", "x=1"]
    assert p["parent"][1:] == ["-m", "receivers.umh"]
    assert li["argv"][1:] == [str(listed), "$BUS_MSG", "a b"]  # no expansion: no shell
    # the environment is exactly what umh gives: no variable a shell adds (dash exports PWD)
    for record in (p, li):
        env = record["env"]
        assert {k for k in env if not k.startswith("BUS_")} == {"HOME", "TERM", "PATH"}
        assert (env["HOME"], env["TERM"], env["PATH"]) == ("/", "Linux", "/sbin:/usr/sbin:/bin:/usr/bin")
    assert p["env"]["BUS_MSG"] == "m1" and li["env"]["BUS_MSG"] == "m2"
    # a shell command went through /bin/sh -c: expanded, started by the shell, with the shell's PWD
    assert sh["argv"][2] == "m3" and "PWD" in sh["env"] and sh["parent"][:2] == ["/bin/sh", "-c"]
    assert p["pid"] == p["pgid"] == p["sid"] and li["pid"] == li["pgid"] == li["sid"]  # own session and group
    assert sh["pgid"] == sh["sid"] != sh["pid"]  # the shell's
    for record in (p, li, sh):
        fds = record["fds"]
        assert fds["0"] == "/dev/null" and fds["1"].startswith("pipe:") and fds["2"].startswith("pipe:")
        assert set(fds) - {"0", "1", "2"} <= {"3"}, f"descriptors leaked into the command: {fds}"  # 3: listdir's
    done = wait_for(lambda: len(r := umh_records(bus, "command_done")) == 3 and r, what="three command_done")
    assert {r["rule"]: r["status"] for r in done} == {"plain": 0, "listed": 0, "shell": 0}
    assert {r["rule"]: r["command"] for r in done}["listed"] == f"{PY} {PROBE} {listed} '$BUS_MSG' 'a b'"


def test_a_missing_program_fails_to_start_and_is_counted(bus: Bus) -> None:
    start(bus, [{"event_type": "X", "command": "no-such-program --flag"},
                {"event_type": "X", "command": "/bin/sh -c 'exit 4'"}])  # quotes: exec'd sh, not through a shell
    bus.emit([ev("test", "X")])
    counters = wait_for(lambda: (c := bus.plugin("umh").get("counters", {})).get("commands_failed") == 2 and c,
                        what="two failures")
    assert counters == {"commands_started": 1, "commands_failed": 2}
    [missing] = umh_records(bus, "command_failed_to_start")
    assert "No such file or directory" in missing["error"] and missing["command"] == "no-such-program --flag"
    [exited] = umh_records(bus, "command_done")
    assert exited["status"] == 4


def test_order_is_kept_per_resource_while_resources_run_side_by_side(bus: Bus, tmp_path: Path) -> None:
    log = tmp_path / "order.log"
    # a command takes 0 to 30 ms, so that unordered commands would overtake each other
    command = (f'echo "start $BUS_DEV_NAME $BUS_MSG" >> {log}; sleep 0.0$((BUS_MSG % 4)); '
               f'echo "end $BUS_DEV_NAME $BUS_MSG" >> {log}')
    start(bus, [{"event_type": "STEP", "command": command}], max_concurrent=4, max_queued=8)
    n = 120
    bus.emit([ev("test", "STEP", str(i), dev_name="ra" if i % 2 else "rb") for i in range(n)])
    wait_for(lambda: log.exists() and log.read_text().count("end ") == n, timeout=60, what=f"{n} commands done")

    lines = [line.split() for line in log.read_text().splitlines()]
    for res in ("ra", "rb"):
        mine = [(kind, int(seq)) for kind, r, seq in lines if r == res]
        expected = [i for i in range(n) if (res == "ra") == bool(i % 2)]
        # one after another, in event order: start i, end i, start next, end next...
        assert mine == [(kind, i) for i in expected for kind in ("start", "end")]
    running: set[str] = set()
    side_by_side = False
    for kind, res, _ in lines:
        if kind == "start":
            running.add(res)
            side_by_side |= running == {"ra", "rb"}
        else:
            running.discard(res)
    assert side_by_side, "the two resources never ran at the same time"


def test_timeout_kills_the_whole_group_even_when_it_ignores_sigterm(bus: Bus, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    start(bus, [
        {"name": "stubborn", "event_type": "STUBBORN",
         "command": f"trap '' TERM; sleep 60 & echo $! >> {pids}; echo $$ >> {pids}; wait"},
        {"name": "plain", "event_type": "PLAIN", "command": ["/bin/sleep", "60"]},
    ], timeout=0.5)
    bus.emit([ev("test", "STUBBORN", dev_name="a"), ev("test", "PLAIN", dev_name="b")])
    records = wait_for(lambda: len(r := umh_records(bus, "command_timeout", "command_done")) == 2 and r,
                       what="two commands to end")
    assert {r["rule"]: r["event"] for r in records} == {"stubborn": "command_timeout", "plain": "command_timeout"}
    group = [int(p) for p in pids.read_text().split()]
    assert len(group) == 2
    for pid in group:  # the shell and its background child, both deaf to SIGTERM: SIGKILL 1 s later
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    counters = wait_for(lambda: (c := bus.plugin("umh").get("counters", {})).get("commands_timed_out") == 2 and c)
    assert counters == {"commands_started": 2, "commands_failed": 2, "commands_timed_out": 2}


def test_sigterm_of_busd_stops_running_commands_and_runs_no_queued_one(bus: Bus, tmp_path: Path) -> None:
    started = tmp_path / "started"
    marker = str(tmp_path)
    start(bus, [
        {"name": "stubborn", "event_type": "STUBBORN", "env": {MARKER: marker},
         "command": f"trap '' TERM; echo $$ > {started}; exec sleep 60"},
        {"name": "later", "event_type": "LATER", "env": {MARKER: marker}, "command": ["/bin/sleep", "60"]},
    ], max_concurrent=2)
    # one resource: the five later commands wait behind the stubborn one
    bus.emit([ev("test", "STUBBORN", dev_name="r0")] + [ev("test", "LATER", str(i), dev_name="r0") for i in range(5)])
    wait_for(lambda: started.exists() and started.read_text().strip(), what="the stubborn command running")
    pid = int(started.read_text())
    wait_for(lambda: marked(marker), what="the stubborn command visible")
    rc, took = bus.stop(signal.SIGTERM)
    assert rc == 0 and took < 5.0
    assert not marked(marker), "commands outlived busd"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    [killed] = umh_records(bus, "command_killed_at_exit")
    [not_run] = umh_records(bus, "commands_not_run")
    assert killed["pid"] == pid and not_run["commands"] == 5
    assert not umh_records(bus, "plugin_kill"), "busd had to SIGKILL the receiver"

"""busd as a service: supervision, reload, shutdown, systemd notifications, logs, bad input on every socket."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import msgpack
import zmq
from conftest import BIN, Bus, ev, plugin_cmd, wait_for


def test_plugin_crashing_on_start_is_marked_failed_and_bus_keeps_running(bus: Bus) -> None:
    """A plugin that exits at once is restarted with backoff, then marked failed; events still flow."""
    bus.write({
        "broken": {"type": "parser", "exec": ["sh", "-c", "echo 'cannot open /dev/nothing' >&2; exit 3"]},
        "good": {"type": "parser", "exec": plugin_cmd("tag")},
    })
    bus.start()
    broken = wait_for(lambda: (p := bus.plugin("broken"))["state"] == "failed" and p, what="broken marked failed")
    assert broken["restarts"] == 2 and broken["pid"] is None and broken["last_exit"] == "exit status 3"
    bus.emit([ev("scsi", "X", "still works")])
    assert bus.tail(1)[0]["event_type"] == "TAG_X"
    records = bus.log_records()
    assert any(r.get("plugin") == "broken" and r.get("line") == "cannot open /dev/nothing" for r in records)
    assert any(r.get("event") == "plugin_failed" and r.get("plugin") == "broken" for r in records)
    text = bus.run("busctl", "status").stdout
    assert "broken" in text and "failed" in text and "exit status 3" in text
    bus.run("busctl", "reload")
    wait_for(lambda: sum(r.get("event") == "plugin_failed" for r in bus.log_records()) == 2,
             what="failed plugin retried by reload, and failed again")
    assert bus.plugin("broken")["state"] == "failed"


def test_sockets_are_not_world_accessible(bus: Bus) -> None:
    """The runtime directory is 0750 and every socket 0660, whatever the umask."""
    bus.write({"c": {"type": "collector", "exec": ["sleep", "1000"]}})
    old = os.umask(0)
    try:
        bus.start()
    finally:
        os.umask(old)
    assert bus.runtime_dir.stat().st_mode & 0o777 == 0o750
    socks = [*bus.runtime_dir.glob("*.sock"), *bus.runtime_dir.glob("ingest/*.sock")]
    assert len(socks) == 4 and all(s.stat().st_mode & 0o777 == 0o660 for s in socks)


def test_plugins_get_only_stdin_stdout_and_stderr(bus: Bus) -> None:
    """No descriptor of busd leaks into a plugin (uvloop's spawn left copies of busd's stdio open)."""
    bus.write({"c": {"type": "collector", "exec": ["sleep", "1000"]}})
    bus.start()
    pid = wait_for(lambda: bus.plugin("c")["pid"], what="plugin started")
    # between fork and exec the child still holds what exec will close: look once it is sleep
    wait_for(lambda: Path(f"/proc/{pid}/comm").read_text().strip() == "sleep", what="the plugin's exec")
    fds = sorted(int(fd) for fd in os.listdir(f"/proc/{pid}/fd"))
    assert fds == [0, 1, 2], {fd: os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds}


def test_plugin_that_exits_cleanly_is_restarted_never_failed(bus: Bus) -> None:
    """A one-shot plugin exiting 0 is restarted with backoff (SPEC), and never marked failed."""
    emit = BIN / "bus-emit"
    bus.write({"once": {"type": "collector", "exec": ["sh", "-c", f"{emit} --system t --event-type RUN; exit 0"]}},
              main={"max_fast_crashes": 2})
    bus.start()
    wait_for(lambda: bus.status()["broker"]["head"]["raw"] >= 3, what="three runs of the one-shot collector")
    once = bus.plugin("once")
    assert once["restarts"] >= 2 and once["state"] != "failed" and once["last_exit"] == "exit status 0"
    assert [e["event_type"] for e in bus.tail(3, "--kind", "raw")] == ["RUN"] * 3


def test_plugin_log_lines_are_merged_into_busd_log_with_plugin_name(bus: Bus) -> None:
    """A plugin's JSON log lines keep their fields in busd's JSON log, tagged with the instance name."""
    bus.write({"p": {"type": "parser", "exec": plugin_cmd("tag")}})
    bus.start()
    bus.wait_running("p")
    records = bus.log_records()
    connected = [r for r in records if r.get("event") == "parser_connected"]
    assert connected and connected[0]["plugin"] == "p" and connected[0]["level"] == "info"
    assert all("timestamp" in r and "level" in r for r in records)


def test_bad_config_is_refused_with_file_key_and_reason(bus: Bus) -> None:
    """busd refuses a configuration with a typo: non-zero exit naming the file, the key and why."""
    bus.write({"p": {"type": "parser", "exec": ["true"], "filter": {"kind": ["rawish"]}}})
    res = subprocess.run([str(BIN / "busd"), "--config", str(bus.config)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2
    assert f"{bus.config}: plugins.p.filter.kind: 'rawish' is not one of raw, synthetic, all" in res.stderr
    bus.write({}, main={"log_levle": "debug"})
    res = subprocess.run([str(BIN / "busd"), "--config", str(bus.config), "--check"], capture_output=True, text=True)
    assert res.returncode == 2 and "main.log_levle: unknown key" in res.stderr


def test_bad_reload_keeps_old_config_and_good_reload_restarts_only_changed(bus: Bus) -> None:
    """SIGHUP with a bad file keeps everything; a good reload restarts only changed plugins."""
    plugins = {
        "keep": {"type": "parser", "exec": plugin_cmd("tag"), "prefix": "K"},
        "change": {"type": "parser", "exec": plugin_cmd("tag"), "prefix": "C1"},
        "drop": {"type": "receiver", "exec": ["sleep", "1000"]},
    }
    bus.write(plugins)
    bus.start()
    bus.wait_running("keep", "change", "drop")
    pids = {p["name"]: p["pid"] for p in bus.status()["plugins"]}
    good = bus.config.read_text()
    bus.config.write_text(good + "\n[plugins.oops]\ntype = \"parser\"\n")
    assert bus.proc is not None
    bus.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: bus.status()["last_reload_error"], what="reload refused")
    status = bus.status()
    assert "plugins.oops: needs exactly one of 'builtin'" in status["last_reload_error"]
    assert {p["name"]: p["pid"] for p in status["plugins"]} == pids
    res = bus.run("busctl", "reload", check=False)
    assert res.returncode == 1 and "old configuration kept" in res.stderr

    plugins["change"]["prefix"] = "C2"
    del plugins["drop"]
    plugins["new"] = {"type": "parser", "exec": plugin_cmd("tag"), "prefix": "N"}
    bus.write(plugins)
    res = bus.run("busctl", "reload")
    assert "added ['new']" in res.stdout and "removed ['drop']" in res.stdout and "restarted ['change']" in res.stdout
    bus.wait_running("keep", "change", "new")
    after = {p["name"]: p["pid"] for p in bus.status()["plugins"]}
    assert after["keep"] == pids["keep"] and after["change"] != pids["change"] and "drop" not in after
    bus.emit([ev("s", "E")])
    assert sorted(e["event_type"] for e in bus.tail(3)) == ["C2_E", "K_E", "N_E"]
    bus.wait_notification("RELOADING=1")


def test_sigterm_stops_everything_within_5_seconds(bus: Bus) -> None:
    """SIGTERM stops busd and every plugin, one that ignores SIGTERM included, in under 5 s."""
    bus.write({
        "stubborn": {"type": "collector", "exec": ["sh", "-c", "trap '' TERM; sleep 1000"]},
        "p": {"type": "parser", "exec": plugin_cmd("tag")},
        "r": {"type": "receiver", "exec": plugin_cmd("recorder"), "out": str(bus.base / "r.jsonl")},
    }, main={"stop_timeout": 3.0})
    bus.start()
    bus.wait_running("stubborn", "p", "r")
    pids = [p["pid"] for p in bus.status()["plugins"]]
    rc, took = bus.stop()
    assert rc == 0 and took < 5.0, f"stop took {took:.2f} s"
    bus.wait_notification("STOPPING=1")
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()


def test_systemd_notifications(bus: Bus) -> None:
    """busd sends READY=1 with a STATUS line, and WATCHDOG=1 when WatchdogSec asks for it."""
    bus.write({})
    os.environ["WATCHDOG_USEC"] = "200000"
    try:
        bus.start()
    finally:
        del os.environ["WATCHDOG_USEC"]
    bus.wait_notification("WATCHDOG=1")
    ready = next(n for n in bus.notifications if "READY=1" in n.split("\n"))
    assert "STATUS=serving 0 plugins" in ready
    bus.wait_notification("WATCHDOG=1")


def test_garbage_and_oversized_frames_on_every_socket(bus: Bus) -> None:
    """Garbage and oversized frames on ingest, input and control are dropped, counted, logged; the bus lives."""
    bus.write({"c": {"type": "collector", "exec": ["sleep", "1000"]}, "p": {"type": "parser", "exec": plugin_cmd("tag")}})
    bus.start()
    bus.wait_running("c", "p")
    rd = bus.runtime_dir
    ctx = zmq.Context()
    big = b"\x00" * (9 * 1024 * 1024)
    push = ctx.socket(zmq.PUSH)
    push.connect(f"ipc://{rd}/ingest/c.sock")
    for frame in (b"garbage", big, msgpack.packb({"system": "s"}), msgpack.packb([1, 2]), msgpack.packb("str")):
        push.send(frame)
    push.send_multipart([b"two", b"frames"])
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"ipc://{rd}/input.sock")
    for frame in (b"\xc1", msgpack.packb({"op": "ack", "upto": 5}), msgpack.packb({"op": "hello", "plugin": "nope"}), big):
        dealer.send(frame)
    ctl = ctx.socket(zmq.DEALER)
    ctl.connect(f"ipc://{rd}/control.sock")
    ctl.send(b"\xff\xff")
    ctl.send(msgpack.packb({"op": "no_such_op"}))
    ctl.send(big)
    sub = ctx.socket(zmq.SUB)
    sub.connect(f"ipc://{rd}/events.sock")
    sub.setsockopt(zmq.SUBSCRIBE, b"\xff garbage subscription")
    replies = [msgpack.unpackb(ctl.recv()) for _ in range(3)]
    assert [r["ok"] for r in replies] == [False, False, False]
    assert "malformed request" in replies[0]["error"] and "unknown op 'no_such_op'" in replies[1]["error"]
    assert "exceeds the limit" in replies[2]["error"]
    status = wait_for(lambda: (s := bus.status())["broker"]["malformed"] == 9 and s, what="malformed counted")
    c = next(p for p in status["plugins"] if p["name"] == "c")
    assert c["dropped"]["malformed"] == 3 and c["dropped"]["invalid"] == 4
    assert "event_type: is missing" in open(bus.log_path).read()
    for sock in (push, dealer, ctl, sub):
        sock.close(0)
    ctx.term()
    bus.emit([ev("s", "AFTER")])
    assert bus.tail(1)[0]["event_type"] == "TAG_AFTER"
    assert bus.proc is not None and bus.proc.poll() is None


def test_busctl_status_shows_counters(bus: Bus) -> None:
    """busctl status lists state, pid, restarts, events in and out per plugin."""
    bus.write({"gen": {"type": "collector", "exec": plugin_cmd("counter"), "count": 50},
               "p": {"type": "parser", "exec": plugin_cmd("tag")},
               "r": {"type": "receiver", "exec": plugin_cmd("recorder"), "out": str(bus.base / "r.jsonl")}})
    bus.start()
    wait_for(lambda: bus.plugin("r")["events_out"] == 50, what="receiver handled all")
    plugins = {p["name"]: p for p in bus.status()["plugins"]}
    assert plugins["gen"]["events_in"] == 50 and plugins["p"]["events_in"] == 50
    assert plugins["p"]["events_out"] == 50 and plugins["r"]["lag"] == 0
    assert all(p["state"] == "running" and p["pid"] and p["restarts"] == 0 for p in plugins.values())
    text = bus.run("busctl", "status").stdout.splitlines()
    row = next(line for line in text if line.startswith("gen "))
    assert row.split()[:6] == ["gen", "collector", "running", str(plugins["gen"]["pid"]), "0", "50"]
    names = [p["name"] for p in json.loads(bus.run("busctl", "plugins", "--json").stdout)]
    assert names == ["gen", "p", "r"]


def test_busctl_without_daemon_fails_clearly(bus: Bus) -> None:
    """busctl status against a stopped busd exits 1 with a message saying so."""
    bus.write({})
    started = time.monotonic()
    res = subprocess.run([str(BIN / "busctl"), "--config", str(bus.config), "status"], capture_output=True,
                         text=True, timeout=30, env={**os.environ, "BUSCTL_TIMEOUT": "1"})
    assert res.returncode == 1 and "is busd running" in res.stderr
    assert time.monotonic() - started < 15


def test_version_and_help_on_every_command() -> None:
    """Every command answers --version and --help, and prints a bash completion script."""
    for tool in ("busd", "bus-tail", "bus-emit", "busctl"):
        res = subprocess.run([str(BIN / tool), "--version"], capture_output=True, text=True)
        assert res.returncode == 0 and res.stdout.startswith("busd "), tool
        res = subprocess.run([str(BIN / tool), "--help"], capture_output=True, text=True)
        assert res.returncode == 0 and "--config" in res.stdout, tool
        # without detection, --show-completion takes the shell as its value whatever process runs the test
        res = subprocess.run([str(BIN / tool), "--show-completion", "bash"], capture_output=True, text=True,
                             env={**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
        assert res.returncode == 0 and f"_{tool.replace('-', '_')}_completion" in res.stdout, tool


def test_a_second_busd_on_the_same_runtime_dir_is_refused(bus: Bus) -> None:
    """A second busd on a runtime dir in use exits 1 naming the first one's pid, and takes none of its
    sockets; the lock goes with the process, so after a SIGKILL the next busd starts at once."""
    bus.write({"p": {"type": "parser", "exec": plugin_cmd("tag")}})
    first = bus.start()
    bus.wait_running("p")
    second = subprocess.run([str(BIN / "busd"), "--config", str(bus.config)], capture_output=True, text=True,
                            timeout=30)
    assert second.returncode == 1
    assert f"another busd (pid {first.pid}) is serving {bus.runtime_dir}" in second.stderr, second.stderr
    assert bus.status()["pid"] == first.pid
    bus.emit([ev("s", "STILL_FIRST")])
    assert bus.tail(1, "--kind", "raw", "--event-type", "STILL_FIRST")[0]["event_type"] == "STILL_FIRST"
    bus.stop(signal.SIGKILL)
    again = bus.start()
    assert bus.status()["pid"] == again.pid
    assert (bus.runtime_dir / "busd.pid").read_text() == f"{again.pid}\n"

"""busctl config get/set/reset, ls/cat/edit/enable/disable/rm against a real busd."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from conftest import BIN, Bus, wait_for
from typer.testing import CliRunner

from bus import config
from bus.ctl import ctl_app

CONFIG = """\
# busd under test
[main]
runtime_dir = "{rd}"   # short, for ipc:// paths
hostname = "testhost"
restart_delay = 0.05
stop_timeout = 1.0
{include}
# the debugger prints every event into busd's log
[plugins.dbg]   # a receiver
type = "receiver"
builtin = "debugger"  # shipped with busd
format = "line"

# not started: a place for options nobody reads
[plugins.x]
type = "receiver"
exec = ["/bin/false"]
enabled = false
"""


def write_config(bus: Bus, include: bool = True) -> str:
    text = CONFIG.format(rd=bus.runtime_dir, include='include = ["conf.d/*.toml"]\n' if include else "")
    bus.config.write_text(text)
    return text


class Result:
    """What a busctl run printed and its exit status."""

    def __init__(self, returncode: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def busctl(bus: Bus, *args: str, env: dict[str, str] | None = None, ok: bool = True) -> Result:
    """Run busctl's own typer app in this process (stdin not a terminal), against the real busd.

    In-process saves the ~1 s of interpreter start and imports per call; the console script itself
    is run as a process in test_eight_concurrent_writers and test_fresh_configuration_without_include.
    """
    saved = {k: os.environ.get(k) for k in env or {}}
    os.environ.update(env or {})
    try:
        res = CliRunner().invoke(ctl_app, ["--config", str(bus.config), *args])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    if ok:
        assert res.exit_code == 0, f"busctl {args} exited {res.exit_code}:\n{res.stdout}\n{res.stderr}"
    return Result(res.exit_code, res.stdout, res.stderr)


def status(bus: Bus) -> dict[str, Any]:
    return dict(json.loads(busctl(bus, "status", "--json").stdout))


def plugin(bus: Bus, name: str) -> dict[str, Any]:
    return next(p for p in status(bus)["plugins"] if p["name"] == name)


def wait_state(bus: Bus, name: str, state: str) -> None:
    wait_for(lambda: plugin(bus, name)["state"] == state, what=f"{name} {state}")


def editor_script(tmp: Path, body: str) -> dict[str, str]:
    """An $EDITOR that runs ``body`` (a shell script; the file to edit is $1)."""
    script = tmp / "editor.sh"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return {"EDITOR": str(script), "VISUAL": ""}


def dbg_events(bus: Bus) -> list[dict[str, Any]]:
    return [r for r in bus.log_records() if r.get("plugin") == "dbg" and r.get("event") == "bus_event"]


def test_set_get_reset_with_reload_and_comments_kept(bus: Bus) -> None:
    original = write_config(bus)
    bus.start()
    wait_state(bus, "dbg", "running")
    pid = plugin(bus, "dbg")["pid"]
    reloads = status(bus)["reloads"]

    res = busctl(bus, "config", "set", "dbg.format", "json")
    assert "busd reloaded" in res.stdout and "restarted dbg" in res.stdout
    assert bus.config.read_text() == original.replace('format = "line"\n', 'format = "json"\n')
    assert status(bus)["reloads"] == reloads + 1
    wait_for(lambda: (lambda p: p["state"] == "running" and p["pid"] != pid)(plugin(bus, "dbg")), what="dbg restarted")
    assert busctl(bus, "config", "get", "dbg.format").stdout == '"json"\n'
    # the new value is in effect: the debugger now logs whole events
    bus.emit([{"system": "test", "event_type": "T1", "msg": "m1", "kind": "synthetic"}])
    logged = wait_for(lambda: dbg_events(bus), what="the debugger's log line")
    assert logged[-1]["bus_event"]["event_type"] == "T1"

    busctl(bus, "config", "reset", "dbg.format")
    assert bus.config.read_text() == original.replace('format = "line"\n', "")
    assert busctl(bus, "config", "get", "dbg.format").stdout == '"line"\n'
    got = json.loads(busctl(bus, "config", "get", "dbg", "--json").stdout)
    assert got["dbg.format"] == {"value": "line", "default": "line", "file": None,
                                 "help": "line (readable) or json (the whole event)"}
    assert got["dbg.type"]["file"] == str(bus.config)

    busctl(bus, "config", "set", "main.log_level", '"debug"')
    busctl(bus, "config", "set", "restart_delay_max", "5")
    assert json.loads(busctl(bus, "config", "get", "--json").stdout)["main.restart_delay_max"]["value"] == 5.0
    busctl(bus, "config", "reset", "all")
    # reset all: every [main] key back to its default, but not runtime_dir (busd could not move its sockets)
    text = bus.config.read_text()
    assert "log_level" not in text and "hostname" not in text and "restart_delay" not in text
    assert f'runtime_dir = "{bus.runtime_dir}"   # short, for ipc:// paths' in text
    assert 'include = ["conf.d/*.toml"]' in text and "# busd under test\n" in text
    assert status(bus)["reloads"] == reloads + 5


def test_bad_values_are_refused_with_busds_message_and_file_untouched(bus: Bus) -> None:
    write_config(bus)
    bus.start()
    before = bus.config.read_bytes()
    reloads = status(bus)["reloads"]
    res = busctl(bus, "config", "set", "dbg.format", "yaml", ok=False)
    assert res.returncode == 2
    assert f"{bus.config}: plugins.dbg.format: 'yaml' is not one of line, json" in res.stderr
    res = busctl(bus, "config", "set", "log_level", "3", ok=False)
    assert res.returncode == 2 and "main.log_level: must be a string, not an integer" in res.stderr
    res = busctl(bus, "config", "set", "dbg.nope", "1", ok=False)
    assert res.returncode == 2 and "plugins.dbg.nope: unknown key for built-in receiver 'debugger'" in res.stderr
    res = busctl(bus, "config", "set", "ghost.key", "1", ok=False)
    assert res.returncode == 2 and "no plugin 'ghost'" in res.stderr
    assert bus.config.read_bytes() == before
    assert status(bus)["reloads"] == reloads
    assert not [p for p in bus.base.iterdir() if p.name.endswith(".tmp")]


def test_ls_cat_enable_disable_rm(bus: Bus) -> None:
    write_config(bus)
    snippet = bus.base / "conf.d" / "dbg2.toml"
    snippet.parent.mkdir()
    snippet.write_text('# second debugger\n[plugins.dbg2]\ntype = "receiver"\nbuiltin = "debugger"\n')
    bus.start()
    wait_state(bus, "dbg", "running")
    wait_state(bus, "dbg2", "running")
    rows = json.loads(busctl(bus, "ls", "--json").stdout)
    assert rows == [
        {"name": "dbg", "type": "receiver", "builtin": "debugger", "exec": None, "enabled": True, "file": str(bus.config)},
        {"name": "x", "type": "receiver", "builtin": None, "exec": ["/bin/false"], "enabled": False,
         "file": str(bus.config)},
        {"name": "dbg2", "type": "receiver", "builtin": "debugger", "exec": None, "enabled": True, "file": str(snippet)},
    ]
    assert "exec /bin/false" in busctl(bus, "ls").stdout
    assert busctl(bus, "cat", "dbg2").stdout == f"# {snippet}\n" + snippet.read_text()
    assert busctl(bus, "cat", "dbg").stdout == (
        f"# {bus.config}\n[plugins.dbg]   # a receiver\ntype = \"receiver\"\nbuiltin = \"debugger\"  # shipped with busd\n"
        'format = "line"\n')

    busctl(bus, "disable", "dbg2")
    assert snippet.read_text().endswith('builtin = "debugger"\nenabled = false\n')
    wait_state(bus, "dbg2", "disabled")
    assert "already disabled" in busctl(bus, "disable", "dbg2").stdout
    busctl(bus, "enable", "dbg2")
    assert snippet.read_text().endswith("enabled = true\n")
    wait_state(bus, "dbg2", "running")
    busctl(bus, "enable", "x")
    assert 'exec = ["/bin/false"]\nenabled = true\n' in bus.config.read_text()

    res = busctl(bus, "rm", "dbg2")
    assert f"removed {snippet}" in res.stdout and "removed dbg2" in res.stdout
    assert not snippet.exists()
    assert "dbg2" not in [p["name"] for p in status(bus)["plugins"]]
    res = busctl(bus, "rm", "dbg2", ok=False)
    assert res.returncode == 2 and "no plugin 'dbg2'" in res.stderr


def test_edit_with_an_editor_script(bus: Bus, tmp_path: Path) -> None:
    write_config(bus)
    bus.start()
    wait_state(bus, "dbg", "running")
    good = editor_script(tmp_path, """sed -i 's/format = "line"/format = "json"/' "$1"\n""")
    res = busctl(bus, "edit", "dbg", env=good)
    assert "restarted dbg" in res.stdout
    assert 'format = "json"' in bus.config.read_text() and "# busd under test" in bus.config.read_text()

    before = bus.config.read_bytes()
    bad = editor_script(tmp_path, """sed -i 's/format = "json"/format = "yaml"/' "$1"\n""")
    res = busctl(bus, "edit", "dbg", env=bad, ok=False)
    assert res.returncode == 2
    assert f"refused, nothing written: {bus.config}: plugins.dbg.format: 'yaml' is not one of" in res.stderr
    assert bus.config.read_bytes() == before

    res = busctl(bus, "edit", "dbg", env=editor_script(tmp_path, "exit 0\n"))
    assert "unchanged" in res.stdout
    res = busctl(bus, "edit", "dbg", env=editor_script(tmp_path, "exit 3\n"), ok=False)
    assert res.returncode == 1 and "editor exited with status 3" in res.stderr
    assert bus.config.read_bytes() == before


def test_eight_concurrent_writers(bus: Bus) -> None:
    write_config(bus)
    bus.start()
    procs = [subprocess.Popen([str(BIN / "busctl"), "--config", str(bus.config), "config", "set", f"x.key{i}",
                               str(i * 10)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in range(8)]
    results = [(p.wait(timeout=60), p.stdout.read() if p.stdout else "", p.stderr.read() if p.stderr else "")
               for p in procs]
    for p in procs:
        for stream in (p.stdout, p.stderr):
            if stream:
                stream.close()
    assert [r[0] for r in results] == [0] * 8, results
    table = config.load(bus.config).plugins["x"].table
    assert {k: v for k, v in table.items() if k.startswith("key")} == {f"key{i}": i * 10 for i in range(8)}
    assert "# not started: a place for options nobody reads" in bus.config.read_text()
    subprocess.run([str(BIN / "busd"), "--config", str(bus.config), "--check"], check=True, capture_output=True)
    assert status(bus)["reloads"] >= 1 and not status(bus)["last_reload_error"]


def test_fresh_configuration_without_include(bus: Bus, tmp_path: Path) -> None:
    """Through the console script, as an operator runs it."""
    write_config(bus, include=False)

    def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "busctl"), "--config", str(bus.config), *args], capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})}, timeout=60,
                              check=True)

    # busd not running: the change is written and applies at the next start
    assert "busd is not running" in run("config", "set", "dbg.format", "json").stdout
    bus.start()
    new = editor_script(tmp_path, 'cat > "$1" <<EOF\n[plugins.new1]\ntype = "receiver"\nbuiltin = "debugger"\nEOF\n')
    out = run("edit", "new1", env=new).stdout
    snippet = bus.base / "conf.d" / "new1.toml"
    assert f"wrote {snippet}" in out and "added new1" in out
    assert 'hostname = "testhost"\nrestart_delay = 0.05\nstop_timeout = 1.0\ninclude = ["conf.d/*.toml"]\n' in (
        bus.config.read_text())
    assert snippet.read_text() == '[plugins.new1]\ntype = "receiver"\nbuiltin = "debugger"\n'
    wait_state(bus, "new1", "running")
    assert json.loads(busctl(bus, "config", "get", "dbg.format", "--json").stdout)["dbg.format"] == {
        "value": "json", "default": "line", "file": str(bus.config), "help": "line (readable) or json (the whole event)"}

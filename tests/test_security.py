"""Security: who may reach busd's sockets (mode, group, runtime dir), CURVE key files, and secrets that
never appear in logs or in ``busctl config get``."""

from __future__ import annotations

import grp
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import BIN, Bus, plugin_cmd, wait_for
from pgbus import make_keys
from pgcluster import free_port

from bus import protocol
from bus.secrets import mask, redact_url, secret_values


def _as(user: str, group: str, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ``user`` with ``group`` as its only group."""
    return subprocess.run(["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups", *argv],
                          capture_output=True, text=True, timeout=60)


def test_sockets_are_0660_in_a_0750_dir_of_the_socket_group(bus: Bus) -> None:
    """With socket_group, the group's members reach the control socket (busctl works), other users do not."""
    bus.base.chmod(0o711)  # others may pass through the test's directory, as through /run
    bus.write({}, main={"socket_group": "nogroup"})
    bus.config.chmod(0o644)
    bus.start()
    gid = grp.getgrnam("nogroup").gr_gid
    st = os.stat(bus.runtime_dir)
    assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o750, gid)
    for name in (protocol.CONTROL, protocol.INPUT, protocol.EVENTS):
        st = os.stat(bus.runtime_dir / name)
        assert stat.S_ISSOCK(st.st_mode) and (stat.S_IMODE(st.st_mode), st.st_gid) == (0o660, gid), name
    member = _as("nobody", "nogroup", str(BIN / "busctl"), "--config", str(bus.config), "status", "--json")
    assert member.returncode == 0, member.stderr
    assert json.loads(member.stdout)["pid"] == bus.proc.pid  # type: ignore[union-attr]
    stranger = _as("daemon", "daemon", str(BIN / "busctl"), "--config", str(bus.config), "status", "--json")
    assert stranger.returncode != 0
    assert f"permission denied on {bus.runtime_dir / protocol.CONTROL}" in stranger.stderr, stranger.stderr
    emit = subprocess.run(["setpriv", "--reuid=daemon", "--regid=daemon", "--clear-groups", str(BIN / "bus-emit"),
                           "--config", str(bus.config), "--system", "t", "--event-type", "X"], capture_output=True, text=True,
                          timeout=60)
    assert emit.returncode == 1 and "permission denied on" in emit.stderr, emit.stderr
    emit = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", str(BIN / "bus-emit"),
                           "--config", str(bus.config), "--system", "t", "--event-type", "FROM_A_MEMBER"],
                          capture_output=True, text=True, timeout=60)
    assert emit.returncode == 0, emit.stderr
    assert bus.status()["plugins"] == [] and bus.status()["broker"]["head"]["raw"] == 1


def test_world_writable_runtime_dir_is_refused(bus: Bus) -> None:
    bus.write({})
    bus.runtime_dir.mkdir()
    bus.runtime_dir.chmod(0o777)
    res = subprocess.run([str(BIN / "busd"), "--config", str(bus.config)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 2
    assert "main.runtime_dir" in res.stderr and f"{bus.runtime_dir} is writable by everyone (mode 0777)" in res.stderr
    assert not (bus.runtime_dir / protocol.CONTROL).exists()


def test_unknown_socket_group_is_a_config_error(bus: Bus) -> None:
    bus.write({}, main={"socket_group": "no-such-group-here"})
    res = bus.run("busd", "--check", check=False)
    assert res.returncode == 2
    assert "main.socket_group" in res.stderr and "no group 'no-such-group-here'" in res.stderr


def test_socket_group_cannot_change_on_reload(bus: Bus) -> None:
    bus.write({})
    bus.start()
    bus.write({}, main={"socket_group": "nogroup"})
    res = bus.run("busctl", "reload", check=False)
    assert res.returncode != 0 and "main.socket_group" in res.stderr and "restart busd" in res.stderr


def test_pgcluster_refuses_a_secret_key_others_can_read(bus: Bus, tmp_path: Path) -> None:
    """A CURVE secret key file readable by group or others is not used; busctl status says why."""
    make_keys(tmp_path, ["node1"])
    (tmp_path / "node1.key_secret").chmod(0o644)
    bus.write({"pgc": {"type": "receiver", "builtin": "pgcluster", "listen": f"tcp://127.0.0.1:{free_port()}",
                       "secret_key": str(tmp_path / "node1.key_secret"), "interval": 0.3}})
    bus.start()
    status_file = bus.runtime_dir / "status" / "pgc.json"
    wait_for(lambda: status_file.exists() and json.loads(status_file.read_text()).get("error"), what="pgcluster status")
    status = json.loads(status_file.read_text())
    assert "readable by its owner only (mode 0644): chmod 600" in status["error"]
    assert status["serving"] is False
    assert "chmod 600" in bus.run("busctl", "status").stdout


SECRETS = {"bearer": "tok-Abc123-bearer", "jwt": "jwt-S3cret-xyz", "signing": "sign-K3y-9", "url": "urlP4ss-w",
           "header": "hdr-K3y-v", "nats": "nats-T0ken-q", "exec": "exec-Pw-77", "dsn": "dsn-Pw-55"}


def test_secrets_never_in_logs_or_config_get(bus: Bus) -> None:
    """Webhook tokens, JWT and signing secrets, URL and DSN passwords, credential headers, NATS tokens and an
    outside plugin's password: masked by busctl config get and busd --check, and in no log line."""
    down = f"127.0.0.1:{free_port()}"  # nothing listens: every delivery fails and is logged
    bus.write({
        "hooks": {"type": "receiver", "builtin": "webhook", "retry_max": 0.2, "webhooks": [
            {"url": f"http://{down}/a", "bearer_token": SECRETS["bearer"]},
            {"url": f"http://ops:{SECRETS['url']}@{down}/b", "secret": SECRETS["jwt"], "signing_key": SECRETS["signing"],
             "headers": {"X-Api-Key": SECRETS["header"]}}]},
        "fleet": {"type": "receiver", "builtin": "nats", "servers": [f"nats://{down}"], "token": SECRETS["nats"]},
        "leaky": {"type": "collector", "exec": plugin_cmd("leaky"), "password": SECRETS["exec"],
                  "dsn": f"host=db password={SECRETS['dsn']}"},
    }, main={"log_level": "debug"})
    bus.config.chmod(0o640)
    shown = [bus.run("busctl", "config", "get").stdout, bus.run("busctl", "config", "get", "--json").stdout,
             bus.run("busctl", "config", "get", "hooks.webhooks").stdout,
             bus.run("busctl", "config", "get", "fleet.token").stdout, bus.run("busd", "--check").stdout]
    for text in shown:
        assert "***" in text
        assert not [s for s in SECRETS.values() if s in text], text
    assert bus.run("busctl", "config", "get", "fleet.token").stdout.strip() == '"***"'
    bus.start()
    bus.emit([{"system": "test", "event_type": "PING", "kind": "synthetic"}])
    wait_for(lambda: {"leaky_done", "leaky_failed", "leaky_config"} <= {r.get("event") for r in bus.log_records()},
             what="the leaky plugin's lines")
    wait_for(lambda: "raw stderr line" in bus.read_log(), what="the raw stderr line")
    hooks = bus.runtime_dir / "status" / "hooks.json"
    wait_for(lambda: hooks.exists() and all(h["last_error"] for h in json.loads(hooks.read_text())["webhooks"]),
             what="each webhook tried and failed")
    bus.stop()
    log = bus.read_log()
    assert "***" in log
    assert not [s for s in SECRETS.values() if s in log]
    leaky = next(r for r in bus.log_records() if r.get("event") == "leaky_config")
    assert leaky["table"]["password"] == "***" and leaky["table"]["dsn"] == "host=db password=***"


def test_mask_and_secret_values() -> None:
    table = {"url": "https://u:pw1234@h/x", "token": "t0k3n", "nested": [{"bearer_token": "b", "name": "n"}],
             "headers": {"Authorization": "Bearer abcd1234", "Accept": "json"}, "dsn": "host=a password='p w'",
             "secret_key": "keys/n.key_secret", "empty": {"password": ""}}
    assert mask(table) == {
        "url": "https://u:***@h/x", "token": "***", "nested": [{"bearer_token": "***", "name": "n"}],
        "headers": {"Authorization": "***", "Accept": "json"}, "dsn": "host=a password=***",
        "secret_key": "keys/n.key_secret", "empty": {"password": ""}}
    assert secret_values(table) == {"pw1234", "t0k3n", "b", "Bearer abcd1234", "abcd1234", "p w"}
    assert mask({"x": "y"}, keys=["x"]) == {"x": "***"}
    assert redact_url("nats://tok@h:4222") == "nats://***@h:4222"
    assert redact_url("/path@x") == "/path@x"


def test_log_scrubber_masks_values_tracebacks_and_short_secrets_only_whole() -> None:
    code = """
from bus.log import configure, get_logger, hide_secrets
configure("info", json=True)
hide_secrets({"longsecret", "ab"})
log = get_logger()
log.info("one", value="x longsecret y", nested={"k": ["longsecret"]}, short="ab", word="cab")
try:
    raise ValueError("boom longsecret")
except ValueError:
    log.exception("two")
"""
    res = subprocess.run([str(BIN / "python"), "-c", code], capture_output=True, text=True, timeout=60, check=True)
    one, two = (json.loads(line) for line in res.stderr.splitlines())
    assert (one["value"], one["nested"], one["short"], one["word"]) == ("x *** y", {"k": ["***"]}, "***", "cab")
    assert "longsecret" not in res.stderr and "boom ***" in json.dumps(two)


@pytest.mark.parametrize("mode", [0o644, 0o604])
def test_secret_in_world_readable_file_still_refused(bus: Bus, mode: int) -> None:
    bus.write({"fleet": {"type": "receiver", "builtin": "nats", "servers": ["nats://127.0.0.1:4222"], "token": "x"}})
    bus.config.chmod(mode)
    res = bus.run("busd", "--check", check=False)
    assert res.returncode == 2 and "plugins.fleet.token" in res.stderr and "readable by everyone" in res.stderr

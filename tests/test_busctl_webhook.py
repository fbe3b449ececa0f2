"""``busctl webhook add/mod/del/list/test/status`` against a real busd and a real webhook server."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import jwt
import pytest
from conftest import BIN, Bus, ev, wait_for
from typer.testing import CliRunner
from webhook_server import WebhookServer, free_port

from bus.ctl import ctl_app
from receivers.webhook import verify_signature

SECRET = "a gluster webhook secret, 32 bytes+"


@pytest.fixture(name="server")
def fixture_server() -> Iterator[WebhookServer]:
    """A recording webhook server on 127.0.0.1, listening."""
    server = WebhookServer().up()
    try:
        yield server
    finally:
        server.close()


def busctl(config: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``busctl --config CONFIG ARGS``."""
    res = subprocess.run([str(BIN / "busctl"), "--config", str(config), *args], capture_output=True, text=True,
                         timeout=60)
    if check and res.returncode != 0:
        raise AssertionError(f"busctl {' '.join(args)} exited {res.returncode}:\n{res.stdout}\n{res.stderr}")
    return res


def inproc(config: Path, *args: str) -> tuple[int, str, str]:
    """Run busctl in this process (no interpreter start-up): ``(exit status, stdout, stderr)``."""
    res = CliRunner().invoke(ctl_app, ["--config", str(config), *args])
    return res.exit_code, res.stdout, res.stderr


def test_add_on_a_fresh_configuration_then_mod_status_list_del(bus: Bus, server: WebhookServer) -> None:
    bus.write({})
    bus.start()
    url = server.url + "/hook"
    out = busctl(bus.config, "webhook", "add", url, "--format", "busd", "--filter", "system=test",
                 "--signing-key", "sig", "--header", "X-Env=prod", "--state-dir", str(bus.base / "state")).stdout
    assert "added webhook 127.0.0.1-" in out and "busd reloaded: added webhook" in out
    snippet = bus.base / "conf.d" / "webhook.toml"
    assert 'builtin = "webhook"' in snippet.read_text() and "[[plugins.webhook.webhooks]]" in snippet.read_text()
    assert 'include = ["conf.d/*.toml"]' in bus.config.read_text()
    bus.wait_running("webhook")
    bus.emit([ev("other", "SKIPPED", kind="synthetic"), ev("test", "ONE", "first", kind="synthetic")])
    wait_for(lambda: server.received(), what="the first delivery")
    first = server.received()[0]
    assert first.json()["event_type"] == "ONE" and first.header("X-Env") == "prod"
    assert verify_signature("sig", first.headers, first.body) and first.header("Authorization") is None

    [listed] = json.loads(inproc(bus.config, "webhook", "list", "--json")[1])
    name = listed["name"]
    assert listed["url"] == url and listed["signing_key"] == "***" and listed["filter"] == {"system": "test"}

    code, out, _ = inproc(bus.config, "webhook", "mod", name, "--secret", SECRET, "--format", "gluster")
    assert f"changed webhook {name}" in out and "restarted webhook" in out
    bus.wait_running("webhook")
    bus.emit([ev("test", "TWO", "second", kind="synthetic")])
    wait_for(lambda: len(server.received()) == 2, what="the second delivery")
    second = server.received()[1]
    assert second.json()["event"] == "TWO" and set(second.json()) == {"nodeid", "ts", "event", "message"}
    claims = jwt.decode(second.header("Authorization").removeprefix("Bearer "), SECRET, algorithms=["HS256"],
                        issuer="gluster")
    assert claims["sub"] == "TWO"

    def delivered() -> list[dict[str, object]]:
        reports = json.loads(inproc(bus.config, "webhook", "status", "--json")[1])
        return [h for r in reports for h in r.get("webhooks", []) if h.get("delivered") == 2]

    [hook] = wait_for(delivered, what="the status to count two deliveries")
    assert hook["name"] == name and hook["depth"] == 0 and hook["last_success"] > time.time() - 60
    code, text, _ = inproc(bus.config, "webhook", "status")
    assert code == 0 and "LAST SUCCESS" in text
    assert [line.split()[:3] for line in text.splitlines() if line.startswith(name)] == [[name, "webhook", "0"]]

    code, out, _ = inproc(bus.config, "webhook", "del", url)
    assert code == 0 and f"removed webhook {name}" in out
    assert json.loads(inproc(bus.config, "webhook", "list", "--json")[1]) == []
    bus.wait_running("webhook")
    bus.emit([ev("test", "THREE", kind="synthetic")])
    wait_for(lambda: bus.plugin("webhook").get("acked", {}).get("synthetic", 0) >= 4, what="the receiver to handle THREE")
    assert len(server.received()) == 2


def test_bad_changes_are_refused_and_nothing_is_written(tmp_path: Path) -> None:
    config = tmp_path / "busd.toml"
    config.write_text(f'[main]\nruntime_dir = "{tmp_path}/run"\n')
    assert inproc(config, "webhook", "add", "http://127.0.0.1:1/a", "--name", "a")[0] == 0
    snippet = tmp_path / "conf.d" / "webhook.toml"
    snippet.write_text("# our webhooks\n" + snippet.read_text().replace("[[", "# the first one\n[["))
    before = snippet.read_text()
    for args, message in [
        (("add", "http://127.0.0.1:1/a", "--name", "a"), "exists already"),
        (("add", "ftp://x/"), "not an http:// or https:// URL"),
        (("add", "http://x/", "--bearer-token", "t", "--secret", "s"), "not both"),
        (("add", "http://x/", "--filter", "colour=red"), "filter.colour: unknown key"),
        (("mod", "a", "--format", "xml"), "'xml' is not one of gluster, busd"),
        (("mod", "nothere", "--format", "busd"), "no webhook named 'nothere'"),
        (("mod", "a"), "nothing to change"),
        (("del", "b"), "no webhook named 'b'"),
    ]:
        code, _, err = inproc(config, "webhook", *args)
        assert code == 2 and message in err, (args, err)
        assert snippet.read_text() == before
    assert inproc(config, "webhook", "mod", "a", "--bearer-token", "tok", "--url", "http://127.0.0.1:2/b")[0] == 0
    text = snippet.read_text()
    assert "# our webhooks" in text and "# the first one" in text
    assert 'url = "http://127.0.0.1:2/b"' in text and 'bearer_token = "tok"' in text
    assert inproc(config, "webhook", "mod", "a", "--secret", SECRET, "--filter", "system=gluster")[0] == 0
    code, out, _ = inproc(config, "webhook", "list", "--json")
    [hook] = json.loads(out)
    assert hook["secret"] == "***" and hook["bearer_token"] == "" and hook["name"] == "a"
    code, out, _ = inproc(config, "webhook", "list")
    assert code == 0 and out.splitlines()[1].split() == ["a", "webhook", "gluster", "jwt", "no", "system=gluster",
                                                         "http://127.0.0.1:2/b"]
    assert inproc(config, "webhook", "del", "a")[0] == 0
    assert "no webhooks" in inproc(config, "webhook", "list")[1]


def test_concurrent_adds_all_land(tmp_path: Path) -> None:
    config = tmp_path / "busd.toml"
    config.write_text(f'[main]\nruntime_dir = "{tmp_path}/run"\n')
    procs = [subprocess.Popen([str(BIN / "busctl"), "--config", str(config), "webhook", "add",
                               f"http://127.0.0.1:1/h{i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(3)]
    assert [p.wait(60) for p in procs] == [0] * 3
    hooks = json.loads(busctl(config, "webhook", "list", "--json").stdout)
    assert sorted(h["url"] for h in hooks) == [f"http://127.0.0.1:1/h{i}" for i in range(3)]


def test_webhook_test_reports_status_and_latency(tmp_path: Path, server: WebhookServer) -> None:
    config = tmp_path / "busd.toml"
    config.write_text(f'[main]\nruntime_dir = "{tmp_path}/run"\nhostname = "node7"\n')
    assert inproc(config, "webhook", "add", server.url + "/g", "--name", "g", "--secret", SECRET)[0] == 0
    out = busctl(config, "webhook", "test", "g").stdout
    assert out.startswith(f"{server.url}/g: HTTP 200 in ") and "gluster format, auth jwt" in out
    [req] = server.received()
    body = req.json()
    assert body["event"] == "WEBHOOK_TEST" and body["nodeid"] == "node7" and list(body) == sorted(body)
    claims = jwt.decode(req.header("Authorization").removeprefix("Bearer "), SECRET, algorithms=["HS256"])
    assert claims["sub"] == "WEBHOOK_TEST" and claims["iss"] == "gluster"

    result = json.loads(inproc(config, "webhook", "test", server.url + "/x", "--format", "busd", "--bearer-token", "t",
                               "--json")[1])
    assert result["ok"] and result["status"] == 200 and result["latency_ms"] > 0
    assert server.received("/x")[0].json()["event_type"] == "WEBHOOK_TEST"
    assert server.received("/x")[0].header("Authorization") == "Bearer t"

    server.status = 500
    code, _, err = inproc(config, "webhook", "test", "g")
    assert code == 1 and "HTTP 500" in err
    res = busctl(config, "webhook", "test", f"http://127.0.0.1:{free_port()}/", "--json", check=False)
    assert res.returncode == 1 and "Connection refused" in json.loads(res.stdout)["error"]

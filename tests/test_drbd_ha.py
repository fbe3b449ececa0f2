"""DRBD high availability end to end: ``drbdsetup events2`` lines (replayed) -> the ``drbd`` collector
-> the ``drbd`` parser -> the ``promoter`` (fake drbdadm/systemctl) and ``prometheus`` receivers."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

from conftest import PLUGINS, PY, Bus, wait_for
from fakecmd import FakeTools
from prometheus_client.parser import text_string_to_metric_families

SCENARIO = Path(__file__).resolve().parent / "data" / "drbd" / "ha-failover.txt"


def test_failover_and_quorum_loss_through_the_drbd_parser(bus: Bus, tmp_path: Path) -> None:
    tools = FakeTools(tmp_path / "bin")
    script = tmp_path / "web.events2"
    script.write_text(SCENARIO.read_text().replace("{dir}", str(tmp_path)))
    bus.write({
        "drbd-events": {"type": "collector", "builtin": "drbd", "command": [PY, str(PLUGINS / "drbd_replay.py"),
                                                                            str(script)]},
        "drbd": {"type": "parser", "builtin": "drbd"},
        "promoter": {"type": "receiver", "builtin": "promoter", **tools.options()},
        "prom": {"type": "receiver", "builtin": "prometheus", "address": "127.0.0.1:0", "drbdadm": ""},
    }, extra='\n[plugins.promoter.resources.web]\nstart = ["srv-web.mount", "nginx.service"]\n')
    bus.start()
    wait_for(lambda: len(tools.calls()) == 4, what="adjust, promote and two starts")
    assert tools.calls() == ["drbdadm adjust web", "drbdadm primary web", "systemctl start srv-web.mount",
                             "systemctl start nginx.service"]
    (tmp_path / "promoted").touch()
    wait_for(lambda: len(tools.calls()) == 7, what="stops and demote after quorum loss")
    assert tools.calls()[4:] == ["systemctl stop nginx.service", "systemctl stop srv-web.mount",
                                 "drbdadm secondary web"]
    (tmp_path / "demoted").touch()

    def last_actions() -> list[str]:
        out = json.loads(bus.run("busctl", "promoter", "status", "--json").stdout)
        return [h["action"] for h in out[0]["resources"]["web"]["history"]]
    wait_for(lambda: last_actions() == ["adjust", "promote", "quorum-lost"], what="promoter history")

    status_file = bus.runtime_dir / "status" / "prom.json"
    [listening] = json.loads(status_file.read_text())["listening"]

    def scrape() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        with urllib.request.urlopen(f"http://{listening}/metrics", timeout=10) as r:
            return {(s.name, tuple(sorted(s.labels.items()))): s.value
                    for f in text_string_to_metric_families(r.read().decode()) for s in f.samples}

    web = (("name", "web"),)
    dev = (("minor", "1000"), ("name", "web"), ("volume", "0"))
    secondary = ("drbd_resource_role", (("drbd_resource_role", "Secondary"), *web))
    samples = wait_for(lambda: (s := scrape()).get(secondary) == 1 and s.get(("drbd_device_open", dev)) == 0 and s,
                       what="web Secondary again")
    assert samples[("drbd_device_quorum", dev)] == 0
    assert samples[("drbd_device_written_bytes_total", dev)] == 4096 * 1024  # statistics of a silent update
    assert samples[("drbd_resource_promotionscore", web)] == 10102
    conn = (("conn_name", "beta"), ("drbd_connection_state", "NetworkFailure"), ("name", "web"), ("peer_node_id", "1"))
    assert samples[("drbd_connection_state", conn)] == 1
    assert samples[("busd_events_total", (("event_type", "DRBD_QUORUM_LOST"), ("kind", "synthetic"),
                                          ("severity", "error"), ("system", "drbd")))] == 1
    assert samples[("busd_events_total", (("event_type", "DRBD_ROLE_CHANGED"), ("kind", "synthetic"),
                                          ("severity", "info"), ("system", "drbd")))] == 2
    assert samples[("busd_plugin_events_in_total", (("plugin", "drbd-events"), ("type", "collector")))] == 13

"""Receiver ``prometheus``: ``/metrics`` scraped over real HTTP and parsed with prometheus_client's parser."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, Bus, ev, wait_for
from drbd_events import connection, device, drbd_event, peer_device, resource
from prometheus_client.parser import text_string_to_metric_families

from receivers.prometheus import Prometheus, check_options, parse_address

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> tuple[Samples, dict[str, str], dict[str, str]]:
    """Return ``{(sample name, sorted labels): value}``, the type and the HELP of each family."""
    samples: Samples = {}
    types, helps = {}, {}
    for family in text_string_to_metric_families(text):
        types[family.name], helps[family.name] = family.type, family.documentation
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types, helps


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples[(metric, tuple(sorted(labels.items())))]


def names(samples: Samples) -> set[str]:
    return {name for name, _ in samples}


def two_node_state() -> dict[str, Any]:
    """r0 Primary on this node, connected to node2 (Secondary, UpToDate, 12 KiB out of sync)."""
    return resource("r0", "Primary", may_promote=False, promotion_score=10103,
                    devices=[device(0, "UpToDate", minor=1000, size=1048576, read=8, written=4, **{"al-writes": 3,
                                    "bm-writes": 1, "upper-pending": 2, "lower-pending": 1, "open": True})],
                    connections=[connection("node2", 1, "Connected", peer_role="Secondary", **{"ap-in-flight": 2},
                                            peer_devices=[peer_device(0, "UpToDate", out_of_sync=12, sent=100)])])


@pytest.mark.parametrize(("address", "expected"), [
    (":9942", (None, 9942)), ("[::]:9942", ("::", 9942)), ("127.0.0.1:9942", ("127.0.0.1", 9942)),
    ("localhost:0", ("localhost", 0)), ("[::1]:80", ("::1", 80)),
])
def test_addresses(address: str, expected: tuple[str | None, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize("address", ["9942", "::9942", "host:99999", "[::1]", "a:b"])
def test_bad_addresses(address: str) -> None:
    with pytest.raises(ValueError, match=r"address: .* is not HOST:PORT"):
        check_options({"address": address, "scrape_timeout": 1.0})


def test_drbd_metrics_and_destroyed_resource(tmp_path: Path) -> None:
    drbdadm = tmp_path / "drbdadm"
    drbdadm.write_text("#!/bin/sh\necho DRBDADM_API_VERSION=2\necho DRBD_KERNEL_VERSION=9.2.8\n"
                       "echo DRBDADM_VERSION=9.27.0\n")
    drbdadm.chmod(0o755)
    table = {"type": "receiver", "builtin": "prometheus", "address": "127.0.0.1:0", "drbdadm": str(drbdadm),
             "scrape_timeout": 0.2}
    p = Prometheus({"BUS_PLUGIN": "prom", "BUS_PLUGIN_CONFIG": json.dumps(table),
                    "BUS_RUNTIME_DIR": str(tmp_path / "run"), "BUS_CONTROL": f"ipc://{tmp_path}/no-busd.sock"})

    async def main() -> None:
        await p.setup()
        try:
            [listening] = json.loads((tmp_path / "run" / "status" / "prom.json").read_text())["listening"]
            url = f"http://{listening}/metrics"
            loop = asyncio.get_running_loop()

            async def scrape() -> str:
                def get() -> str:
                    with urllib.request.urlopen(url, timeout=5) as r:
                        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                        return str(r.read().decode())
                return await loop.run_in_executor(None, get)

            p.handle(drbd_event("DRBD_INITIAL_STATE", two_node_state(), action="exists"))
            outdated = resource("r1", devices=[device(0, "Outdated", minor=1001)],
                                connections=[connection("node2", 1, "StandAlone", peer_devices=[])])
            p.handle(drbd_event("DRBD_RESOURCE_CREATED", outdated, action="create"))
            samples, types, helps = parse(await scrape())
            r0, r1 = {"name": "r0"}, {"name": "r1"}
            dev = {**r0, "volume": "0", "minor": "1000"}
            conn = {**r0, "conn_name": "node2", "peer_node_id": "1"}
            assert value(samples, "drbdreactor_up") == 1
            assert value(samples, "drbd_version", kmod="9.2.8", utils="9.27.0") == 1
            assert value(samples, "drbd_resource_resources") == 2
            assert value(samples, "drbd_resource_role", **r0, drbd_resource_role="Primary") == 1
            assert value(samples, "drbd_resource_role", **r0, drbd_resource_role="Secondary") == 0
            assert value(samples, "drbd_resource_role", **r1, drbd_resource_role="Secondary") == 1
            assert value(samples, "drbd_resource_maypromote", **r0) == 0
            assert value(samples, "drbd_resource_promotionscore", **r0) == 10103
            assert value(samples, "drbd_device_state", **dev, drbd_device_state="UpToDate") == 1
            assert sum(v for (n, lab), v in samples.items() if n == "drbd_device_state" and ("name", "r0") in lab) == 1
            assert value(samples, "drbd_device_state", name="r1", volume="0", minor="1001",
                         drbd_device_state="Outdated") == 1
            assert value(samples, "drbd_device_quorum", **dev) == 1
            assert value(samples, "drbd_device_open", **dev) == 1
            assert value(samples, "drbd_device_unintentionaldiskless", **dev) == 0
            assert value(samples, "drbd_device_size_bytes", **dev) == 1048576 * 1024
            assert value(samples, "drbd_device_written_bytes_total", **dev) == 4 * 1024
            assert value(samples, "drbd_device_read_bytes_total", **dev) == 8 * 1024
            assert value(samples, "drbd_device_alwrites_total", **dev) == 3
            assert value(samples, "drbd_device_bmwrites_total", **dev) == 1
            assert value(samples, "drbd_device_upperpending", **dev) == 2
            assert value(samples, "drbd_device_lowerpending", **dev) == 1
            assert value(samples, "drbd_connection_state", **conn, drbd_connection_state="Connected") == 1
            assert value(samples, "drbd_connection_state", **conn, drbd_connection_state="StandAlone") == 0
            assert value(samples, "drbd_connection_state", name="r1", conn_name="node2", peer_node_id="1",
                         drbd_connection_state="StandAlone") == 1
            assert value(samples, "drbd_connection_apinflight_bytes", **conn) == 2 * 512
            assert value(samples, "drbd_peerdevice_outofsync_bytes", **conn, volume="0") == 12 * 1024
            assert value(samples, "drbd_peerdevice_sent_bytes", **conn, volume="0") == 100 * 1024
            assert types["drbd_device_written_bytes"] == "counter" and types["drbd_resource_role"] == "gauge"
            assert types["drbd_peerdevice_sent_bytes"] == "unknown"
            assert helps["drbd_resource_maypromote"] == "Boolean whether the resource may be promoted to Primary"
            assert helps["drbd_device_quorum"] == "Boolean if this device has DRBD quorum"
            assert value(samples, "busd_up") == 0  # busd does not answer: still 200, the rest is served
            assert "busd_plugin_events_in_total" not in names(samples)
            assert value(samples, "busd_events_total", system="drbd", event_type="DRBD_RESOURCE_CREATED",
                         severity="info", kind="synthetic") == 1

            p.handle(drbd_event("DRBD_ROLE_CHANGED", {**two_node_state(), "devices": {"0": "garbage"}}))
            assert p.counters == {"bad_state": 1}  # kept the last good state
            p.handle(drbd_event("DRBD_RESOURCE_DESTROYED", None, resource_name="r1", action="destroy"))
            samples, _, _ = parse(await scrape())
            assert not [key for key in samples if ("name", "r1") in key[1]]
            assert value(samples, "drbd_resource_resources") == 1
            assert value(samples, "drbd_device_quorum", **dev) == 1
        finally:
            await p.teardown()

    asyncio.run(main())


def test_bus_metrics_through_busd(bus: Bus, tmp_path: Path) -> None:
    dup = json.dumps({"event_id": "00000000-0000-4000-8000-000000000001", "system": "test", "event_type": "DUP"})
    bus.write({
        "prom": {"type": "receiver", "builtin": "prometheus", "address": "127.0.0.1:0", "drbdadm": ""},
        # a collector that sends one event twice (the broker drops the duplicate), then idles
        "dup": {"type": "collector",
                "exec": ["sh", "-c", f"printf '%s\\n%s\\n' '{dup}' '{dup}' | {BIN}/bus-emit && exec sleep 60"]},
        "crasher": {"type": "collector", "exec": ["sh", "-c", "exit 3"]},
    })
    bus.start()
    bus.wait_running("prom")
    status_file = bus.runtime_dir / "status" / "prom.json"
    [listening] = wait_for(lambda: status_file.exists() and json.loads(status_file.read_text())["listening"])
    state = two_node_state()
    bus.emit([
        ev("scsi", "SCSI_MEDIUM_ERROR", severity="error", kind="synthetic", dev_name="sdb"),
        ev("scsi", "SCSI_MEDIUM_ERROR", severity="error", kind="synthetic", dev_name="sdc"),
        ev("kmsg", "KMSG", kind="raw"),  # raw: not for this receiver
        drbd_event("DRBD_INITIAL_STATE", state, action="exists"),
        drbd_event("DRBD_QUORUM_LOST", state, object="device", volume=0, severity="error"),
    ])

    def settled() -> dict[str, Any] | None:
        plugins = {p["name"]: p for p in bus.status()["plugins"]}
        done = (plugins["crasher"]["state"] == "failed" and plugins["dup"]["dropped"].get("duplicate") == 1
                and plugins["prom"]["events_out"] == 4)
        return plugins if done else None
    plugins = wait_for(settled, what="crasher failed, the duplicate dropped, 4 events handled by prom")

    with urllib.request.urlopen(f"http://{listening}/metrics", timeout=10) as r:
        samples, types, _ = parse(r.read().decode())
    assert value(samples, "busd_up") == 1
    assert value(samples, "busd_events_total", system="scsi", event_type="SCSI_MEDIUM_ERROR", severity="error",
                 kind="synthetic") == 2
    assert value(samples, "busd_events_total", system="drbd", event_type="DRBD_QUORUM_LOST", severity="error",
                 kind="synthetic") == 1
    assert value(samples, "busd_events_total", system="drbd", event_type="DRBD_INITIAL_STATE", severity="info",
                 kind="synthetic") == 1
    assert not [k for k in samples if k[0] == "busd_events_total" and ("system", "kmsg") in k[1]]
    assert types["busd_events"] == "counter"
    prom = {"plugin": "prom", "type": "receiver"}
    assert value(samples, "busd_plugin_events_in_total", **prom) == 4
    assert value(samples, "busd_plugin_events_out_total", **prom) == 4
    assert value(samples, "busd_plugin_events_in_total", plugin="dup", type="collector") == 2
    assert value(samples, "busd_plugin_dropped_total", plugin="dup", type="collector", reason="duplicate") == 1
    crasher = {"plugin": "crasher", "type": "collector"}
    assert value(samples, "busd_plugin_restarts_total", **crasher) == plugins["crasher"]["restarts"] > 0
    assert value(samples, "busd_plugin_state", **crasher, state="failed") == 1
    assert value(samples, "busd_plugin_state", **crasher, state="running") == 0
    assert value(samples, "busd_plugin_state", **prom, state="running") == 1
    assert value(samples, "busd_published_events_total", kind="synthetic") == 4
    assert value(samples, "drbd_device_quorum", name="r0", volume="0", minor="1000") == 1
    assert "drbd_version" not in names(samples)  # drbdadm = "": not asked

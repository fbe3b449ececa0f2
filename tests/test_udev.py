"""The ``udev`` collector: replayed uevents and real kernel uevents through a real busd."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import Bus, wait_for

from bus import config
from bus.exceptions import ConfigError
from collectors.udev import properties_from_json

DM_FAILED = {"ACTION": "change", "DEVPATH": "/devices/virtual/block/dm-0", "SUBSYSTEM": "block",
             "DEVNAME": "/dev/dm-0", "DEVTYPE": "disk", "MAJOR": "253", "MINOR": "0", "SEQNUM": "4711",
             "DM_NAME": "mpatha", "DM_UUID": "mpath-3600140512345678", "DM_ACTION": "PATH_FAILED",
             "DM_PATH": "8:48", "DM_NR_VALID_PATHS": "1"}
SDB_ADD = {"ACTION": "add", "DEVPATH": "/devices/platform/host6/target6:0:0/6:0:0:0/block/sdb",
           "SUBSYSTEM": "block", "DEVNAME": "sdb", "DEVTYPE": "disk", "MAJOR": 8, "MINOR": 16, "SEQNUM": 4712}
SCSI_ADD = {"ACTION": "add", "DEVPATH": "/devices/platform/host6/target6:0:0/6:0:0:0", "SUBSYSTEM": "scsi",
            "DEVTYPE": "scsi_device", "SEQNUM": "4713"}
NET_ADD = {"ACTION": "add", "DEVPATH": "/devices/virtual/net/veth0", "SUBSYSTEM": "net", "INTERFACE": "veth0"}


def as_strings(props: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in props.items()}


def listening(bus: Bus, name: str) -> bool:
    return any(r.get("plugin") == name and r.get("event") == "udev_listening" for r in bus.log_records())


def logs(bus: Bus, name: str, event: str) -> list[dict[str, Any]]:
    return [r for r in bus.log_records() if r.get("plugin") == name and r.get("event") == event]


def test_replay_line_parsing() -> None:
    assert properties_from_json(json.dumps(SDB_ADD)) == as_strings(SDB_ADD)
    for line, error in [
        ("{not json", "not valid JSON"),
        ('["ACTION", "add"]', "must be a JSON object"),
        ('{"ACTION": "add", "DEVPATH": "/devices/x"}', "missing SUBSYSTEM"),
        ('{"DEVPATH": "/devices/x", "SUBSYSTEM": "block"}', "missing ACTION"),
        ('{"ACTION": "add", "DEVPATH": "/d", "SUBSYSTEM": "block", "X": {"a": 1}}', "property X"),
        ('{"ACTION": "add", "DEVPATH": "/d", "SUBSYSTEM": "block", "X": true}', "property X"),
    ]:
        with pytest.raises(ValueError, match=error):
            properties_from_json(line)


def test_bad_subsystems_option_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "busd.toml"
    conf.write_text('[plugins.udev]\ntype = "collector"\nbuiltin = "udev"\nsubsystems = ["block", ""]\n')
    with pytest.raises(ConfigError, match=r"plugins\.udev\.subsystems"):
        config.load(conf)
    conf.write_text('[plugins.udev]\ntype = "collector"\nbuiltin = "udev"\nsource = "udevd"\n')
    with pytest.raises(ConfigError, match=r"plugins\.udev\.source"):
        config.load(conf)


def test_replay_through_busd_with_subsystem_filters_and_bad_lines(bus: Bus, tmp_path: Path) -> None:
    replay = tmp_path / "uevents.jsonl"
    lines = [json.dumps(DM_FAILED), json.dumps(NET_ADD), "this is not json", json.dumps(SDB_ADD), "",
             '{"ACTION": "remove"}', json.dumps(SCSI_ADD), "[1, 2]"]
    replay.write_text("\n".join(lines) + "\n")
    bus.write({
        "udev": {"type": "collector", "builtin": "udev", "replay": str(replay)},  # default subsystems
        "scsionly": {"type": "collector", "builtin": "udev", "replay": str(replay), "subsystems": ["scsi"]},
        "every": {"type": "collector", "builtin": "udev", "replay": str(replay), "subsystems": []},
    })
    bus.start()
    wait_for(lambda: all(logs(bus, n, "replay_done") for n in ("udev", "scsionly", "every")), what="replays done")
    events = bus.tail(3 + 1 + 4, "--kind", "raw")
    by_source: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_source.setdefault(event["source"], []).append(event)

    default = by_source["udev"]
    assert [e["extensions"] for e in default] == [as_strings(DM_FAILED), as_strings(SDB_ADD), as_strings(SCSI_ADD)]
    for event in default:
        assert (event["system"], event["kind"], event["event_type"], event["severity"]) == (
            "udev", "raw", "UEVENT", "info")
        assert event["dev_wwid"] == ""
    assert [e["msg"] for e in default] == ["change /devices/virtual/block/dm-0",
                                           f"add {SDB_ADD['DEVPATH']}", f"add {SCSI_ADD['DEVPATH']}"]
    assert [e["dev_name"] for e in default] == ["dm-0", "sdb", ""]

    assert [e["extensions"]["SUBSYSTEM"] for e in by_source["scsionly"]] == ["scsi"]
    assert [e["extensions"]["SUBSYSTEM"] for e in by_source["every"]] == ["block", "net", "block", "scsi"]
    assert {p["name"]: p["events_in"] for p in bus.status()["plugins"]} == {"udev": 3, "scsionly": 1, "every": 4}

    bad = logs(bus, "udev", "bad_input")
    assert [(r["kind"], r["path"], r["line"], r["error"].split(" (")[0]) for r in bad] == [
        ("not_json", str(replay), 3, "not valid JSON"), ("missing_property", str(replay), 6, "missing DEVPATH, SUBSYSTEM"),
        ("not_object", str(replay), 8, "must be a JSON object of uevent properties, not list")]
    counts = {"missing_property": 1, "not_json": 1, "not_object": 1}
    wait_for(lambda: all(p.get("bad_input") == counts for p in bus.status()["plugins"]),
             what="each replay's bad lines counted in busctl status")
    assert all(p["state"] == "running" and p["restarts"] == 0 for p in bus.status()["plugins"])


def test_live_kernel_uevents(bus: Bus) -> None:
    bus.write({
        "udev": {"type": "collector", "builtin": "udev", "source": "kernel", "subsystems": ["block"]},
        "scsionly": {"type": "collector", "builtin": "udev", "source": "kernel", "subsystems": ["scsi"]},
    })
    bus.start()
    wait_for(lambda: listening(bus, "udev") and listening(bus, "scsionly"), what="udev monitors listening")
    marker = str(uuid.uuid4())
    # a synthetic uevent: the kernel sends it like a real one, tagged with our UUID
    Path("/sys/class/block/loop0/uevent").write_text(f"change {marker} BUSDTEST=yes\n")

    def tagged() -> list[dict[str, Any]]:
        count = bus.status()["broker"]["head"]["raw"]
        events = bus.tail(count, "--kind", "raw") if count else []
        return [e for e in events if e["extensions"].get("SYNTH_UUID") == marker]

    def found() -> dict[str, Any] | None:
        return next((e for e in tagged() if e["source"] == "udev"), None)

    event = wait_for(found, what=f"the uevent tagged {marker}")
    assert event["source"] == "udev"
    assert (event["system"], event["event_type"], event["severity"]) == ("udev", "UEVENT", "info")
    assert event["msg"] == "change /devices/virtual/block/loop0"
    assert event["dev_name"] == "loop0"
    ext = event["extensions"]
    assert (ext["ACTION"], ext["SUBSYSTEM"], ext["DEVNAME"], ext["MAJOR"]) == ("change", "block", "/dev/loop0", "7")
    assert ext["SYNTH_ARG_BUSDTEST"] == "yes" and int(ext["SEQNUM"]) > 0
    assert all(isinstance(v, str) for v in ext.values())
    # the instance listening to scsi only did not pass it on
    assert [e["source"] for e in tagged()] == ["udev"]

"""Parser ``mdraid``: md RAID kernel lines to MD_* events, unit tests and one run through busd."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from conftest import Bus
from fakesys import FakeSys
from kernel_input import SAMPLES, expire, feed, kmsg_event, line_event, load_parser_config, make, only, summary

from bus.exceptions import ConfigError
from parsers.mdraid import Mdraid

UUID_MD0 = "a1b2c3d4:e5f60718:293a4b5c:6d7e8f90"
UUID_MD127 = "3f2e1d0c:b9a89786:75645342:31201f0e"
UUID_MD1 = "0f1e2d3c:4b5a6978:8796a5b4:c3d2e1f0"
WWID_SDB = "naa.5000c50015ea71ac"
WWID_SDC = "naa.5000c50015ea71bd"
LVM_RIMAGE = "LVM-" + "Vg0uuid0" * 4 + "Rimage01" * 4
LVM_LV = "LVM-" + "Vg0uuid0" * 4 + "LvUuid00" * 4


@pytest.fixture(name="fake")
def fixture_fake(tmp_path: Path) -> FakeSys:
    """Two disks with one partition each, three md arrays, an LVM RAID1 LV (dm-raid prints it as mdX)."""
    fake = FakeSys(tmp_path)
    fake.disk("sdb", "8:16", wwid=WWID_SDB)
    fake.partition("sdb", 1, "8:17")
    fake.disk("sdc", "8:32", wwid=WWID_SDC, hctl="0:0:1:0")
    fake.partition("sdc", 1, "8:33")
    fake.md("md0", "9:0", uuid=UUID_MD0)
    fake.md("md127", "9:127", uuid=UUID_MD127)
    fake.md("md1", "9:1", uuid=UUID_MD1)
    image = fake.dm("dm-5", "253:5", name="vg-lv_rimage_1", uuid=LVM_RIMAGE)
    fake.dm("dm-7", "253:7", name="vg-lv", uuid=LVM_LV)
    (image / "holders").mkdir()
    os.symlink("../../dm-7", image / "holders" / "dm-7")
    return fake


@pytest.fixture(name="md")
def fixture_md(fake: FakeSys) -> Mdraid:
    """The parser with a short correlation window."""
    parser = make(Mdraid, "mdraid", fake, correlation_window=0.2)
    assert isinstance(parser, Mdraid)
    return parser


def ext(event: dict[str, Any]) -> dict[str, Any]:
    """Extensions without the raw event's id."""
    return {k: v for k, v in event["extensions"].items() if k != "raw_event_id"}


SDB1 = {"member": "sdb1", "member_wwid": WWID_SDB + "-part1"}


SAMPLE_EVENTS = [
    ("MD_RESYNC_STARTED", "info", "md0", UUID_MD0),
    ("MD_RESYNC_DONE", "info", "md0", UUID_MD0),
    ("MD_DISK_FAILURE", "error", "md0", UUID_MD0),
    ("MD_DISK_FAILURE", "error", "md127", UUID_MD127),
    ("MD_RECOVERY_STARTED", "info", "md127", UUID_MD127),
    ("MD_CHECK_STARTED", "info", "md1", UUID_MD1),
    ("MD_CHECK_DONE", "info", "md1", UUID_MD1),
]
"""What every line of dmesg-md.txt gives, in order (the two-line disk failures are one event each)."""


def test_every_line_of_the_md_sample(md: Mdraid) -> None:
    events = feed(md, *(SAMPLES / "dmesg-md.txt").read_text().splitlines())
    assert expire(md) == []
    assert [summary(e) for e in events] == SAMPLE_EVENTS
    started, done, failure0, failure127, recovery, check, checked = events
    assert ext(started) == {"kernel_name": "md0", "action": "resync"}
    assert started["msg"] == "md0: resync started"
    assert ext(done) == {"kernel_name": "md0", "action": "resync", "result": "done"}
    # the array said "active with 2 out of 2 mirrors" when it started: the failure knows it is now degraded
    assert ext(failure0) == {"kernel_name": "md0", "level": "raid1", "remaining_devices": 1, "total_devices": 2,
                             "degraded": True, **SDB1}
    assert failure0["msg"] == "md0: disk failure on sdb1, continuing on 1 of 2 devices"
    assert ext(failure127) == {"kernel_name": "md127", "level": "raid1", "remaining_devices": 1, **SDB1}
    assert failure127["msg"] == "md127: disk failure on sdb1, continuing on 1 devices"
    assert ext(recovery) == {"kernel_name": "md127", "action": "recovery"}
    assert ext(check) == {"kernel_name": "md1", "action": "data-check"}
    assert ext(checked) == {"kernel_name": "md1", "action": "data-check", "result": "done"}


def test_a_two_line_kmsg_record_is_one_failure(md: Mdraid) -> None:
    raw = kmsg_event("md/raid1:md0: Disk failure on sdb1, disabling device.\n"
                     "md/raid1:md0: Operation continuing on 1 devices.", seq=7731, level=2)
    event = only(md.handle(raw) or [])
    assert summary(event) == ("MD_DISK_FAILURE", "error", "md0", UUID_MD0)
    assert ext(event) == {"kmsg_seq": 7731, "kernel_name": "md0", "level": "raid1", "remaining_devices": 1, **SDB1}
    assert event["extensions"]["raw_event_id"] == raw["event_id"]
    assert not md.groups.groups


def test_two_lines_in_two_events_are_one_failure_and_held_until_complete(md: Mdraid) -> None:
    md.delivery = 12
    assert md.handle(first := line_event("[269454.652853] md/raid10:md0: Disk failure on sdc1, disabling device.")) is None
    assert md.hold() == 12
    md.delivery = 13
    event = only(md.handle(line_event("md/raid10:md0: Operation continuing on 3 devices.")) or [])
    assert md.hold() is None
    assert summary(event) == ("MD_DISK_FAILURE", "error", "md0", UUID_MD0)
    assert ext(event) == {"kernel_name": "md0", "level": "raid10", "remaining_devices": 3, "member": "sdc1",
                          "member_wwid": WWID_SDC + "-part1"}
    assert event["extensions"]["raw_event_id"] == first["event_id"]


def test_a_failure_whose_second_line_never_comes_goes_out_when_the_window_ends(md: Mdraid) -> None:
    md.delivery = 3
    assert feed(md, "Apr 26 10:25:44 nfs kernel: md/raid1:md127: Disk failure on sdb1, disabling device.") == []
    assert md.hold() == 4
    event = only(expire(md))
    assert md.hold() is None
    assert summary(event) == ("MD_DISK_FAILURE", "error", "md127", UUID_MD127)
    assert ext(event) == {"kernel_name": "md127", "level": "raid1", **SDB1}
    assert event["msg"] == "md127: disk failure on sdb1"
    assert feed(md, "md/raid1:md127: Operation continuing on 1 devices.") == []  # too late: nothing to add it to


def test_raid5_array_that_cannot_continue(md: Mdraid) -> None:
    assert feed(md, "md/raid:md0: raid level 5 active with 3 out of 3 devices, algorithm 2",
                "md/raid:md0: Disk failure on sdc1, disabling device.") == []
    event = only(feed(md, "md/raid:md0: Cannot continue on 1 devices."))
    assert summary(event) == ("MD_DISK_FAILURE", "error", "md0", UUID_MD0)
    assert ext(event) == {"kernel_name": "md0", "level": "raid456", "remaining_devices": 1, "total_devices": 3,
                          "degraded": True, "array_failed": True, "member": "sdc1", "member_wwid": WWID_SDC + "-part1"}
    assert event["msg"] == "md0: disk failure on sdc1, array failed (1 devices left)"


def test_a_second_failure_before_the_first_ones_second_line(md: Mdraid) -> None:
    assert feed(md, "md/raid:md0: Disk failure on sdb1, disabling device.") == []
    first = only(feed(md, "md/raid:md0: Disk failure on sdc1, disabling device."))
    second = only(feed(md, "md/raid:md0: Operation continuing on 2 devices."))
    assert (first["extensions"]["member"], "remaining_devices" in first["extensions"]) == ("sdb1", False)
    assert (second["extensions"]["member"], second["extensions"]["remaining_devices"]) == ("sdc1", 2)


@pytest.mark.parametrize(("line", "expected"), [
    ("md/raid1:md0: active with 1 out of 2 mirrors", {"level": "raid1", "active_devices": 1, "total_devices": 2}),
    ("md/raid:md0: raid level 5 active with 3 out of 4 devices, algorithm 2",
     {"level": "raid5", "active_devices": 3, "total_devices": 4}),
    ("md/raid:md0: raid level 6 active with 4 out of 6 devices, algorithm 2",
     {"level": "raid6", "active_devices": 4, "total_devices": 6}),
    ("[   12.3] md/raid10:md0: active with 3 out of 4 devices", {"level": "raid10", "active_devices": 3, "total_devices": 4}),
])
def test_degraded_arrays(md: Mdraid, line: str, expected: dict[str, Any]) -> None:
    event = only(feed(md, line))
    assert summary(event) == ("MD_DEGRADED", "warn", "md0", UUID_MD0)
    assert ext(event) == {"kernel_name": "md0", **expected}
    assert event["msg"].startswith(f"md0: {expected['level']} degraded, active with {expected['active_devices']} out of ")


def test_kicked_member_joins_the_degraded_start_or_is_a_failure_of_its_own(md: Mdraid) -> None:
    assert feed(md, "md: kicking non-fresh sdb1 from array!") == []
    event = only(feed(md, "md/raid1:md0: active with 1 out of 2 mirrors"))
    assert summary(event) == ("MD_DEGRADED", "warn", "md0", UUID_MD0)
    assert ext(event) == {"kernel_name": "md0", "level": "raid1", "active_devices": 1, "total_devices": 2,
                          "kicked": ["sdb1"]}
    assert event["msg"] == "md0: raid1 degraded, active with 1 out of 2 devices (kicked non-fresh sdb1)"
    assert feed(md, "md: kicking non-fresh sdc1 from array!") == []
    alone = only(expire(md))  # no start line named the array
    assert summary(alone) == ("MD_DISK_FAILURE", "error", "", "")
    assert ext(alone) == {"member": "sdc1", "member_wwid": WWID_SDC + "-part1", "kicked": ["sdc1"], "reason": "non-fresh"}


@pytest.mark.parametrize(("line", "event_type", "severity", "array", "expected"), [
    ("md: resync of RAID array md0", "MD_RESYNC_STARTED", "info", "md0", {"action": "resync"}),
    ("md: md0: resync interrupted.", "MD_RESYNC_DONE", "warn", "md0", {"action": "resync", "result": "interrupted"}),
    ("md: recovery of RAID array md127", "MD_RECOVERY_STARTED", "info", "md127", {"action": "recovery"}),
    ("md: recover of RAID array md127", "MD_RECOVERY_STARTED", "info", "md127", {"action": "recover"}),
    ("md: md127: recovery done.", "MD_RECOVERY_DONE", "info", "md127", {"action": "recovery", "result": "done"}),
    ("md: md127: recover interrupted.", "MD_RECOVERY_DONE", "warn", "md127", {"action": "recover", "result": "interrupted"}),
    ("md: data-check of RAID array md1", "MD_CHECK_STARTED", "info", "md1", {"action": "data-check"}),
    ("md: check of RAID array md1", "MD_CHECK_STARTED", "info", "md1", {"action": "check"}),
    ("md: requested-resync of RAID array md1", "MD_CHECK_STARTED", "info", "md1", {"action": "requested-resync"}),
    ("md: repair of RAID array md1", "MD_CHECK_STARTED", "info", "md1", {"action": "repair"}),
    ("md: md1: data-check interrupted.", "MD_CHECK_DONE", "warn", "md1", {"action": "data-check", "result": "interrupted"}),
    ("md: md1: check done.", "MD_CHECK_DONE", "info", "md1", {"action": "check", "result": "done"}),
])
def test_sync_actions(md: Mdraid, line: str, event_type: str, severity: str, array: str,
                      expected: dict[str, Any]) -> None:
    event = only(feed(md, line))
    uuid = {"md0": UUID_MD0, "md127": UUID_MD127, "md1": UUID_MD1}[array]
    assert summary(event) == (event_type, severity, array, uuid)
    assert ext(event) == {"kernel_name": array, **expected}


def test_lvm_raid_failure_is_named_after_the_lv(md: Mdraid) -> None:
    event = only(feed(md, "md/raid1:mdX: Disk failure on dm-5, disabling device.",
                      "md/raid1:mdX: Operation continuing on 1 devices."))
    assert summary(event) == ("MD_DISK_FAILURE", "error", "vg/lv", LVM_LV)
    assert ext(event) == {"kernel_name": "dm-7", "level": "raid1", "remaining_devices": 1, "member": "vg/lv_rimage_1",
                          "member_wwid": LVM_RIMAGE}


@pytest.mark.parametrize("line", [
    "md: delaying data-check of md1 until md0 has finished (they share one or more physical units)",
    "md: delaying resync of md0 until md1 has finished (they share one or more physical units)",
    "md: reshape of RAID array md0",
    "md: md0: reshape done.",
    "md/raid1:md0: not clean -- starting background reconstruction",
    "md/raid1:md0: active with 2 out of 2 mirrors",
    "md0: detected capacity change from 0 to 2144337920",
    "Apr 26 10:25:55 nfs kernel: md: unbind<sdb1>",
    "md: export_rdev(sdb1)",
    "md: bind<sdb1>",
    "md/raid1:md0: Operation continuing on 1 devices.",
    "md/raid1:md0: redirecting sector 1234 to other mirror: sdc1",
    "md: md0 stopped.",
    "md/raid1:md0: Disk failure on",
    "md: ",
    "\x00garbage md/raid md: \ufffd",
])
def test_lines_that_give_nothing(md: Mdraid, line: str) -> None:
    assert feed(md, line) == []
    assert feed(md, line, kmsg=True) == []
    assert not md.groups.groups


# --- configuration -------------------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "message"), [
    ("correlation_window = 0", "plugins.x.correlation_window: must be more than 0 seconds"),
    ("correlation_window = 'soon'", "plugins.x.correlation_window: must be an integer or a number, not a string"),
    ("sysfs = '/sys'", "plugins.x.sysfs: unknown key for built-in parser 'mdraid'"),
])
def test_bad_options_are_refused(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_parser_config(tmp_path, "mdraid", extra)
    assert message in str(info.value)


@pytest.mark.parametrize(("system", "routed"), [("kmsg", True), ("syslog", False), ("udev", False)])
def test_the_default_filter(tmp_path: Path, system: str, routed: bool) -> None:
    plugin = load_parser_config(tmp_path, "mdraid", "correlation_window = 2")
    line = "md: md0: resync done."
    assert plugin.filter.match(line_event(line, system=system)) is routed
    assert plugin.filter.match({**line_event(line, system=system), "kind": "synthetic"}) is False
    # the broker routes only lines that hold one of the parser's keywords
    assert plugin.filter.match(line_event("usb 1-1: new high-speed USB device", system=system)) is False


def test_md_sample_through_busd(bus: Bus, fake: FakeSys) -> None:
    bus.write({
        "replay": {"type": "collector", "builtin": "replay", "path": str(SAMPLES / "dmesg-md.txt"), "interval": 0.0},
        "mdraid": {"type": "parser", "builtin": "mdraid", **fake.options},
    })
    bus.start()
    bus.wait_running("mdraid")
    events = bus.tail(7, "--system", "mdraid")
    assert [summary(e) for e in events] == SAMPLE_EVENTS
    assert [e["extensions"].get("remaining_devices") for e in events[2:4]] == [1, 1]
    assert all(e["source"] == "mdraid" and e["kind"] == "synthetic" for e in events)

"""Parser ``lvm``: dm-thin, dirty log and dmeventd lines to DM_* events, unit tests and one run through busd."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import Bus, wait_for
from fakesys import FakeSys
from kernel_input import expire, feed, line_event, load_parser_config, make, only, summary

from bus.exceptions import ConfigError
from parsers.lvm import Lvm

LVM_POOL = "LVM-" + "Vg0uuid0" * 4 + "PoolUuid" * 4 + "-tpool"
LVM_MLOG = "LVM-" + "Vg0uuid0" * 4 + "MlogUuid" * 4
LVM_DASHED = "LVM-" + "Vg1uuid1" * 4 + "ThinPool" * 4 + "-tpool"


@pytest.fixture(name="fake")
def fixture_fake(tmp_path: Path) -> FakeSys:
    """A thin pool's -tpool layer, a mirror's log LV and a pool whose names hold dashes."""
    fake = FakeSys(tmp_path)
    fake.dm("dm-2", "253:2", name="vg-pool-tpool", uuid=LVM_POOL)
    fake.dm("dm-3", "253:3", name="vg-mirror_mlog", uuid=LVM_MLOG)
    fake.dm("dm-9", "253:9", name="my--vg-thin--pool-tpool", uuid=LVM_DASHED)
    return fake


@pytest.fixture(name="lvm")
def fixture_lvm(fake: FakeSys) -> Lvm:
    """The parser with a short correlation window."""
    parser = make(Lvm, "lvm", fake, correlation_window=0.2)
    assert isinstance(parser, Lvm)
    return parser


def ext(event: dict[str, Any]) -> dict[str, Any]:
    """Extensions without the raw event's id."""
    return {k: v for k, v in event["extensions"].items() if k != "raw_event_id"}


POOL = {"kernel_name": "dm-2", "source": "kernel"}


@pytest.mark.parametrize(("line", "event_type", "severity", "expected", "msg"), [
    ("[92841.221] device-mapper: thin: 253:2: reached low water mark for data device: sending event.",
     "DM_THIN_POOL_LOW_WATER", "warn", {"space": "data"}, "vg/pool: thin pool reached its data low water mark"),
    ("device-mapper: thin: 253:2: reached low water mark for metadata device: sending event.",
     "DM_THIN_POOL_LOW_WATER", "warn", {"space": "metadata"}, "vg/pool: thin pool reached its metadata low water mark"),
    ("Dec 04 17:23:53 pve kernel: device-mapper: thin: 253:2: switching pool to out-of-data-space (queue IO) mode",
     "DM_THIN_POOL_FULL", "error", {"space": "data", "pool_mode": "out-of-data-space", "io_mode": "queue"},
     "vg/pool: thin pool out of data space, queueing writes"),
    ("device-mapper: thin: 253:2: switching pool to out-of-data-space (error IO) mode",
     "DM_THIN_POOL_FULL", "error", {"space": "data", "pool_mode": "out-of-data-space", "io_mode": "error"},
     "vg/pool: thin pool out of data space, failing writes"),
    ("device-mapper: thin: 253:2: switching pool to out-of-data-space mode",  # 3.14
     "DM_THIN_POOL_FULL", "error", {"space": "data", "pool_mode": "out-of-data-space"}, "vg/pool: thin pool out of data space"),
    ("device-mapper: thin: 253:2: no free data space available.",  # 3.x
     "DM_THIN_POOL_FULL", "error", {"space": "data"}, "vg/pool: thin pool out of data space"),
])
def test_thin_pool_kernel_lines(lvm: Lvm, line: str, event_type: str, severity: str, expected: dict[str, Any],
                                msg: str) -> None:
    event = only(feed(lvm, line))
    assert summary(event) == (event_type, severity, "vg/pool", LVM_POOL)
    assert ext(event) == {**POOL, **expected}
    assert event["msg"] == msg


@pytest.mark.parametrize(("lines", "expected"), [
    (["device-mapper: thin: No free metadata blocks", "device-mapper: thin: 253:2: switching pool to read-only mode"],
     {"reason": "No free metadata blocks"}),
    (["device-mapper: thin: 253:2: metadata operation 'dm_thin_insert_block' failed: error = -28",
      "device-mapper: thin: 253:2: aborting current metadata transaction",
      "device-mapper: thin: 253:2: switching pool to read-only mode"],
     {"operation": "dm_thin_insert_block", "error": -28}),
    (["device-mapper: thin: 253:2: no free metadata space available.",  # 3.x
      "device-mapper: thin: 253:2: switching pool to read-only mode"],
     {"reason": "no free metadata space available"}),
])
def test_out_of_metadata_space_and_the_switch_to_read_only_are_one_event(lvm: Lvm, lines: list[str],
                                                                          expected: dict[str, Any]) -> None:
    assert feed(lvm, *lines[:-1]) == []
    assert lvm.hold() is not None
    event = only(feed(lvm, lines[-1]))
    assert lvm.hold() is None
    assert summary(event) == ("DM_THIN_POOL_FULL", "error", "vg/pool", LVM_POOL)
    assert ext(event) == {**POOL, "space": "metadata", "pool_mode": "read-only", **expected}
    assert event["msg"] == "vg/pool: thin pool out of metadata space, switched to read-only"


def test_out_of_metadata_space_without_the_switch(lvm: Lvm) -> None:
    lvm.delivery = 8
    assert lvm.handle(raw := line_event("device-mapper: thin: No free metadata blocks")) is None
    assert lvm.hold() == 8
    event = only(expire(lvm))  # the kernel did not name the pool
    assert summary(event) == ("DM_THIN_POOL_FULL", "error", "", "")
    assert ext(event) == {"space": "metadata", "reason": "No free metadata blocks", "source": "kernel"}
    assert event["extensions"]["raw_event_id"] == raw["event_id"]
    assert feed(lvm, "device-mapper: thin: 253:2: metadata operation 'dm_pool_commit_metadata' failed: error = -28") == []
    named = only(expire(lvm))
    assert summary(named) == ("DM_THIN_POOL_FULL", "error", "vg/pool", LVM_POOL)
    assert ext(named) == {**POOL, "space": "metadata", "operation": "dm_pool_commit_metadata", "error": -28}


def test_read_only_without_a_space_problem_gives_nothing(lvm: Lvm) -> None:
    assert feed(lvm, "device-mapper: thin: 253:2: metadata operation 'dm_pool_commit_metadata' failed: error = -5",
                "device-mapper: thin: 253:2: switching pool to read-only mode") == []
    assert expire(lvm) == []


@pytest.mark.parametrize(("line", "event_type", "severity", "dev", "wwid", "expected"), [
    ("Apr 26 10:25:44 host lvm[1234]: WARNING: Thin pool vg-pool-tpool data is now 80.00% full.",
     "DM_THIN_POOL_LOW_WATER", "warn", "vg/pool", LVM_POOL, {"kernel_name": "dm-2", "space": "data", "percent": 80.0}),
    ("lvm[1234]: WARNING: Thin pool vg-pool-tpool metadata is now 95.12% full.",
     "DM_THIN_POOL_LOW_WATER", "warn", "vg/pool", LVM_POOL, {"kernel_name": "dm-2", "space": "metadata", "percent": 95.12}),
    ("WARNING: Thin pool vg-pool-tpool data is now 100.00% full.",  # the journal's message, without a syslog tag
     "DM_THIN_POOL_FULL", "error", "vg/pool", LVM_POOL, {"kernel_name": "dm-2", "space": "data", "percent": 100.0}),
    ("dmeventd[702]: WARNING: Thin pool my--vg-thin--pool-tpool data is now 85.00% full.",
     "DM_THIN_POOL_LOW_WATER", "warn", "my-vg/thin-pool", LVM_DASHED,
     {"kernel_name": "dm-9", "space": "data", "percent": 85.0}),
    ("lvm[1234]: WARNING: Thin pool other--vg-big--pool-tpool data is now 90.00% full.",  # not on this host's sysfs
     "DM_THIN_POOL_LOW_WATER", "warn", "other-vg/big-pool", "",
     {"kernel_name": "other--vg-big--pool-tpool", "space": "data", "percent": 90.0}),
])
def test_dmeventd_thin_pool_warnings(lvm: Lvm, line: str, event_type: str, severity: str, dev: str, wwid: str,
                                     expected: dict[str, Any]) -> None:
    event = only(feed(lvm, line))
    assert summary(event) == (event_type, severity, dev, wwid)
    assert ext(event) == {**expected, "source": "dmeventd"}
    assert event["msg"] == f"{dev}: thin pool {expected['space']} {expected['percent']:.2f}% full"


@pytest.mark.parametrize(("line", "dev", "wwid", "expected"), [
    ("device-mapper: dirty region log: 253:3: Failed to read header on dirty region log device", "vg/mirror_mlog",
     LVM_MLOG, {"kernel_name": "dm-3", "log_device": "253:3", "operation": "read header", "source": "kernel"}),
    ("device-mapper: dirty region log: 253:3: Failed to write header on dirty region log device", "vg/mirror_mlog",
     LVM_MLOG, {"kernel_name": "dm-3", "log_device": "253:3", "operation": "write header", "source": "kernel"}),
    ("device-mapper: dirty region log: 253:4: Failed to read header on mirror log device", "253:4",  # 2.6.2x
     "", {"log_device": "253:4", "operation": "read header", "source": "kernel"}),
    ("device-mapper: raid1: log presuspend failed", "", "", {"operation": "presuspend", "source": "kernel"}),
    ("device-mapper: raid1: log resume failed", "", "", {"operation": "resume", "source": "kernel"}),
    ("device-mapper: dm-log-userspace:  Userspace log server not found.", "", "",
     {"reason": "Userspace log server not found", "source": "kernel"}),
    ("device-mapper: dm-log-userspace: Error trying to resume userspace log: -19", "", "",
     {"reason": "Error trying to resume userspace log: -19", "error": -19, "source": "kernel"}),
    ("Apr 26 10:25:44 host lvm[1234]: Log device 253:3 has failed (D).", "vg/mirror_mlog", LVM_MLOG,
     {"kernel_name": "dm-3", "log_device": "253:3", "state": "D", "source": "dmeventd"}),
    ("dmeventd[99]: Log device, 253:3, has failed.", "vg/mirror_mlog", LVM_MLOG,
     {"kernel_name": "dm-3", "log_device": "253:3", "source": "dmeventd"}),
])
def test_dirty_log_failures(lvm: Lvm, line: str, dev: str, wwid: str, expected: dict[str, Any]) -> None:
    event = only(feed(lvm, line))
    assert summary(event) == ("DM_DIRTY_LOG_FAILURE", "error", dev, wwid)
    assert ext(event) == expected
    assert event["msg"].startswith(f"{dev}: mirror " if dev else "mirror ")


@pytest.mark.parametrize("line", [
    "device-mapper: raid1: Unable to read primary mirror during recovery",
    "device-mapper: raid1: Write error during recovery (error = 0x1)",
    "device-mapper: raid1: Primary mirror (253:4) failed while out-of-sync: Reads may fail.",
    "device-mapper: thin: 253:2: switching pool to write mode",
    "device-mapper: thin: 253:2: switching pool to read-only mode",
    "device-mapper: thin: 253:2: switching pool to failure mode",
    "device-mapper: thin: 253:2: growing the data device from 2134272 to 2396416 blocks",
    "device-mapper: thin: Data device (dm-3) discard unsupported: Disabling discard passdown.",
    "device-mapper: thin: 253:2: reached low water mark",
    "lvm[1234]: Monitoring thin pool vg-pool-tpool.",
    "lvm[1234]: WARNING: Snapshot vg-snap is now 80.00% full.",
    "lvm[1234]: WARNING: Thin pool vg-pool-tpool data is now lots full.",
    "device-mapper: multipath: 253:0: Failing path 8:48.",
    "\x00\xffdevice-mapper: thin garbage",
])
def test_lines_that_give_nothing(lvm: Lvm, line: str) -> None:
    assert feed(lvm, line) == []
    assert feed(lvm, line, kmsg=True) == []
    assert not lvm.groups.groups


# --- configuration -------------------------------------------------------------------------------

@pytest.mark.parametrize(("extra", "message"), [
    ("correlation_window = 0", "plugins.x.correlation_window: must be more than 0 seconds"),
    ("correlation_window = 'soon'", "plugins.x.correlation_window: must be an integer or a number, not a string"),
    ("sysfs = '/sys'", "plugins.x.sysfs: unknown key for built-in parser 'lvm'"),
])
def test_bad_options_are_refused(tmp_path: Path, extra: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_parser_config(tmp_path, "lvm", extra)
    assert message in str(info.value)


@pytest.mark.parametrize(("system", "routed"), [("kmsg", True), ("syslog", True), ("udev", False)])
def test_the_default_filter(tmp_path: Path, system: str, routed: bool) -> None:
    plugin = load_parser_config(tmp_path, "lvm", "correlation_window = 2")
    line = "device-mapper: thin: 253:2: reached low water mark for data device: sending event."
    assert plugin.filter.match(line_event(line, system=system)) is routed
    assert plugin.filter.match({**line_event(line, system=system), "kind": "synthetic"}) is False
    # the broker routes only lines that hold one of the parser's keywords
    assert plugin.filter.match(line_event("usb 1-1: new high-speed USB device", system=system)) is False


def test_lvm_through_busd(bus: Bus, fake: FakeSys) -> None:
    bus.write({"lvm": {"type": "parser", "builtin": "lvm", "correlation_window": 0.2, **fake.options}})
    bus.start()
    bus.wait_running("lvm")
    kmsg = [
        "device-mapper: thin: 253:2: reached low water mark for data device: sending event.",
        "device-mapper: thin: 253:2: switching pool to out-of-data-space (error IO) mode",
        "device-mapper: dirty region log: 253:3: Failed to read header on dirty region log device",
        "device-mapper: thin: No free metadata blocks",
        "device-mapper: thin: 253:2: switching pool to read-only mode",
    ]
    bus.emit([{"system": "kmsg", "event_type": "KMSG", "msg": text, "extensions": {"seq": 900 + i, "level": 3}}
              for i, text in enumerate(kmsg)]
             + [{"system": "syslog", "event_type": "LINE", "msg": "lvm[812]: WARNING: Thin pool vg-pool-tpool data is "
                                                                 "now 95.00% full."},
                {"system": "udev", "event_type": "UEVENT", "msg": "device-mapper: thin: 253:2: switching pool to "
                                                                  "out-of-data-space (queue IO) mode"}])
    events = bus.tail(5, "--system", "lvm")
    assert sorted((*summary(e), e["extensions"].get("space", "")) for e in events) == sorted([
        ("DM_THIN_POOL_LOW_WATER", "warn", "vg/pool", LVM_POOL, "data"),
        ("DM_THIN_POOL_FULL", "error", "vg/pool", LVM_POOL, "data"),
        ("DM_DIRTY_LOG_FAILURE", "error", "vg/mirror_mlog", LVM_MLOG, ""),
        ("DM_THIN_POOL_FULL", "error", "vg/pool", LVM_POOL, "metadata"),
        ("DM_THIN_POOL_LOW_WATER", "warn", "vg/pool", LVM_POOL, "data"),
    ])
    assert sorted(e["extensions"].get("kmsg_seq", 0) for e in events) == [0, 900, 901, 902, 903]
    assert all(e["source"] == "lvm" for e in events)
    # the udev event is not routed to the parser (it would have made a sixth event)
    wait_for(lambda: bus.plugin("lvm")["delivery"]["pending"] == 0, what="the parser to acknowledge its input")
    assert bus.plugin("lvm")["events_in"] == 5

"""Parser ``multipath``: kernel lines, multipathd lines and dm uevents; one event per failure; all paths down."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import Bus, wait_for
from fakesys import FakeSys
from kernel_input import BOOT, feed, line_events, make, raw, sample, uevent

from bus.config import load
from bus.event import Event
from parsers.multipath import FILTER, Multipath

LUN_A = "naa.6001405abcdef0123456789abcdef01"
LUN_B = "naa.6001405fedcba9876543210fedcba98"
MPATHA = "mpath-36001405abcdef0123456789abcdef01"
MPATHB = "mpath-36001405fedcba9876543210fedcba98"


@pytest.fixture(name="fake")
def fixture_fake(tmp_path: Path) -> FakeSys:
    """mpatha (dm-0, 253:0) over sdb 8:16 and sdd 8:48; mpathb (dm-1, 253:1) over sdc 8:32 and sde 8:64."""
    fake = FakeSys(tmp_path)
    for kname, devt, wwid, hctl in (("sdb", "8:16", LUN_A, "1:0:0:1"), ("sdc", "8:32", LUN_B, "1:0:0:2"),
                                    ("sdd", "8:48", LUN_A, "2:0:0:1"), ("sde", "8:64", LUN_B, "2:0:0:2")):
        fake.disk(kname, devt, wwid=wwid, hctl=hctl)
    fake.dm("dm-0", "253:0", name="mpatha", uuid=MPATHA)
    fake.dm("dm-1", "253:1", name="mpathb", uuid=MPATHB)
    fake.slaves("dm-0", "sdb", "sdd")
    fake.slaves("dm-1", "sdc", "sde")
    return fake


def multipath(fake: FakeSys, **options: Any) -> Multipath:
    """A multipath parser on the fake sysfs."""
    parser: Multipath = make(Multipath, "multipath", **fake.options, **options)
    return parser


def lines(text: str, start: float = BOOT) -> list[Event]:
    """dmesg/syslog text as replayed kmsg lines, 10 ms apart."""
    events = line_events(text)
    for i, e in enumerate(events):
        e["timestamp"] = start + i / 100
    return events


def dm_uevent(action: str, devt: str, name: str = "mpatha", valid: int | str | None = None,
              timestamp: float = BOOT, **more: str) -> Event:
    """The uevent the kernel sends for a multipath map when a path fails or comes back."""
    props: dict[str, Any] = {"ACTION": "change", "DEVPATH": "/devices/virtual/block/dm-0", "SUBSYSTEM": "block",
                             "DEVNAME": "/dev/dm-0", "DM_TARGET": "multipath", "DM_ACTION": action, "DM_SEQNUM": "1",
                             "DM_PATH": devt, "DM_NAME": name, **more}
    if valid is not None:
        props["DM_NR_VALID_PATHS"] = str(valid)
    return uevent(props, timestamp)


def core(e: Event) -> dict[str, Any]:
    """The extensions without the bookkeeping keys (ids, kmsg seq, kernel name)."""
    return {k: v for k, v in e["extensions"].items() if k not in ("raw_event_id", "kmsg_seq", "kernel_name")}


def kinds(events: list[Event]) -> list[tuple[str, str]]:
    """(event type, device name) of each event."""
    return [(e["event_type"], e["dev_name"]) for e in events]


def test_dmesg_multipath_sample(fake: FakeSys) -> None:
    """Failing/Reinstating path 8:48 (sdd of mpatha) and multipathd's checker line for 8:16."""
    raws = lines(sample("dmesg-multipath.txt"))
    out = feed(multipath(fake), raws)
    assert [(e["event_type"], e["severity"], e["dev_name"], e["dev_wwid"], e["msg"]) for e in out] == [
        ("DM_MPATH_PATH_FAILED", "error", "sdd", LUN_A, f"sdd: multipath path failed in map mpatha ({MPATHA})"),
        ("DM_MPATH_PATH_REINSTATED", "info", "sdd", LUN_A, f"sdd: multipath path reinstated in map mpatha ({MPATHA})"),
        ("DM_MPATH_PATH_FAILED", "error", "sdb", LUN_A, f"sdb: multipath path failed in map mpatha ({MPATHA})")]
    assert out[0]["extensions"] == {"raw_event_id": raws[0]["event_id"], "kernel_name": "sdd", "path": "sdd",
                                    "map": "mpatha", "map_wwid": MPATHA, "action": "PATH_FAILED", "source": "kernel",
                                    "path_devt": "8:48"}
    assert core(out[1]) == {"path": "sdd", "map": "mpatha", "map_wwid": MPATHA, "action": "PATH_REINSTATED",
                            "source": "kernel", "path_devt": "8:48"}
    assert core(out[2]) == {"path": "sdb", "map": "mpatha", "map_wwid": MPATHA, "action": "PATH_FAILED",
                            "source": "multipathd", "path_devt": "8:16"}
    assert all(e["system"] == "multipath" and e["kind"] == "synthetic" for e in out)


def test_newer_kernel_names_the_map_and_unknown_paths_keep_their_numbers(fake: FakeSys) -> None:
    """5.x+: "253:1: Failing path 8:64." gives the map; a path sysfs does not know stays "65:16"."""
    out = feed(multipath(fake), lines("device-mapper: multipath: 253:1: Failing path 8:64.\n"
                                      "[ 77.1] device-mapper: multipath: 253:9: Failing path 65:16.\n"
                                      "Apr 26 10:25:44 h kernel: device-mapper: dm-multipath: Reinstating path 65:16\n"))
    assert [(e["event_type"], e["dev_name"], e["dev_wwid"], e["msg"]) for e in out] == [
        ("DM_MPATH_PATH_FAILED", "sde", LUN_B, f"sde: multipath path failed in map mpathb ({MPATHB})"),
        ("DM_MPATH_PATH_FAILED", "65:16", "", "65:16: multipath path failed in map 253:9"),
        ("DM_MPATH_PATH_REINSTATED", "65:16", "", "65:16: multipath path reinstated (map unknown)")]
    assert core(out[1]) == {"path": "65:16", "map": "253:9", "map_wwid": "", "action": "PATH_FAILED",
                            "source": "kernel", "path_devt": "65:16"}


def test_one_failure_reported_four_ways_is_one_event(fake: FakeSys) -> None:
    """Kernel line, uevent, multipathd's checker and mark-as-failed within 2 s: one event each way."""
    parser = multipath(fake)
    failure = [dm_uevent("PATH_FAILED", "8:48", valid=1, timestamp=BOOT),
               *lines("device-mapper: multipath: Failing path 8:48.\n"
                      "multipathd[812]: checker failed path 8:48 in map mpatha\n"
                      "multipathd[812]: sdd: mark as failed\n"
                      "multipathd[812]: mpatha: remaining active paths: 1\n", BOOT + 0.001)]
    out = feed(parser, failure)
    assert kinds(out) == [("DM_MPATH_PATH_FAILED", "sdd")]
    assert core(out[0]) == {"path": "sdd", "map": "mpatha", "map_wwid": MPATHA, "action": "PATH_FAILED",
                            "source": "uevent", "path_devt": "8:48", "valid_paths": 1}
    back = [*lines("device-mapper: multipath: Reinstating path 8:48.\n"
                   "multipathd[812]: 8:48: reinstated\n", BOOT + 1.0),
            dm_uevent("PATH_REINSTATED", "8:48", valid=2, timestamp=BOOT + 1.05)]
    out = feed(parser, back)
    assert kinds(out) == [("DM_MPATH_PATH_REINSTATED", "sdd")]
    assert out[0]["extensions"]["source"] == "kernel"
    # a flap inside the window still shows: fail, reinstate, fail
    again = feed(parser, lines("device-mapper: multipath: Failing path 8:48.\n", BOOT + 1.5))
    assert kinds(again) == [("DM_MPATH_PATH_FAILED", "sdd")]
    # the same action reported again after the window is a new report
    late = feed(parser, lines("multipathd[812]: sdd: mark as failed\n", BOOT + 4.0))
    assert kinds(late) == [("DM_MPATH_PATH_FAILED", "sdd")]


def test_dedup_window_option(fake: FakeSys) -> None:
    """dedup_window = 0 turns merging off: the kernel line and its uevent are two events."""
    parser = multipath(fake, dedup_window=0)
    out = feed(parser, [*lines("device-mapper: multipath: Failing path 8:48.\n"), dm_uevent("PATH_FAILED", "8:48")])
    assert kinds(out) == [("DM_MPATH_PATH_FAILED", "sdd")] * 2


def test_all_paths_down_from_the_slaves_once_per_outage(fake: FakeSys) -> None:
    """Both slaves of mpatha failed: one ALL_PATHS_DOWN; the later count 0 and uevent repeat nothing."""
    parser = multipath(fake)
    out = feed(parser, lines("device-mapper: multipath: Failing path 8:16.\n"
                             "device-mapper: multipath: Failing path 8:48.\n"
                             "multipathd: mpatha: remaining active paths: 0\n"))
    out += feed(parser, [dm_uevent("PATH_FAILED", "8:48", valid=0, timestamp=BOOT + 0.05)])
    assert kinds(out) == [("DM_MPATH_PATH_FAILED", "sdb"), ("DM_MPATH_PATH_FAILED", "sdd"),
                          ("DM_MPATH_ALL_PATHS_DOWN", "mpatha")]
    down = out[2]
    assert (down["severity"], down["dev_wwid"]) == ("error", MPATHA)
    assert down["msg"] == f"mpatha: all multipath paths down ({MPATHA}), failed: sdb, sdd"
    assert core(down) == {"map": "mpatha", "map_wwid": MPATHA, "source": "slaves", "failed_paths": ["sdb", "sdd"]}
    assert down["extensions"]["kernel_name"] == "dm-0"
    # one path back, then lost again: a second outage
    out = feed(parser, lines("device-mapper: multipath: Reinstating path 8:48.\n"
                             "multipathd: mpatha: remaining active paths: 1\n"
                             "device-mapper: multipath: Failing path 8:48.\n", BOOT + 10))
    assert kinds(out) == [("DM_MPATH_PATH_REINSTATED", "sdd"), ("DM_MPATH_PATH_FAILED", "sdd"),
                          ("DM_MPATH_ALL_PATHS_DOWN", "mpatha")]
    # mpathb still has both paths: one failure is not an outage
    assert kinds(feed(parser, lines("device-mapper: multipath: Failing path 8:32.\n", BOOT + 20))) == [
        ("DM_MPATH_PATH_FAILED", "sdc")]


def test_all_paths_down_from_multipathd_count(fake: FakeSys) -> None:
    """"remaining active paths: 0" of a map sysfs does not know; again only after a count above 0."""
    parser = multipath(fake)
    text = ("multipathd[4242]: mpathz: remaining active paths: 0\n"
            "multipathd[4242]: mpathz: remaining active paths: 0\n"
            "multipathd[4242]: mpathz: remaining active paths: 1\n"
            "multipathd[4242]: mpathz: remaining active paths: 0\n")
    out = feed(parser, lines(text))
    assert kinds(out) == [("DM_MPATH_ALL_PATHS_DOWN", "mpathz")] * 2
    assert (out[0]["dev_wwid"], out[0]["msg"]) == ("", "mpathz: all multipath paths down")
    assert core(out[0]) == {"map": "mpathz", "map_wwid": "", "source": "multipathd", "failed_paths": []}


def test_all_paths_down_from_uevent_valid_paths(fake: FakeSys) -> None:
    """DM_NR_VALID_PATHS=0 on a PATH_FAILED uevent; the map's WWID comes from DM_UUID when sysfs lacks it."""
    parser = multipath(fake)
    out = feed(parser, [dm_uevent("PATH_FAILED", "65:16", name="mpathq", valid=0, DM_UUID="mpath-3600a0b8000aa"),
                        dm_uevent("PATH_REINSTATED", "65:16", name="mpathq", valid=1, timestamp=BOOT + 3,
                                  DM_UUID="mpath-3600a0b8000aa")])
    assert [(e["event_type"], e["severity"], e["dev_name"], e["dev_wwid"]) for e in out] == [
        ("DM_MPATH_PATH_FAILED", "error", "65:16", ""),
        ("DM_MPATH_ALL_PATHS_DOWN", "error", "mpathq", "mpath-3600a0b8000aa"),
        ("DM_MPATH_PATH_REINSTATED", "info", "65:16", "")]
    assert core(out[0]) == {"path": "65:16", "map": "mpathq", "map_wwid": "mpath-3600a0b8000aa",
                            "action": "PATH_FAILED", "source": "uevent", "path_devt": "65:16", "valid_paths": 0}
    assert out[0]["msg"] == "65:16: multipath path failed in map mpathq (mpath-3600a0b8000aa)"
    assert core(out[1])["source"] == "uevent"
    assert core(out[2])["valid_paths"] == 1


@pytest.mark.parametrize("props", [
    {"ACTION": "add", "DEVNAME": "/dev/sdb", "SUBSYSTEM": "block"},
    {"ACTION": "change", "DM_ACTION": "PATH_FAILED", "DM_NAME": "mpatha"},
    {"ACTION": "change", "DM_ACTION": "QUEUE_IF_NO_PATH", "DM_PATH": "8:48", "DM_NAME": "mpatha"},
    {"ACTION": "change", "DM_ACTION": None, "DM_PATH": "8:48"},
])
def test_other_uevents_give_nothing(fake: FakeSys, props: dict[str, Any]) -> None:
    """uevents without a path action (or without DM_PATH) give nothing."""
    assert feed(multipath(fake), [uevent(props)]) == []


def test_uevent_with_a_bad_count_still_reports_the_path(fake: FakeSys) -> None:
    """A DM_NR_VALID_PATHS that is not a number is left out, the failure is not."""
    [e] = feed(multipath(fake), [dm_uevent("PATH_FAILED", "8:48", valid="x")])
    assert (e["event_type"], e["dev_name"], "valid_paths" in e["extensions"]) == ("DM_MPATH_PATH_FAILED", "sdd", False)


def test_checker_reports_only_count_when_the_state_changes(fake: FakeSys) -> None:
    """"reports path is down" repeats at every check: an event on the change only; "up" only after a failure."""
    parser = multipath(fake)
    text = ("Jun 26 17:01:10 node1 multipathd[1230]: mpatha: sdb - tur checker reports path is down\n"
            "Jun 26 17:01:15 node1 multipathd[1230]: mpatha: sdb - tur checker reports path is down\n"
            "Jun 26 17:01:20 node1 multipathd[1230]: mpatha: sdb - tur checker reports path is up\n"
            "Jun 26 17:01:25 node1 multipathd[1230]: mpatha: sdb - tur checker reports path is up\n"
            "multipathd: mpathb: sdc - directio checker reports path is up\n"
            "multipathd: sdc: readsector0 checker reports path is down\n"
            'multipathd: sde: checker msg is "tur checker reports path is down"\n'
            "multipathd: mpatha: path sdd is down\n")
    raws = lines(text)
    for i, e in enumerate(raws):
        e["timestamp"] = BOOT + 5 * i
    out = feed(parser, raws)
    assert [(e["event_type"], e["dev_name"], e["extensions"]["map"], e["extensions"].get("checker")) for e in out] == [
        ("DM_MPATH_PATH_FAILED", "sdb", "mpatha", "tur"), ("DM_MPATH_PATH_REINSTATED", "sdb", "mpatha", "tur"),
        ("DM_MPATH_PATH_FAILED", "sdc", "mpathb", "readsector0"), ("DM_MPATH_PATH_FAILED", "sde", "mpathb", "tur"),
        ("DM_MPATH_ALL_PATHS_DOWN", "mpathb", "mpathb", None),  # both paths of mpathb are down by the checkers' word
        ("DM_MPATH_PATH_FAILED", "sdd", "mpatha", None)]
    assert [e["extensions"]["source"] for e in out] == ["multipathd"] * 4 + ["slaves", "multipathd"]
    assert parser.down == {"mpathb"}


@pytest.mark.parametrize("line", [
    "device-mapper: multipath round-robin: version 1.2.0 loaded",
    "device-mapper: multipath: Failing path sdd.",
    "device-mapper: multipath: Could not failover the device: Handler scsi_dh_alua Error 15.",
    "device-mapper: table: 253:0: multipath: error getting device",
    "multipathd[812]: 8:48: reinstate failed",
    "multipathd[812]: mpatha: load table [0 2097152 multipath 1 queue_if_no_path 0 1 1 service-time 0 2 1 8:16 1]",
    "multipathd[812]: mpatha: remaining active paths: many",
    "multipathd[812]: checker failed path",
    "multipathd[812]: mpatha: sdb - tur checker reports path is sideways",
    "sd 2:0:0:0: [sdb] Write cache: enabled, read cache: enabled, doesn't support DPO or FUA",
    "\x00\xffFailing path \ufffd",
])
def test_unknown_lines_and_near_misses_give_nothing(fake: FakeSys, line: str) -> None:
    """Lines the parser does not know, including near-misses, give nothing and change no state."""
    parser = multipath(fake)
    assert feed(parser, lines(line)) == []
    assert parser.last == {} and parser.down == set()


def test_default_filter_takes_raw_kmsg_udev_and_syslog(tmp_path: Path) -> None:
    """A table without a filter gets FILTER: raw events of kmsg, udev and syslog."""
    assert {"system": ["kmsg", "udev", "syslog"], "kind": "raw", "contains": [*Multipath.KEYWORDS, "/block/dm-"]} == FILTER
    config = tmp_path / "busd.toml"
    config.write_text(f'[main]\nruntime_dir = "{tmp_path}"\n[plugins.mp]\ntype = "parser"\nbuiltin = "multipath"\n')
    flt = load(config).plugins["mp"].filter
    base = {"severity": "info", "event_type": "X", "msg": "change /devices/virtual/block/dm-0"}
    assert [flt.match({**base, "system": s, "kind": k}) for s, k in (
        ("kmsg", "raw"), ("udev", "raw"), ("syslog", "raw"), ("udev", "synthetic"), ("scsi", "raw"))] == [
        True, True, True, False, False]


def test_end_to_end_through_busd(bus: Bus, tmp_path: Path) -> None:
    """Kernel line + uevent + multipathd syslog line of one outage, then the way back: exactly three events."""
    fake = FakeSys(tmp_path)
    fake.disk("sdd", "8:48", wwid=LUN_A, hctl="2:0:0:1")
    fake.dm("dm-0", "253:0", name="mpatha", uuid=MPATHA)
    fake.slaves("dm-0", "sdd")
    bus.write({"multipath": {"type": "parser", "builtin": "multipath", **fake.options}})
    bus.start()
    bus.wait_running("multipath")
    events = [*lines("device-mapper: multipath: Failing path 8:48.\n"),
              dm_uevent("PATH_FAILED", "8:48", valid=0, timestamp=BOOT + 0.02),
              raw("syslog", "LINE", "multipathd[812]: mpatha: remaining active paths: 0", BOOT + 0.03, {}),
              dm_uevent("PATH_REINSTATED", "8:48", valid=1, timestamp=BOOT + 30),
              *lines("device-mapper: multipath: Reinstating path 8:48.\n", BOOT + 30.01),
              raw("syslog", "LINE", "sd 2:0:0:1: [sdd] Attached SCSI disk", BOOT + 31, {})]
    bus.emit([{k: v for k, v in e.items() if k != "source"} for e in events])

    # the last line holds no multipath keyword: the default filter keeps it from the parser
    routed = events[:-1]

    def drained() -> bool:
        p = bus.plugin("multipath")
        return p["events_out"] == len(routed) and not p["delivery"]["pending"]
    wait_for(drained, what="multipath parser to handle every input")
    assert bus.plugin("multipath")["events_in"] == 3
    out = bus.tail(3, "--system", "multipath")
    assert [(e["event_type"], e["severity"], e["dev_name"], e["dev_wwid"], e["extensions"]["source"]) for e in out] == [
        ("DM_MPATH_PATH_FAILED", "error", "sdd", LUN_A, "kernel"),
        ("DM_MPATH_ALL_PATHS_DOWN", "error", "mpatha", MPATHA, "slaves"),
        ("DM_MPATH_PATH_REINSTATED", "info", "sdd", LUN_A, "uevent")]
    assert out[1]["msg"] == f"mpatha: all multipath paths down ({MPATHA}), failed: sdd"

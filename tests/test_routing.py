"""End-to-end routing through a real busd: parsers' filters, receivers' filters, bus-emit and bus-tail."""

from __future__ import annotations

from collections import Counter

from conftest import Bus, ev, plugin_cmd, read_lines, wait_for


def test_parser_sees_only_what_its_filter_matches(bus: Bus) -> None:
    """A parser gets exactly the events its filter selects, and nothing else."""
    bus.write({
        "scsi_tag": {"type": "parser", "exec": plugin_cmd("tag"), "prefix": "S", "filter": {"system": ["scsi"]}},
        "md_tag": {"type": "parser", "exec": plugin_cmd("tag"), "prefix": "M",
                   "filter": {"system": "mdraid", "event_type": ["MD_*"]}},
    })
    bus.start()
    bus.wait_running("scsi_tag", "md_tag")
    bus.emit([ev("scsi", "SENSE", "a"), ev("mdraid", "MD_FAIL", "b"), ev("mdraid", "OTHER", "c"),
              ev("block", "IO", "d"), ev("scsi", "SENSE", "e", kind="synthetic")])
    # 4 raw + 1 synthetic emitted directly + 2 parser outputs = the last 3 synthetic events
    out = bus.tail(3, "--kind", "synthetic")
    by_type = Counter(e["event_type"] for e in out)
    assert by_type == {"SENSE": 1, "S_SENSE": 1, "M_MD_FAIL": 1}
    outputs = [e for e in out if e["source"] in ("scsi_tag", "md_tag")]
    assert {(e["source"], e["msg"]) for e in outputs} == {("scsi_tag", "a"), ("md_tag", "b")}
    assert all(e["kind"] == "synthetic" and e["hostname"] == "testhost" for e in out)
    status = {p["name"]: p for p in bus.status()["plugins"]}
    assert status["scsi_tag"]["events_out"] == 1 and status["md_tag"]["events_out"] == 1


def test_two_parsers_both_get_one_event(bus: Bus) -> None:
    """One raw event matched by two parsers gives one output from each."""
    bus.write({
        "p1": {"type": "parser", "exec": plugin_cmd("tag"), "prefix": "ONE"},
        "p2": {"type": "parser", "exec": plugin_cmd("tag"), "prefix": "TWO"},
    })
    bus.start()
    bus.wait_running("p1", "p2")
    bus.emit([ev("scsi", "SENSE", "x")])
    out = bus.tail(2)
    assert sorted(e["event_type"] for e in out) == ["ONE_SENSE", "TWO_SENSE"]
    assert len({e["extensions"]["raw_id"] for e in out}) == 1
    assert len({e["event_id"] for e in out}) == 2


def test_receiver_filter_and_raw_kind(bus: Bus) -> None:
    """A receiver sees only events passing its filter; one asking for raw events gets them."""
    warn_file, raw_file = bus.base / "warn.jsonl", bus.base / "raw.jsonl"
    bus.write({
        "warn_only": {"type": "receiver", "exec": plugin_cmd("recorder"), "out": str(warn_file),
                      "filter": {"severity": "warn"}},
        "raw_scsi": {"type": "receiver", "exec": plugin_cmd("recorder"), "out": str(raw_file),
                     "filter": {"kind": "raw", "system": ["scsi"]}},
    })
    bus.start()
    bus.wait_running("warn_only", "raw_scsi")
    bus.emit([ev("scsi", "A", severity="info", kind="synthetic"), ev("scsi", "B", severity="warn", kind="synthetic"),
              ev("md", "C", severity="error", kind="synthetic"), ev("scsi", "RAW1"), ev("md", "RAW2"),
              ev("scsi", "END", severity="error", kind="synthetic")])
    wait_for(lambda: len(read_lines(warn_file)) >= 3, what="warn receiver")
    wait_for(lambda: len(read_lines(raw_file)) >= 1, what="raw receiver")
    assert [line.split('"type": "')[1].split('"')[0] for line in read_lines(warn_file)] == ["B", "C", "END"]
    assert len(read_lines(raw_file)) == 1 and '"RAW1"' in read_lines(raw_file)[0]


def test_bus_tail_filters_and_readable_line(bus: Bus) -> None:
    """bus-tail applies --system, --severity, --event-type and prints a readable line without --json."""
    bus.write({})
    bus.start()
    bus.emit([ev("scsi", "SCSI_MEDIUM_ERROR", "medium", severity="error", kind="synthetic", dev_name="sdc"),
              ev("md", "MD_DEGRADED", "md0 degraded", severity="warn", kind="synthetic"),
              ev("scsi", "SCSI_OTHER", "ok", kind="synthetic")])
    out = bus.tail(1, "--system", "scsi", "--severity", "warn", last=3)
    assert [e["event_type"] for e in out] == ["SCSI_MEDIUM_ERROR"]
    out = bus.tail(2, "--event-type", "MD_*", "--event-type", "SCSI_OTHER", last=3)
    assert [e["event_type"] for e in out] == ["MD_DEGRADED", "SCSI_OTHER"]
    res = bus.run("bus-tail", "--count", "1", "--last", "3", "--severity", "error")
    assert "ERROR" in res.stdout and "scsi/SCSI_MEDIUM_ERROR" in res.stdout and " sdc " in res.stdout
    bad = bus.run("bus-tail", "--severity", "fatal", check=False)
    assert bad.returncode == 2 and "severity" in bad.stderr


def test_shell_collector_with_bus_emit(bus: Bus) -> None:
    """A shell one-liner started as an exec collector emits with bus-emit; source is its instance name."""
    bin_dir = plugin_cmd("x")[0].rsplit("/", 1)[0]
    bus.write({
        "shell": {"type": "collector",
                  "exec": ["sh", "-c", f'{bin_dir}/bus-emit --system shell --event-type HELLO --msg "from sh"'
                                       ' --kind synthetic && exec sleep 1000']},
    })
    bus.start()
    wait_for(lambda: bus.status()["broker"]["head"]["raw"] >= 1, what="shell collector's event")
    out = bus.tail(1, "--kind", "raw")
    assert out[0]["event_type"] == "HELLO" and out[0]["source"] == "shell" and out[0]["kind"] == "raw"
    assert out[0]["msg"] == "from sh" and out[0]["hostname"] == "testhost"


def test_bus_emit_rejects_bad_lines_and_keeps_good_ones(bus: Bus) -> None:
    """bus-emit reports a garbage line with its number, still sends the valid ones, and exits 1."""
    bus.write({})
    bus.start()
    stdin = '{"system":"a","event_type":"OK1","kind":"synthetic"}\nnot json\n{"system":"a"}\n' \
            '{"system":"a","event_type":"OK2","kind":"synthetic","severity":"critical"}\n' \
            '{"system":"a","event_type":"OK3","kind":"synthetic"}\n'
    res = bus.run("bus-emit", input=stdin, check=False)
    assert res.returncode == 1
    assert "stdin line 2" in res.stderr and "not valid JSON" in res.stderr
    assert "stdin line 3" in res.stderr and "event_type: is missing" in res.stderr
    assert "stdin line 4" in res.stderr and "critical" in res.stderr
    assert [e["event_type"] for e in bus.tail(2)] == ["OK1", "OK3"]


def test_bus_emit_pushes_to_bus_ingest_when_that_is_all_it_has(bus: Bus) -> None:
    """With only $BUS_INGEST in its environment (SPEC), bus-emit PUSHes msgpack events to that endpoint."""
    import os
    import subprocess

    import msgpack
    import zmq
    from conftest import BIN

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    endpoint = f"ipc://{bus.base}/in.sock"
    pull.bind(endpoint)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUS")} | {"BUS_INGEST": endpoint}
    res = subprocess.run([str(BIN / "bus-emit"), "--system", "sh", "--event-type", "PING", "--msg", "hi"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    pull.rcvtimeo = 10_000
    event = msgpack.unpackb(pull.recv())
    assert (event["system"], event["event_type"], event["msg"], event["v"]) == ("sh", "PING", "hi", 1)
    pull.close(0)
    ctx.term()

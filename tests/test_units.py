"""Unit tests of the pure pieces: event validation and codecs, filters, configuration loading."""

from __future__ import annotations

import asyncio
import os
import signal
import textwrap
from pathlib import Path

import msgpack
import pytest

from bus import protocol
from bus.broker import Broker, RecentIds, _decode_batch
from bus.config import load, peek_main
from bus.event import WireEvent, decode, decode_many, encode, from_json, new_event, normalize, to_json
from bus.exceptions import ConfigError, EventError
from bus.filter import Filter, FilterError
from bus.plugin import derive_id, stop_process


class TestEvent:
    def test_new_event_has_every_schema_key(self) -> None:
        """new_event fills all thirteen keys of schema version 1 with the right types."""
        e = new_event("scsi", "SCSI_MEDIUM_ERROR", "bad", severity="error", hostname="h", dev_name="sdc")
        assert set(e) == {"v", "event_id", "timestamp", "hostname", "severity", "system", "kind", "event_type",
                          "dev_wwid", "dev_name", "msg", "source", "extensions"}
        assert e["v"] == 1 and len(e["event_id"]) == 36 and e["event_id"][14] == "4"
        assert isinstance(e["timestamp"], float) and e["kind"] == "raw"

    def test_normalize_fills_defaults_and_keeps_unknown_keys(self) -> None:
        """Missing keys get defaults, an int timestamp becomes float, unknown keys survive."""
        e = normalize({"system": "md", "event_type": "X", "timestamp": 5, "custom": [1]}, hostname="n1")
        assert e["hostname"] == "n1" and e["severity"] == "info" and e["timestamp"] == 5.0
        assert e["custom"] == [1] and e["extensions"] == {} and e["dev_wwid"] == ""

    @pytest.mark.parametrize(("event", "message"), [
        ({"event_type": "X"}, "system: is missing"),
        ({"system": "s"}, "event_type: is missing"),
        ({"system": "s", "event_type": "X", "severity": "fatal"}, "severity: 'fatal' is not one of info, warn, error"),
        ({"system": "s", "event_type": "X", "v": 2}, "v: schema version 2 is not supported"),
        ({"system": "s", "event_type": "X", "timestamp": "now"}, "timestamp: must be seconds since the epoch"),
        ({"system": "s", "event_type": "X", "kind": "cooked"}, "kind: 'cooked' is not one of raw, synthetic"),
        ({"system": "s", "event_type": "X", "extensions": []}, "extensions: must be a map"),
        ({"system": "s", "event_type": "X", "extensions": {"a": b"x"}}, "extensions.a: type bytes is not allowed"),
        ({"system": "", "event_type": "X"}, "system: must be a non-empty word"),
        ({"system": "s", "event_type": "X", "dev_name": 3}, "dev_name: must be a string"),
        ([1], "event: must be a map"),
    ])
    def test_validation_names_the_key(self, event: object, message: str) -> None:
        """Every validation error names the offending key and why."""
        with pytest.raises(EventError, match=message.replace("(", r"\(")):
            normalize(event, hostname="h")

    def test_msgpack_and_json_round_trip(self) -> None:
        """An event survives msgpack and JSON Lines unchanged; a batch decodes as a list."""
        e = new_event("drbd", "DRBD_ROLE_CHANGED", "é", extensions={"old": {"role": "Secondary"}, "n": 1.5})
        assert decode_many(encode(e)) == [e]
        assert decode_many(protocol.pack_array([encode(e), encode(e)])) == [e, e]
        assert from_json(to_json(e)) == e
        with pytest.raises(EventError, match="line 3: not valid JSON"):
            from_json("{", where="line 3")

    def test_pack_with_events_is_plain_msgpack(self) -> None:
        """The broker's spliced frames decode with any msgpack library."""
        items = [encode({"n": i}) for i in range(20)]
        assert msgpack.unpackb(protocol.pack_with_events({"op": "events", "upto": 7}, items)) == {
            "op": "events", "upto": 7, "events": [{"n": i} for i in range(20)]}
        big = [encode(i) for i in range(70000)]
        assert msgpack.unpackb(protocol.pack_array(big)) == list(range(70000))

    def test_derived_ids_are_stable_and_distinct(self) -> None:
        """A parser's output id depends on input, plugin and index only."""
        assert derive_id("a", "p", 0) == derive_id("a", "p", 0)
        assert len({derive_id("a", "p", 0), derive_id("a", "p", 1), derive_id("a", "q", 0)}) == 3


class TestFilter:
    def test_keys_are_anded_lists_ored(self) -> None:
        """system AND severity; a list ORs; event_type may end in *."""
        f = Filter.parse({"system": ["scsi", "block"], "severity": "warn", "event_type": ["SCSI_*", "BLK_IO_ERROR"]})
        assert f.match_fields("raw", "scsi", "error", "SCSI_MEDIUM_ERROR")
        assert f.match_fields("raw", "block", "warn", "BLK_IO_ERROR")
        assert not f.match_fields("raw", "block", "info", "BLK_IO_ERROR")
        assert not f.match_fields("raw", "md", "error", "SCSI_X")
        assert not f.match_fields("raw", "block", "error", "BLK_OTHER")

    def test_kind_defaults_and_all(self) -> None:
        """A default kind applies when the spec has none; 'all' matches both kinds."""
        assert not Filter.parse({}, default_kinds=("raw",)).match_fields("synthetic", "s", "info", "X")
        assert Filter.parse({"kind": "all"}, default_kinds=("raw",)).match_fields("synthetic", "s", "info", "X")

    @pytest.mark.parametrize(("spec", "kinds_only"), [
        ({}, True), ({"kind": "all"}, True), ({"kind": "raw", "severity": "info"}, True),
        ({"system": "scsi"}, False), ({"severity": "warn"}, False), ({"event_type": "X*"}, False),
        ({"contains": "error"}, False),
    ])
    def test_kinds_only(self, spec: dict[str, object], kinds_only: bool) -> None:
        """A receiver skips matching only when its filter says nothing its subscription does not."""
        assert Filter.parse(spec, default_kinds=("synthetic",)).kinds_only() is kinds_only

    @pytest.mark.parametrize(("spec", "message"), [
        ({"sytem": "x"}, "filter.sytem: unknown key"),
        ({"kind": "cooked"}, "filter.kind: 'cooked'"),
        ({"severity": "fatal"}, "filter.severity: 'fatal'"),
        ({"system": []}, "filter.system: must be a non-empty"),
        ({"event_type": [1]}, "filter.event_type: must be"),
    ])
    def test_bad_filters(self, spec: dict[str, object], message: str) -> None:
        """A bad filter is refused, naming the key."""
        with pytest.raises(FilterError, match=message):
            Filter.parse(spec)


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


class TestConfig:
    def test_includes_merge_in_lexical_order(self, tmp_path: Path) -> None:
        """Snippets are read in lexical order; a later one overrides keys of an earlier plugin table."""
        (tmp_path / "conf.d").mkdir()
        main = _write(tmp_path / "busd.toml", """
            [main]
            runtime_dir = "/tmp/x"
            include = ["conf.d/*.toml", "missing/*.toml"]
        """)
        _write(tmp_path / "conf.d" / "20-b.toml", '[plugins.dbg]\nformat = "json"\n')
        _write(tmp_path / "conf.d" / "10-a.toml", '[plugins.dbg]\ntype = "receiver"\nbuiltin = "debugger"\n')
        cfg = load(main)
        assert cfg.plugins["dbg"].table == {"type": "receiver", "builtin": "debugger", "format": "json"}
        assert cfg.plugins["dbg"].file.endswith("20-b.toml")
        assert [Path(f).name for f in cfg.files] == ["busd.toml", "10-a.toml", "20-b.toml"]
        assert any("matches no file" in w for w in cfg.warnings)

    @pytest.mark.parametrize(("text", "message"), [
        ('[main]\nlog_level = "loud"', "main.log_level: 'loud' is not one of debug, info, warning, error"),
        ("[main]\nreplay_buffer = -1", "main.replay_buffer: must be positive"),
        ('[main]\nreplay_buffer = "big"', "main.replay_buffer: must be an integer, not a string"),
        ("[mian]\n", "mian: unknown top-level key"),
        ("[plugins.x]\nbuiltin = 'debugger'", "plugins.x.type: is missing"),
        ("[plugins.x]\ntype = 'reciever'\nexec = ['a']", "plugins.x.type: 'reciever' is not one of"),
        ("[plugins.x]\ntype = 'receiver'", "plugins.x: needs exactly one of 'builtin'"),
        ("[plugins.x]\ntype = 'receiver'\nbuiltin = 'nope'", "plugins.x.builtin: no built-in receiver 'nope'"),
        ("[plugins.x]\ntype = 'receiver'\nbuiltin = 'debugger'\nformt = 'json'", "plugins.x.formt: unknown key for"),
        ("[plugins.x]\ntype = 'receiver'\nbuiltin = 'debugger'\nformat = 1", "plugins.x.format: must be a string"),
        ("[plugins.x]\ntype = 'collector'\nexec = ['a']\nfilter = {system = 'a'}", "plugins.x.filter: collectors take"),
        ("[plugins.x]\ntype = 'parser'\nexec = []", "plugins.x.exec: must be a non-empty array"),
        ("[plugins.x]\ntype = 'parser'\nbuiltin = 'pattern'", "plugins.x.rules: is required"),
        ("[plugins.x]\ntype = 'parser'\nbuiltin = 'pattern'\nrules = [{match = '(', event_type = 'A'}]",
         "plugins.x.rules[0].match: not a valid regular expression"),
        ("[plugins.'a b']\ntype = 'parser'\nexec = ['a']", 'plugins."a b": plugin names are'),
        ("[main\n", "not valid TOML"),
    ])
    def test_errors_name_file_key_and_reason(self, tmp_path: Path, text: str, message: str) -> None:
        """Each kind of mistake is refused with the file, the dotted key and the reason."""
        path = _write(tmp_path / "busd.toml", text)
        with pytest.raises(ConfigError) as info:
            load(path)
        assert str(info.value).startswith(f"{path}: ") and message in str(info.value)

    def test_error_in_snippet_names_the_snippet(self, tmp_path: Path) -> None:
        """A mistake in an included snippet is reported against that snippet."""
        main = _write(tmp_path / "busd.toml", '[main]\ninclude = ["*.snippet.toml"]\n')
        snippet = _write(tmp_path / "x.snippet.toml", "[plugins.x]\ntype = 'parser'\nexec = ['a']\nfilter = {kind = 'x'}\n")
        with pytest.raises(ConfigError, match=f"^{snippet}: plugins.x.filter.kind"):
            load(main)

    def test_runtime_dir_too_long_for_ipc(self, tmp_path: Path) -> None:
        """A runtime_dir too long for ipc:// paths is refused up front, not at bind time."""
        path = _write(tmp_path / "busd.toml", f'[main]\nruntime_dir = "/{"x" * 100}"\n')
        with pytest.raises(ConfigError, match="too long for ipc"):
            load(path)

    def test_state_dir_default_and_relative(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """state_dir: systemd's $STATE_DIRECTORY first, else /var/lib/busd (root) or $XDG_STATE_HOME/busd;
        a relative one is relative to the main file."""
        path = _write(tmp_path / "busd.toml", "[main]\n")
        monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/busd-unit:/var/lib/other")
        assert load(path).main.state_dir == "/var/lib/busd-unit"
        monkeypatch.delenv("STATE_DIRECTORY")
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
        expected = "/var/lib/busd" if os.geteuid() == 0 else str(tmp_path / "xdg" / "busd")
        assert load(path).main.state_dir == expected
        _write(path, '[main]\nstate_dir = "state"\n')
        assert load(path).main.state_dir == str(tmp_path / "state")

    def test_peek_main_ignores_broken_plugins(self, tmp_path: Path) -> None:
        """The CLI's view of [main] works while a plugin table is broken."""
        path = _write(tmp_path / "busd.toml", '[main]\nruntime_dir = "/tmp/r"\n[plugins.x]\ntype = 1\n')
        assert peek_main(path).runtime_dir == "/tmp/r"

    def test_shipped_configs_are_valid(self) -> None:
        """The example and demo configurations in conf/ load without error."""
        root = Path(__file__).resolve().parent.parent
        for name in ("conf/busd.toml", "conf/demo/busd.toml"):
            cfg = load(root / name)
            assert cfg.plugins, name


class TestBrokerDecoding:
    """The broker decodes clean batches into typed events and everything else as maps, with the same result."""

    @staticmethod
    def _published(broker: Broker, kind: str = "raw") -> list[dict[str, object]]:
        return [decode(data) for data in broker.streams[kind].ring]

    def test_typed_and_map_paths_publish_the_same_events(self) -> None:
        """A clean batch goes the typed way, a map batch the normalize way: the published bytes decode equal."""
        events = [{"system": "scsi", "event_type": "SCSI_X", "event_id": f"id-{i}", "timestamp": 5,
                   "severity": "warn", "msg": "m", "extensions": {"n": i, "l": [1], "d": {"a": None}}}
                  for i in range(3)]
        frame = protocol.packb({"op": "publish", "plugin": "col", "events": events, "id": 7})
        typed = _decode_batch(frame)
        assert typed is not None and typed["id"] == 7 and typed["plugin"] == "col"
        assert all(isinstance(e, WireEvent) for e in typed["events"])
        a, b = Broker("/nonexistent", "host-a"), Broker("/nonexistent", "host-a")
        assert a.ingest("col", typed["events"]) == (3, [])
        assert b.ingest("col", protocol.unpackb(protocol.packb(events))) == (3, [])
        pa, pb = self._published(a), self._published(b)
        assert pa == pb and pa[0]["hostname"] == "host-a" and pa[0]["timestamp"] == 5.0
        assert pa[0]["source"] == "col" and pa[0]["extensions"] == {"n": 0, "l": [1], "d": {"a": None}}

    @pytest.mark.parametrize("odd", [
        {"custom": 1},                 # unknown key: kept, so the map path
        {"msg": None},                 # a null string: normalize makes it ""
        {"extensions": {"a": b"x"}},   # a type the schema refuses: normalize names it
        {"v": 2},
    ])
    def test_anything_unusual_takes_the_normalize_path(self, odd: dict[str, object]) -> None:
        """One odd event sends the whole batch through normalize, which keeps unknown keys and names errors."""
        events = [{"system": "s", "event_type": "E"}, {"system": "s", "event_type": "E", **odd}]
        frame = protocol.packb({"op": "publish", "plugin": "col", "events": events})
        if "v" in odd:  # valid types, so typed: check_wire refuses it with normalize's words
            typed = _decode_batch(frame)
            assert typed is not None
            broker = Broker("/nonexistent", "h")
            assert broker.ingest("col", typed["events"]) == (1, [(1, "v: schema version 2 is not supported (only 1)")])
            return
        assert _decode_batch(frame) is None
        broker = Broker("/nonexistent", "h")
        accepted, rejected = broker.ingest("col", protocol.unpackb(frame)["events"])
        if "custom" in odd:
            assert (accepted, rejected) == (2, []) and self._published(broker)[1]["custom"] == 1
        elif "msg" in odd:
            assert (accepted, rejected) == (2, []) and self._published(broker)[1]["msg"] == ""
        else:
            assert accepted == 1 and rejected == [(1, "extensions.a: type bytes is not allowed")]

    def test_other_requests_are_not_taken_for_batches(self) -> None:
        """Only publish and ack requests are decoded typed; others keep every key."""
        assert _decode_batch(protocol.packb({"op": "progress", "plugin": "r", "acked": {"raw": 3}})) is None
        assert _decode_batch(b"\xc1garbage") is None
        ack = _decode_batch(protocol.packb({"op": "ack", "upto": 4, "events": []}))
        assert ack == {"op": "ack", "upto": 4, "events": []}
        # a publish without events keeps no invented "events": the broker refuses it as before
        assert "events" not in (_decode_batch(protocol.packb({"op": "publish", "plugin": "p"})) or {})
        assert Broker("/nonexistent", "h")._op_publish({"op": "publish", "plugin": "p"})["ok"] is False


def test_recent_ids_remember_at_least_the_window_and_forget_older_ones() -> None:
    """The broker's duplicate memory: the last ``window`` ids always, nothing beyond twice that."""
    recent = RecentIds(4)
    ids = [f"id-{i}" for i in range(20)]
    for n, eid in enumerate(ids, 1):
        assert eid not in recent
        assert recent.add(eid) is True
        assert all(old in recent and recent.add(old) is False for old in ids[max(0, n - 4):n])
        assert len(recent) <= 8
    assert ids[0] not in recent and ids[11] not in recent
    recent.window = 2  # a reload shrinks the window: the next generation is the smaller size
    recent.add("x")
    assert "x" in recent and "id-19" in recent
    recent.add("y")
    assert "x" in recent and "y" in recent and "id-19" not in recent and len(recent) == 2


def _process_gone(pid: int) -> bool:
    """Whether ``pid`` has died (absent, or a zombie nobody has reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_stop_process_kills_a_group_that_ignores_sigterm() -> None:
    """SIGTERM first; after the grace, SIGKILL reaches the command and what it started."""
    async def main() -> tuple[bool, int | None, int]:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", 'trap "" TERM; sleep 60 & echo $!; wait', stdout=asyncio.subprocess.PIPE,
            start_new_session=True)
        assert proc.stdout is not None
        child = int(await proc.stdout.readline())
        stopped = await asyncio.wait_for(stop_process(proc, group=True, grace=0.2), 30)
        return stopped, proc.returncode, child

    stopped, returncode, child = asyncio.run(main())
    assert stopped and returncode == -signal.SIGKILL
    assert _process_gone(child)


def test_stop_process_does_not_hang_on_a_stray_holding_its_pipe() -> None:
    """A process that left the group keeps the pipe open: asyncio's wait() would block until it ends."""
    strays: list[int] = []

    async def main() -> tuple[bool, int | None]:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", "setsid sleep 60 & echo $!; exec sleep 60", stdout=asyncio.subprocess.PIPE,
            start_new_session=True)
        assert proc.stdout is not None
        stray = int(await proc.stdout.readline())
        strays.append(stray)
        for _ in range(500):  # until the stray has left the group (setsid), or the group kill gets it too
            if Path(f"/proc/{stray}/stat").read_text().rsplit(")", 1)[1].split()[3] == str(stray):  # session
                break
            await asyncio.sleep(0.01)
        stopped = await asyncio.wait_for(stop_process(proc, group=True, grace=0, reap_timeout=0.5), 30)
        return stopped, proc.returncode

    try:
        stopped, returncode = asyncio.run(main())
        assert stopped and returncode == -signal.SIGKILL
        assert not _process_gone(strays[0])  # the stray really was out of reach of the group kill
    finally:
        for pid in strays:
            os.kill(pid, signal.SIGKILL)


def test_filter_select_keeps_matches_and_loss_notices_in_order() -> None:
    """What a subscriber hands on: events that pass, and its own BUS_EVENTS_LOST notices whatever the filter."""
    events = [new_event("scsi", "A", severity="error", kind="synthetic"),
              new_event("md", "B", severity="error", kind="synthetic"),
              new_event("bus", "BUS_EVENTS_LOST", severity="warn", kind="synthetic"),
              new_event("scsi", "C", severity="info", kind="synthetic")]
    flt = Filter.parse({"system": "scsi", "severity": "warn"})
    assert [e["event_type"] for e in flt.select(events)] == ["A", "BUS_EVENTS_LOST"]
    assert flt.wants(events[2]) and not flt.wants(events[3])
    everything = Filter.parse({}, default_kinds=("synthetic",))
    assert everything.select(events) is events  # the subscription chose the kinds: nothing to copy

"""Receiver ``pg_hba``: the managed block, byte for byte outside it, backup, atomic write, failures."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
from pgcluster import free_port

from bus.config import plugin_options
from receivers.pg_hba import BEGIN, END, BlockError, PgHba, check_options, find_block, hba_lines, replace_block

ODD = (b"# a comment with trailing spaces   \r\n"
       b"\tlocal   all   all      trust\r\n"
       b"\r\n"
       b"host all all 10.0.0.0/8  md5   # inline comment\r\n"
       b"  # indented comment\xc3\xa9\r\n"
       b"host    all   all   0.0.0.0/0    scram-sha-256")  # CRLF, no final newline
OPTIONS = {"hba_file": "x", "haproxy_addresses": ["127.0.0.1", "10.1.2.0/24", "::1"], "rw_user": "hc",
           "ro_user": "hcro", "allow_ro": True}


def opts(**kw: Any) -> dict[str, Any]:
    return plugin_options("receiver", "pg_hba", {**OPTIONS, **kw})


def outside(data: bytes) -> bytes:
    span = find_block(data)
    return data if span is None else data[: span[0]] + data[span[1]:]


def test_block_goes_on_top_and_keeps_every_other_byte() -> None:
    lines = hba_lines(opts(), True, True)
    new = replace_block(ODD, lines)
    assert new.startswith(BEGIN + b"\r\n")  # the file's own line end
    assert new.endswith(ODD) and outside(new) == ODD
    block = new[: len(new) - len(ODD)].decode()
    assert block.count("\r\n") == len(lines) + 2 and "\n" not in block.replace("\r\n", "")
    # replaced in place; a second decision changes only the block
    denied = replace_block(new, hba_lines(opts(), False, False))
    assert outside(denied) == ODD and b"md5" not in denied[: denied.index(END)]
    assert replace_block(denied, hba_lines(opts(), False, False)) == denied


def test_lines_follow_the_decision() -> None:
    allow = hba_lines(opts(), True, True)
    assert [line.split() for line in allow] == [
        ["host", "all", "hc", "127.0.0.1/32", "md5"], ["host", "all", "hcro", "127.0.0.1/32", "md5"],
        ["host", "all", "hc", "10.1.2.0/24", "md5"], ["host", "all", "hcro", "10.1.2.0/24", "md5"],
        ["host", "all", "hc", "::1/128", "md5"], ["host", "all", "hcro", "::1/128", "md5"]]
    standby = [line.split()[2:] for line in hba_lines(opts(allow_method="scram-sha-256"), False, True)][:2]
    assert standby == [["hc", "127.0.0.1/32", "reject"], ["hcro", "127.0.0.1/32", "scram-sha-256"]]
    no_ro = hba_lines(opts(allow_ro=False), True, True)
    assert [line.split()[-1] for line in no_ro if "hcro" in line] == ["reject"] * 3
    assert all("hcro" not in line for line in hba_lines(opts(ro_user="", allow_ro=False), True, True))


def test_block_in_the_middle_and_at_the_end_without_newline() -> None:
    lines = hba_lines(opts(), True, False)
    head, tail = b"local all all trust\n", b"host all all 0.0.0.0/0 md5\n"
    middle = head + BEGIN + b"  \nold line\n" + END + b"\n" + tail
    new = replace_block(middle, lines)
    assert new.startswith(head) and new.endswith(tail) and b"old line" not in new
    last = head + BEGIN + b"\nold\n" + END  # END without a line end, as the last bytes
    new = replace_block(last, lines)
    assert new.startswith(head) and new.endswith(END) and b"old" not in new
    assert replace_block(b"", lines).startswith(BEGIN + b"\n")


@pytest.mark.parametrize("data", [BEGIN + b"\nx\n", b"x\n" + END + b"\n",
                                  BEGIN + b"\n" + BEGIN + b"\n" + END + b"\n",
                                  BEGIN + b"\n" + END + b"\n" + BEGIN + b"\n" + END + b"\n"])
def test_broken_markers_are_refused(data: bytes) -> None:
    with pytest.raises(BlockError):
        replace_block(data, ["x"])


def test_options_are_checked() -> None:
    check_options(opts())
    for bad, match in [({"haproxy_addresses": ["nope"]}, "haproxy_addresses"), ({"haproxy_addresses": []}, "at least"),
                       ({"rw_user": "a b"}, "rw_user"), ({"ro_user": "", "allow_ro": True}, "allow_ro")]:
        with pytest.raises(ValueError, match=match):
            check_options(opts(**bad))


def plugin(tmp: Path, **kw: Any) -> PgHba:
    config = {"type": "receiver", "builtin": "pg_hba", **OPTIONS, "hba_file": str(tmp / "pg_hba.conf"),
              "dsn": f"host=127.0.0.1 port={free_port()} user=postgres connect_timeout=1", **kw}
    return PgHba({"BUS_PLUGIN": "hba", "BUS_PLUGIN_CONFIG": json.dumps(config)})


def test_write_keeps_owner_mode_and_backs_up_once_and_retries_the_reload(tmp_path: Path) -> None:
    hba = tmp_path / "pg_hba.conf"
    hba.write_bytes(ODD)
    hba.chmod(0o640)
    if os.geteuid() == 0:
        os.chown(hba, 65534, 65534)

    async def main() -> None:
        p = plugin(tmp_path)
        await p.setup()  # no block yet: one that denies everything, before any decision
        try:
            data = hba.read_bytes()
            assert outside(data) == ODD and b"md5" not in data[: data.index(END)]
            assert p.counters["written"] == 1 and p.counters["reload_failed"] == 1  # nothing listens on that port
            assert p._retry is not None  # the reload is tried again later
            await p.handle({"event_type": "PG_ROUTING_DECISION", "dev_name": "node1",
                            "extensions": {"outcome": "allow_writes", "allow_reads": True}})
            data = hba.read_bytes()
            assert outside(data) == ODD and data[: data.index(END)].count(b"md5") == 6
            assert p.counters["written"] == 2
        finally:
            await p.teardown()

    asyncio.run(main())
    st = hba.stat()
    assert st.st_mode & 0o777 == 0o640
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (65534, 65534)
    assert (tmp_path / "pg_hba.conf.busd-orig").read_bytes() == ODD  # the original, not the first rewrite
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_other_nodes_decisions_and_broken_files_are_left_alone(tmp_path: Path) -> None:
    hba = tmp_path / "pg_hba.conf"
    broken = b"local all all trust\n" + BEGIN + b"\n"
    hba.write_bytes(broken)

    async def main() -> None:
        p = plugin(tmp_path, node="node1")
        await p.setup()
        try:
            assert hba.read_bytes() == broken  # BEGIN without END: not guessed at
            await p.handle({"event_type": "PG_ROUTING_DECISION", "dev_name": "node1",
                            "extensions": {"outcome": "allow_writes", "allow_reads": True}})
            assert hba.read_bytes() == broken and p.counters["write_failed"] == 1
            hba.write_bytes(b"local all all trust\n")
            await p.handle({"event_type": "PG_ROUTING_DECISION", "dev_name": "node2",
                            "extensions": {"outcome": "allow_writes", "allow_reads": True}})
            assert hba.read_bytes() == b"local all all trust\n"  # another node's decision
        finally:
            await p.teardown()

    asyncio.run(main())

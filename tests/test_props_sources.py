"""Property tests (hypothesis) on the collectors' input boundaries: the pure functions that turn
``/dev/kmsg`` records, ``drbdsetup events2`` lines, GlusterFS datagrams and udev replay lines into
fields.

Whatever arrives (random bytes, real lines truncated, with a field replaced or bytes inserted), each
function returns a result or raises only what its docstring documents, naming the defect; valid
input gives back the fields it holds, however it is split; and after bad input the next good one is
still taken.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bus.exceptions import BadInput
from collectors.drbd import (
    ACTIONS,
    OBJECTS,
    REQUIRED_KEYS,
    Line,
    Template,
    Templates,
    line_from_extensions,
    parse_line,
    parse_timestamp,
    template_key,
)
from collectors.kmsg import (
    MAX_RECORD,
    Assembler,
    Bad,
    Lines,
    Record,
    check_line,
    parse_dictionary_line,
    parse_header,
    unescape,
)
from collectors.udev import REQUIRED, properties_from_json
from parsers._gluster_events import parse_datagram

TESTS = Path(__file__).resolve().parent
SAMPLES = TESTS.parent.parent / "shared" / "samples"


def sample_lines(*patterns: str, folder: Path = SAMPLES) -> list[str]:
    """The non-blank, non-comment lines of the sample files matching ``patterns``."""
    out = []
    for pattern in patterns:
        for path in sorted(folder.glob(pattern)):
            out += [ln for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert out, f"no sample lines in {folder}/{patterns}"
    return out


KMSG_LINES = sample_lines("*.kmsg")
KMSG_HEADERS = [ln for ln in KMSG_LINES if not ln.startswith(" ")]
KMSG_DICTIONARY = [ln for ln in KMSG_LINES if ln.startswith(" ")]
DRBD_LINES = sample_lines("drbd-events2*.txt") + sample_lines("*.txt", folder=TESTS / "data" / "drbd")
GLUSTER_LINES = sample_lines("gluster-messages.txt")

CHECK_KINDS = {"too_long", "nul_byte", "invalid_utf8"}
HEADER_KINDS = CHECK_KINDS | {"no_semicolon", "bad_header"}
DICTIONARY_KINDS = CHECK_KINDS | {"bad_dictionary"}
ASSEMBLER_KINDS = HEADER_KINDS | DICTIONARY_KINDS | {"orphan_continuation"}
DRBD_KINDS = {"unknown_action", "unknown_object", "bad_field", "missing_key", "bad_integer"}
DATAGRAM_KINDS = {"oversized", "not_utf8", "empty", "no_index", "bad_timestamp", "bad_index"}
UDEV_KINDS = {"not_json", "not_object", "bad_property", "missing_property"}


@st.composite
def mutated(draw: st.DrawFn, seeds: list[str], separator: str = " ") -> bytes:
    """A real line, mangled: truncated, a field (split at ``separator``) replaced, random bytes inserted,
    duplicated, or any mix of those; sometimes plain random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=80))
    data = draw(st.sampled_from(seeds)).encode()
    for op in draw(st.lists(st.sampled_from(["cut", "field", "insert", "twice"]), min_size=1, max_size=3)):
        if op == "cut":
            data = data[:draw(st.integers(0, len(data)))]
        elif op == "field":
            parts = data.split(separator.encode())
            i = draw(st.integers(0, len(parts) - 1))
            parts[i] = draw(st.text(max_size=12).map(str.encode) | st.binary(max_size=6))
            data = separator.encode().join(parts)
        elif op == "insert":
            at = draw(st.integers(0, len(data)))
            data = data[:at] + draw(st.binary(min_size=1, max_size=4) | st.sampled_from([b";", b",", b":", b"=", b" ",
                                                                                          b"\\x", b"->", b"\t"])) + data[at:]
        else:
            data += data
    return data


def refused(exc: BadInput, kinds: set[str]) -> bool:
    """Whether a refusal is one the function documents, and says what was wrong."""
    assert exc.kind in kinds, exc
    assert exc.detail.strip() and str(exc) == f"{exc.kind}: {exc.detail}", exc
    return True


# -- kmsg: lines, headers, dictionary lines ------------------------------------------------------


@settings(max_examples=150)
@given(st.binary(max_size=40) | mutated(KMSG_LINES) | st.builds(lambda n: b"a" * n, st.integers(MAX_RECORD - 1,
                                                                                                 MAX_RECORD + 1)))
@example(b"\x00")
@example("é".encode()[:1])
def test_check_line_refuses_exactly_the_documented_defects(raw: bytes) -> None:
    """check_line passes a line iff it is at most MAX_RECORD bytes of UTF-8 without NUL; else it names which."""
    try:
        raw.decode("utf-8")
        clean = len(raw) <= MAX_RECORD and b"\x00" not in raw
    except UnicodeDecodeError:
        clean = False
    try:
        check_line(raw)
    except BadInput as exc:
        assert refused(exc, CHECK_KINDS) and not clean
    else:
        assert clean


@settings(max_examples=150)
@given(mutated(KMSG_HEADERS, ",") | mutated(KMSG_HEADERS, ";"))
@example(b"x" + "é".encode() * 40 + b";m")  # the prefix quoted was cut in a character: UnicodeDecodeError
@example(b"6,1,2,-;\\x00\\xff")
@example(b";")
def test_parse_header_of_any_line_gives_a_record_or_names_the_defect(raw: bytes) -> None:
    """A mangled record line: a Record whose fields come from the line, or BadInput of a documented kind."""
    try:
        record = parse_header(raw)
    except BadInput as exc:
        assert refused(exc, HEADER_KINDS)
    else:
        assert isinstance(record, Record) and 0 <= record.level <= 7 and record.facility >= 0
        assert record.seq >= 0 and record.usec >= 0 and record.size == len(raw)
        prefix = raw.partition(b";")[0].split(b",")
        assert (int(prefix[1]), int(prefix[2])) == (record.seq, record.usec)
        assert record.msg == unescape(raw.partition(b";")[2])


def kmsg_escape(text: str) -> bytes:
    """Escape text as the kernel does for /dev/kmsg: bytes outside printable ASCII, and backslash, as \\xNN."""
    return b"".join(bytes([b]) if 0x20 <= b < 0x7F and b != 0x5C else b"\\x%02x" % b for b in text.encode())


printable = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=40)


@settings(max_examples=150)
@given(st.integers(0, 2**10), st.integers(0, 2**64), st.integers(0, 2**64), st.sampled_from(["-", "c", "+"]),
       printable, st.booleans())
def test_parse_header_gives_back_the_fields_of_a_record_it_was_built_from(prio: int, seq: int, usec: int, flags: str,
                                                                          msg: str, extra: bool) -> None:
    """PRIO,SEQ,USEC,FLAGS[,more];escaped-message parses to those numbers and the message unescaped."""
    raw = f"{prio},{seq},{usec},{flags}{',caller=T1' if extra else ''};".encode() + kmsg_escape(msg)
    record = parse_header(raw)
    assert (record.level, record.facility, record.seq, record.usec, record.flags) == (prio & 7, prio >> 3, seq, usec,
                                                                                      flags)
    assert record.msg == msg and unescape(kmsg_escape(msg)) == msg


@settings(max_examples=150)
@given(mutated(KMSG_DICTIONARY, "="))
@example(b" =x")
@example(b" ")
def test_parse_dictionary_line_of_any_line_gives_a_pair_or_names_the_defect(raw: bytes) -> None:
    """A mangled `` KEY=VALUE`` line: the key (non-blank) and value, or BadInput of a documented kind."""
    try:
        key, value = parse_dictionary_line(raw)
    except BadInput as exc:
        assert refused(exc, DICTIONARY_KINDS)
    else:
        assert key.encode().strip() and isinstance(value, str) and b"=" in raw  # blank: ASCII white space


@given(st.from_regex(r"[A-Z_]{1,12}", fullmatch=True), printable)
def test_parse_dictionary_line_gives_back_key_and_value(key: str, value: str) -> None:
    """`` KEY=escaped value`` parses to the key and the value unescaped (an ``=`` in the value stays in it)."""
    assert parse_dictionary_line(b" " + key.encode() + b"=" + kmsg_escape(value)) == (key, value)


# -- kmsg: the assembler and the line splitter ---------------------------------------------------


records = st.lists(st.tuples(st.integers(0, 191), st.integers(0, 2**40), printable,
                             st.dictionaries(st.from_regex(r"[A-Z]{1,8}", fullmatch=True), printable, max_size=3)),
                   min_size=1, max_size=6)


def record_lines(recs: list[tuple[int, int, str, dict[str, str]]]) -> list[bytes]:
    """The /dev/kmsg text of records: each header then its dictionary lines."""
    out = []
    for prio, seq, msg, fields in recs:
        out.append(f"{prio},{seq},{seq * 10},-;".encode() + kmsg_escape(msg))
        out += [b" " + k.encode() + b"=" + kmsg_escape(v) for k, v in fields.items()]
    return out


def refuse(bad: Bad) -> None:
    """An on_bad for input that must have no defect."""
    raise AssertionError(f"refused line {bad.line}: {bad.kind}: {bad.detail}")


def assemble(lines: list[bytes]) -> tuple[list[Record], list[Bad]]:
    """Feed lines (numbered from 1) to one Assembler and flush it; return the records and the refusals."""
    bad: list[Bad] = []
    assembler = Assembler(bad.append)
    out = [assembler.feed(line, n) for n, line in enumerate(lines, 1)]
    out.append(assembler.flush())
    return [r for r in out if r is not None], bad


def fields_of(recs: list[Record]) -> list[tuple[int, int, int, str, dict[str, str]]]:
    return [(r.level, r.facility, r.seq, r.msg, r.fields) for r in recs]


@settings(max_examples=100)
@given(records)
def test_the_assembler_gives_back_the_records_it_was_fed(recs: list[tuple[int, int, str, dict[str, str]]]) -> None:
    """Records written in the /dev/kmsg text format come out as they went in, nothing refused."""
    got, bad = assemble(record_lines(recs))
    assert bad == []
    assert fields_of(got) == [(p & 7, p >> 3, s, m, f) for p, s, m, f in recs]


@settings(max_examples=100)
@given(records, st.lists(st.tuples(st.integers(0, 20), mutated(KMSG_LINES) | st.binary(max_size=30)), max_size=6))
@example([(6, 1, "ok", {})], [(0, b" orphan=1"), (0, b"garbage"), (1, b"\x00;")])
def test_bad_lines_between_records_are_refused_and_the_next_record_is_taken(
        recs: list[tuple[int, int, str, dict[str, str]]], junk: list[tuple[int, bytes]]) -> None:
    """Garbage between records: every refusal is of a documented kind, and every record that follows a
    good header is still assembled, with the dictionary lines that follow it."""
    lines = record_lines(recs)
    starts = [i for i, line in enumerate(lines) if not line.startswith(b" ")]
    # junk goes only just before a record's header, so it cannot end up inside a good record; after a
    # record, a line starting with a space is that record's dictionary line, so those go first only
    places = [(starts[where % len(starts)], garbage) for where, garbage in junk]
    for at, garbage in sorted(places, key=lambda p: -p[0]):
        if b"\n" not in garbage and (garbage[:1] != b" " or at == 0):
            lines[at:at] = [garbage]
    got, bad = assemble(lines)
    assert all(b.kind in ASSEMBLER_KINDS and b.detail for b in bad), bad
    # a junk line that happens to be a valid header makes a record of its own; the real ones are all there
    expected = [(p & 7, p >> 3, s, m, f) for p, s, m, f in recs]
    real = [r for r in fields_of(got) if r in expected]
    assert real == expected


@settings(max_examples=100)
@given(records, st.lists(st.integers(0, 10_000), max_size=8))
def test_lines_splits_a_stream_the_same_however_it_is_chunked(recs: list[tuple[int, int, str, dict[str, str]]],
                                                              cuts: list[int]) -> None:
    """Lines.feed over any chunking of a stream yields the same numbered lines; assembled, the same records."""
    stream = b"\n".join(record_lines(recs)) + b"\n"
    whole = Lines(refuse).feed(stream)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    splitter = Lines(refuse)
    chunked = []
    for a, b in zip([0, *points], [*points, len(stream)], strict=True):
        chunked += splitter.feed(stream[a:b])
    assert chunked == whole == list(enumerate(stream.split(b"\n")[:-1], 1))
    assert fields_of(assemble([line for _, line in chunked])[0]) == fields_of(assemble(record_lines(recs))[0])


@settings(max_examples=100)
@given(records, records, st.lists(st.integers(1, 3 * MAX_RECORD), min_size=1, max_size=5))
def test_an_overlong_line_is_refused_once_however_it_arrives(
        before: list[tuple[int, int, str, dict[str, str]]], after: list[tuple[int, int, str, dict[str, str]]],
        cuts: list[int]) -> None:
    """A line longer than MAX_RECORD between records, in any chunks: refused exactly once as too_long
    (by Lines while it grows, or by the Assembler when it arrived whole), the records around it intact."""
    stream = b"\n".join([*record_lines(before), b"x" * (MAX_RECORD + 1 + cuts[0]), *record_lines(after)]) + b"\n"
    bad: list[Bad] = []
    lines, assembler = Lines(bad.append), Assembler(bad.append)
    got = []
    points = sorted({c % (len(stream) + 1) for c in cuts})
    for a, b in zip([0, *points], [*points, len(stream)], strict=True):
        got += [assembler.feed(line, n) for n, line in lines.feed(stream[a:b])]
    got.append(assembler.flush())
    assert [b.kind for b in bad] == ["too_long"]
    assert bad[0].line == len(record_lines(before)) + 1
    assert fields_of([r for r in got if r is not None]) == fields_of(assemble(record_lines(before + after))[0])


overlong = st.builds(lambda start, n: start + b"x" * (MAX_RECORD + n), st.sampled_from([b"6,9,90,-;", b" KEY=", b"x"]),
                     st.integers(1, 2 * MAX_RECORD))


@settings(max_examples=100)
@given(st.lists(st.lists(mutated(KMSG_LINES) | overlong, max_size=2) | records.map(record_lines), min_size=1,
                max_size=5), st.lists(st.integers(0, 4 * MAX_RECORD), max_size=6))
@example([record_lines([(6, 1, "first", {"SUBSYSTEM": "scsi"})]), [b"6,2,20,-;" + b"x" * (MAX_RECORD + 10),
                                                                     b" SUBSYSTEM=block"]], [MAX_RECORD + 50])
def test_a_stream_gives_the_same_records_however_it_is_read(parts: list[list[bytes]], cuts: list[int]) -> None:
    """Any /dev/kmsg text (records, garbage, overlong lines) read in any chunks gives the records reading it
    whole gives: a record dropped while it grew past MAX_RECORD takes its dictionary lines with it, as one
    refused whole does (they used to be added to the record before it). Which refusal an overlong line
    gets may differ (Lines drops it as too_long before the Assembler could call it an orphan)."""
    stream = b"\n".join(line.replace(b"\n", b" ") for part in parts for line in part) + b"\n"

    def read(chunks: list[bytes]) -> list[tuple[int, int, int, str, dict[str, str]]]:
        bad: list[Bad] = []
        lines, assembler = Lines(bad.append), Assembler(bad.append)
        got = [r for chunk in chunks for r in assembler.feed_chunk(lines, chunk)]
        last = assembler.flush()
        assert all(b.kind in ASSEMBLER_KINDS and b.detail for b in bad), bad
        return fields_of(got + ([last] if last else []))

    points = sorted({c % (len(stream) + 1) for c in cuts})
    chunked = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert read(chunked) == read([stream])


# -- drbd: events2 lines and timestamps ----------------------------------------------------------


@given(mutated(DRBD_LINES) | mutated(DRBD_LINES, ":") | st.text(max_size=60).map(str.encode))
@example(b"exists -")
@example(b"2024-05-02T10:00:00Z")
@example(b"change device name:r volume:\xd9\xa1")  # an Arabic-Indic digit
@example(b"change resource name:r role:->")
def test_parse_line_of_any_line_gives_a_line_or_names_the_defect(raw: bytes) -> None:
    """A mangled events2 line: a Line with a known action and object, its required keys and integer keys
    that are integers; or BadInput of a documented kind."""
    text = raw.decode("utf-8", "replace")
    try:
        line = parse_line(text)
    except BadInput as exc:
        assert refused(exc, DRBD_KINDS)
        return
    assert isinstance(line, Line) and line.action in ACTIONS
    if line.object == "-":
        assert line.action == "exists" and line.fields == {}
        return
    assert line.object in OBJECTS and all(line.fields[k] for k in REQUIRED_KEYS[line.object])
    for key in ("volume", "peer-node-id", "minor"):
        if key in line.fields:
            int(line.fields[key])
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in (*line.fields.items(), *line.old.items()))
    when = None if line.timestamp is None else parse_timestamp(line.timestamp)
    assert when is None or math.isfinite(when)


names = st.from_regex(r"[a-z0-9_]{1,8}", fullmatch=True)
values_st = st.from_regex(r"[A-Za-z0-9_./:+-]{0,12}", fullmatch=True).filter(lambda v: "->" not in v)


@settings(max_examples=100)
@given(st.sampled_from(sorted(set(OBJECTS) - {"helper"})), st.sampled_from(["exists", "create", "change", "destroy"]),
       names, st.integers(0, 31), st.integers(-1, 65535),
       st.dictionaries(st.from_regex(r"[a-z][a-z-]{0,10}", fullmatch=True).filter(
           lambda k: k not in ("name", "volume", "peer-node-id", "minor", "local", "peer")), values_st, max_size=4),
       st.dictionaries(st.sampled_from(["role", "disk", "connection"]), st.tuples(values_st, values_st), max_size=2))
def test_parse_line_gives_back_the_fields_of_a_line_it_was_built_from(
        obj: str, action: str, name: str, peer: int, number: int, extra: dict[str, str],
        changed: dict[str, tuple[str, str]]) -> None:
    """``ACTION OBJECT key:value...`` parses to those fields (split on the first ':'), ``key:old->new``
    to new in fields and old in old."""
    fields = {"name": name, "volume": str(number), "peer-node-id": str(peer), "local": "ipv4:10.0.0.1:7789",
              "peer": "ipv4:10.0.0.2:7789"}
    fields = {k: fields[k] for k in REQUIRED_KEYS[obj]} | {k: v for k, v in extra.items() if k not in changed}
    words = [f"{k}:{v}" for k, v in fields.items()] + [f"{k}:{o}->{n}" for k, (o, n) in changed.items()]
    line = parse_line(" ".join([action, obj, *words]))
    assert (line.action, line.object, line.timestamp) == (action, obj, None)
    assert line.fields == fields | {k: n for k, (_, n) in changed.items()}
    assert line.old == {k: o for k, (o, _) in changed.items()}


ext_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                          lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=2), max_leaves=4)


@st.composite
def line_extensions(draw: st.DrawFn) -> dict[str, Any]:
    """The extensions the drbd collector gives a sample line, with some keys (or values in fields) replaced."""
    line = parse_line(draw(st.sampled_from(DRBD_LINES)))
    ext: dict[str, Any] = {"action": line.action, "object": line.object, "fields": dict(line.fields), "run": "r"}
    if line.old:
        ext["old"] = dict(line.old)
    for _ in range(draw(st.integers(0, 3))):
        if draw(st.booleans()) and isinstance(ext.get("fields"), dict) and ext["fields"]:
            ext["fields"][draw(st.sampled_from(sorted(ext["fields"])))] = draw(ext_values)
        else:
            key = draw(st.sampled_from(["action", "object", "fields", "old", "run"]))
            if draw(st.booleans()):
                ext[key] = draw(ext_values | st.sampled_from([*ACTIONS, *OBJECTS, "-"]))
            else:
                ext.pop(key, None)
    return ext


@given(line_extensions())
@example({"action": "call", "object": "helper", "fields": {"name": [], "peer-node-id": "2", "helper": "x"}})
@example({"action": [], "object": {}})
@example({"action": "change", "object": "device", "fields": {"name": "r", "volume": "x"}})
def test_line_from_extensions_checks_what_parse_line_checks(ext: dict[str, Any]) -> None:
    """An event's extensions: the Line they describe (known action and object, fields and old maps of
    strings, required and integer keys as parse_line requires) or BadInput of a documented kind."""
    try:
        line = line_from_extensions(ext)
    except BadInput as exc:
        assert refused(exc, DRBD_KINDS)
        return
    assert (line.action, line.object) == (ext["action"], ext["object"]) and line.action in ACTIONS
    if line.object != "-":
        assert line.fields == ext.get("fields", {}) and all(type(v) is str for v in line.fields.values())
        text = " ".join([line.action, line.object, *(f"{k}:{v}" for k, v in line.fields.items())])
        words = [k + v for k, v in line.fields.items()]
        if all(k and v and ":" not in k and "->" not in v for k, v in line.fields.items()) and \
                not any(c.isspace() for word in words for c in word):
            assert parse_line(text).fields == line.fields  # the same line as text passes parse_line too


@given(st.sampled_from(DRBD_LINES))
def test_line_from_extensions_gives_back_the_collectors_line(text: str) -> None:
    """The extensions the collector makes of a valid line describe that line again."""
    line = parse_line(text)
    ext = {"action": line.action, "object": line.object, "fields": line.fields, "old": line.old, "run": "r"}
    assert line_from_extensions(ext) == Line(line.action, line.object, line.fields, line.old)


aware = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9998, 12, 31),
                     timezones=st.sampled_from([UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5))]))


@given(aware)
def test_a_timestamp_prefix_gives_back_its_time(when: datetime) -> None:
    """``--timestamps`` prefixes (microseconds, a zone offset) give the epoch seconds of the time they show,
    and a line with one keeps it."""
    text = when.isoformat(timespec="microseconds")
    assert parse_timestamp(text) == pytest.approx(when.timestamp(), abs=1e-6)
    assert parse_line(f"{text} exists -").timestamp == text


@given(st.text(max_size=40) | st.from_regex(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:[.,]\d+)?(?:Z|[+-]\d\d:?\d\d)?",
                                            fullmatch=True))
@example("0001-01-01T00:00:00")  # naive, before the epoch in any zone
@example("9999-12-31T23:59:59-23:59")
@example("2024-01-01T00:00:00+24:00")
def test_parse_timestamp_of_any_text_is_a_finite_time_or_none(text: str) -> None:
    """Any text: epoch seconds (a finite float) or None, never an exception."""
    got = parse_timestamp(text)
    assert got is None or (isinstance(got, float) and math.isfinite(got))


# -- gluster: datagrams --------------------------------------------------------------------------


@given(mutated(GLUSTER_LINES) | mutated(GLUSTER_LINES, ";"), st.integers(0, 100))
@example(b"\xff", 100)
@example(b" \t\n", 100)
@example(b"1 2", 2)
@example(b"14683 03352 2 name=gv1", 22)  # a zero-padded index
def test_parse_datagram_of_any_bytes_gives_a_datagram_or_names_the_defect(data: bytes, max_size: int) -> None:
    """A mangled datagram: the parts glustereventsd would see (decimal time stamp and index, the rest as
    the message), or BadInput of a documented kind; more than max_size bytes is always refused."""
    try:
        dgram = parse_datagram(data, max_size)
    except BadInput as exc:
        assert refused(exc, DATAGRAM_KINDS)
        assert (exc.kind == "oversized") == (len(data) > max_size)
    else:
        assert len(data) <= max_size and dgram.text == data.strip().decode()
        ts, index = dgram.text.split(" ", 2)[:2]
        assert all(p.isascii() and p.isdigit() for p in (ts, index)) and (dgram.ts, dgram.index) == (int(ts), int(index))
        assert dgram.text.endswith(dgram.message)


@given(st.integers(0, 2**63), st.integers(0, 10**9 - 1), st.text(st.characters(codec="utf-8"), max_size=30))
def test_parse_datagram_gives_back_the_parts_it_was_built_from(ts: int, index: int, message: str) -> None:
    """``"%u %d %s"`` of a time stamp, an index and a message gives them back (the message stripped)."""
    data = f"{ts} {index} {message}".encode()
    dgram = parse_datagram(data)
    assert (dgram.ts, dgram.index) == (ts, index)
    # stripped as bytes: ASCII white space only, as glustereventsd does
    assert dgram.message == (data.strip().decode().split(" ", 2)[2:] or [""])[0]


# -- udev: replay lines --------------------------------------------------------------------------


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                        max_size=3), max_leaves=6)
plain_uevents = st.fixed_dictionaries({"ACTION": st.sampled_from(["add", "change", "remove"]),
                                       "DEVPATH": st.just("/devices/virtual/block/dm-0"), "SUBSYSTEM": st.just("block")},
                                      optional={"MAJOR": st.integers(0, 4095), "SEQNUM": st.integers(0, 2**64),
                                                "DM_NAME": st.text(max_size=8), "SCORE": st.floats(allow_nan=False)})
uevents = st.builds(lambda u, x: {**u, "X": x}, plain_uevents, json_values) | plain_uevents


@given(st.text(max_size=40) | st.builds(lambda v: json.dumps(v, allow_nan=True), json_values | uevents)
       | st.builds(lambda d, cut: json.dumps(d)[:cut], uevents, st.integers(0, 80)))
@example('{"ACTION": "add", "DEVPATH": "/d", "SUBSYSTEM": "block", "SEQNUM": ' + "1" * 5000 + "}")
@example("[" * 100_000)
@example('{"ACTION": NaN, "DEVPATH": Infinity, "SUBSYSTEM": -Infinity}')
def test_properties_from_json_of_any_line_gives_strings_or_names_the_defect(line: str) -> None:
    """Any replay line: a map of strings holding ACTION, DEVPATH and SUBSYSTEM, or BadInput of a documented kind."""
    try:
        props = properties_from_json(line)
    except BadInput as exc:
        assert refused(exc, UDEV_KINDS)
    else:
        assert all(type(k) is str and type(v) is str for k, v in props.items())
        assert all(props[k] for k in REQUIRED)


@given(plain_uevents)
def test_properties_from_json_gives_back_a_uevent_as_strings(props: dict[str, Any]) -> None:
    """A uevent's JSON map gives its properties, numbers as strings."""
    assert properties_from_json(json.dumps(props)) == {k: str(v) for k, v in props.items()}


# what drbdsetup never prints but a template must not take for a plain value: separators, arrows, and
# white space str.split() splits at that a regex may not see (U+001C..U+001F, U+0085, U+2028)
tricky_values = st.text(st.sampled_from(list(":->_a1\x1c\x1f\x85\xa0\u2028\u3000")) | st.characters(exclude_characters=" "),
                        max_size=8)
TEMPLATE_LINES = [t for t in DRBD_LINES if Template.of(t, parse_line(t)) is not None]


@given(st.sampled_from(TEMPLATE_LINES), st.data())
@example(TEMPLATE_LINES[0], None)
def test_a_line_a_template_matches_is_one_parse_line_takes_with_the_same_fields(text: str,
                                                                               data: st.DataObject | None) -> None:
    """A line that differs from a checked one only in its varying values (statistics) matches that line's
    Template, and parse_line takes it too, giving the fields the template gives: the collector and the
    parser trust a match instead of parsing (and the collector parses a lone matched line again)."""
    template = Template.of(text, parse_line(text))
    assert template is not None
    templates = Templates()
    templates.add(template)
    words = text.split(" ")
    new = {}
    for i, word in enumerate(words):
        key = word.partition(":")[0]
        if key in template.keys and ":" in word:
            value = "" if data is None else data.draw(tricky_values)
            new[key] = value
            words[i] = f"{key}:{value}"
    changed = " ".join(words)
    found = templates.find(changed)
    plain = all(not c.isspace() and c != ">" for v in new.values() for c in v)
    if found is None:  # a template is looked up by the line's first characters: a change there misses it
        assert not plain or template_key(changed) != template.key, (changed, new)
        return
    assert found[0] is template
    fields = dict(template.line.fields) | dict(zip(template.keys, found[1].groups(), strict=True))
    assert parse_line(changed).fields == fields

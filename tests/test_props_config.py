"""Property tests (hypothesis) on the configuration loader: any file is a Config or one ConfigError.

The base is every example block of the shipped ``conf/busd.toml`` (all built-in plugins, as an
operator starts from them); each example changes a few keys to anything TOML can hold, removes
them or adds unknown ones. The loader must name the file and the key of what it refuses, and
what it accepts must be usable by ``busctl config`` (masked tables, JSON).
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any

from conftest import ROOT
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from bus.config import Config, load
from bus.exceptions import ConfigError


def shipped_blocks() -> dict[str, dict[str, Any]]:
    """Every commented ``[plugins.NAME]`` block of conf/busd.toml (with its sub-tables), uncommented and parsed."""
    text = (ROOT / "conf" / "busd.toml").read_text()
    blocks = re.findall(r"^# \[plugins\.[^\]]+\]\n(?:#.*\n)+", text, re.M)
    doc = tomllib.loads("\n".join(re.sub(r"^# ?", "", b, flags=re.M) for b in blocks))
    return dict(doc["plugins"])


BASE_PLUGINS = shipped_blocks()

toml_scalars = (st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats() | st.text(max_size=16)
                | st.sampled_from(["", "info", "error", "raw", "synthetic", "*", "/", "1s", "-1", "webhook"]))
toml_values = st.recursive(toml_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=8)


def toml_str(text: str) -> str:
    """A TOML basic string (JSON's escapes, but astral characters as themselves, not surrogate pairs)."""
    return '"' + "".join(f"\\u{ord(c):04x}" if c < " " or c == "\x7f" or c in '"\\' else c for c in text) + '"'


def toml_text(value: Any) -> str:
    """Render a value as TOML (inline tables for nested maps; TOML's own ``nan`` and ``inf``)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_str(k)} = {toml_text(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_text(v) for v in value) + "]"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return toml_str(value) if isinstance(value, str) else json.dumps(value)


def toml_document(doc: dict[str, Any]) -> str:
    """Render ``{"main": {...}, "plugins": {name: {...}}}`` (or anything at the top) as a TOML file."""
    lines: list[str] = []
    for top, table in doc.items():
        if top == "plugins" and isinstance(table, dict) and all(isinstance(t, dict) for t in table.values()):
            for name, ptable in table.items():
                lines.append(f"[plugins.{toml_str(name)}]")
                lines += [f"{toml_str(k)} = {toml_text(v)}" for k, v in ptable.items()]
        elif isinstance(table, dict):
            lines.append(f"[{toml_str(top)}]")
            lines += [f"{toml_str(k)} = {toml_text(v)}" for k, v in table.items()]
        else:
            lines.insert(0, f"{toml_str(top)} = {toml_text(table)}")
    return "\n".join(lines) + "\n"


def mutate(draw: st.DrawFn, value: Any) -> Any:
    """``value`` changed: often within its own type (a nested key, a list item, another number), else anything."""
    near = draw(st.integers(0, 2)) < 2
    if near and isinstance(value, dict) and value:
        key = draw(st.sampled_from(sorted(value)))
        changed = dict(value)
        if draw(st.integers(0, 4)) == 0:
            del changed[key]
        else:
            changed[key] = mutate(draw, value[key])
        return changed
    if near and isinstance(value, list) and value:
        index = draw(st.integers(0, len(value) - 1))
        return [mutate(draw, v) if i == index else v for i, v in enumerate(value)]
    if near and isinstance(value, str):
        return draw(st.text(max_size=16) | st.sampled_from(["", " ", value + "x", value.upper(), "/nonexistent"]))
    if near and isinstance(value, (int, float)) and not isinstance(value, bool):
        return draw(st.sampled_from([0, -1, 1, 2**63 - 1, 0.5, -0.0, float("inf")]) | st.integers(-10, 10**6))
    return draw(toml_values)


@st.composite
def configurations(draw: st.DrawFn, tmp: Path) -> tuple[dict[str, Any], list[str]]:
    """A few shipped plugin blocks with a few keys changed; returns the document and the changed tables."""
    names = draw(st.lists(st.sampled_from(sorted(BASE_PLUGINS)), min_size=1, max_size=4, unique=True))
    main: dict[str, Any] = {"runtime_dir": str(tmp / "run"), "state_dir": str(tmp / "state"), "hostname": "h"}
    plugins = {name: json.loads(json.dumps(BASE_PLUGINS[name])) for name in names}
    changed: list[str] = []
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["main", *names]))
        table = main if where == "main" else plugins[where]
        prefix = "main" if where == "main" else f"plugins.{where}"  # shipped names are bare keys
        new_key = not table or draw(st.integers(0, 4)) == 0  # mostly a key the block has: deeper checks run
        key = draw(st.text(min_size=1, max_size=10)) if new_key else draw(st.sampled_from(sorted(table)))
        if draw(st.integers(0, 3)) == 0:
            table.pop(key, None)
        else:
            table[key] = mutate(draw, table[key]) if key in table else draw(toml_values)
        changed.append(prefix)
    if draw(st.integers(0, 19)) == 0:  # a plugin renamed to anything
        old = draw(st.sampled_from(names))
        new = draw(st.text(min_size=0, max_size=12))
        plugins[new] = plugins.pop(old)
        changed += [f"plugins.{new}", f"plugins.{json.dumps(new, ensure_ascii=False)}"]  # quoted unless bare
    return {"main": main, "plugins": plugins}, changed


def check_refusal(exc: ConfigError, conf: Path, changed: list[str]) -> None:
    """A refusal names this file and a key of a table that was changed (``main`` or ``plugins.NAME``)."""
    assert exc.file == str(conf) and str(exc).startswith(f"{conf}: ") and exc.reason, exc
    assert any(exc.key == table or exc.key.startswith(table + ".") for table in changed), (exc, changed)


def check_usable(config: Config) -> None:
    """What ``busctl config get`` and the supervisor read from an accepted configuration works."""
    for plugin in config.plugins.values():
        json.loads(plugin.table_json())
        plugin.masked_table()
        assert plugin.command() and all(isinstance(a, str) for a in plugin.command())
    config.secrets()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], max_examples=500)
@given(st.data())
def test_any_change_to_a_shipped_configuration_loads_or_names_file_and_key(tmp_path: Path, data: st.DataObject) -> None:
    """Changed, removed and unknown keys of any TOML type: a usable Config, or a ConfigError naming the
    file and a key of a changed table. No other exception escapes."""
    doc, changed = data.draw(configurations(tmp_path))
    conf = tmp_path / "busd.toml"
    conf.write_text(toml_document(doc))
    conf.chmod(0o600)  # shipped blocks may hold secrets: a file readable by everyone is refused for that
    try:
        config = load(conf)
    except ConfigError as exc:
        event("refused: " + exc.reason.split(" (")[0][:40])
        check_refusal(exc, conf, changed)
    else:
        event("accepted")
        check_usable(config)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.text(max_size=200) | st.dictionaries(st.text(max_size=8), toml_values, max_size=3).map(toml_document))
@example('[""]\n')  # an empty key: named '""', not left out of the message
@example('[plugins." x"]\ntype = "parser"\n')
@example("[main]\nhostname = 1\n")
@example("[plugins]\nx = 1\n")
@example("[[plugins]]\n")
@example("[main]\ninclude = ['*.toml', 3]\n")
@example('[plugins.a]\ntype = "parser"\nexec = []\n')
def test_any_text_loads_or_names_the_file(tmp_path: Path, text: str) -> None:
    """Arbitrary text or top-level tables: a ConfigError naming the file (and a key if it is TOML), never
    a traceback. The runtime dir is the test's own so a text that happens to be valid loads cleanly."""
    conf = tmp_path / "busd.toml"
    conf.write_text(f"[main]\nruntime_dir = {json.dumps(str(tmp_path / 'run'))}\n" if "[main]" not in text else "")
    with conf.open("a") as f:
        f.write(text)
    try:
        config = load(conf)
    except ConfigError as exc:
        assert exc.file == str(conf) and exc.reason, exc
        try:
            tomllib.loads(conf.read_text())
        except tomllib.TOMLDecodeError:
            assert "not valid TOML" in exc.reason
        else:
            assert exc.key, exc
    else:
        check_usable(config)

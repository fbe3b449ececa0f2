"""Unit tests of bus.confedit: locked, validated, atomic, comment-preserving configuration edits."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from bus import config
from bus.confedit import ConfigEditor, EditError, get_key, parse_value, set_key
from bus.exceptions import ConfigError

MAIN = """\
# busd configuration
# second header line

[main]
runtime_dir = "run"   # sockets live here
log_level = "info"

# the kernel log
[plugins.kmsg]   # collector
type = "collector"
builtin = "kmsg"

# a parser of the kernel log
[plugins.scsi]
type = "parser"
builtin = "scsi"
"""


@pytest.fixture(name="main")
def fixture_main(tmp_path: Path) -> Path:
    path = tmp_path / "busd.toml"
    path.write_text(MAIN)
    return path


def test_set_option_keeps_comments_and_layout(main: Path) -> None:
    editor = ConfigEditor(main)
    out = editor.set_option("kmsg.since_boot", parse_value("true"))
    editor.set_option("log_level", parse_value('"debug"'))
    editor.set_option("main.restart_delay", parse_value("2"))
    assert out.written == [main]
    assert out.reloaded is None and "busd is not running" in out.reload_message
    assert main.read_text() == MAIN.replace('log_level = "info"', 'log_level = "debug"\nrestart_delay = 2').replace(
        'builtin = "kmsg"\n', 'builtin = "kmsg"\nsince_boot = true\n')
    cfg = config.load(main)
    assert cfg.plugins["kmsg"].table["since_boot"] is True and cfg.main.log_level == "debug"


def test_bad_value_is_refused_with_busd_error_and_nothing_written(main: Path) -> None:
    before = main.read_bytes()
    editor = ConfigEditor(main)
    with pytest.raises(ConfigError) as err:
        editor.set_option("kmsg.since_boot", parse_value("3"))
    assert (err.value.file, err.value.key) == (str(main), "plugins.kmsg.since_boot")
    assert "must be a boolean" in err.value.reason
    with pytest.raises(ConfigError, match=r"main\.log_level: 'loud' is not one of"):
        editor.set_option("log_level", "loud")
    with pytest.raises(ConfigError, match="unknown key for built-in collector 'kmsg'"):
        editor.set_option("kmsg.no_such_option", 1)
    assert main.read_bytes() == before
    assert {p.name for p in main.parent.iterdir()} == {"busd.toml", "busd.toml.lock"}


def test_reset_option_removes_the_key_wherever_it_is(main: Path) -> None:
    editor = ConfigEditor(main, reload=False)
    editor.add_snippet("dbg", {"type": "receiver", "builtin": "debugger", "format": "json"})
    snippet = main.parent / "conf.d" / "dbg.toml"
    editor.set_option("dbg.format", "line")
    assert 'format = "line"' in snippet.read_text()
    editor.reset_option("dbg.format")
    editor.reset_option("log_level")
    assert "format" not in snippet.read_text() and "log_level" not in main.read_text()
    assert config.load(main).plugins["dbg"].table == {"type": "receiver", "builtin": "debugger"}
    assert not editor.reset_option("log_level").changed


def test_add_snippet_on_a_fresh_configuration_adds_main_and_include(tmp_path: Path) -> None:
    main = tmp_path / "busd.toml"
    main.write_text('# my busd\n\n# kernel\n[plugins.kmsg]\ntype = "collector"\nbuiltin = "kmsg"\n')
    main.chmod(0o600)
    editor = ConfigEditor(main)
    assert editor.snippet_dir == tmp_path / "conf.d"
    out = editor.add_snippet("dbg", {"type": "receiver", "builtin": "debugger", "filter": {"severity": "warn"}})
    snippet = tmp_path / "conf.d" / "dbg.toml"
    assert out.written == [snippet, main]
    assert main.read_text() == ('# my busd\n\n[main]\ninclude = ["conf.d/*.toml"]\n\n'
                                '# kernel\n[plugins.kmsg]\ntype = "collector"\nbuiltin = "kmsg"\n')
    assert snippet.read_text() == ('[plugins.dbg]\ntype = "receiver"\nbuiltin = "debugger"\n'
                                   'filter = {severity = "warn"}\n')
    assert stat.S_IMODE(snippet.stat().st_mode) == 0o600 and stat.S_IMODE(main.stat().st_mode) == 0o600
    cfg = config.load(main)
    assert cfg.plugins["dbg"].file == str(snippet)
    editor.set_option("dbg.filter.system", parse_value('["scsi", "block"]'))
    assert 'filter = {severity = "warn", system = ["scsi", "block"]}' in snippet.read_text()
    with pytest.raises(EditError, match="exists already"):
        editor.add_snippet("dbg", {"type": "receiver", "builtin": "debugger"})
    editor.add_snippet("dbg", {"type": "receiver", "builtin": "debugger", "format": "json"}, replace=True)
    assert config.load(main).plugins["dbg"].table["format"] == "json"


def test_missing_main_file_is_created(tmp_path: Path) -> None:
    main = tmp_path / "etc" / "busd.toml"
    ConfigEditor(main).add_snippet("dbg", {"type": "receiver", "builtin": "debugger"})
    assert main.read_text() == '[main]\ninclude = ["conf.d/*.toml"]\n\n'
    assert list(config.load(main).plugins) == ["dbg"]


def test_an_existing_include_glob_is_used(tmp_path: Path) -> None:
    main = tmp_path / "busd.toml"
    main.write_text('[main]\ninclude = ["plugins.d/*.conf"]\n')
    editor = ConfigEditor(main)
    editor.add_snippet("dbg", {"type": "receiver", "builtin": "debugger"})
    assert (tmp_path / "plugins.d" / "dbg.conf").exists()
    assert main.read_text() == '[main]\ninclude = ["plugins.d/*.conf"]\n'


def test_invalid_new_snippet_is_refused_and_not_created(main: Path) -> None:
    editor = ConfigEditor(main)
    with pytest.raises(ConfigError, match=r"conf\.d/bad\.toml: plugins\.bad\.builtin: no built-in receiver 'nope'"):
        editor.add_snippet("bad", {"type": "receiver", "builtin": "nope"})
    assert not (main.parent / "conf.d").exists() and main.read_text() == MAIN


def test_remove_snippet(main: Path) -> None:
    editor = ConfigEditor(main)
    editor.add_snippet("dbg", {"type": "receiver", "builtin": "debugger"})
    out = editor.remove_snippet("dbg")
    assert out.removed == [main.parent / "conf.d" / "dbg.toml"] and out.written == []
    editor.remove_snippet("scsi")  # a table in the main file: the table goes, the file stays
    assert list(config.load(main).plugins) == ["kmsg"]
    assert main.read_text().startswith("# busd configuration\n# second header line\n\n[main]\n")
    with pytest.raises(EditError, match="no plugin 'scsi'"):
        editor.remove_snippet("scsi")


def test_resolve_names(main: Path) -> None:
    editor = ConfigEditor(main)
    editor.add_snippet("a.b", {"type": "receiver", "exec": ["true"]})
    editor.add_snippet("main", {"type": "receiver", "exec": ["true"]})
    assert editor.resolve("log_level") == (None, ("log_level",))
    assert editor.resolve("main.log_level") == (None, ("log_level",))
    assert editor.resolve("kmsg.since_boot") == ("kmsg", ("since_boot",))
    assert editor.resolve("a.b.filter.severity") == ("a.b", ("filter", "severity"))
    assert editor.resolve("plugins.main.x") == ("main", ("x",))
    with pytest.raises(EditError, match="no plugin 'nope'"):
        editor.resolve("nope.x")
    with pytest.raises(EditError, match=r"names plugin 'a\.b'"):
        editor.resolve("a.b")
    with pytest.raises(EditError, match="not an option name"):
        editor.resolve("kmsg..x")


def test_parse_value() -> None:
    assert parse_value("true") is True
    assert parse_value("3") == 3 and parse_value("2.5") == 2.5
    assert parse_value('"x y"') == "x y" and parse_value("x y") == "x y"
    assert parse_value('["a", "b"]') == ["a", "b"]
    assert parse_value("http://host/x") == "http://host/x"
    assert parse_value("{ severity = \"warn\" }") == {"severity": "warn"}


def test_transaction_applies_several_changes_at_once(main: Path) -> None:
    editor = ConfigEditor(main)
    with editor.transaction() as tx:
        editor.set_option("kmsg.since_boot", True)
        editor.add_snippet("dbg", {"type": "receiver", "builtin": "debugger"})
        found = editor.find_plugin("dbg")
        assert found is not None
        path, table = found
        table["format"] = "json"
        set_key(tx.doc(path), ("plugins", "dbg", "flood_window"), 5)
    assert sorted(tx.outcome.written) == [main, main.parent / "conf.d" / "dbg.toml"]
    cfg = config.load(main)
    assert cfg.plugins["dbg"].table == {"type": "receiver", "builtin": "debugger", "format": "json", "flood_window": 5}
    assert cfg.plugins["kmsg"].table["since_boot"] is True
    # a failing transaction writes nothing, even what was fine before the bad change
    before = {p: p.read_bytes() for p in (main, path)}
    with pytest.raises(ConfigError), editor.transaction():
        editor.set_option("kmsg.since_boot", False)
        editor.set_option("dbg.format", "yaml")
    assert {p: p.read_bytes() for p in (main, path)} == before


def test_edit_returns_the_function_value(main: Path) -> None:
    editor = ConfigEditor(main)

    def change(doc: object) -> str:
        set_key(doc, ("plugins", "scsi", "filter"), {"system": ["kmsg"]})
        return "done"

    out = editor.edit(main, change)
    assert out.value == "done" and out.written == [main]
    assert get_key(editor.doc(main), ("plugins", "scsi", "filter", "system")) == ["kmsg"]


def test_concurrent_editors_never_lose_a_change(main: Path) -> None:
    ConfigEditor(main).add_snippet("x", {"type": "receiver", "exec": ["true"]})
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for j in range(5):
                ConfigEditor(main).set_option(f"x.k{i}", j)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    table = config.load(main).plugins["x"].table
    assert {k: table[k] for k in table if k.startswith("k")} == {f"k{i}": 4 for i in range(8)}
    assert not [n for n in os.listdir(main.parent / "conf.d") if n.endswith(".tmp")]

"""``busctl config get|set|reset`` and ``busctl ls|cat|edit|enable|disable|rm``: configuration from the command line.

Every change goes through :mod:`bus.confedit`: locked, validated as a whole by busd's own loader
before anything is written, written atomically with comments kept, then applied by a reload.
Exit status: 0 done (also when busd is not running: the change applies at its next start);
1 written but busd refused the reload, or an edit abandoned; 2 refused (nothing written).
"""

from __future__ import annotations

import importlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from bus.cli import ConfigOpt, _ctl_options, _fail
from bus.confedit import ConfigEditor, EditError, Outcome, format_value, get_key, parse_value, plugin_text
from bus.config import MAIN_OPTIONS, RESERVED_KEYS, Config, Option, builtin_module, default_path, load, sdk_options
from bus.exceptions import ConfigError

config_app = typer.Typer(no_args_is_help=True, help="Read and change daemon and plugin options.")
snippets_app = typer.Typer(help="Plugin snippets in conf.d/.")

JsonOpt = Annotated[bool, typer.Option("--json", help="machine-readable output")]
_UNSET: Any = None
_KEEP_ON_RESET_ALL = ("include", "runtime_dir")  # where snippets and sockets are: not a tunable


def _path(config: str | None) -> str:
    return config or _ctl_options["config"] or default_path()


def _editor(config: str | None) -> ConfigEditor:
    return ConfigEditor(_path(config), timeout=max(_ctl_options["timeout"], 30.0))


def _load(editor: ConfigEditor) -> Config:
    try:
        return load(editor.main_path)
    except ConfigError as exc:
        raise _fail(str(exc)) from None


def _report(out: Outcome) -> None:
    """Print what a change did; exit 1 when busd refused the reload."""
    if not out.changed:
        typer.echo("unchanged: nothing written")
        return
    typer.echo(out.describe())
    if out.reloaded is False:
        raise typer.Exit(1)


def _apply(fn: Any, *args: Any) -> None:
    """Run one editor change, turning refusals into busd's own message and exit status 2."""
    try:
        out = fn(*args)
    except ConfigError as exc:
        raise _fail(f"refused, nothing written: {exc}") from None
    except EditError as exc:
        raise _fail(str(exc)) from None
    _report(out)


# -- option listing --------------------------------------------------------------------------------

def _entry(name: str, value: Any, default: Any, file: Path | None, help_text: str) -> dict[str, Any]:
    return {"name": name, "value": value, "default": default, "file": str(file) if file else None,
            "help": help_text}


def _main_entries(editor: ConfigEditor, cfg: Config) -> list[dict[str, Any]]:
    out = []
    for key, opt in MAIN_OPTIONS.items():
        files = editor.defined_in(None, (key,))
        value = editor.include() if key == "include" else getattr(cfg.main, key)
        out.append(_entry(f"main.{key}", value, opt.default, files[-1] if files else None, opt.help))
    return out


def _plugin_options(cfg: Config, name: str) -> dict[str, Option]:
    p = cfg.plugins[name]
    options: dict[str, Option] = {}
    if p.builtin is not None:
        options.update(getattr(importlib.import_module(builtin_module(p.type, p.builtin)), "OPTIONS", {}))
    options.update(sdk_options(p.type))
    return options


def _plugin_entries(editor: ConfigEditor, cfg: Config, name: str) -> list[dict[str, Any]]:
    p = cfg.plugins[name]
    options = _plugin_options(cfg, name)
    reserved = {"type": Option(str, _UNSET, "collector, parser or receiver"),
                "builtin" if p.builtin is not None else "exec": Option(str, _UNSET, "what runs"),
                "enabled": Option(bool, True, "false: configured but not started"),
                "filter": Option(dict, _UNSET, "which events reach it")}
    if p.type == "collector":
        del reserved["filter"]
    keys = [*reserved, *options, *(k for k in p.table if k not in reserved and k not in options)]
    shown = p.masked_table()  # secrets are never printed, not even to root: `busctl config cat` shows the file
    out = []
    for key in keys:
        opt = reserved.get(key) or options.get(key)
        default = None if opt is None or opt.default is Option.REQUIRED else opt.default
        files = editor.defined_in(name, (key,))
        if key == "filter" and p.builtin is not None:  # a built-in parser's own default filter
            default = getattr(importlib.import_module(builtin_module(p.type, p.builtin)), "FILTER", None)
        value = shown.get(key, default)
        out.append(_entry(f"{name}.{key}", value, default, files[-1] if files else None, opt.help if opt else ""))
    return out


def _single(editor: ConfigEditor, cfg: Config, name: str) -> dict[str, Any]:
    plugin, keys = editor.resolve(name)
    if plugin is None:
        entries = {e["name"]: e for e in _main_entries(editor, cfg)}
        key = f"main.{'.'.join(keys)}"
        if key not in entries:
            raise EditError(f"{name!r}: no such key in [main] (keys: {', '.join(MAIN_OPTIONS)})")
        return dict(entries[key])
    if plugin not in cfg.plugins:
        raise EditError(f"{name!r}: no plugin {plugin!r} in the configuration")
    entries = {e["name"]: e for e in _plugin_entries(editor, cfg, plugin)}
    full = f"{plugin}.{'.'.join(keys)}"
    if full in entries:
        return dict(entries[full])
    value = get_key(cfg.plugins[plugin].masked_table(), keys)
    if len(keys) > 1 and value is not None:  # inside a table, e.g. filter.severity
        files = editor.defined_in(plugin, keys)
        return _entry(full, value, None, files[-1] if files else None, "")
    raise EditError(f"{name!r}: plugin {plugin!r} has no option {'.'.join(keys)!r} "
                    f"(options: {', '.join(e.rsplit('.', 1)[-1] for e in entries)})")


def _print_entries(entries: list[dict[str, Any]]) -> None:
    lines = [(f"{e['name']} = {'(unset)' if e['value'] is None else format_value(e['value'])}",
              e["file"] or "default") for e in entries]
    width = max((len(a) for a, _ in lines), default=0)
    for left, right in lines:
        typer.echo(f"{left:{width}}  # {right}")


@config_app.command("get")
def config_get(
    name: Annotated[str | None, typer.Argument(help="main, a [main] key, a plugin, or PLUGIN.KEY; all if omitted")] = None,
    config: ConfigOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Show options with their values in effect after a reload (defaults included) and the file setting each.

    One key prints just its value (TOML); ``--json`` prints ``{NAME: {value, default, file, help}}``.
    """
    editor = _editor(config)
    cfg = _load(editor)
    try:
        if name is None or name == "main":
            entries = _main_entries(editor, cfg)
            if name is None:
                for plugin in cfg.plugins:
                    entries += _plugin_entries(editor, cfg, plugin)
        elif name in cfg.plugins and name not in MAIN_OPTIONS:
            entries = _plugin_entries(editor, cfg, name)
        else:
            entry = _single(editor, cfg, name)
            if json_out:
                typer.echo(json.dumps({entry.pop("name"): entry}, indent=2, default=str))
            elif entry["value"] is not None:
                typer.echo(format_value(entry["value"]))
            return
    except EditError as exc:
        raise _fail(str(exc)) from None
    if json_out:
        typer.echo(json.dumps({e.pop("name"): e for e in entries}, indent=2, default=str))
    else:
        _print_entries(entries)


@config_app.command("set")
def config_set(
    name: Annotated[str, typer.Argument(help="a [main] key (log_level, main.log_level) or PLUGIN.KEY")],
    value: Annotated[str, typer.Argument(help="a TOML value (true, 3, '\"x\"', '[\"a\",\"b\"]'); anything else is a string")],
    string: Annotated[bool, typer.Option("--string", "-s", help="take VALUE as a string, even 'true' or '3'")] = False,
    config: ConfigOpt = None,
) -> None:
    """Set an option where it is defined now (else in the plugin's snippet or [main]); validate; reload."""
    editor = _editor(config)
    _apply(editor.set_option, name, value if string else parse_value(value))


@config_app.command("reset")
def config_reset(
    name: Annotated[str, typer.Argument(help="a [main] key, PLUGIN.KEY, a PLUGIN (all its own options), or 'all'")],
    config: ConfigOpt = None,
) -> None:
    """Remove an option so its default applies.

    ``all`` resets every [main] key except ``include`` and ``runtime_dir`` (busd cannot move its
    sockets on a reload, and the include line is what finds the snippets); a plugin name resets
    every option of that plugin but not ``type``, ``builtin``/``exec``, ``filter`` and ``enabled``.
    """
    editor = _editor(config)
    if name == "all":
        keys = [f"main.{k}" for k in MAIN_OPTIONS if k not in _KEEP_ON_RESET_ALL]
    elif name in editor.plugins() and name not in MAIN_OPTIONS:
        keys = [f"plugins.{name}.{k}" for f in editor.plugins()[name]
                for k in (get_key(editor.doc(f), ("plugins", name)) or {}) if k not in RESERVED_KEYS]
    else:
        keys = [name]

    def reset_all() -> Outcome:
        with editor.transaction() as tx:
            for key in keys:
                editor.reset_option(key)
        return tx.outcome

    _apply(reset_all)


# -- snippets --------------------------------------------------------------------------------------

@snippets_app.command("ls")
def ls(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """List the plugin instances of the configuration on disk: file, type, builtin or exec, enabled."""
    cfg = _load(_editor(config))
    rows = [{"name": p.name, "type": p.type, "builtin": p.builtin, "exec": list(p.exec or ()) or None,
             "enabled": p.enabled, "file": p.file} for p in cfg.plugins.values()]
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    for p in cfg.plugins.values():
        what = f"builtin {p.builtin}" if p.builtin else "exec " + shlex.join(p.exec or ())
        typer.echo(f"{p.name:20} {p.type:9} {what:30} {'enabled' if p.enabled else 'disabled':8} {p.file}")


def _plugin_text(editor: ConfigEditor, file: Path, name: str) -> str:
    """The whole file when it holds only this plugin, else just the plugin's table."""
    doc = editor.doc(file)
    others = [k for k in doc if k != "plugins"] + [k for k in doc.get("plugins", {}) if k != name]
    if not others:
        return file.read_text()
    return plugin_text(name, doc["plugins"][name])


@snippets_app.command("cat")
def cat(name: Annotated[str, typer.Argument(help="plugin instance")], config: ConfigOpt = None) -> None:
    """Print the snippet of a plugin instance (only its table when it shares a file), with the file's name."""
    editor = _editor(config)
    files = editor.plugins().get(name)
    if not files:
        raise _fail(f"no plugin {name!r} in the configuration")
    for i, file in enumerate(files):
        text = _plugin_text(editor, file, name)
        typer.echo(("\n" if i else "") + f"# {file}\n" + text.rstrip("\n"))


_TEMPLATE = """\
# New plugin instance {name}: fill in the table, save and quit (an unchanged file writes nothing).
[plugins.{name}]
type = "receiver"            # collector, parser or receiver
builtin = "debugger"         # a plugin shipped with busd (busctl ls shows the configured ones), or:
# exec = ["/usr/local/bin/my-plugin"]
"""


def _run_editor(text: str, name: str) -> str | None:
    """Open $VISUAL/$EDITOR on a temporary copy of ``text``; return the result (``None``: editor failed)."""
    command = shlex.split(os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi")
    fd, tmp = tempfile.mkstemp(prefix=f"busctl-{name}-", suffix=".toml")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        try:
            rc = subprocess.run([*command, tmp], check=False).returncode
        except OSError as exc:
            typer.secho(f"error: cannot run the editor {command[0]!r}: {exc}", err=True, fg=typer.colors.RED)
            return None
        if rc != 0:
            typer.secho(f"error: the editor exited with status {rc}; nothing written", err=True, fg=typer.colors.RED)
            return None
        return Path(tmp).read_text()
    finally:
        os.unlink(tmp)


@snippets_app.command("edit")
def edit(name: Annotated[str, typer.Argument(help="plugin instance (a new name starts a new snippet)")],
         config: ConfigOpt = None) -> None:
    """Edit the file of a plugin instance in $VISUAL/$EDITOR; it is written only when the whole configuration is valid.

    On an invalid result the error is shown and, on a terminal, the edit can start again from
    what was typed; without a terminal busctl exits 2 and writes nothing.
    """
    editor = _editor(config)
    found = editor.find_plugin(name)
    path = found[0] if found else editor.snippet_path(name)
    before = path.read_text() if path.exists() else None
    if found is None and before is not None:
        raise _fail(f"{path} exists but does not define plugin {name!r}; edit it by hand")
    start = before if before is not None else _TEMPLATE.format(name=name)
    text = start
    while True:
        edited = _run_editor(text, name)
        if edited is None:
            raise typer.Exit(1)
        if edited == start:
            typer.echo("unchanged: nothing written")
            return
        try:
            with editor.transaction() as tx:
                if tx.original(path) != before:
                    raise EditError(f"{path} was changed by someone else meanwhile; nothing written, edit again")
                tx.write_text(path, edited)
                if before is None:
                    editor.ensure_include()
        except EditError as exc:
            raise _fail(str(exc), 1) from None
        except ConfigError as exc:
            typer.secho(f"error: refused, nothing written: {exc}", err=True, fg=typer.colors.RED)
            if sys.stdin.isatty() and typer.confirm("edit again?", default=True):
                text = edited
                continue
            raise typer.Exit(2) from None
        _report(tx.outcome)
        return


def _set_enabled(config: str | None, name: str, enabled: bool) -> None:
    editor = _editor(config)
    cfg = _load(editor)
    if name not in cfg.plugins:
        raise _fail(f"no plugin {name!r} in the configuration")
    if cfg.plugins[name].enabled == enabled:
        typer.echo(f"{name} is already {'enabled' if enabled else 'disabled'}: nothing written")
        return
    _apply(editor.set_option, f"plugins.{name}.enabled", enabled)


@snippets_app.command("enable")
def enable(name: Annotated[str, typer.Argument(help="plugin instance")], config: ConfigOpt = None) -> None:
    """Set ``enabled = true`` for a plugin instance (busd starts it on the reload)."""
    _set_enabled(config, name, True)


@snippets_app.command("disable")
def disable(name: Annotated[str, typer.Argument(help="plugin instance")], config: ConfigOpt = None) -> None:
    """Set ``enabled = false`` for a plugin instance: it stays configured but busd stops it."""
    _set_enabled(config, name, False)


@snippets_app.command("rm")
def rm(name: Annotated[str, typer.Argument(help="plugin instance")], config: ConfigOpt = None) -> None:
    """Remove a plugin instance: its snippet is deleted (or its table removed from a shared file)."""
    _apply(_editor(config).remove_snippet, name)

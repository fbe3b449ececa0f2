"""Configuration: TOML with ``include`` snippets, every key validated with its file and reason."""

from __future__ import annotations

import glob
import grp
import importlib
import json
import os
import pkgutil
import re
import shlex
import socket
import stat
import sys
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

from bus.exceptions import ConfigError
from bus.filter import Filter, FilterError
from bus.log import LEVELS
from bus.protocol import IPC_PATH_MAX, QUEUE_BYTES, REPLAY_BYTES
from bus.secrets import mask, secret_values

__all__ = [
    "PLUGIN_TYPES",
    "SDK_OPTIONS",
    "SDK_OPTION_TYPES",
    "Config",
    "MainConfig",
    "Option",
    "PluginConfig",
    "builtin_filter",
    "builtin_module",
    "check_table",
    "default_path",
    "default_runtime_dir",
    "default_state_dir",
    "load",
    "sdk_options",
]

PLUGIN_TYPES = ("collector", "parser", "receiver")
_PACKAGES = {"collector": "collectors", "parser": "parsers", "receiver": "receivers"}
_RESERVED = ("type", "builtin", "exec", "filter", "enabled")
RESERVED_KEYS = _RESERVED
"""The keys of a plugin table that busd itself uses; every other key is the plugin's own option."""
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")
_REQUIRED: Any = object()
_DEFAULT_KINDS = {"parser": ("raw",), "receiver": ("synthetic",)}


def _key(name: str) -> str:
    """``name`` as it goes into an error's key path: quoted as TOML quotes it if it is empty or not bare."""
    return name if _BARE_KEY.match(name) else json.dumps(name, ensure_ascii=False)


@dataclass(frozen=True)
class Option:
    """One option of a built-in plugin: its type, default and help text.

    ``default=Option.REQUIRED`` makes it mandatory; ``choices`` restricts the values.
    """

    type: type | tuple[type, ...]
    default: Any
    help: str = ""
    choices: tuple[Any, ...] = ()

    REQUIRED = _REQUIRED

    def check(self, value: Any) -> str | None:
        """Return why ``value`` is refused, or ``None`` when it is fine."""
        types = self.type if isinstance(self.type, tuple) else (self.type,)
        if float in types and isinstance(value, int) and not isinstance(value, bool):
            return None
        if isinstance(value, bool) and bool not in types:
            return f"must be {_type_names(types)}, not a boolean"
        if not isinstance(value, types):
            return f"must be {_type_names(types)}, not {_toml_type(value)}"
        if self.choices and value not in self.choices:
            return f"{value!r} is not one of {', '.join(map(str, self.choices))}"
        return None


def _type_names(types: tuple[type, ...]) -> str:
    return " or ".join(_toml_type_name(t) for t in types)


def _toml_type_name(t: type) -> str:
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "an array",
            dict: "a table"}.get(t, t.__name__)


def _toml_type(value: Any) -> str:
    return _toml_type_name(type(value)) if not isinstance(value, (list, dict)) else _toml_type_name(
        list if isinstance(value, list) else dict)


SDK_OPTIONS: dict[str, Option] = {
    "flood_window": Option((int, float), 0.0, "receivers: seconds in which repeats of one (event_type, device) "
                                               "are collapsed into the first event plus a count (0: off)"),
    "publish_linger": Option((int, float), 0.025, "collectors and parsers: seconds an event published with emit() "
                                                   "may wait for company (lower: less latency, more CPU)"),
}
"""Options the SDK implements, built-in plugin or not; :data:`SDK_OPTION_TYPES` says which plugins take each."""
SDK_OPTION_TYPES: dict[str, tuple[str, ...]] = {"flood_window": ("receiver",),
                                                "publish_linger": ("collector", "parser")}


def sdk_options(ptype: str) -> dict[str, Option]:
    """Return the SDK options a plugin of type ``ptype`` takes."""
    return {k: o for k, o in SDK_OPTIONS.items() if ptype in SDK_OPTION_TYPES[k]}

_MAIN_OPTIONS: dict[str, Option] = {
    "runtime_dir": Option(str, None, "where the ipc:// sockets live"),
    "socket_group": Option(str, "", "group owning the runtime dir (0750) and its sockets (0660): its members "
                                    "may run busctl, bus-emit, bus-tail and outside plugins; empty: busd's own group"),
    "state_dir": Option(str, None, "where stateful plugins keep their files, one subdirectory each "
                                   "(history, outboxes, the kmsg cursor)"),
    "hostname": Option(str, None, "host name put in events"),
    "log_level": Option(str, "info", "daemon log level", LEVELS),
    "include": Option(list, [], "globs of snippets, relative to the main file"),
    "replay_buffer": Option(int, 100_000, "published events kept per kind for replay"),
    "replay_buffer_bytes": Option(int, REPLAY_BYTES, "bytes of published events kept per kind for replay "
                                                    "(whichever bound comes first)"),
    "parser_queue": Option(int, 100_000, "events kept per parser until acknowledged"),
    "parser_queue_bytes": Option(int, QUEUE_BYTES, "bytes of events kept per parser until acknowledged "
                                                   "(producers are held back at half)"),
    "dedup_window": Option(int, 50_000, "recent event ids remembered to drop resends"),
    "restart_delay": Option(float, 0.5, "first restart delay of a crashed plugin, seconds"),
    "restart_delay_max": Option(float, 30.0, "longest restart delay, seconds"),
    "max_fast_crashes": Option(int, 5, "fast crashes in a row before a plugin is marked failed"),
    "min_uptime": Option(float, 10.0, "a run shorter than this is a fast crash, seconds"),
    "stop_timeout": Option(float, 1.5, "SIGTERM to SIGKILL delay when stopping a plugin, seconds"),
}
MAIN_OPTIONS = _MAIN_OPTIONS
"""The keys of ``[main]`` (``busctl config get`` lists them with their defaults)."""


def default_path() -> str:
    """Return ``$BUSD_CONFIG`` or ``/etc/busd/busd.toml``."""
    return os.environ.get("BUSD_CONFIG") or "/etc/busd/busd.toml"


def default_runtime_dir() -> str:
    """Return ``/run/busd`` as root, else ``$XDG_RUNTIME_DIR/busd``, else ``/tmp/busd-UID``."""
    if os.geteuid() == 0:
        return "/run/busd"
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return f"{xdg}/busd" if xdg else f"/tmp/busd-{os.geteuid()}"


def default_state_dir() -> str:
    """Return ``$STATE_DIRECTORY`` (systemd's ``StateDirectory=``), else ``/var/lib/busd`` as root,
    else ``$XDG_STATE_HOME/busd`` (``~/.local/state/busd``)."""
    systemd = os.environ.get("STATE_DIRECTORY")
    if systemd:
        return systemd.split(":")[0]  # systemd lists one path per StateDirectory= entry
    if os.geteuid() == 0:
        return "/var/lib/busd"
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return f"{base}/busd"


@dataclass(frozen=True)
class MainConfig:
    """The ``[main]`` table with defaults applied."""

    runtime_dir: str
    hostname: str
    state_dir: str = ""
    socket_group: str = ""
    log_level: str = "info"
    replay_buffer: int = 100_000
    replay_buffer_bytes: int = REPLAY_BYTES
    parser_queue: int = 100_000
    parser_queue_bytes: int = QUEUE_BYTES
    dedup_window: int = 50_000
    restart_delay: float = 0.5
    restart_delay_max: float = 30.0
    max_fast_crashes: int = 5
    min_uptime: float = 10.0
    stop_timeout: float = 1.5


@dataclass(frozen=True)
class PluginConfig:
    """One ``[plugins.NAME]`` table."""

    name: str
    type: str
    table: dict[str, Any]
    file: str
    builtin: str | None = None
    exec: tuple[str, ...] | None = None
    filter: Filter = field(default_factory=Filter)
    enabled: bool = True

    def command(self) -> list[str]:
        """Return the argv that starts this plugin."""
        if self.exec is not None:
            return list(self.exec)
        assert self.builtin is not None
        return [sys.executable, "-m", builtin_module(self.type, self.builtin)]

    def masked_table(self) -> dict[str, Any]:
        """Return the table with its secrets shown as ``"***"`` (:func:`bus.secrets.mask`): what may be
        printed or logged."""
        return mask(self.table, builtin_secret_keys(self.type, self.builtin))

    def secrets(self) -> set[str]:
        """Return the secret strings of the table (what the log scrubber hides, :func:`bus.log.hide_secrets`)."""
        return secret_values(self.table, builtin_secret_keys(self.type, self.builtin))

    def table_json(self) -> str:
        """Return the table as JSON, the value of ``BUS_PLUGIN_CONFIG``."""
        return json.dumps(self.table, default=str)


@dataclass(frozen=True)
class Config:
    """A complete, validated configuration."""

    path: str
    main: MainConfig
    plugins: dict[str, PluginConfig]
    files: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def secrets(self) -> set[str]:
        """Return the secret strings of every plugin's table."""
        return set().union(*(p.secrets() for p in self.plugins.values()))


def builtin_module(plugin_type: str, builtin: str) -> str:
    """Return the module that implements a built-in plugin, e.g. ``parsers.scsi``."""
    return f"{_PACKAGES[plugin_type]}.{builtin}"


def builtin_secret_keys(plugin_type: str, builtin: str | None) -> tuple[str, ...]:
    """Return a built-in plugin's own secret keys (its ``SECRET_OPTIONS``), beyond :data:`bus.secrets.SECRET_KEYS`."""
    if builtin is None:
        return ()
    return tuple(getattr(importlib.import_module(builtin_module(plugin_type, builtin)), "SECRET_OPTIONS", ()))


def builtin_filter(plugin_type: str, builtin: str) -> Any:
    """Return a built-in plugin's default filter (its module's ``FILTER`` map), or ``None``."""
    return getattr(importlib.import_module(builtin_module(plugin_type, builtin)), "FILTER", None)


def builtins(plugin_type: str) -> list[str]:
    """Return the names of the built-in plugins of a type."""
    pkg = importlib.import_module(_PACKAGES[plugin_type])
    return sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if not m.name.startswith("_"))


Overrides = Mapping[str, str | None]
"""File texts that stand in for the files on disk: absolute path to text, ``None`` for a removed file."""


def _read_toml(path: Path, overrides: Overrides | None = None) -> dict[str, Any]:
    key = os.path.normpath(path)
    try:
        if overrides and key in overrides:
            text = overrides[key]
            if text is None:
                raise FileNotFoundError(key)
            return tomllib.loads(text)
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(str(path), "", "file not found") from None
    except PermissionError:
        raise ConfigError(str(path), "", "permission denied") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), "", f"not valid TOML: {exc}") from None


class _Merged:
    """The main file and its snippets merged, remembering which file set each key."""

    def __init__(self) -> None:
        self.main: dict[str, Any] = {}
        self.main_origin: dict[str, str] = {}
        self.plugins: dict[str, dict[str, Any]] = {}
        self.plugin_origin: dict[str, str] = {}

    def add(self, path: Path, data: dict[str, Any], *, is_main: bool) -> None:
        file = str(path)
        for key, value in data.items():
            if key == "main":
                if not isinstance(value, dict):
                    raise ConfigError(file, "main", "must be a table")
                if not is_main and "include" in value:
                    raise ConfigError(file, "main.include", "only the main file may include snippets")
                for k, v in value.items():
                    self.main[k] = v
                    self.main_origin[k] = file
            elif key == "plugins":
                if not isinstance(value, dict):
                    raise ConfigError(file, "plugins", "must be a table of plugin tables")
                for name, table in value.items():
                    if not isinstance(table, dict):
                        raise ConfigError(file, f"plugins.{_key(name)}", "must be a table")
                    self.plugins.setdefault(name, {}).update(table)
                    self.plugin_origin[name] = file
            else:
                raise ConfigError(file, _key(key), "unknown top-level key (allowed: main, plugins)")


def expand_include(main_path: Path, pattern: str, overrides: Overrides | None = None) -> list[str]:
    """Return the snippets an include glob of ``main_path`` matches, seeing ``overrides`` as if on disk."""
    if not os.path.isabs(pattern):
        pattern = str(main_path.parent / pattern)
    matches = sorted(glob.glob(pattern))
    if not overrides:
        return matches
    found = {os.path.normpath(m): m for m in matches}
    for file, text in overrides.items():
        if text is None:
            found.pop(file, None)
        elif file not in found and PurePath(file).match(os.path.normpath(pattern)):
            found[file] = file
    return sorted(found.values())


def load(path: str | os.PathLike[str], *, overrides: Overrides | None = None) -> Config:
    """Read, merge and validate a configuration file and its includes.

    ``overrides`` (absolute path to text, or to ``None`` for a removed file) validates a
    configuration as it would be after an edit, before anything is written (``bus.confedit``).

    Raises:
        ConfigError: naming the file, the key and the reason for the first problem found.
    """
    main_path = Path(path).absolute()
    merged = _Merged()
    overrides = {os.path.normpath(k): v for k, v in overrides.items()} if overrides else None
    merged.add(main_path, _read_toml(main_path, overrides), is_main=True)
    files = [str(main_path)]
    warnings: list[str] = []
    include = merged.main.get("include", [])
    if not isinstance(include, list) or not all(isinstance(g, str) for g in include):
        raise ConfigError(str(main_path), "main.include", "must be an array of glob strings")
    for pattern in include:
        matches = expand_include(main_path, pattern, overrides)
        if not matches:
            warnings.append(f"{main_path}: main.include: {pattern!r} matches no file")
        for snippet in matches:
            snippet_path = Path(snippet)
            merged.add(snippet_path, _read_toml(snippet_path, overrides), is_main=False)
            files.append(snippet)
    main = _build_main(merged, main_path.parent)
    plugins = {name: _build_plugin(name, table, merged.plugin_origin[name])
               for name, table in merged.plugins.items()}
    longest = max((len(n) for n in plugins), default=0)
    if len(main.runtime_dir) + len("/ingest/.sock") + longest > IPC_PATH_MAX:
        raise ConfigError(merged.main_origin.get("runtime_dir", str(main_path)), "main.runtime_dir",
                          f"{main.runtime_dir!r} is too long for ipc:// socket paths "
                          f"({IPC_PATH_MAX} bytes with the longest plugin name)")
    return Config(str(main_path), main, plugins, tuple(files), tuple(warnings))


def peek_main(path: str | os.PathLike[str]) -> MainConfig:
    """Return only the ``[main]`` settings of a configuration, without validating the plugins.

    The command-line tools use this to find a running daemon even when the file on disk has
    since been broken by an edit (the daemon keeps its old configuration until a good reload).

    Raises:
        ConfigError: the main file cannot be read or its ``[main]`` table is wrong.
    """
    main_path = Path(path).absolute()
    merged = _Merged()
    data = _read_toml(main_path)
    merged.add(main_path, {"main": data.get("main", {})}, is_main=True)
    return _build_main(merged, main_path.parent)


def _build_main(merged: _Merged, base: Path) -> MainConfig:
    values: dict[str, Any] = {}
    for key, value in merged.main.items():
        file = merged.main_origin[key]
        opt = _MAIN_OPTIONS.get(key)
        if opt is None:
            raise ConfigError(file, f"main.{_key(key)}", f"unknown key (allowed: {', '.join(_MAIN_OPTIONS)})")
        reason = opt.check(value)
        if reason:
            raise ConfigError(file, f"main.{key}", reason)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value <= 0:
            raise ConfigError(file, f"main.{key}", f"must be positive, got {value}")
        if key != "include":
            values[key] = float(value) if opt.type is float else value
    # a relative runtime_dir is relative to the main file, like include globs
    values["runtime_dir"] = os.path.normpath(base / (values.get("runtime_dir") or default_runtime_dir()))
    values["state_dir"] = os.path.normpath(base / (values.get("state_dir") or default_state_dir()))
    if values.get("socket_group"):
        _group_id(merged.main_origin["socket_group"], values["socket_group"])
    values.setdefault("hostname", socket.gethostname())
    if not values["hostname"]:
        raise ConfigError(merged.main_origin.get("hostname", ""), "main.hostname", "must not be empty")
    return MainConfig(**values)


def _group_id(file: str, group: str) -> int:
    try:
        return int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(file, "main.socket_group", f"no group {group!r} on this machine "
                                                     f"(create it: groupadd --system {group})") from None


def socket_gid(main: MainConfig) -> int | None:
    """Return the group id of ``main.socket_group`` (``None``: unset, busd's own group)."""
    return _group_id("", main.socket_group) if main.socket_group else None


def check_runtime_dir(config: Config) -> None:
    """Refuse a runtime dir that everyone may write to (anyone could replace busd's sockets with their own).

    Raises:
        ConfigError: on ``main.runtime_dir``, naming the directory and its mode.
    """
    path = config.main.runtime_dir
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return  # busd creates it, mode 0750
    except OSError as exc:
        raise ConfigError(config.path, "main.runtime_dir", f"cannot use {path}: {exc.strerror}") from None
    if mode & stat.S_IWOTH:
        raise ConfigError(config.path, "main.runtime_dir",
                          f"{path} is writable by everyone (mode {stat.S_IMODE(mode):04o}): any user could "
                          f"replace busd's sockets; use a directory of its own (/run/busd, systemd's "
                          f"RuntimeDirectory=) or chmod o-w {path}")


def _build_plugin(name: str, table: dict[str, Any], file: str) -> PluginConfig:
    key = f"plugins.{_key(name)}"
    if not _NAME.match(name):
        raise ConfigError(file, key, "plugin names are letters, digits, '_', '-' and '.', at most 64")
    ptype = table.get("type")
    if ptype is None:
        raise ConfigError(file, f"{key}.type", f"is missing (one of {', '.join(PLUGIN_TYPES)})")
    if ptype not in PLUGIN_TYPES:
        raise ConfigError(file, f"{key}.type", f"{ptype!r} is not one of {', '.join(PLUGIN_TYPES)}")
    builtin, argv = table.get("builtin"), table.get("exec")
    if (builtin is None) == (argv is None):
        raise ConfigError(file, key, "needs exactly one of 'builtin' (a shipped plugin) or 'exec' (a command)")
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(file, f"{key}.enabled", "must be a boolean")
    if "filter" in table and ptype == "collector":
        raise ConfigError(file, f"{key}.filter", "collectors take no filter (they produce, not consume)")
    for opt_key, opt in SDK_OPTIONS.items():
        if opt_key in table:
            if ptype not in SDK_OPTION_TYPES[opt_key]:
                takers = " and ".join(f"{t}s" for t in SDK_OPTION_TYPES[opt_key])
                raise ConfigError(file, f"{key}.{opt_key}", f"only {takers} take this option")
            reason = opt.check(table[opt_key])
            if reason:
                raise ConfigError(file, f"{key}.{opt_key}", reason)
    exec_argv: tuple[str, ...] | None = None
    if argv is not None:
        if isinstance(argv, str):
            argv = shlex.split(argv)
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise ConfigError(file, f"{key}.exec", "must be a non-empty array of strings (or a command line)")
        exec_argv = tuple(argv)
    else:
        if not isinstance(builtin, str):
            raise ConfigError(file, f"{key}.builtin", "must be a string")
        known = builtins(ptype)
        if builtin not in known:
            raise ConfigError(file, f"{key}.builtin",
                              f"no built-in {ptype} {builtin!r} (built-in {ptype}s: {', '.join(known) or 'none'})")
        _check_builtin_options(file, key, ptype, builtin, table)
    spec = table.get("filter")
    if spec is None and builtin is not None:
        # a built-in parser knows which raw events it understands, so its table may omit the filter
        spec = builtin_filter(ptype, builtin)
    try:
        flt = Filter.parse(spec, default_kinds=_DEFAULT_KINDS.get(ptype))
    except FilterError as exc:
        raise _nested_error(file, key, exc) from None
    return PluginConfig(name=name, type=ptype, table=dict(table), file=file, builtin=builtin,
                        exec=exec_argv, filter=flt, enabled=enabled)


def _check_builtin_options(file: str, key: str, ptype: str, builtin: str, table: dict[str, Any]) -> None:
    module = importlib.import_module(builtin_module(ptype, builtin))
    options: dict[str, Option] = getattr(module, "OPTIONS", {})
    for opt_key, value in table.items():
        if opt_key in _RESERVED or opt_key in SDK_OPTIONS:
            continue
        opt = options.get(opt_key)
        if opt is None:
            allowed = ", ".join([*_RESERVED, *sdk_options(ptype), *options])
            raise ConfigError(file, f"{key}.{_key(opt_key)}", f"unknown key for built-in {ptype} {builtin!r} "
                                                         f"(allowed: {allowed})")
        reason = opt.check(value)
        if reason:
            raise ConfigError(file, f"{key}.{opt_key}", reason)
    for opt_key, opt in options.items():
        if opt.default is _REQUIRED and opt_key not in table:
            raise ConfigError(file, f"{key}.{opt_key}", f"is required by built-in {ptype} {builtin!r}")
    held = getattr(module, "held_secrets", None)
    _check_secrets(file, key, held(table) if held else [k for k in getattr(module, "SECRET_OPTIONS", ()) if table.get(k)])
    check = getattr(module, "check_options", None)
    if check is not None:
        try:
            check(plugin_options(ptype, builtin, table))
        except ValueError as exc:
            raise _nested_error(file, key, exc) from None


def _check_secrets(file: str, key: str, held: list[str]) -> None:
    """Refuse secrets (the keys ``held``: a built-in's ``SECRET_OPTIONS`` set in its table, or what its
    ``held_secrets(table)`` names) in a file everyone may read."""
    if not held:
        return
    try:
        mode = os.stat(file).st_mode
    except OSError:
        return  # not a file on disk (a test's dict): nothing to protect
    if mode & stat.S_IROTH:
        raise ConfigError(file, f"{key}.{held[0]}", f"holds a secret but the file is readable by everyone "
                                                    f"(mode {stat.S_IMODE(mode):04o}): chmod o-r {file}")


def check_table(where: str, table: Any, options: dict[str, Option], *, what: str = "a table") -> dict[str, Any]:
    """Check a nested table of a plugin's options (one webhook, one resource) against ``options``; return it.

    Raises:
        ValueError: ``"<where>.<key>: reason"`` (the form :func:`check_options` hooks raise).
    """
    if not isinstance(table, dict):
        raise ValueError(f"{where}: must be {what}")
    for key, value in table.items():
        opt = options.get(key)
        if opt is None:
            raise ValueError(f"{where}.{key}: unknown key (allowed: {', '.join(options)})")
        reason = opt.check(value)
        if reason:
            raise ValueError(f"{where}.{key}: {reason}")
    return table


def _nested_error(file: str, key: str, exc: Exception) -> ConfigError:
    """Turn ``"sub.key: reason"`` from a nested check into a ConfigError for ``key.sub.key``."""
    sub, _, reason = str(exc).partition(": ")
    return ConfigError(file, f"{key}.{sub}", reason)


def plugin_options(plugin_type: str, builtin: str, table: dict[str, Any]) -> dict[str, Any]:
    """Return a built-in plugin's options: its defaults overlaid with ``table``."""
    module = importlib.import_module(builtin_module(plugin_type, builtin))
    options: dict[str, Option] = getattr(module, "OPTIONS", {})
    values = {k: o.default for k, o in options.items() if o.default is not _REQUIRED}
    values.update({k: v for k, v in table.items() if k not in _RESERVED and k not in SDK_OPTIONS})
    return values

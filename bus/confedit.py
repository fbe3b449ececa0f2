"""Safe edits of busd's TOML configuration, for every ``busctl`` command that changes it.

Every change goes the same way: take an exclusive lock (``flock`` on ``<main file>.lock`` next to
the main file), re-read the files under the lock, apply the change to tomlkit documents (so comments
and layout survive), validate the *whole* resulting configuration with :func:`bus.config.load` on
the new texts (``overrides``: nothing is on disk yet), write each changed file atomically (temporary
file in the same directory, ``fsync``, ``rename``, ``fsync`` of the directory), release the lock and
ask a running busd to reload (the control op ``reload``, as ``busctl reload`` does). A change that
would make the configuration invalid raises busd's own :class:`~bus.exceptions.ConfigError` (file,
key, reason) and writes nothing.

API::

    from bus.confedit import ConfigEditor, parse_value

    editor = ConfigEditor("/etc/busd/busd.toml")        # reload=False: never contact busd
    editor.snippet_dir                                   # /etc/busd/conf.d (from the include globs)
    out = editor.set_option("kmsg.since_boot", parse_value("true"))   # PLUGIN.KEY, main.KEY or KEY
    print(out.describe())        # "wrote /etc/busd/conf.d/kmsg.toml; busd reloaded: restarted kmsg"
    editor.reset_option("main.log_level")                # the key is removed: its default applies
    editor.add_snippet("hook1", {"type": "receiver", "builtin": "webhook", "url": "http://x/"})
    found = editor.find_plugin("hook1")                  # (Path of conf.d/hook1.toml, tomlkit table) or None
    if found:
        path, _ = found
        editor.edit(path, lambda doc: doc["plugins"]["hook1"].__setitem__("timeout", 5.0))
    editor.remove_snippet("hook1")                       # its table goes; an emptied snippet is deleted

    with editor.transaction() as tx:                     # several changes, one validation, one reload
        doc = tx.doc(editor.snippet_path("hook2"))       # a missing file is an empty document
        set_key(doc, ("plugins", "hook2", "type"), "receiver")
        ...
        editor.ensure_include()
    print(tx.outcome.describe())

Mutating methods return an :class:`Outcome` (files written and removed, and what busd said);
``Outcome.reloaded`` is ``True`` (reloaded), ``None`` (busd not running: the change applies at its
next start) or ``False`` (busd refused the reload; the files are written nonetheless). Usage errors
(no such plugin, a snippet that exists already) raise :class:`EditError`. Transactions nest: inside
one, the methods join it. Paths that are not absolute are relative to the main file's directory.
The API is synchronous (the reload runs its own event loop): from async code, call it in a thread
(``await asyncio.to_thread(editor.set_option, ...)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.container import Container
from tomlkit.exceptions import TOMLKitError
from tomlkit.items import AoT, Comment, InlineTable, Item, Table
from tomlkit.toml_document import TOMLDocument

from bus import protocol
from bus.config import expand_include, load, peek_main
from bus.exceptions import BusError, ConfigError, ControlError

__all__ = ["DEFAULT_INCLUDE", "ConfigEditor", "EditError", "Outcome", "Transaction", "del_key", "format_value",
           "get_key", "parse_value", "plugin_text", "set_key"]

DEFAULT_INCLUDE = "conf.d/*.toml"
"""The include glob added to ``[main]`` when a configuration has none that snippets fit in."""

RELOAD_TIMEOUT = 30.0


class EditError(BusError):
    """A change that cannot be made as asked (no such plugin, the snippet exists already...)."""


def parse_value(text: str) -> Any:
    """Return ``text`` as a TOML value when it parses as one (``true``, ``3``, ``"x"``, ``["a"]``), else the string."""
    try:
        return tomlkit.parse(f"v = {text}").unwrap()["v"]
    except TOMLKitError:
        return text


@dataclass
class Outcome:
    """What a change did: the files written and removed, and busd's answer to the reload."""

    written: list[Path] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    reloaded: bool | None = None
    reload_message: str = "no change, nothing written"
    value: Any = None

    @property
    def changed(self) -> bool:
        """Whether any file was written or removed."""
        return bool(self.written or self.removed)

    def describe(self) -> str:
        """Return a one-line account for the operator."""
        files = [f"wrote {p}" for p in self.written] + [f"removed {p}" for p in self.removed]
        return "; ".join([*files, self.reload_message])


# -- tomlkit helpers -------------------------------------------------------------------------------

def _to_item(value: Any) -> Any:
    """Turn a Python value into a tomlkit item; tables inside values become inline tables."""
    if isinstance(value, Item):
        return value
    if isinstance(value, Mapping):
        table = tomlkit.inline_table()
        for k, v in value.items():
            table[k] = _to_item(v)
        return table
    if isinstance(value, (list, tuple)):
        array = tomlkit.array()
        array.extend(_to_item(v) for v in value)
        return array
    return tomlkit.item(value)


def format_value(value: Any) -> str:
    """Return a value as TOML text (``true``, ``"x"``, ``["a", "b"]``, ``{severity = "warn"}``)."""
    return str(_to_item(value).as_string())


def plugin_text(name: str, table: Any) -> str:
    """Return ``[plugins.NAME]`` and its body as TOML text, comments included.

    The comment lines above the next table, which tomlkit keeps at the end of this one, are left out.
    """
    doc = tomlkit.document()
    plugins = tomlkit.table(is_super_table=True)
    plugins.add(name, table)
    doc.add("plugins", plugins)
    lines = tomlkit.dumps(doc).splitlines()
    while lines and (not lines[-1].strip() or lines[-1].lstrip().startswith("#")):
        lines.pop()
    return "\n".join(lines) + "\n"


def _body(container: Any) -> Container | None:
    """The Container of a document or a ``[table]`` (``None`` for inline tables)."""
    if isinstance(container, Container):
        return container
    if isinstance(container, Table):
        return container.value
    return None


def _add_key(container: Any, key: str, value: Any) -> None:
    """Add a new key after the table's last key/value, not after the comments that introduce the next table.

    tomlkit appends at the end of a table's body, which is below a blank line and the comment
    lines that belong to the following ``[table]``; Container's insertion helpers put it where a
    person would.
    """
    body = _body(container)
    item = _to_item(value)
    if body is None:
        container[key] = item
        return
    # the position right after the last plain key/value (tomlkit >= 0.15 has no _insert_after)
    after = 0
    for i, (k, v) in enumerate(body.body):
        if k is not None and not isinstance(v, (Table, AoT)):
            after = i + 1
    if after < len(body.body):
        body._insert_at(after, key, item)
    else:
        body.add(key, item)


def get_key(doc: Any, keys: tuple[str, ...]) -> Any:
    """Return the item at ``keys`` in a tomlkit document, or ``None`` when it is absent."""
    node = doc
    for k in keys:
        if not isinstance(node, (Mapping, Table, InlineTable, Container)) or k not in node:
            return None
        node = node[k]
    return node


def set_key(doc: Any, keys: tuple[str, ...], value: Any) -> None:
    """Set ``keys`` (e.g. ``("plugins", "kmsg", "since_boot")``) in a tomlkit document, keeping its layout.

    A missing ``[plugins.NAME]`` or ``[main]`` is created as a table; a missing table below it
    (``filter`` in ``plugins.web.filter.severity``) as an inline table.
    """
    node = parent = doc
    for depth, k in enumerate(keys[:-1]):
        if k not in node:
            if depth < 2:
                _add_table(node, k, is_super=depth == 0 and k == "plugins")
            else:
                _add_key(node, k, tomlkit.inline_table())
        parent, node = node, node[k]
        if not isinstance(node, (Table, InlineTable)):
            raise EditError(f"{'.'.join(keys[:depth + 1])} is not a table")
    last = keys[-1]
    if last in node:
        node[last] = _to_item(value)
    elif isinstance(node, InlineTable):
        # a parsed inline table extended in place renders as "{a = 1,b = 2}": build it anew
        parent[keys[-2]] = _to_item({**node.unwrap(), last: value})
    else:
        _add_key(node, last, value)


def del_key(doc: Any, keys: tuple[str, ...]) -> bool:
    """Remove ``keys`` from a tomlkit document; return whether it was there."""
    parent = get_key(doc, keys[:-1]) if len(keys) > 1 else doc
    if parent is None or keys[-1] not in parent:
        return False
    del parent[keys[-1]]
    return True


def _add_table(node: Any, key: str, *, is_super: bool) -> None:
    table = tomlkit.table(is_super_table=is_super or None)
    if isinstance(node, TOMLDocument) and key == "main":
        _insert_main(node, table)
    else:
        node.add(key, table)


def _insert_main(doc: TOMLDocument, table: Table) -> None:
    """Put a new ``[main]`` above the first table (and the comments right above it), below a header comment."""
    table.add(tomlkit.nl())
    items = doc.body
    first = next((i for i, (k, _) in enumerate(items) if k is not None), None)
    if first is None:
        doc.add("main", table)
        return
    while first > 0 and isinstance(items[first - 1][1], Comment):
        first -= 1
    doc._insert_at(first, "main", table)


def _plugin_keys(doc: Any) -> list[str]:
    plugins = doc.get("plugins") if hasattr(doc, "get") else None
    return list(plugins.keys()) if isinstance(plugins, (Mapping, Table, Container)) else []


def _is_empty(doc: TOMLDocument) -> bool:
    """A document with no keys left (only comments and blank lines, or an empty ``[plugins]``)."""
    def empty(node: Any) -> bool:
        return all(isinstance(v, (Table, Container)) and empty(v) for v in node.values())
    return empty(doc)


# -- the editor ------------------------------------------------------------------------------------

def _norm(path: str | os.PathLike[str]) -> Path:
    return Path(os.path.normpath(Path(path).absolute()))


class Transaction:
    """The files one change reads and modifies; written together when the transaction ends.

    Attributes:
        outcome: set when the transaction has ended (what was written, busd's answer).
    """

    def __init__(self, editor: ConfigEditor) -> None:
        self.editor = editor
        self._disk: dict[Path, str | None] = {}
        self._docs: dict[Path, TOMLDocument] = {}
        self._texts: dict[Path, str | None] = {}
        self.outcome = Outcome()

    def original(self, path: str | os.PathLike[str]) -> str | None:
        """Return the text of ``path`` as it is on disk (read under the lock), ``None`` if missing."""
        p = self.editor.path(path)
        if p not in self._disk:
            try:
                self._disk[p] = p.read_text()
            except FileNotFoundError:
                self._disk[p] = None
        return self._disk[p]

    def doc(self, path: str | os.PathLike[str]) -> TOMLDocument:
        """Return the document of ``path`` to modify (an empty one for a missing file).

        Raises:
            ConfigError: the file is not valid TOML.
        """
        p = self.editor.path(path)
        if p not in self._docs:
            text = self._texts.pop(p) if p in self._texts else self.original(p)
            self._docs[p] = _parse(p, text or "")
        return self._docs[p]

    def write_text(self, path: str | os.PathLike[str], text: str) -> None:
        """Replace the whole text of ``path`` (``busctl edit``)."""
        p = self.editor.path(path)
        self._docs.pop(p, None)
        self._texts[p] = text

    def remove(self, path: str | os.PathLike[str]) -> None:
        """Remove the file ``path``."""
        p = self.editor.path(path)
        self._docs.pop(p, None)
        self._texts[p] = None

    def changes(self) -> dict[Path, str | None]:
        """Return the new text of each file that differs from disk (``None``: to be removed)."""
        new: dict[Path, str | None] = dict(self._texts)
        new.update((p, tomlkit.dumps(d)) for p, d in self._docs.items())
        return {p: t for p, t in new.items() if t != self.original(p)}


def _parse(path: Path, text: str) -> TOMLDocument:
    try:
        return tomlkit.parse(text)
    except TOMLKitError as exc:
        raise ConfigError(str(path), "", f"not valid TOML: {exc}") from None


class ConfigEditor:
    """Locked, validated, atomic edits of one busd configuration (see the module docstring).

    Args:
        main_path: the main configuration file (it may not exist yet).
        reload: ask a running busd to reload after each change.
        timeout: seconds to wait for busd's answer to the reload.
    """

    def __init__(self, main_path: str | os.PathLike[str], *, reload: bool = True,
                 timeout: float = RELOAD_TIMEOUT) -> None:
        self.main_path = _norm(main_path)
        self.lock_path = self.main_path.with_name(self.main_path.name + ".lock")
        self.reload_after = reload
        self.timeout = timeout
        self._tx: Transaction | None = None

    def path(self, path: str | os.PathLike[str]) -> Path:
        """Return ``path`` made absolute (relative to the main file's directory) and normalised."""
        return _norm(self.main_path.parent / path)

    # -- reading ---------------------------------------------------------------------------------

    def _text(self, path: Path) -> str | None:
        if self._tx is not None:
            return self._tx.original(path)
        try:
            return path.read_text()
        except FileNotFoundError:
            return None

    def doc(self, path: str | os.PathLike[str]) -> TOMLDocument:
        """Return the document of ``path``: the transaction's own inside one, else a fresh read."""
        if self._tx is not None:
            return self._tx.doc(path)
        p = self.path(path)
        return _parse(p, self._text(p) or "")

    def include(self) -> list[str]:
        """Return the include globs of ``[main]`` (``[]`` when there are none)."""
        value = get_key(self.doc(self.main_path), ("main", "include"))
        return [str(g) for g in value] if isinstance(value, list) else []

    def files(self) -> list[Path]:
        """Return the main file and its snippets, in the order busd reads them (files missing ignored)."""
        out = [self.main_path]
        overrides = self._overrides()
        for pattern in self.include():
            out += [_norm(m) for m in expand_include(self.main_path, pattern, overrides)]
        return out

    def _overrides(self) -> dict[str, str | None] | None:
        if self._tx is None:
            return None
        return {str(p): t for p, t in self._tx.changes().items()}

    def plugins(self) -> dict[str, list[Path]]:
        """Return every plugin instance and the files that define its table (later ones win)."""
        found: dict[str, list[Path]] = {}
        for file in self.files():
            for name in _plugin_keys(self.doc(file)):
                found.setdefault(name, []).append(file)
        return found

    def find_plugin(self, name: str) -> tuple[Path, Table] | None:
        """Return the file that defines plugin ``name`` (the last one, if several do) and its table.

        Inside a transaction the table belongs to the transaction's document, so changing it
        changes what is written; outside one it is a fresh copy.
        """
        files = self.plugins().get(name)
        if not files:
            return None
        table = self.doc(files[-1])["plugins"][name]
        return files[-1], table

    def main_files(self, key: str) -> list[Path]:
        """Return the files whose ``[main]`` sets ``key`` (snippets may set [main] keys too)."""
        return self.defined_in(None, (key,))

    @property
    def snippet_dir(self) -> Path:
        """The directory of the first include glob shaped ``DIR/*SUFFIX`` (default ``conf.d/`` next to the main file)."""
        return self._snippet_glob()[0]

    def _snippet_glob(self) -> tuple[Path, str, bool]:
        """(directory, suffix, whether an include glob has that shape) of the snippets."""
        for pattern in self.include():
            head, tail = os.path.split(pattern)
            if tail.startswith("*") and not any(c in tail[1:] + head for c in "*?["):
                return self.path(head), tail[1:], True
        head, tail = os.path.split(DEFAULT_INCLUDE)
        return self.path(head), tail[1:], False

    def snippet_path(self, name: str) -> Path:
        """Return the snippet file of plugin instance ``name`` (``conf.d/NAME.toml``)."""
        directory, suffix, _ = self._snippet_glob()
        return directory / f"{name}{suffix}"

    def resolve(self, dotted: str) -> tuple[str | None, tuple[str, ...]]:
        """Split an option name into ``(plugin, key path)``; ``plugin`` is ``None`` for a ``[main]`` key.

        ``log_level`` and ``main.log_level`` are [main] keys; ``kmsg.since_boot`` is option
        ``since_boot`` of plugin ``kmsg`` (plugin names may contain dots: the longest configured
        name wins); ``plugins.NAME.KEY`` names a plugin explicitly (a plugin called ``main``).

        Raises:
            EditError: no such plugin, or no key after its name.
        """
        parts = dotted.split(".")
        if not dotted or not all(parts):
            raise EditError(f"{dotted!r}: not an option name (main.KEY, KEY or PLUGIN.KEY)")
        if len(parts) == 1:
            return None, (parts[0],)
        if parts[0] == "main":
            return None, tuple(parts[1:])
        if parts[0] == "plugins":
            parts = parts[1:]
        names = self.plugins()
        for cut in range(len(parts) - 1, 0, -1):
            name = ".".join(parts[:cut])
            if name in names:
                return name, tuple(parts[cut:])
        if ".".join(parts) in names:
            raise EditError(f"{dotted!r} names plugin {'.'.join(parts)!r}, not one of its options")
        raise EditError(f"{dotted!r}: no plugin {parts[0]!r} in the configuration "
                        f"(plugins: {', '.join(sorted(names)) or 'none'})")

    # -- changing --------------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """Lock, collect changes, then validate and write them all and reload (see the module docstring).

        Raises:
            ConfigError: the result would be an invalid configuration; nothing is written.
        """
        if self._tx is not None:  # nested: join the outer transaction
            yield self._tx
            return
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        runtime_dir = None
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            tx = self._tx = Transaction(self)
            try:
                before = self._runtime_dir()
                yield tx
                changes = tx.changes()
                if changes:
                    cfg = load(self.main_path, overrides={str(p): t for p, t in changes.items()})
                    self._commit(changes, tx.outcome)
                    runtime_dir = before or cfg.main.runtime_dir
            finally:
                self._tx = None
                fcntl.flock(lock, fcntl.LOCK_UN)
        if tx.outcome.changed and self.reload_after:
            tx.outcome.reloaded, tx.outcome.reload_message = self.reload(runtime_dir)
        elif tx.outcome.changed:
            tx.outcome.reload_message = "not reloaded"

    def _runtime_dir(self) -> str | None:
        try:
            return peek_main(self.main_path).runtime_dir
        except ConfigError:
            return None

    def _commit(self, changes: dict[Path, str | None], outcome: Outcome) -> None:
        # snippets first, then the main file, removals last: each step on its own leaves a
        # configuration a concurrent reload can read (a new snippet before the include naming it)
        order = sorted(changes, key=lambda p: (changes[p] is None, p == self.main_path))
        mode = _mode(self.main_path)
        for p in order:
            text = changes[p]
            if text is None:
                try:
                    p.unlink()
                except FileNotFoundError:
                    continue
                _fsync_dir(p.parent)
                outcome.removed.append(p)
            else:
                write_file(p, text, mode=mode)
                outcome.written.append(p)

    def edit(self, path: str | os.PathLike[str], fn: Callable[[TOMLDocument], Any]) -> Outcome:
        """Apply ``fn`` to the document of ``path`` under the lock; validate, write, reload.

        ``fn``'s return value is kept in ``Outcome.value``.
        """
        with self.transaction() as tx:
            value = fn(tx.doc(path))
        tx.outcome.value = value
        return tx.outcome

    def ensure_include(self) -> Path:
        """Make sure an include glob covers the snippet directory (adds ``conf.d/*.toml`` if none); return it."""
        with self.transaction() as tx:
            if not self._snippet_glob()[2]:
                doc = tx.doc(self.main_path)
                current = get_key(doc, ("main", "include"))
                if isinstance(current, list):
                    current.append(DEFAULT_INCLUDE)
                else:
                    set_key(doc, ("main", "include"), [DEFAULT_INCLUDE])
        return self.snippet_dir

    def set_option(self, dotted: str, value: Any) -> Outcome:
        """Set a [main] key or a plugin option (see :meth:`resolve`), where it is defined now.

        A [main] key is changed in the last file that sets it (else the main file); a plugin
        option in the last file of that plugin that sets it (else the plugin's last file).
        """
        with self.transaction() as tx:
            plugin, keys = self.resolve(dotted)
            full = ("main", *keys) if plugin is None else ("plugins", plugin, *keys)
            files = self.defined_in(plugin, keys) or (
                [self.main_path] if plugin is None else self.plugins()[plugin])
            set_key(tx.doc(files[-1]), full, value)
        return tx.outcome

    def defined_in(self, plugin: str | None, keys: tuple[str, ...]) -> list[Path]:
        """Return the files that set ``keys`` of ``plugin`` (``None``: of ``[main]``), in reading order."""
        full = ("main", *keys) if plugin is None else ("plugins", plugin, *keys)
        return [f for f in self.files() if get_key(self.doc(f), full) is not None]

    def reset_option(self, dotted: str) -> Outcome:
        """Remove a [main] key or plugin option from every file that sets it, so its default applies."""
        with self.transaction() as tx:
            plugin, keys = self.resolve(dotted)
            full = ("main", *keys) if plugin is None else ("plugins", plugin, *keys)
            for file in self.defined_in(plugin, keys):
                del_key(tx.doc(file), full)
        return tx.outcome

    def add_snippet(self, name: str, table: Mapping[str, Any], *, replace: bool = False) -> Outcome:
        """Create ``conf.d/NAME.toml`` holding ``[plugins.NAME]`` = ``table`` (and the include line if missing).

        Raises:
            EditError: plugin ``name`` exists already (unless ``replace``: then its tables are
                removed wherever they are) or the snippet file exists with other content.
        """
        with self.transaction() as tx:
            if name in self.plugins():
                if not replace:
                    raise EditError(f"plugin {name!r} exists already in {self.plugins()[name][-1]}")
                self.remove_snippet(name)
            self.ensure_include()
            path = self.snippet_path(name)
            if tx.original(path) is not None and not replace:
                raise EditError(f"{path} exists already")
            doc = tomlkit.document()
            for key, value in table.items():
                set_key(doc, ("plugins", name, key), value)
            tx.write_text(path, tomlkit.dumps(doc))
        return tx.outcome

    def remove_snippet(self, name: str) -> Outcome:
        """Remove plugin ``name``'s table from every file that defines it; a file left empty is deleted.

        Raises:
            EditError: no such plugin.
        """
        with self.transaction() as tx:
            files = self.plugins().get(name)
            if not files:
                raise EditError(f"no plugin {name!r} in the configuration")
            for file in files:
                doc = tx.doc(file)
                del_key(doc, ("plugins", name))
                if file != self.main_path and _is_empty(doc):
                    tx.remove(file)
        return tx.outcome

    # -- reload ----------------------------------------------------------------------------------

    def reload(self, runtime_dir: str | None = None) -> tuple[bool | None, str]:
        """Ask a running busd to reload; return ``(reloaded, message)`` (``None``: busd is not running)."""
        rd = runtime_dir or self._runtime_dir()
        if rd is None:
            return None, "busd's runtime directory is unknown: reload it yourself"
        sock_path = os.path.join(rd, protocol.CONTROL)
        if not _listening(sock_path):
            return None, f"busd is not running (nothing listens on {sock_path}): the change applies when it starts"
        from bus.client import request

        try:
            reply = asyncio.run(request(protocol.endpoint(rd, protocol.CONTROL), {"op": "reload"}, self.timeout))
        except ControlError as exc:
            return False, f"busd did not apply it: {exc}"
        return True, (f"busd reloaded: added {', '.join(reply['added']) or '-'}, removed "
                      f"{', '.join(reply['removed']) or '-'}, restarted {', '.join(reply['restarted']) or '-'}")


def _listening(path: str) -> bool:
    """Whether something accepts connections on the unix socket ``path`` (a stale file does not)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        return True
    except OSError:
        return False
    finally:
        s.close()


def _mode(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o644


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file(path: Path, text: str | bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``text`` durably: temporary file in its directory, fsync, rename, fsync the directory.

    ``bytes`` are written as they are (byte for byte); ``str`` in the locale's encoding.

    An existing file keeps its permissions and owner (the owner when run as root); a new one gets
    ``mode``. A symbolic link is followed: its target is replaced, the link stays.
    """
    path = path.resolve() if path.is_symlink() else path
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        st: os.stat_result | None = path.stat()
    except FileNotFoundError:
        st = None
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if isinstance(text, bytes) else "w") as f:
            f.write(text)
            f.flush()
            os.fchmod(f.fileno(), st.st_mode & 0o7777 if st else mode)
            if st is not None and (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
                with contextlib.suppress(PermissionError):
                    os.fchown(f.fileno(), st.st_uid, st.st_gid)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)

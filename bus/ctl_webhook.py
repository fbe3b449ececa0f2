"""``busctl webhook ...``: add, change, remove, list, test and watch the webhooks of the ``webhook`` receiver.

The gluster-eventsapi experience (``webhook-add``, ``webhook-mod``, ``webhook-del``, ``webhook-test``,
``status``) on busd's configuration. Every change goes through :mod:`bus.confedit` (locked,
validated by busd's own rules, written atomically, comments kept) and is applied by a reload.
``webhook add`` on a configuration without a webhook receiver creates one in ``conf.d/webhook.toml``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import tomlkit
import typer
from tomlkit.items import AoT, Array, Table

from bus.cli import ConfigOpt, _ctl_options, _fail, _load, echo_rows, plugin_statuses
from bus.confedit import ConfigEditor, EditError, Transaction, get_key, set_key
from bus.config import Config, default_path, load, plugin_options
from bus.exceptions import ConfigError
from bus.secrets import mask, redact_url

__all__ = ["webhook_app"]

webhook_app = typer.Typer(no_args_is_help=True, help="Manage webhooks: add, mod, del, list, test, status.")

RECEIVER = "webhook"
"""The name of the receiver instance ``webhook add`` creates when the configuration has none."""


# options shared by add, mod and test
NameOpt = Annotated[str | None, typer.Option("--name", help="the webhook's name (default: derived from the URL)")]
TokenOpt = Annotated[str | None, typer.Option("--bearer-token", help="send Authorization: Bearer TOKEN")]
SecretOpt = Annotated[str | None, typer.Option("--secret", help="send an HS256 JWT (gluster's claims) signed with this")]
FormatOpt = Annotated[str | None, typer.Option("--format", help="gluster (glustereventsd's body) or busd (the event)")]
FilterOpt = Annotated[list[str] | None, typer.Option(
    "--filter", help="KEY=VALUE[,VALUE...] with KEY system, severity, kind or event_type (repeatable)")]
SigningOpt = Annotated[str | None, typer.Option("--signing-key", help="sign bodies with HMAC-SHA256 (X-Busd-Signature)")]
HeaderOpt = Annotated[list[str] | None, typer.Option("--header", help="NAME=VALUE, an extra HTTP header (repeatable)")]
TimeoutOpt = Annotated[float | None, typer.Option("--timeout", help="seconds one request may take")]
MaxAgeOpt = Annotated[float | None, typer.Option("--max-age", help="seconds an event may wait for delivery")]
MaxOutboxOpt = Annotated[int | None, typer.Option("--max-outbox", help="events waiting at most; beyond, the oldest go")]
ConcurrencyOpt = Annotated[int | None, typer.Option("--concurrency", help="requests in flight (1: strictly in order)")]
VerifyOpt = Annotated[bool | None, typer.Option("--verify-tls/--no-verify-tls", help="verify the server's certificate")]
CaOpt = Annotated[str | None, typer.Option("--ca-file", help="CA certificates to verify the server with")]
ReceiverOpt = Annotated[str | None, typer.Option("--receiver", help="the webhook receiver instance, when there are several")]
JsonOpt = Annotated[bool, typer.Option("--json", help="JSON output")]


def _config(config: str | None) -> str:
    return config or _ctl_options["config"] or default_path()


def _filter(specs: list[str]) -> dict[str, Any]:
    """``["system=gluster", "severity=warn", "event_type=VOLUME_*,PEER_*"]`` to a filter map."""
    out: dict[str, Any] = {}
    for spec in specs:
        key, sep, value = spec.partition("=")
        if not sep or not key or not value:
            raise _fail(f"--filter {spec!r}: expected KEY=VALUE (e.g. system=gluster)")
        values = [v for v in value.split(",") if v]
        if key == "severity":
            out[key] = value
        else:
            out[key] = [*out.get(key, []), *values] if isinstance(out.get(key), list) else values
    return {k: v[0] if isinstance(v, list) and len(v) == 1 else v for k, v in out.items()}


def _headers(specs: list[str]) -> dict[str, str]:
    out = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        if not sep or not name:
            raise _fail(f"--header {spec!r}: expected NAME=VALUE")
        out[name.strip()] = value.strip()
    return out


def _flags(name: str | None = None, bearer_token: str | None = None, secret: str | None = None,
           fmt: str | None = None, filters: list[str] | None = None, signing_key: str | None = None,
           headers: list[str] | None = None, timeout: float | None = None, max_age: float | None = None,
           max_outbox: int | None = None, concurrency: int | None = None, verify_tls: bool | None = None,
           ca_file: str | None = None) -> dict[str, Any]:
    """The webhook keys the command line gives (``None`` for what it does not mention)."""
    return {"name": name, "bearer_token": bearer_token, "secret": secret, "format": fmt,
            "filter": None if filters is None else _filter([f for f in filters if f]),
            "signing_key": signing_key, "headers": None if headers is None else _headers(headers),
            "timeout": timeout, "max_age": max_age, "max_outbox": max_outbox, "concurrency": concurrency,
            "verify_tls": verify_tls, "ca_file": ca_file}


# -- finding webhooks in the configuration files ----------------------------------------------------

def _receivers(editor: ConfigEditor) -> dict[str, list[Path]]:
    """The plugin instances whose ``builtin`` is ``webhook``, with the files that define them."""
    return {name: files for name, files in editor.plugins().items()
            if any(get_key(editor.doc(f), ("plugins", name, "builtin")) == "webhook" for f in files)}


def _hooks(editor: ConfigEditor, receiver: str, files: list[Path]) -> tuple[Path, Any]:
    """The file holding a receiver's ``webhooks`` array (its last file if none does) and the array (or None)."""
    for file in reversed(files):
        array = get_key(editor.doc(file), ("plugins", receiver, "webhooks"))
        if array is not None:
            return file, array
    return files[-1], None


def _item_name(item: Any) -> str:
    from receivers.webhook import name_from_url

    return str(item.get("name") or name_from_url(str(item.get("url", ""))))


def _find(editor: ConfigEditor, which: str, receiver: str | None) -> tuple[str, Path, Any, int]:
    """Locate a webhook by name or URL: ``(receiver, file, array, index)``.

    Raises:
        EditError: none matches, or several do.
    """
    found = []
    for name, files in _receivers(editor).items():
        if receiver is not None and name != receiver:
            continue
        file, array = _hooks(editor, name, files)
        for index, item in enumerate(array or []):
            if which in (_item_name(item), item.get("url")):
                found.append((name, file, array, index))
    if not found:
        raise EditError(f"no webhook named {which!r} or with that URL (see busctl webhook list)")
    if len(found) > 1:
        raise EditError(f"{len(found)} webhooks match {which!r}: give its name, or --receiver")
    return found[0]


def _toml(value: Any) -> Any:
    """A value for a webhook entry: tables inside it (filter, headers) as inline tables."""
    if isinstance(value, dict):
        table = tomlkit.inline_table()
        table.update(value)
        return table
    return value


def _new_item(array: Any, values: dict[str, Any]) -> Any:
    """A webhook entry for ``array``: a ``[[...webhooks]]`` table, or an inline table in a plain array."""
    item: Any = tomlkit.inline_table() if isinstance(array, Array) else tomlkit.table()
    for key, value in values.items():
        item[key] = _toml(value)
    if isinstance(item, Table):
        item.add(tomlkit.nl())
    return item


def _apply(item: Any, changes: dict[str, Any]) -> dict[str, Any]:
    """Apply ``changes`` to a webhook entry's values: ``""`` (or ``{}``) removes a key; return the values."""
    values = dict(item.unwrap() if hasattr(item, "unwrap") else item)
    for key, value in changes.items():
        if value is None:
            continue
        if value in ("", {}):
            values.pop(key, None)
            continue
        if key == "headers":
            merged = {**values.get("headers", {}), **value}
            value = {k: v for k, v in merged.items() if v != ""}
        values[key] = value
        # one kind of authentication at a time: setting one replaces the other
        if key in ("bearer_token", "secret"):
            values.pop("secret" if key == "bearer_token" else "bearer_token", None)
    return values


def _replace(array: Any, index: int, values: dict[str, Any]) -> None:
    """Put the new values of a webhook entry in place (a ``[[...]]`` table keeps its comments and order)."""
    item = array[index]
    if not isinstance(array, AoT):
        array[index] = _new_item(array, values)
        return
    for key in [k for k in item if k not in values]:
        del item[key]
    for key, value in values.items():
        if item.get(key) != value:
            item[key] = _toml(value)


@contextmanager
def _editing(config: str | None) -> Iterator[tuple[ConfigEditor, Transaction]]:
    """A confedit transaction; configuration and usage errors end the command with a clear message."""
    editor = ConfigEditor(_config(config), timeout=max(30.0, _ctl_options["timeout"]))
    try:
        with editor.transaction() as tx:
            yield editor, tx
    except ConfigError as exc:
        raise _fail(f"refused, nothing written: {exc}") from None
    except EditError as exc:
        raise _fail(str(exc)) from None


def _report(tx: Transaction, what: str) -> None:
    typer.echo(f"{what}; {tx.outcome.describe()}")
    if tx.outcome.reloaded is False:
        raise typer.Exit(1)


# -- commands ------------------------------------------------------------------------------------------

@webhook_app.command("add")
def add(
    url: Annotated[str, typer.Argument(help="http:// or https:// URL to POST events to")],
    name: NameOpt = None, bearer_token: TokenOpt = None, secret: SecretOpt = None, fmt: FormatOpt = None,
    filters: FilterOpt = None, signing_key: SigningOpt = None, headers: HeaderOpt = None, timeout: TimeoutOpt = None,
    max_age: MaxAgeOpt = None, max_outbox: MaxOutboxOpt = None, concurrency: ConcurrencyOpt = None,
    verify_tls: VerifyOpt = None, ca_file: CaOpt = None, receiver: ReceiverOpt = None,
    state_dir: Annotated[str | None, typer.Option(
        "--state-dir", help="where a receiver created now keeps its outboxes (default /var/lib/busd/webhook)")] = None,
    config: ConfigOpt = None,
) -> None:
    """Add a webhook (creating the webhook receiver in conf.d/webhook.toml if there is none) and reload."""
    values = {"url": url, **{k: v for k, v in _flags(name, bearer_token, secret, fmt, filters, signing_key, headers,
                                                        timeout, max_age, max_outbox, concurrency, verify_tls,
                                                        ca_file).items() if v not in (None, "", {})}}
    new_name = _item_name(values)
    with _editing(config) as (editor, tx):
        receivers = _receivers(editor)
        if receiver is None and len(receivers) > 1:
            raise EditError(f"several webhook receivers ({', '.join(sorted(receivers))}): choose one with --receiver")
        target = receiver or next(iter(receivers), RECEIVER)
        if target not in receivers:
            if target in editor.plugins():
                raise EditError(f"plugin {target!r} is not a webhook receiver")
            editor.ensure_include()
            doc = tx.doc(editor.snippet_path(target))
            table = {"type": "receiver", "builtin": "webhook", **({"state_dir": state_dir} if state_dir else {})}
            for key, value in table.items():
                set_key(doc, ("plugins", target, key), value)
            doc["plugins"][target].add(tomlkit.nl())
            receivers[target] = [editor.snippet_path(target)]
        file, array = _hooks(editor, target, receivers[target])
        for item in array or []:
            if _item_name(item) == new_name:
                raise EditError(f"webhook {new_name!r} exists already (busctl webhook mod changes it; --name gives "
                                "another name)")
        if array is None:
            array = tomlkit.aot()
            tx.doc(file)["plugins"][target]["webhooks"] = array
        array.append(_new_item(array, values))
    _report(tx, f"added webhook {new_name} ({url}) to receiver {target}")


@webhook_app.command("mod")
def mod(
    webhook: Annotated[str, typer.Argument(help="the webhook's name or URL")],
    url: Annotated[str | None, typer.Option("--url", help="a new URL")] = None,
    name: NameOpt = None, bearer_token: TokenOpt = None, secret: SecretOpt = None, fmt: FormatOpt = None,
    filters: FilterOpt = None, signing_key: SigningOpt = None, headers: HeaderOpt = None, timeout: TimeoutOpt = None,
    max_age: MaxAgeOpt = None, max_outbox: MaxOutboxOpt = None, concurrency: ConcurrencyOpt = None,
    verify_tls: VerifyOpt = None, ca_file: CaOpt = None, receiver: ReceiverOpt = None, config: ConfigOpt = None,
) -> None:
    """Change a webhook: an empty value removes a setting (--bearer-token ''), --header NAME= removes a header.

    Setting --bearer-token removes the secret and the other way round. Its outbox (and the events
    waiting in it) follows its name: a new --url keeps the name it had, set explicitly if it was derived.
    """
    changes = {"url": url, **_flags(name, bearer_token, secret, fmt, filters, signing_key, headers, timeout, max_age,
                                    max_outbox, concurrency, verify_tls, ca_file)}
    if all(v is None for v in changes.values()):
        raise _fail("nothing to change (see busctl webhook mod --help)")
    with _editing(config) as (editor, tx):
        target, file, _, index = _find(editor, webhook, receiver)
        array = get_key(tx.doc(file), ("plugins", target, "webhooks"))
        old_name = _item_name(array[index])
        if url and "name" not in array[index] and not name:
            changes["name"] = old_name  # keep the outbox when only the URL changes
        values = _apply(array[index], changes)
        _replace(array, index, values)
    _report(tx, f"changed webhook {old_name}" + (f" (now {_item_name(values)})" if _item_name(values) != old_name
                                                 else ""))


@webhook_app.command("del")
def delete(
    webhook: Annotated[str, typer.Argument(help="the webhook's name or URL")],
    receiver: ReceiverOpt = None, config: ConfigOpt = None,
) -> None:
    """Remove a webhook and reload (events still waiting in its outbox stay there, unsent)."""
    with _editing(config) as (editor, tx):
        target, file, _, index = _find(editor, webhook, receiver)
        array = get_key(tx.doc(file), ("plugins", target, "webhooks"))
        old_name = _item_name(array[index])
        del array[index]
    _report(tx, f"removed webhook {old_name} from receiver {target}")


def _webhooks_of(cfg: Config) -> list[dict[str, Any]]:
    """Every configured webhook's complete settings, with its receiver's name and directory."""
    from receivers.webhook import webhook_settings

    out = []
    for name, plugin in cfg.plugins.items():
        if plugin.builtin != "webhook" or plugin.type != "receiver":
            continue
        for settings in webhook_settings(plugin_options("receiver", "webhook", plugin.table)):
            out.append({"receiver": name, "base": str(Path(plugin.file).parent), **settings})
    return out


def _configured(config: str | None) -> list[dict[str, Any]]:
    """The configured webhooks (a configuration that does not load ends the command with its error)."""
    return _webhooks_of(_load(_config(config)))


def _public(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings fit to print: secrets masked, the URL's password hidden."""
    return mask({k: v for k, v in settings.items() if k != "base"})


def _auth(settings: dict[str, Any]) -> str:
    return "jwt" if settings["secret"] else "bearer" if settings["bearer_token"] else "none"


@webhook_app.command("list")
def list_(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """List the configured webhooks (secrets are not shown)."""
    hooks = [_public(h) for h in _configured(config)]
    if not echo_rows(hooks, json_out, "no webhooks (busctl webhook add URL adds one)"):
        return
    typer.echo(f"{'NAME':28} {'RECEIVER':12} {'FORMAT':8} {'AUTH':6} {'SIGNED':6} {'FILTER':28} URL")
    for h in hooks:
        flt = ",".join(f"{k}={v if isinstance(v, str) else '|'.join(v)}" for k, v in h["filter"].items()) or "-"
        typer.echo(f"{h['name']:28} {h['receiver']:12} {h['format']:8} {_auth(h):6} "
                   f"{'yes' if h['signing_key'] else 'no':6} {flt:28} {h['url']}")


@webhook_app.command("test")
def test(
    webhook: Annotated[str, typer.Argument(help="a URL, or the name or URL of a configured webhook (its settings apply)")],
    bearer_token: TokenOpt = None, secret: SecretOpt = None, fmt: FormatOpt = None, signing_key: SigningOpt = None,
    headers: HeaderOpt = None, timeout: TimeoutOpt = None, verify_tls: VerifyOpt = None, ca_file: CaOpt = None,
    config: ConfigOpt = None, json_out: JsonOpt = False,
) -> None:
    """POST a WEBHOOK_TEST event as the receiver would; print the status and latency (exit 1 on failure)."""
    from receivers.webhook import OPTIONS, Sender, probe_event, webhook_settings

    hostname, base, table = socket.gethostname(), Path.cwd(), {"url": webhook}
    configured: list[dict[str, Any]] = []
    try:
        cfg = load(_config(config))
        hostname = cfg.main.hostname
        configured = [h for h in _webhooks_of(cfg) if webhook in (h["name"], h["url"])]
    except ConfigError as exc:
        if "://" not in webhook:  # a name needs the configuration; a bare URL does not
            raise _fail(str(exc)) from None
    if configured:
        table = {k: v for k, v in configured[0].items() if k not in ("receiver", "base")}
        base = Path(configured[0]["base"])
    changes = _flags(None, bearer_token, secret, fmt, None, signing_key, headers, timeout, None, None, None,
                     verify_tls, ca_file)
    table = _apply(table, {k: v for k, v in changes.items() if k not in ("filter", "name")})
    defaults = {k: o.default for k, o in OPTIONS.items()}
    try:
        settings = webhook_settings({**defaults, "webhooks": [table]})[0]
    except ValueError as exc:
        raise _fail(str(exc).replace("webhooks[0].", "")) from None
    sender = Sender(settings, base)

    async def post() -> Any:
        try:
            return await sender.post(probe_event(hostname))
        finally:
            await sender.close()

    attempt = asyncio.run(post())
    ok = attempt.outcome == "delivered"
    result = {"url": redact_url(settings["url"]), "ok": ok, "status": attempt.status,
              "latency_ms": round(attempt.latency * 1000, 3), "error": attempt.error or None,
              "format": settings["format"], "auth": _auth(settings)}
    if json_out:
        typer.echo(json.dumps(result, indent=2))
    elif ok:
        typer.echo(f"{result['url']}: HTTP {attempt.status} in {result['latency_ms']:.1f} ms "
                   f"({settings['format']} format, auth {result['auth']})")
    else:
        typer.secho(f"{result['url']}: failed after {result['latency_ms']:.1f} ms: {attempt.error}", err=True,
                    fg=typer.colors.RED)
    if not ok:
        raise typer.Exit(1)


def _ago(ts: float | None, now: float) -> str:
    return "never" if not ts else f"{now - ts:.0f} s ago"


@webhook_app.command("status")
def status(config: ConfigOpt = None, json_out: JsonOpt = False) -> None:
    """Show each webhook's outbox depth, delivered and dropped counts, last success and last error."""
    reports = plugin_statuses(_config(config), "webhook")
    if not echo_rows(reports, json_out, "no webhook receiver configured (busctl webhook add URL adds one)"):
        return
    now = time.time()
    typer.echo(f"{'WEBHOOK':28} {'RECEIVER':12} {'WAITING':>8} {'OLDEST':>8} {'DELIVERED':>9} {'DROPPED':>7}  "
               f"{'LAST SUCCESS':14} LAST ERROR")
    for report in reports:
        if report.get("missing"):
            typer.echo(f"{'-':28} {report['plugin']:12} no status yet (is busd running it?)")
            continue
        for h in report.get("webhooks", []):
            dropped = sum(h.get(k, 0) for k in ("outbox_full", "expired", "rejected"))
            oldest = f"{now - h['oldest']:.0f} s" if h.get("oldest") else "-"
            err = h.get("last_error")
            error = f"{err['error']} ({_ago(err['time'], now)})" if err else "-"
            waiting = "?" if h.get("depth") is None else str(h["depth"])
            typer.echo(f"{h['name']:28} {report['plugin']:12} {waiting:>8} {oldest:>8} {h.get('delivered', 0):>9} "
                       f"{dropped:>7}  {_ago(h.get('last_success'), now):14} {error}")

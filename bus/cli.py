"""Command-line entry points: ``busd``, ``bus-tail``, ``bus-emit`` and ``busctl`` (typer)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from bus import __version__, protocol
from bus.config import Config, MainConfig, check_runtime_dir, default_path, load, peek_main
from bus.event import KINDS, Event, decode_wire, from_json_lines, new_event, to_json_bytes
from bus.exceptions import AlreadyRunning, ConfigError, ControlError, EventError, FleetError, HistoryError
from bus.filter import Filter, FilterError
from bus.log import configure

ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="configuration file ($BUSD_CONFIG)",
                                        envvar="BUSD_CONFIG", show_envvar=False)]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"busd {__version__}")
        raise typer.Exit()


VersionOpt = Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")]


def _fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    return typer.Exit(code)


def _load(config: str | None) -> Config:
    try:
        return load(config or default_path())
    except ConfigError as exc:
        raise _fail(str(exc)) from None


def _main(config: str | None) -> MainConfig:
    """The ``[main]`` settings only: enough to reach a daemon even if a plugin table is broken."""
    try:
        return peek_main(config or default_path())
    except ConfigError as exc:
        raise _fail(str(exc)) from None


def _control_endpoint(config: str | None) -> str:
    """The control socket: ``$BUS_CONTROL`` inside a plugin, else from the configuration."""
    if config is None and os.environ.get("BUS_CONTROL"):
        return os.environ["BUS_CONTROL"]
    return protocol.endpoint(_main(config).runtime_dir, protocol.CONTROL)


def _run(coro: Any) -> Any:
    """Run a command's coroutine the way busd and the plugins run theirs (:func:`bus.runtime.runner`)."""
    from bus import runtime

    with runtime.runner() as runner:
        return runner.run(coro)


# -- busd ------------------------------------------------------------------------------------------

busd_app = typer.Typer(add_completion=True, help="The busd daemon: runs the broker and supervises plugins.")


@busd_app.command()
def busd_main(
    config: ConfigOpt = None,
    check: Annotated[bool, typer.Option("--check", help="validate the configuration, print it as JSON, exit")] = False,
    version: VersionOpt = False,
) -> None:
    """Run busd in the foreground (logs JSON lines to stderr; SIGHUP reloads; SIGTERM stops)."""
    cfg = _load(config)
    try:
        check_runtime_dir(cfg)
    except ConfigError as exc:
        raise _fail(str(exc), 2) from None
    if check:
        for warning in cfg.warnings:
            typer.secho(f"warning: {warning}", err=True, fg=typer.colors.YELLOW)
        typer.echo(json.dumps({
            "files": list(cfg.files),
            "main": cfg.main.__dict__,
            "plugins": {n: p.masked_table() for n, p in cfg.plugins.items()},
        }, indent=2, default=str))
        return
    from bus.daemon import run

    try:
        run(cfg)
    except AlreadyRunning as exc:
        raise _fail(str(exc), 1) from None


def busd() -> None:
    """Console script ``busd``."""
    busd_app(prog_name="busd")


# -- bus-tail --------------------------------------------------------------------------------------

tail_app = typer.Typer(add_completion=True, help="Stream events as busd publishes them.")

_COLORS = {"info": typer.colors.GREEN, "warn": typer.colors.YELLOW, "error": typer.colors.RED}


def format_line(event: Event, color: bool) -> str:
    """Return the readable one-line form of an event."""
    ts = datetime.fromtimestamp(event.get("timestamp", 0.0), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    sev = str(event.get("severity", "info"))
    dev = event.get("dev_name") or "-"
    text = (f"{ts} {event.get('hostname', '')} {sev.upper():5} {event.get('system', '')}/"
            f"{event.get('event_type', '')} {dev} {event.get('msg', '')} [{event.get('source', '')}]")
    if color:
        text = typer.style(text, fg=_COLORS.get(sev))
    return text


def write_events(events: list[Event], json_out: bool, color: bool) -> None:
    """Print events to stdout in one write: JSON Lines with ``json_out``, else one readable line each."""
    out = sys.stdout.buffer
    if json_out:
        out.write(b"".join([to_json_bytes(e) + b"\n" for e in events]))
    else:
        out.write("".join([format_line(e, color) + "\n" for e in events]).encode())
    out.flush()


@tail_app.command()
def tail_main(
    config: ConfigOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    system: Annotated[list[str] | None, typer.Option("--system", help="only this system (repeatable)")] = None,
    severity: Annotated[str, typer.Option("--severity", help="minimum severity: info, warn or error")] = "info",
    event_type: Annotated[list[str] | None, typer.Option("--event-type", help="only this type, may end in *")] = None,
    kind: Annotated[str, typer.Option("--kind", help="raw, synthetic or all")] = "synthetic",
    count: Annotated[int, typer.Option("--count", help="exit after this many events (0: never)")] = 0,
    last: Annotated[int, typer.Option("--last", help="first print up to this many events still in the replay buffer")] = 0,
    since: Annotated[str | None, typer.Option("--since", help="first print the stored events since then (10m, 1h, "
                                                              "ISO time; receiver history)")] = None,
    dev: Annotated[list[str] | None, typer.Option("--dev", help="only this device name or WWID (repeatable)")] = None,
    host: Annotated[list[str] | None, typer.Option("--host", help="only this host (repeatable)")] = None,
    fleet: Annotated[bool, typer.Option("--fleet", help="every node's events, from NATS JetStream (receiver nats)")] = False,
    server: Annotated[str | None, typer.Argument(help="with --fleet: the NATS server (default: the nats receiver's)",
                                                 show_default=False)] = None,
    version: VersionOpt = False,
) -> None:
    """Print events as they are published, one per line, until interrupted or --count is reached.

    With ``--since``, the stored events (receiver ``history``) since then come first, then the live
    ones, with no gap and no duplicate at the seam (see :func:`_tail`). With ``--fleet [nats://...]``
    the events of every node come from the fleet's JetStream stream instead (``--since`` reads it
    from then on, one ordered stream: no seam at all); each line names its host.
    """
    from bus.query import Query, QueryError, parse_time

    try:
        flt = Filter.parse({"system": system or None, "severity": severity, "event_type": event_type or None,
                            "kind": kind})
        query = Query(flt, since=parse_time(since) if since else None, devs=tuple(dev or ()), hosts=tuple(host or ()))
    except FilterError as exc:
        raise _fail(str(exc).replace("filter.", "--").replace("_", "-")) from None
    except QueryError as exc:
        raise _fail(str(exc)) from None
    if server is not None and not fleet:
        raise _fail(f"{server!r}: a server is given only with --fleet")
    if fleet:
        _tail_fleet(_load(config), server, query, json_out, count)
        return
    history: Callable[[Any], list[Event]] | None = None
    if since:
        from bus.ctl_query import find_database, local_source

        try:
            history = local_source(find_database(_load(config)))
        except ValueError as exc:
            raise _fail(str(exc)) from None
    rd = _main(config).runtime_dir
    kinds = tuple(k for k in KINDS if flt.wants_kind(k))
    color = not json_out and sys.stdout.isatty()
    try:
        _run(_tail(rd, flt, kinds, json_out, color, count, last, query, history))
    except KeyboardInterrupt:
        pass
    except (ControlError, HistoryError) as exc:
        raise _fail(str(exc), 1) from None


def _tail_fleet(cfg: Config, server: str | None, query: Any, json_out: bool, count: int) -> None:
    """``bus-tail --fleet``: follow the fleet's stream (:func:`bus.fleet.fleet_follow`)."""
    color = not json_out and sys.stdout.isatty()

    async def follow() -> None:
        from bus.fleet import fleet_follow

        seen = 0
        async for event in fleet_follow(cfg, server, query, since=query.since):
            write_events([event], json_out, color)
            seen += 1
            if count and seen >= count:
                return

    try:
        _run(follow())
    except KeyboardInterrupt:
        pass
    except FleetError as exc:
        raise _fail(str(exc), 1) from None


_REPLAY_ALL = 1 << 40
"""``last`` that asks for the whole replay buffer."""


async def _tail(rd: str, flt: Filter, kinds: tuple[str, ...], json_out: bool, color: bool, count: int,
                last: int, query: Any = None, history: Callable[[Any], list[Event]] | None = None) -> None:
    """Print events from the bus (and first from the history, with ``history``).

    The seam of ``--since``: the subscription is opened first (hello: the broker fixes where each
    kind starts) with a replay of the broker's whole buffer, and only then is the history read.
    Every event published after the hello arrives live; every event published before it is either
    in the replay buffer or old enough to have left it, and the history receiver (which is itself a
    subscriber of that buffer, lagging a little) has stored those unless it lost them too. So
    history + buffer + live covers everything since ``--since``; the overlap (events both stored and
    still buffered) is removed by event id, and buffered events older than ``--since`` are skipped.
    """
    from bus.client import ControlClient, Subscriber

    control = ControlClient(protocol.endpoint(rd, protocol.CONTROL))
    plain = query is None or (query.since is None and not query.devs and not query.hosts)
    # JSON of events the subscription already chose only re-encodes them: typed events decode cheaper
    sub = Subscriber(protocol.endpoint(rd, protocol.EVENTS), control, kinds,
                     last=_REPLAY_ALL if history is not None else last,
                     decode=decode_wire if json_out and flt.kinds_only() and plain else protocol.unpackb)
    seen = 0
    printed: set[str] = set()
    try:
        if history is not None:
            await sub.start()
            stored = await asyncio.get_running_loop().run_in_executor(None, history, query)
            if count:
                stored = stored[:count]
            printed = {e["event_id"] for e in stored}
            if stored:
                write_events(stored, json_out, color)
            seen = len(stored)
            if count and seen >= count:
                return
        # the query's match holds the filter too: one pass, not the filter and then the query
        select = flt.select if plain else (lambda events: [e for e in events if e.get("event_type") == "BUS_EVENTS_LOST"
                                                            or query.match(e)])
        # a batch at a time: one filter pass, one write and one flush for whatever arrived together
        async for runs in sub.runs():
            events = [e for run in runs for e in select(run.events)]
            if printed:
                events = [e for e in events if e.get("event_id") not in printed]
            if count:
                events = events[: count - seen]
            if not events:
                continue
            write_events(events, json_out, color)
            seen += len(events)
            if count and seen >= count:
                return
    finally:
        sub.close()
        control.close()


def bus_tail() -> None:
    """Console script ``bus-tail``."""
    configure("warning")  # diagnostics go to stderr; stdout carries only the output
    tail_app(prog_name="bus-tail")


# -- bus-emit --------------------------------------------------------------------------------------

emit_app = typer.Typer(add_completion=True, help="Push events into the bus, as a collector would.")


@emit_app.command()
def emit_main(
    config: ConfigOpt = None,
    system: Annotated[str | None, typer.Option("--system", help="emit one event of this system")] = None,
    event_type: Annotated[str | None, typer.Option("--event-type", help="its event type")] = None,
    msg: Annotated[str, typer.Option("--msg", help="its message")] = "",
    severity: Annotated[str, typer.Option("--severity", help="info, warn or error")] = "info",
    dev_name: Annotated[str, typer.Option("--dev-name", help="its device name")] = "",
    dev_wwid: Annotated[str, typer.Option("--dev-wwid", help="its device WWID")] = "",
    kind: Annotated[str, typer.Option("--kind", help="raw or synthetic")] = "raw",
    source: Annotated[str | None, typer.Option("--source", help="producer name (default: $BUS_PLUGIN or bus-emit)")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="give up after this many seconds without busd (0: never)")] = 0,
    lines: Annotated[bool, typer.Option("--lines", help="one event per stdin line (its msg)")] = False,
    version: VersionOpt = False,
) -> None:
    """Read JSON Lines events on stdin (or build one from the options) and push them into the bus.

    Each event is kept until busd acknowledges it and sent again if busd restarts meanwhile.
    """
    ingest_only = config is None and not os.environ.get("BUS_CONTROL") and os.environ.get("BUS_INGEST")
    if config is None and (os.environ.get("BUS_CONTROL") or ingest_only):  # inside a plugin started by busd
        hostname = os.environ.get("BUS_HOSTNAME") or os.uname().nodename
        endpoint = os.environ.get("BUS_CONTROL", "")
    else:
        main = _main(config)
        hostname, endpoint = main.hostname, protocol.endpoint(main.runtime_dir, protocol.CONTROL)
    plugin = source or os.environ.get("BUS_PLUGIN") or "bus-emit"
    blocks: Any
    if (system or event_type) and not (system and event_type):
        raise _fail("--system and --event-type go together")
    if lines:
        if not system:
            raise _fail("--lines needs --system and --event-type")
        try:  # the options checked once, not per line
            new_event(system, event_type or "", severity=severity, kind=kind, dev_name=dev_name, dev_wwid=dev_wwid,
                      hostname=hostname)
        except EventError as exc:
            raise _fail(f"--{exc.key.replace('_', '-')}: {exc.reason}") from None

        def line_events(block: list[bytes], _number: int) -> tuple[list[Any], list[tuple[int, str]]]:
            texts = (line.decode("utf-8", "replace").rstrip("\r") for line in block)
            return [new_event(system, event_type or "", text, severity=severity, kind=kind, dev_name=dev_name,
                              dev_wwid=dev_wwid, hostname=hostname) for text in texts if text.strip()], []
        blocks = _stdin_blocks(line_events)
    elif system and event_type:
        try:
            one = new_event(system, event_type, msg, severity=severity, kind=kind, dev_name=dev_name,
                            dev_wwid=dev_wwid, hostname=hostname)
        except EventError as exc:
            raise _fail(f"--{exc.key.replace('_', '-')}: {exc.reason}") from None
        blocks = iter([([one], [])])
    else:
        if kind not in KINDS:
            raise _fail(f"--kind: {kind!r} is not one of {', '.join(KINDS)}")

        def json_events(block: list[bytes], number: int) -> tuple[list[Any], list[tuple[int, str]]]:
            return from_json_lines(block, first_number=number, hostname=hostname, kind=kind, source=plugin)
        blocks = _stdin_blocks(json_events)
    if ingest_only:
        bad = _push(os.environ["BUS_INGEST"], blocks, timeout)
        raise typer.Exit(1 if bad else 0)
    ok, bad = _run(_emit(endpoint, plugin, blocks, timeout))
    if bad:
        raise typer.Exit(1)
    if not ok:
        raise _fail(f"busd did not acknowledge every event within {timeout:g} s", 1)


_READ_SIZE = 1 << 16
Block = tuple[list[Any], list[tuple[int, str]]]


def _stdin_blocks(parse: Callable[[list[bytes], int], Block]) -> Any:
    """Yield ``(events, errors)`` for each block of stdin lines: what one read returned (up to 64 KiB).

    One read at a time, not a line: a file or a fast pipe costs one call per block, and a line
    that trickles in (``dmesg -w |``) still goes at once. Errors are ``(line number, reason)``.
    """
    fd = sys.stdin.fileno()
    rest = b""
    number = 1
    while True:
        chunk = os.read(fd, _READ_SIZE)
        if not chunk:
            if rest:
                yield parse([rest], number)
            return
        *block, rest = (rest + chunk).split(b"\n")
        if block:
            yield parse(block, number)
            number += len(block)


def _report(errors: list[tuple[int, str]]) -> int:
    for number, reason in errors:
        text = reason if reason.startswith("stdin line") else f"stdin line {number}: {reason}"
        typer.secho(f"error: {text}", err=True, fg=typer.colors.RED)
    return len(errors)


def _push(endpoint: str, blocks: Any, timeout: float) -> int:
    """Fire-and-forget to a plugin's ``$BUS_INGEST`` (PULL) when no control socket is known."""
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, int((timeout or 5.0) * 1000))  # what is queued gets out before exit
    sock.connect(endpoint)
    bad = 0
    for events, errors in blocks:
        bad += _report(errors)
        if events:  # a frame may hold one event or an array of them
            sock.send(protocol.packb(events[0] if len(events) == 1 else events))
    sock.close()
    ctx.term()
    return bad


_END: Any = object()


async def _emit(endpoint: str, plugin: str, blocks: Any, timeout: float) -> tuple[bool, int]:
    from bus.client import ControlClient, Publisher, permission_denied

    denied = permission_denied(endpoint)
    if denied:  # a Publisher would wait for busd forever
        raise _fail(denied, 1)
    client = ControlClient(endpoint)
    pub = Publisher(client, plugin)
    bad = 0
    loop = asyncio.get_running_loop()
    it = iter(blocks)
    try:
        while True:
            # stdin is read in a thread so a slow producer never blocks acknowledgements
            block = await loop.run_in_executor(None, next, it, _END)
            if block is _END:
                break
            events, errors = block
            bad += _report(errors)
            await pub.emit_many(events)
        ok = await pub.flush(timeout or None)
        bad += len(pub.rejected)
        for _index, reason in pub.rejected:
            typer.secho(f"error: event refused by busd: {reason}", err=True, fg=typer.colors.RED)
        return ok, bad
    finally:
        await pub.close(0)
        client.close()


def bus_emit() -> None:
    """Console script ``bus-emit``."""
    configure("warning")  # diagnostics go to stderr; stdout carries only the output
    emit_app(prog_name="bus-emit")


# -- busctl ----------------------------------------------------------------------------------------

ctl_app = typer.Typer(add_completion=True, no_args_is_help=True, help="Manage a running busd.")


_ctl_options: dict[str, Any] = {"config": None, "timeout": 10.0}


@ctl_app.callback()
def ctl_callback(
    config: ConfigOpt = None,
    timeout: Annotated[float, typer.Option("--timeout", envvar="BUSCTL_TIMEOUT",
                                           help="seconds to wait for busd's answer")] = 10.0,
    version: VersionOpt = False,
) -> None:
    """Manage a running busd over its control socket."""
    _ctl_options.update(config=config, timeout=timeout)


def _ctl(config: str | None, msg: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    from bus.client import request

    config = config or _ctl_options["config"]
    timeout = max(timeout or 0, _ctl_options["timeout"])
    try:
        return dict(_run(request(_control_endpoint(config), msg, timeout)))
    except ControlError as exc:
        raise _fail(str(exc), 1) from None


def _drops(d: dict[str, int]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(d.items())) or "-"


@ctl_app.command()
def status(config: ConfigOpt = None, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show busd and every plugin: state, pid, restarts, events in/out, drops and why, lag, bad input."""
    reply = _ctl(config, {"op": "status"})
    files = {p["name"]: _status_file(reply, p["name"]) for p in reply["plugins"]}
    for p in reply["plugins"]:
        if files[p["name"]].get("bad_input"):
            p["bad_input"] = files[p["name"]]["bad_input"]
    if json_out:
        typer.echo(json.dumps(reply, indent=2))
        return
    b = reply["broker"]
    typer.echo(f"busd {reply['version']} pid {reply['pid']} on {reply['hostname']}, up {b['uptime']:.0f} s, "
               f"config {reply['config']}")
    typer.echo(f"published: raw {b['head']['raw']}, synthetic {b['head']['synthetic']}; "
               f"replay buffer: raw {b['buffered']['raw']}, synthetic {b['buffered']['synthetic']}; "
               f"malformed frames: {b['malformed']}")
    if reply.get("last_reload_error"):
        typer.secho(f"last reload refused: {reply['last_reload_error']}", fg=typer.colors.RED)
    header = f"{'PLUGIN':20} {'TYPE':9} {'STATE':10} {'PID':>7} {'RESTARTS':>8} {'IN':>9} {'OUT':>9} {'LAG':>6}  DROPPED"
    typer.echo(header)
    for p in reply["plugins"]:
        lag = p.get("lag", p.get("delivery", {}).get("pending", ""))
        typer.echo(f"{p['name']:20} {p['type']:9} {p['state']:10} {p['pid'] or '-':>7} {p['restarts']:>8} "
                   f"{p['events_in']:>9} {p['events_out']:>9} {lag!s:>6}  {_drops(p['dropped'])}"
                   + (f"  [{_drops(p['counters'])}]" if p.get("counters") else "")
                   + (f"  ({p['last_exit']})" if p["state"] in ("failed", "restarting") and p["last_exit"] else ""))
        for key, text in _status_notes(files[p["name"]]):
            typer.secho(f"{'':20} {key}: {text}", fg=typer.colors.RED if key == "error" else typer.colors.YELLOW)
    for name, c in b["outside_producers"].items():
        typer.echo(f"{name:20} {'producer':9} {'-':10} {'-':>7} {'-':>8} {c['events_in']:>9} {'-':>9} {'':>6}  "
                   f"{_drops(c['dropped'])}")


def _status_file(reply: dict[str, Any], name: str) -> dict[str, Any]:
    """The status file a plugin wrote (:meth:`Plugin.write_status`), ``{}`` when there is none."""
    try:
        st = json.loads((Path(reply["runtime_dir"]) / "status" / f"{name}.json").read_text())
    except (KeyError, OSError, ValueError):
        return {}
    return st if isinstance(st, dict) else {}


def _status_notes(st: dict[str, Any]) -> list[tuple[str, str]]:
    """The ``error``, ``warning`` and bad-input counts of a plugin's status file, as lines to show."""
    notes = [(key, str(st[key])) for key in ("error", "warning") if st.get(key)]
    if isinstance(st.get("bad_input"), dict) and st["bad_input"]:
        notes.append(("bad input skipped", _drops(st["bad_input"])))
    return notes


@ctl_app.command()
def plugins(config: ConfigOpt = None, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the configured plugins and the file each comes from."""
    reply = _ctl(config, {"op": "plugins"})
    if json_out:
        typer.echo(json.dumps(reply["plugins"], indent=2))
        return
    for p in reply["plugins"]:
        what = f"builtin {p['builtin']}" if p["builtin"] else "exec " + " ".join(p["exec"])
        typer.echo(f"{p['name']:20} {p['type']:9} {what:40} {p['file']}" + ("" if p["enabled"] else " (disabled)"))


@ctl_app.command()
def reload(config: ConfigOpt = None) -> None:
    """Reload the configuration (like SIGHUP); a bad one is refused and the old one kept."""
    reply = _ctl(config, {"op": "reload"}, timeout=30)
    typer.echo(f"reloaded: added {reply['added'] or '-'}, removed {reply['removed'] or '-'}, "
               f"restarted {reply['restarted'] or '-'}")


def echo_rows(rows: list[Any], json_out: bool, empty: str) -> bool:
    """Print ``rows`` as JSON for ``--json``, or ``empty`` when there are none.

    Returns whether the caller still has to print the rows as a table.
    """
    if json_out:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return False
    if not rows:
        typer.echo(empty)
        return False
    return True


def show_statuses(config: str | None, builtin: str, json_out: bool, empty: str,
                  render: Callable[[dict[str, Any]], str]) -> bool:
    """``busctl X status``: print each instance's status file, rendered by ``render``; return whether there were any.

    An instance that has not written one yet is shown as such, the same way for every built-in.
    """
    rows = plugin_statuses(config, builtin)
    if echo_rows(rows, json_out, empty):
        for row in rows:
            typer.echo(f"{row['plugin']}: no status yet (is busd running it?)" if row.get("missing") else render(row))
    return bool(rows)


def plugin_statuses(config: str | None, builtin: str) -> list[dict[str, Any]]:
    """Return the status files (``Plugin.write_status``) of the configured instances of a built-in.

    For ``busctl`` subcommands of receivers (``busctl promoter status``...); an instance that has
    not written one yet is listed with ``{"plugin": NAME, "missing": true}``.
    """
    cfg = _load(config or _ctl_options["config"])
    out = []
    for name, plugin in cfg.plugins.items():
        if plugin.builtin != builtin:
            continue
        path = Path(cfg.main.runtime_dir) / "status" / f"{name}.json"
        try:
            out.append(dict(json.loads(path.read_text())))
        except (OSError, ValueError):
            out.append({"plugin": name, "missing": True})
    return out

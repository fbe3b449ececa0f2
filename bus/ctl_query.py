"""``busctl query`` and ``busctl dev info``: past events from the local history (receiver ``history``).

The database is found from the configuration: the ``history`` receiver instance (``--receiver NAME``
when there are several), its ``path`` option or ``<main.state_dir>/<instance>/history.sqlite``. It
is opened read-only: a command never creates, changes or locks the receiver's file.

Where the events come from is chosen in one place, :func:`choose_source`: the local database today,
the fleet's stream (``--fleet``, :mod:`bus.fleet`) later, both answering the same :class:`Query`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from bus.cli import _ctl_options, _fail, _load, _run, format_line, write_events
from bus.config import Config, plugin_options
from bus.event import Event
from bus.exceptions import FleetError, HistoryError
from bus.filter import Filter, FilterError
from bus.history import History
from bus.query import Query, QueryError, parse_time

__all__ = ["choose_source", "dev_app", "find_database", "parse_query", "query_main"]

Source = Callable[[Query], list[Event]]
"""Answers a query with events, oldest first."""


def find_database(cfg: Config, receiver: str | None = None) -> Path:
    """Return the database file of the configured ``history`` receiver (``receiver``: which one).

    Raises:
        ValueError: none configured, several and no ``receiver``, or ``receiver`` is not one.
    """
    from receivers.history import database_path

    found = {n: p for n, p in cfg.plugins.items() if p.type == "receiver" and p.builtin == "history"}
    if receiver is not None:
        if receiver not in found:
            raise ValueError(f"--receiver {receiver!r}: not a history receiver "
                             f"(configured: {', '.join(found) or 'none'})")
        found = {receiver: found[receiver]}
    if not found:
        raise ValueError("no history receiver configured (add a [plugins.NAME] table with builtin = \"history\")")
    if len(found) > 1:
        raise ValueError(f"several history receivers ({', '.join(found)}): choose one with --receiver NAME")
    [(name, plugin)] = found.items()
    options = plugin_options("receiver", "history", plugin.table)
    return database_path(options, Path(cfg.main.state_dir) / name, Path(plugin.file).parent)


def parse_query(system: list[str] | None, severity: str, event_type: list[str] | None, kind: str,
                since: str | None, until: str | None, dev: list[str] | None, host: list[str] | None,
                limit: int | None) -> Query:
    """Build a :class:`Query` from the command-line words (the same filter words as ``bus-tail``).

    Raises:
        QueryError: a bad word, named as its option (``--since``, ``--severity``...).
    """
    try:
        flt = Filter.parse({"system": system or None, "severity": severity, "event_type": event_type or None,
                            "kind": kind})
    except FilterError as exc:
        raise QueryError(str(exc).replace("filter.", "--").replace("_", "-")) from None
    if limit is not None and limit <= 0:
        raise QueryError(f"--limit {limit}: must be positive")
    now = time.time()
    return Query(flt, since=parse_time(since, now=now) if since else None,
                 until=parse_time(until, now=now, what="--until") if until else None,
                 devs=tuple(dev or ()), hosts=tuple(host or ()), limit=limit)


def local_source(path: Path) -> Source:
    """Return a source reading the history database at ``path`` (opened read-only at each query)."""
    def query(q: Query) -> list[Event]:
        db = History.open_readonly(path)
        try:
            return db.query(q)
        finally:
            db.close()
    return query


def fleet_source(cfg: Config, server: str | None) -> Source:
    """Return a source reading the fleet's JetStream stream (:func:`bus.fleet.fleet_query`)."""
    def query(q: Query) -> list[Event]:
        from bus.fleet import fleet_query

        events: list[Event] = _run(fleet_query(cfg, server, q))
        return events
    return query


def choose_source(cfg: Config, receiver: str | None, fleet: bool = False, server: str | None = None) -> Source:
    """The one place a command picks where past events come from: this node's history, or the fleet."""
    if fleet:
        return fleet_source(cfg, server)
    return local_source(find_database(cfg, receiver))


def _config() -> Config:
    return _load(_ctl_options["config"])


def query_main(
    since: Annotated[str | None, typer.Option("--since", help="oldest time: 10m, 1h, 2d, ISO time or epoch")] = None,
    until: Annotated[str | None, typer.Option("--until", help="newest time (excluded), same forms")] = None,
    system: Annotated[list[str] | None, typer.Option("--system", help="only this system (repeatable)")] = None,
    severity: Annotated[str, typer.Option("--severity", help="minimum severity: info, warn or error")] = "info",
    event_type: Annotated[list[str] | None, typer.Option("--event-type", help="only this type, may end in *")] = None,
    kind: Annotated[str, typer.Option("--kind", help="raw, synthetic or all")] = "all",
    dev: Annotated[list[str] | None, typer.Option("--dev", help="device name or WWID (repeatable)")] = None,
    host: Annotated[list[str] | None, typer.Option("--host", help="only this host (repeatable)")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="the newest N matching events")] = None,
    receiver: Annotated[str | None, typer.Option("--receiver", help="which history receiver's database")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    fleet: Annotated[bool, typer.Option("--fleet", help="every node's events, from NATS JetStream (receiver nats)")] = False,
    server: Annotated[str | None, typer.Argument(help="with --fleet: the NATS server (default: the nats receiver's)",
                                                 show_default=False)] = None,
) -> None:
    """Print stored events (receiver ``history``, or with ``--fleet`` the fleet's stream), oldest first,
    with the filter words of bus-tail."""
    try:
        q = parse_query(system, severity, event_type, kind, since, until, dev, host, limit)
    except QueryError as exc:
        raise _fail(str(exc)) from None
    if server is not None and not fleet:
        raise _fail(f"{server!r}: a server is given only with --fleet")
    cfg = _config()
    try:
        source = choose_source(cfg, receiver, fleet, server)
        events = source(q)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    except (HistoryError, FleetError) as exc:
        raise _fail(str(exc), 1) from None
    write_events(events, json_out, sys.stdout.isatty())


# -- busctl dev info -------------------------------------------------------------------------------

dev_app = typer.Typer(no_args_is_help=True, help="Devices: names, WWID, stacking and recent events.")

SEVERITY_ORDER = ("error", "warn", "info")


def device_info(db: History, dev: str, sysfs_root: str = "/sys", last: int = 5) -> dict[str, Any]:
    """Return what is known of ``dev`` (a name or a WWID): names, WWIDs, sysfs stacking, last events."""
    from parsers._kernel import Sysfs

    names, wwids = db.device_names(dev)
    if dev not in wwids:
        names.add(dev)
    sysfs = Sysfs(sysfs_root)
    kernel: dict[str, Any] = {}
    for name in sorted(names):
        kname = sysfs.kernel_name(name)
        if not (Path(sysfs_root) / "class" / "block" / kname).exists() and not (Path(sysfs_root) / "block" / kname).exists():
            continue
        wwid = sysfs.wwid(kname)
        if wwid:
            wwids.add(wwid)
        kernel[kname] = {"name": sysfs.name(kname), "wwid": wwid, "holders": sysfs.holders(kname),
                         "slaves": sysfs.slaves(kname)}
    devs = tuple(sorted(names | wwids))
    events: dict[str, list[Event]] = {}
    for sev in SEVERITY_ORDER:
        q = Query(Filter.parse({"severity": sev, "kind": "all"}), devs=devs, limit=last * 3)
        events[sev] = [e for e in db.query(q) if e.get("severity") == sev][-last:]
    return {"device": dev, "names": sorted(names), "wwids": sorted(wwids), "kernel": kernel, "events": events}


@dev_app.command("info")
def dev_info(
    dev: Annotated[str, typer.Argument(help="device name (sdf, mpatha, vg/lv) or WWID")],
    last: Annotated[int, typer.Option("--last", help="events shown per severity")] = 5,
    sysfs_root: Annotated[str, typer.Option("--sysfs-root", help="where sysfs is mounted")] = "/sys",
    receiver: Annotated[str | None, typer.Option("--receiver", help="which history receiver's database")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="the whole answer as one JSON object")] = False,
) -> None:
    """Show a device's names and WWID, its holders and slaves in sysfs and its last events by severity."""
    cfg = _config()
    try:
        db = History.open_readonly(find_database(cfg, receiver))
    except ValueError as exc:
        raise _fail(str(exc)) from None
    except HistoryError as exc:
        raise _fail(str(exc), 1) from None
    try:
        info = device_info(db, dev, sysfs_root, last)
    finally:
        db.close()
    if json_out:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    typer.echo(f"device: {dev}")
    typer.echo(f"  names: {', '.join(info['names']) or '-'}")
    typer.echo(f"  wwid:  {', '.join(info['wwids']) or '-'}")
    for kname, k in info["kernel"].items():
        typer.echo(f"  {kname}: name {k['name']}, holders {','.join(k['holders']) or '-'}, "
                   f"slaves {','.join(k['slaves']) or '-'}")
    for sev in SEVERITY_ORDER:
        typer.echo(f"  last {sev}:" + ("" if info["events"][sev] else " none"))
        for e in info["events"][sev]:
            typer.echo("    " + format_line(e, False))

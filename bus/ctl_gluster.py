"""``busctl gluster status``: what the ``gluster`` collectors listen on and what they received."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from bus.cli import ConfigOpt, plugin_statuses

app = typer.Typer(no_args_is_help=True, help="GlusterFS event collectors.")


@app.command()
def status(config: ConfigOpt = None, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show each gluster collector: sockets, addresses it could not bind, datagrams, malformed, node id."""
    rows = plugin_statuses(config, "gluster")
    if json_out:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo("no gluster collector is configured")
        raise typer.Exit(1)
    for row in rows:
        if row.get("missing"):
            typer.echo(f"{row['plugin']}: no status yet (not running?)")
            continue
        malformed = ",".join(f"{k}={v}" for k, v in sorted(row["malformed"].items())) or "0"
        typer.echo(f"{row['plugin']}: port {row['port']}, listening on {', '.join(row['listening']) or 'nothing'}; "
                   f"received {row['received']}, emitted {row['emitted']}, dropped {row['dropped']}, "
                   f"malformed {malformed}; nodeid {row['nodeid'] or 'unknown'}")
        for address, error in sorted(row["unbound"].items()):
            typer.secho(f"  cannot bind {address}: {error}", fg=typer.colors.RED)

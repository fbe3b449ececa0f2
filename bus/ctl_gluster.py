"""``busctl gluster status``: what the ``gluster`` collectors listen on and what they received."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from bus.cli import ConfigOpt, show_statuses

app = typer.Typer(no_args_is_help=True, help="GlusterFS event collectors.")


def format_status(row: dict[str, Any]) -> str:
    """Render the status file of a ``gluster`` collector as text."""
    malformed = ",".join(f"{k}={v}" for k, v in sorted(row["malformed"].items())) or "0"
    lines = [f"{row['plugin']}: port {row['port']}, listening on {', '.join(row['listening']) or 'nothing'}; "
             f"received {row['received']}, emitted {row['emitted']}, dropped {row['dropped']}, "
             f"malformed {malformed}; nodeid {row['nodeid'] or 'unknown'}"]
    lines += [typer.style(f"  cannot bind {address}: {error}", fg=typer.colors.RED)
              for address, error in sorted(row["unbound"].items())]
    return "\n".join(lines)


@app.command()
def status(config: ConfigOpt = None, json_out: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Show each gluster collector: sockets, addresses it could not bind, datagrams, malformed, node id."""
    if not show_statuses(config, "gluster", json_out, "no gluster collector is configured", format_status):
        raise typer.Exit(1)

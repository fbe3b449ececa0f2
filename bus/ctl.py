"""``busctl``: the daemon commands of :mod:`bus.cli` with the subcommands of the plugins that add some.

A module of its own so that ``bus-emit``, ``bus-tail`` and ``busd`` do not import what only
``busctl`` needs (tomlkit and the configuration editor, the webhook, PostgreSQL and promoter
commands): every command starts in a fraction of a second, and a shell script may call
``bus-emit`` once per event.
"""

from __future__ import annotations

from bus.cli import ctl_app
from bus.ctl_config import config_app, snippets_app
from bus.ctl_gluster import app as _gluster_app
from bus.ctl_pg import app as _pg_app
from bus.ctl_pg import keygen as _pg_keygen
from bus.ctl_promoter import app as _promoter_app
from bus.ctl_query import dev_app, query_main
from bus.ctl_webhook import webhook_app
from bus.log import configure

__all__ = ["busctl", "ctl_app"]

ctl_app.add_typer(config_app, name="config")
ctl_app.add_typer(snippets_app)
ctl_app.add_typer(_gluster_app, name="gluster")
ctl_app.add_typer(_promoter_app, name="promoter")
ctl_app.add_typer(webhook_app, name="webhook")
ctl_app.add_typer(_pg_app, name="pg")
ctl_app.command("keygen")(_pg_keygen)
ctl_app.command("query")(query_main)
ctl_app.add_typer(dev_app, name="dev")


def busctl() -> None:
    """Console script ``busctl``."""
    configure("warning")  # diagnostics go to stderr; stdout carries only the output
    ctl_app(prog_name="busctl")

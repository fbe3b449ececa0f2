"""``busctl pg status`` (what the ``pgcluster`` receivers know and decided) and ``busctl keygen``."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(no_args_is_help=True, help="PostgreSQL switch-over: the cluster view and routing decisions.")


def _ago(ts: Any, now: float) -> str:
    return f"{now - float(ts):.1f} s ago" if ts else "never"


def _view_line(view: dict[str, Any]) -> str:
    primaries = view.get("primaries") or []
    split = f", SPLIT BRAIN ({' and '.join(primaries)} claim primary)" if view.get("split_brain") else ""
    return (f"{view.get('node', '?')} ({view.get('role', '?')}): primary {view.get('primary') or 'unknown'}, "
            f"standbys {', '.join(view.get('standbys') or []) or 'none'}, "
            f"down {', '.join(view.get('down') or []) or 'none'}, witness {view.get('witness') or '-'}{split}")


def format_status(st: dict[str, Any], now: float | None = None) -> str:
    """Render the status file of a ``pgcluster`` instance as text (``busctl`` shows a missing one itself)."""
    now = time.time() if now is None else now
    lines: list[str] = []
    serving = "serving" if st.get("serving") else "NOT serving"
    lines.append(f"{st['plugin']} on {st.get('hostname', '?')}: {st.get('role')} {st.get('node')}, "
                 f"{serving} {st.get('listen')} (answered {st.get('answered', 0)}, refused keys {st.get('denied', 0)}; "
                 f"status {_ago(st.get('updated'), now)})")
    view = st.get("view") or {}
    lines.append(f"  local view: {_view_line(view)}")
    for name, node in (view.get("nodes") or {}).items():
        tl = node.get("timeline")
        lines.append(f"    {name}: {node.get('role')}" + (f", follows {node['primary']}" if node.get("primary") else "")
                     + (f", timeline {tl}" if tl is not None else "") + (f", lsn {node['lsn']}" if node.get("lsn") else "")
                     + f", last seen {_ago(node.get('last_seen'), now)} ({node.get('event') or '-'})")
    for name, peer in (st.get("peers") or {}).items():
        head = f"  {peer.get('kind')} {name} ({peer.get('endpoint')}): "
        if peer.get("error"):
            lines.append(head + f"UNREACHABLE: {peer['error']} (asked {_ago(peer.get('asked'), now)}, "
                                f"last answer {_ago(peer.get('answered'), now)})")
        elif peer.get("view"):
            lines.append(head + f"{_view_line(peer['view'])} (answered {_ago(peer.get('answered'), now)})")
        else:
            lines.append(head + "not asked yet")
    for name, told in (st.get("told") or {}).items():
        if told.get("view"):
            lines.append(f"  {name} asked us {_ago(told.get('time'), now)}: {_view_line(told['view'])}")
    d = st.get("decision")
    if d:
        lines.append(f"  decision ({_ago(st.get('decided_at'), now)}): {d['outcome']}, "
                     f"reads {'allowed' if d['allow_reads'] else 'denied'}, primary {d['primary'] or 'not agreed'}; "
                     f"{d['rule']}: {d['reason']}")
    elif st.get("role") == "node":
        lines.append("  decision: none yet")
    return "\n".join(lines)


@app.command()
def status(json_out: Annotated[bool, typer.Option("--json", help="the status files as a JSON list")] = False) -> None:
    """Show each pgcluster receiver: its view, each neighbour's and the witness's answer, the last decision."""
    from bus.cli import show_statuses

    if not show_statuses(None, "pgcluster", json_out, "no pgcluster receiver is configured", format_status):
        raise typer.Exit(1)


def keygen(
    directory: Annotated[Path, typer.Option("--dir", help="where to write the key pair")] = Path("."),
    name: Annotated[str, typer.Option("--name", help="file names: NAME.key (public), NAME.key_secret")] = "busd",
    force: Annotated[bool, typer.Option("--force", help="replace an existing key pair")] = False,
) -> None:
    """Write a CURVE key pair for pgcluster's neighbour inquiry (ZeroMQ certificate files, the secret one 0600).

    Give NAME.key to the neighbours and the witness (their ``public_key``); keep NAME.key_secret
    (this node's ``secret_key``).
    """
    import zmq.auth

    public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
    existing = [str(p) for p in (public, secret) if p.exists()]
    if existing and not force:
        typer.secho(f"refusing to overwrite {', '.join(existing)} (use --force)", fg=typer.colors.RED, err=True)
        raise typer.Exit(1)
    directory.mkdir(parents=True, exist_ok=True)
    for p in (public, secret):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    old = os.umask(0o077)  # the secret file is never readable by others, not even for a moment
    try:
        zmq.auth.create_certificates(directory, name)
    finally:
        os.umask(old)
    public.chmod(0o644)
    secret.chmod(0o600)
    typer.echo(f"public key: {public}\nsecret key: {secret}")

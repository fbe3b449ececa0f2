"""``busctl promoter ...``: what the ``promoter`` receivers do with their DRBD resources."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

app = typer.Typer(no_args_is_help=True, help="DRBD promoter: resources, services, last actions.")


def _yes(value: Any) -> str:
    return "-" if value is None else ("yes" if value else "no")


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def format_status(st: dict[str, Any], now: float | None = None) -> str:
    """Render the status file of a promoter instance as text (``busctl`` shows a missing one itself)."""
    now = time.time() if now is None else now
    lines: list[str] = []
    age = now - float(st.get("updated", now))
    lines.append(f"{st['plugin']} on {st.get('hostname', '?')} (status of {age:.0f} s ago)")
    for name, res in st.get("resources", {}).items():
        lines.append(f"  {name}: {res['role']}, may promote: {_yes(res['may_promote'])}, "
                     f"quorum: {_yes(res['quorum'])}, disks: {','.join(map(str, res['disk_states'])) or '-'}"
                     + (f"  [{res['busy']}]" if res.get("busy") else ""))
        services = ", ".join(f"{s['name']} {s['state']}" for s in res["services"]) or "none"
        lines.append(f"    services ({res['runner']}): {services}")
        last = res.get("last_action")
        if last:
            lines.append(f"    last action: {_when(last['time'])} {last['action']} "
                         f"{'ok' if last['ok'] else 'FAILED'} ({last['reason']}): {last['detail']}")
        else:
            lines.append("    last action: none")
    return "\n".join(lines)


@app.command()
def status(json_out: Annotated[bool, typer.Option("--json", help="the status files as a JSON list")] = False) -> None:
    """Show each promoted resource: role, may-promote, services and their state, last action and why."""
    from bus.cli import show_statuses

    show_statuses(None, "promoter", json_out, "no promoter plugin configured", format_status)

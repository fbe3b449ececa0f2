"""What the DRBD receivers share about the ``state`` the ``drbd`` parser's events carry."""

from __future__ import annotations

from typing import Any


def flag(value: Any) -> bool:
    """A boolean of the state: ``True``, or ``"yes"``/``"true"`` from a less strict producer."""
    return value is True or (isinstance(value, str) and value.lower() in ("yes", "true"))


def well_formed(state: Any) -> bool:
    """Whether ``state`` has the shape of ``drbdsetup status --json`` where it matters: lists of maps."""
    def maps(value: Any) -> bool:
        return value is None or (isinstance(value, list) and all(isinstance(v, dict) for v in value))
    return (isinstance(state, dict) and maps(state.get("devices")) and maps(state.get("connections"))
            and all(maps(c.get("peer_devices")) for c in state.get("connections") or []))

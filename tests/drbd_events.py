"""Synthetic DRBD events shaped like the drbd parser's contract, for testing DRBD receivers.

A resource state is a dict as ``drbdsetup status --json`` prints one resource (``resource``,
``device``, ``connection`` and ``peer_device`` build its parts); :func:`drbd_event` wraps a state
into a complete synthetic event (``system = "drbd"``, ``kind = "synthetic"``, ``dev_name``,
``dev_wwid``, ``extensions`` with ``resource``, ``object``, ``action``, ``old``, ``new`` and
``state``), which ``bus-emit`` accepts as a JSON line and a receiver's ``handle`` as is.
"""

from __future__ import annotations

import copy
from typing import Any

from bus.event import new_event


def device(volume: int = 0, disk_state: str = "UpToDate", *, quorum: bool = True, minor: int | None = None,
           client: bool = False, size: int = 1048576, read: int = 0, written: int = 0, **extra: Any) -> dict[str, Any]:
    """One entry of ``devices`` (sizes and I/O in KiB, as drbdsetup prints them)."""
    return {"volume": volume, "minor": 1000 + volume if minor is None else minor, "disk-state": disk_state,
            "client": client, "quorum": quorum, "open": False, "size": size, "read": read, "written": written,
            "al-writes": 0, "bm-writes": 0, "upper-pending": 0, "lower-pending": 0, **extra}


def peer_device(volume: int = 0, peer_disk_state: str = "UpToDate", *, replication_state: str = "Established",
                out_of_sync: int = 0, **extra: Any) -> dict[str, Any]:
    """One entry of a connection's ``peer_devices``."""
    return {"volume": volume, "replication-state": replication_state, "peer-disk-state": peer_disk_state,
            "peer-client": False, "resync-suspended": "no", "received": 0, "sent": 0, "out-of-sync": out_of_sync,
            "pending": 0, "unacked": 0, "percent-in-sync": 100.0, **extra}


def connection(name: str, peer_node_id: int = 1, state: str = "Connected", *, peer_role: str = "Secondary",
               peer_devices: list[dict[str, Any]] | None = None, **extra: Any) -> dict[str, Any]:
    """One entry of ``connections`` (``name`` is the peer's host name)."""
    return {"peer-node-id": peer_node_id, "name": name, "connection-state": state, "congested": False,
            "peer-role": peer_role, "ap-in-flight": 0, "rs-in-flight": 0, "paths": [],
            "peer_devices": [peer_device()] if peer_devices is None else peer_devices, **extra}


def resource(name: str = "r0", role: str = "Secondary", *, may_promote: bool = False, promotion_score: int = 10102,
             devices: list[dict[str, Any]] | None = None, connections: list[dict[str, Any]] | None = None,
             **extra: Any) -> dict[str, Any]:
    """A complete resource state (one volume and one connected peer ``node2`` by default)."""
    return {"name": name, "role": role, "suspended": False, "write-ordering": "flush", "may_promote": may_promote,
            "promotion_score": promotion_score, "force-io-failures": False,
            "devices": [device()] if devices is None else devices,
            "connections": [connection("node2")] if connections is None else connections, **extra}


def changed(state: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A deep copy of ``state`` with resource-level keys changed (``may_promote=True``...)."""
    out = copy.deepcopy(state)
    out.update({_RESOURCE_PROPS.get(k, k): v for k, v in changes.items()})
    return out


def with_device(state: dict[str, Any], volume: int = 0, **changes: Any) -> dict[str, Any]:
    """A deep copy of ``state`` with keys of one device changed (``disk_state`` for ``disk-state``)."""
    out = copy.deepcopy(state)
    dev = next(d for d in out["devices"] if d["volume"] == volume)
    dev.update({k.replace("_", "-"): v for k, v in changes.items()})
    return out


_RESOURCE_PROPS = {"role": "role", "may_promote": "may_promote", "promotion_score": "promotion_score",
                   "suspended": "suspended", "write_ordering": "write-ordering", "force_io_failures": "force-io-failures"}
_DEVICE_PROPS = {"disk_state": "disk-state", "client": "client", "quorum": "quorum", "open": "open", "size": "size"}


def drbd_event(event_type: str, state: dict[str, Any] | None, *, resource_name: str | None = None,
               object: str = "resource", action: str = "change", volume: int | None = None,
               before: dict[str, Any] | None = None, severity: str = "info", msg: str = "",
               **extensions: Any) -> dict[str, Any]:
    """A synthetic DRBD event carrying ``state`` (``None`` for a destroyed resource).

    ``old``/``new`` are computed from ``before`` (the previous state) and ``state`` for resource and
    device events, with drbd-reactor's property names.
    """
    name = resource_name or (state or before or {}).get("name", "r0")
    dev_name = name if volume is None else f"{name}/{volume}"
    ext: dict[str, Any] = {"resource": name, "object": object, "action": action}
    if volume is not None:
        ext["volume"] = volume
        ext["minor"] = 1000 + volume
    props, pick = (_DEVICE_PROPS, lambda s: next(d for d in s["devices"] if d["volume"] == volume)) \
        if object == "device" and volume is not None else (_RESOURCE_PROPS, lambda s: s)
    ext["old"] = {k: pick(before).get(v) for k, v in props.items()} if before else {}
    ext["new"] = {k: pick(state).get(v) for k, v in props.items()} if state else {}
    if state is not None:
        ext["state"] = state
    ext.update(extensions)
    return new_event("drbd", event_type, msg or f"{dev_name}: {event_type.lower()}", severity=severity,
                     kind="synthetic", hostname="testhost", dev_name=dev_name,
                     dev_wwid=f"drbd:{name}" if volume is None else f"drbd:{name}/{volume}", extensions=ext)


def may_promote(before: dict[str, Any], value: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """``DRBD_MAY_PROMOTE_CHANGED`` from ``before``; returns ``(event, new state)``."""
    after = changed(before, may_promote=value)
    return drbd_event("DRBD_MAY_PROMOTE_CHANGED", after, before=before), after


def quorum(before: dict[str, Any], value: bool, volume: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """``DRBD_QUORUM_LOST`` / ``DRBD_QUORUM_REGAINED`` of one volume; returns ``(event, new state)``."""
    after = with_device(before, volume, quorum=value)
    kind = "DRBD_QUORUM_REGAINED" if value else "DRBD_QUORUM_LOST"
    return drbd_event(kind, after, before=before, object="device", volume=volume,
                      severity="info" if value else "error"), after


def role(before: dict[str, Any], value: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """``DRBD_ROLE_CHANGED``; a Primary may not promote, a Secondary keeps ``may_promote``."""
    after = changed(before, role=value, may_promote=False if value == "Primary" else before["may_promote"])
    return drbd_event("DRBD_ROLE_CHANGED", after, before=before), after

"""GlusterFS events on the wire: the event table and the datagram format (not a plugin).

Shared by the ``gluster`` collector (which checks datagrams) and parser (which can also take a
datagram replayed as a plain line). GlusterFS sends one UDP datagram per event::

    <unix-ts> <index> key=value;key=value

built by ``_gf_event`` in libglusterfs (``"%u %d %s"``: the CLI, glusterd, bricks, clients) and by
``gf_event`` of the Python library ``gfevents`` (geo-replication, the snapshot scheduler).
``<index>`` is a position in :data:`EVENTS` (GlusterFS ``events/eventskeygen.py``; new types were
only ever appended). ``glustereventsd`` strips the datagram, splits it at the first two spaces and
maps the index to the name without its ``EVENT_`` prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from bus.exceptions import BadInput

__all__ = ["DEFAULT_PORT", "EVENTS", "Datagram", "event_name", "parse_datagram"]

DEFAULT_PORT = 55555
"""The port GlusterFS sends to (``EVENT_PORT``, fixed at build time); releases before 2021 used 24009."""

EVENTS: tuple[str, ...] = (
    "PEER_ATTACH", "PEER_DETACH", "VOLUME_CREATE", "VOLUME_START", "VOLUME_STOP", "VOLUME_DELETE", "VOLUME_SET",
    "VOLUME_RESET", "BRICK_RESET_START", "BRICK_RESET_COMMIT", "BRICK_REPLACE", "GEOREP_CREATE", "GEOREP_START",
    "GEOREP_STOP", "GEOREP_PAUSE", "GEOREP_RESUME", "GEOREP_DELETE", "GEOREP_CONFIG_SET", "GEOREP_CONFIG_RESET",
    "BITROT_ENABLE", "BITROT_DISABLE", "BITROT_SCRUB_THROTTLE", "BITROT_SCRUB_FREQ", "BITROT_SCRUB_OPTION",
    "BITROT_SCRUB_ONDEMAND", "QUOTA_ENABLE", "QUOTA_DISABLE", "QUOTA_SET_USAGE_LIMIT", "QUOTA_SET_OBJECTS_LIMIT",
    "QUOTA_REMOVE_USAGE_LIMIT", "QUOTA_REMOVE_OBJECTS_LIMIT", "QUOTA_ALERT_TIME", "QUOTA_SOFT_TIMEOUT",
    "QUOTA_HARD_TIMEOUT", "QUOTA_DEFAULT_SOFT_LIMIT", "SNAPSHOT_CREATED", "SNAPSHOT_CREATE_FAILED",
    "SNAPSHOT_ACTIVATED", "SNAPSHOT_ACTIVATE_FAILED", "SNAPSHOT_DEACTIVATED", "SNAPSHOT_DEACTIVATE_FAILED",
    "SNAPSHOT_SOFT_LIMIT_REACHED", "SNAPSHOT_HARD_LIMIT_REACHED", "SNAPSHOT_RESTORED", "SNAPSHOT_RESTORE_FAILED",
    "SNAPSHOT_DELETED", "SNAPSHOT_DELETE_FAILED", "SNAPSHOT_CLONED", "SNAPSHOT_CLONE_FAILED",
    "SNAPSHOT_CONFIG_UPDATED", "SNAPSHOT_CONFIG_UPDATE_FAILED", "SNAPSHOT_SCHEDULER_INITIALISED",
    "SNAPSHOT_SCHEDULER_INIT_FAILED", "SNAPSHOT_SCHEDULER_ENABLED", "SNAPSHOT_SCHEDULER_ENABLE_FAILED",
    "SNAPSHOT_SCHEDULER_DISABLED", "SNAPSHOT_SCHEDULER_DISABLE_FAILED", "SNAPSHOT_SCHEDULER_SCHEDULE_ADDED",
    "SNAPSHOT_SCHEDULER_SCHEDULE_ADD_FAILED", "SNAPSHOT_SCHEDULER_SCHEDULE_EDITED",
    "SNAPSHOT_SCHEDULER_SCHEDULE_EDIT_FAILED", "SNAPSHOT_SCHEDULER_SCHEDULE_DELETED",
    "SNAPSHOT_SCHEDULER_SCHEDULE_DELETE_FAILED", "SVC_MANAGER_FAILED", "SVC_RECONFIGURE_FAILED", "SVC_CONNECTED",
    "SVC_DISCONNECTED", "PEER_STORE_FAILURE", "PEER_RPC_CREATE_FAILED", "PEER_REJECT", "PEER_CONNECT",
    "PEER_DISCONNECT", "PEER_NOT_FOUND", "UNKNOWN_PEER", "BRICK_START_FAILED", "BRICK_STOP_FAILED",
    "BRICK_DISCONNECTED", "BRICK_CONNECTED", "BRICKPATH_RESOLVE_FAILED", "NOTIFY_UNKNOWN_OP", "QUORUM_LOST",
    "QUORUM_REGAINED", "REBALANCE_START_FAILED", "REBALANCE_STATUS_UPDATE_FAILED", "IMPORT_QUOTA_CONF_FAILED",
    "IMPORT_VOLUME_FAILED", "IMPORT_BRICK_FAILED", "COMPARE_FRIEND_VOLUME_FAILED", "NFS_GANESHA_EXPORT_FAILED",
    "EC_MIN_BRICKS_NOT_UP", "EC_MIN_BRICKS_UP", "GEOREP_FAULTY", "GEOREP_CHECKPOINT_COMPLETED", "GEOREP_ACTIVE",
    "GEOREP_PASSIVE", "QUOTA_CROSSED_SOFT_LIMIT", "BITROT_BAD_FILE", "CLIENT_CONNECT", "CLIENT_AUTH_REJECT",
    "CLIENT_DISCONNECT", "POSIX_SAME_GFID", "POSIX_ALREADY_PART_OF_VOLUME", "POSIX_BRICK_NOT_IN_VOLUME",
    "POSIX_BRICK_VERIFICATION_FAILED", "POSIX_ACL_NOT_SUPPORTED", "POSIX_HEALTH_CHECK_FAILED", "AFR_QUORUM_MET",
    "AFR_QUORUM_FAIL", "AFR_SUBVOL_UP", "AFR_SUBVOLS_DOWN", "AFR_SPLIT_BRAIN", "TIER_ATTACH", "TIER_ATTACH_FORCE",
    "TIER_DETACH_START", "TIER_DETACH_STOP", "TIER_DETACH_COMMIT", "TIER_DETACH_FORCE", "TIER_PAUSE", "TIER_RESUME",
    "TIER_WATERMARK_HI", "TIER_WATERMARK_DROPPED_TO_MID", "TIER_WATERMARK_RAISED_TO_MID",
    "TIER_WATERMARK_DROPPED_TO_LOW", "VOLUME_ADD_BRICK", "VOLUME_ADD_BRICK_FAILED", "VOLUME_REMOVE_BRICK_START",
    "VOLUME_REMOVE_BRICK_START_FAILED", "VOLUME_REMOVE_BRICK_COMMIT", "VOLUME_REMOVE_BRICK_COMMIT_FAILED",
    "VOLUME_REMOVE_BRICK_STOP", "VOLUME_REMOVE_BRICK_STOP_FAILED", "VOLUME_REMOVE_BRICK_FORCE",
    "VOLUME_REMOVE_BRICK_FORCE_FAILED", "VOLUME_REMOVE_BRICK_FAILED", "VOLUME_REBALANCE_START",
    "VOLUME_REBALANCE_STOP", "VOLUME_REBALANCE_FAILED", "VOLUME_REBALANCE_COMPLETE", "TIER_START",
    "TIER_START_FORCE", "DHT_DISK_USAGE", "DHT_INODES_USAGE",
)
"""Event names by index: ``EVENTS[2] == "VOLUME_CREATE"`` (GlusterFS 10 and 11 know these 142)."""

_TS = re.compile(r"[0-9]{1,19}")
_INDEX = re.compile(r"[0-9]{1,9}")


def event_name(index: int) -> str:
    """Return the name of an event index, ``UNKNOWN_<index>`` for one this table does not know."""
    return EVENTS[index] if 0 <= index < len(EVENTS) else f"UNKNOWN_{index}"




@dataclass(frozen=True)
class Datagram:
    """One event datagram, checked: its text (stripped), time stamp, index and key/value message."""

    text: str
    ts: int
    index: int
    message: str


def parse_datagram(data: bytes, max_size: int = 65536) -> Datagram:
    """Check and split one datagram like ``glustereventsd`` does, but strictly.

    The datagram is stripped of surrounding white space and decoded as UTF-8; the time stamp and
    the index must be plain decimal numbers (``%u``/``%d`` is all GlusterFS writes, so a sign, a
    fraction or anything else is refused rather than guessed); the key/value message after the
    second space may be empty (GlusterFS itself never sends an empty one).

    Raises:
        BadInput: ``oversized``, ``not_utf8``, ``empty``, ``no_index``,
            ``bad_timestamp`` or ``bad_index``, with the offending part.
    """
    if len(data) > max_size:
        raise BadInput("oversized", f"{len(data)} bytes, more than max_size {max_size}")
    try:
        text = data.strip().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput("not_utf8", f"byte {exc.start} is not UTF-8: {data[:80]!r}") from None
    if not text:
        raise BadInput("empty", "an empty datagram")
    parts = text.split(" ", 2)
    if len(parts) < 2:
        raise BadInput("no_index", f"no event index after the time stamp: {text[:80]!r}")
    if not _TS.fullmatch(parts[0]):
        raise BadInput("bad_timestamp", f"time stamp {parts[0][:40]!r} is not a decimal number")
    if not _INDEX.fullmatch(parts[1]):
        raise BadInput("bad_index", f"event index {parts[1][:40]!r} is not a decimal number")
    return Datagram(text, int(parts[0]), int(parts[1]), parts[2] if len(parts) == 3 else "")

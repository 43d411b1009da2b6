"""SQL text and rules both store engines share: enrolment decisions, row mapping, the readings query."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import cbor2

from edge.protocol.types import Channel
from hub.store import Device, EnrolError, EnrolOutcome, IncomingBatch, status_columns

__all__ = [
    "DEVICE_COLUMNS",
    "channel_map",
    "decide_enrolment",
    "device_from_row",
    "from_uint_column",
    "quarantine_rows",
    "status_change_allowed",
    "status_row",
    "to_uint_column",
]

# OXP uints (batch identities, counters) reach 2^64 - 1; both engines' integers are signed 64-bit.
# Shifting by 2^63 maps 0 .. 2^64 - 1 onto the signed range exactly and keeps the order, so
# comparisons (the newest boot epoch and sequence) and the batch primary key work in SQL as before.
_UINT_SHIFT = 2**63


def to_uint_column(value: int | None) -> int | None:
    """An OXP uint as its column holds it (schema migration 4); None stays NULL."""
    return None if value is None else value - _UINT_SHIFT


def from_uint_column(value: int | None) -> int | None:
    """The OXP uint a column holds (schema migration 4); NULL is None."""
    return None if value is None else int(value) + _UINT_SHIFT


_STATUS_UINTS = ("boot_epoch", "unclean_stops", "spool_batches", "spool_bytes", "readings_dropped")


def status_row(report: Mapping[str, Any]) -> dict[str, Any]:
    """status_columns with its uints as their columns hold them; a count outside 0 .. 2^64 - 1 is ignored like an ill-typed one."""
    cols = status_columns(report)
    for name in _STATUS_UINTS:
        value = cols[name]
        cols[name] = to_uint_column(value) if value is not None and 0 <= value < 2 * _UINT_SHIFT else None
    return cols

DEVICE_COLUMNS = (
    "device_id, key_id, status, fleet, enrolled_ms, last_seen_ms, software_version, boot_epoch, last_seq,"
    " unclean_stops, readings_dropped, spool_batches, spool_bytes, policy_digest, config_digest, applied_etag, errors,"
    " counters, readings_stored, batches_stored, duplicates, status_ms, site, latitude, longitude"
)


def device_from_row(row: Sequence[Any]) -> Device:
    """A Device from a row selected with DEVICE_COLUMNS (shared with the PostgreSQL store)."""
    return Device(
        device_id=row[0],
        key_id=bytes(row[1]),
        status=row[2],
        fleet=row[3],
        enrolled_ms=row[4],
        last_seen_ms=row[5],
        software_version=row[6],
        boot_epoch=from_uint_column(row[7]),
        last_seq=from_uint_column(row[8]),
        unclean_stops=from_uint_column(row[9]),
        readings_dropped=from_uint_column(row[10]),
        spool_batches=from_uint_column(row[11]),
        spool_bytes=from_uint_column(row[12]),
        policy_digest=row[13],
        config_digest=row[14],
        applied_etag=row[15],
        errors=tuple(json.loads(row[16])),
        counters=json.loads(row[17]),
        readings_stored=row[18],
        batches_stored=row[19],
        duplicates=row[20],
        status_ms=row[21],
        site=row[22],
        latitude=row[23],
        longitude=row[24],
    )


def decide_enrolment(
    token: Sequence[Any] | None,
    existing: Sequence[Any] | None,
    key_revoked: bool,
    key_owner: str | None,
    *,
    device_id: str,
    key_id: bytes,
    now_ms: int,
) -> EnrolOutcome | tuple[str, str]:
    """The enrolment rules, shared by both engines.

    Returns the outcome of an idempotent retry, or (status, fleet) for a new
    registration; raises EnrolError when the hub must refuse.  ``token`` is
    (id, uses_left, expires_ms, approve, fleet); ``existing`` is (key_id, status).
    """
    if token is None:
        raise EnrolError("bad_token", "the enrolment token is not known to this hub")
    if existing is not None and bytes(existing[0]) == key_id and existing[1] != "revoked":
        # A device that lost the answer retries with the same key: same answer, no token use.
        return EnrolOutcome(device_id, key_id, existing[1])
    if token[2] <= now_ms:
        raise EnrolError("expired_token", "the enrolment token has expired; ask city IT for a new one")
    if token[1] <= 0:
        raise EnrolError("used_token", "the enrolment token has been used up; ask city IT for a new one")
    if key_revoked:
        raise EnrolError("conflict", "this public key was revoked; generate a new key pair on the device")
    if existing is not None and existing[1] != "revoked":
        raise EnrolError("conflict", f"device id {device_id!r} is already enrolled with another key; revoke it first to replace its key")
    if key_owner is not None and key_owner != device_id:
        raise EnrolError("conflict", "this public key is already enrolled under another device id")
    return ("active" if token[3] else "pending", token[4])


def status_change_allowed(current: str, new: str) -> bool:
    """Approve a pending device, or revoke any device that is not revoked yet; a revoked key stays revoked."""
    return (current == "pending" and new == "active") or (new == "revoked" and current != "revoked")


def channel_map(batch: IncomingBatch, channel_id: Callable[[Channel], int]) -> dict[str, int]:
    """Numeric channel ids for every channel the batch declares or uses (an undeclared one is taken as declared bare)."""
    ids = {ch.id: channel_id(ch) for ch in batch.channels}
    for reading in batch.readings:
        if reading.channel not in ids:
            ids[reading.channel] = channel_id(Channel(reading.channel, unit=reading.unit))
    return ids


def quarantine_rows(batch: IncomingBatch) -> list[tuple[Any, ...]]:
    """The quarantine rows of a batch's refused readings: (device_id, key_id, boot_epoch, seq, channel, unit, reading, reason, received_ms)."""
    return [
        (batch.device_id, batch.key_id, to_uint_column(batch.boot_epoch), to_uint_column(batch.seq), q.reading.channel, q.reading.unit,
         cbor2.dumps([q.reading.ts_ms, q.reading.value, None if q.reading.quality is None else int(q.reading.quality)]), q.reason,
         batch.received_ms)
        for q in batch.quarantined
    ]

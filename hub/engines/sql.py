"""SQL text and rules both store engines share: enrolment decisions, row mapping, the readings query."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, overload

import cbor2

from edge.protocol import Answer
from edge.protocol.types import Channel
from hub.accounts import Account, NotPermitted, Permission
from hub.audit import AuditEntry, document_digest
from hub.chunks import split_chunk
from hub.models import Device, EnrolError, EnrolOutcome, IncomingBatch

__all__ = [
    "ACCOUNT_COLUMNS",
    "EXPORT_LEASE",
    "OUTBOX_GRACE_MS",
    "export_pending_query",
    "AUDIT_COLUMNS",
    "DEVICE_COLUMNS",
    "ExpiryPlan",
    "account_from_row",
    "audit_from_row",
    "desired_entry",
    "expire_query",
    "expiry_plan",
    "ring_entry",
    "status_entry",
    "token_entry",
    "dumps",
    "notice_location",
    "status_columns",
    "batch_channels",
    "channel_map",
    "decide_enrolment",
    "device_from_row",
    "from_uint_column",
    "quarantine_rows",
    "status_change_allowed",
    "status_row",
    "to_uint_column",
]


# Each device's newest notice (its id), for the public register: one device's many notices do not push the others out.
LATEST_NOTICES = "SELECT max(id) FROM notices GROUP BY device_id"


def dumps(value: Any) -> str:
    """Canonical compact JSON for columns that hold documents."""
    if type(value) is dict and not value:
        return "{}"  # a batch's counters, mostly: json.dumps costs a few microseconds for these two characters
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _hex(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    return str(value or "")


def _count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


def status_columns(report: Mapping[str, Any]) -> dict[str, Any]:
    """The device columns a status report updates, from its fields (unknown or ill-typed fields are ignored)."""
    errors = report.get("errors") or []
    if not isinstance(errors, list | tuple):
        errors = [errors]
    return {
        "software_version": str(report.get("software_version") or "")[:100],
        "boot_epoch": _count(report.get("boot_epoch")),
        "unclean_stops": _count(report.get("unclean_stops")),
        "spool_batches": _count(report.get("spool_batches")),
        "spool_bytes": _count(report.get("spool_bytes")),
        "readings_dropped": _count(report.get("readings_dropped")),
        "policy_digest": _hex(report.get("policy_digest")),
        "config_digest": _hex(report.get("config_digest")),
        "applied_etag": str(report.get("applied_etag") or "")[:100],
        "errors": dumps([str(e)[:500] for e in list(errors)[:50]]),
    }


def notice_location(notice: Mapping[str, Any]) -> tuple[str, float | None, float | None]:
    """The gateway's public site name and pole position, if its transparency notice states them."""
    site = notice.get("site")
    lat, lon = notice.get("latitude"), notice.get("longitude")
    for key in ("place", "location"):  # the notice's "place" table (edge.privacy.build_notice), or "location"
        table = notice.get(key)
        if isinstance(table, Mapping):
            site = site or table.get("site")
            lat = lat if lat is not None else table.get("latitude")
            lon = lon if lon is not None else table.get("longitude")
    shown = str(site or "")[:200]
    if isinstance(lat, int | float) and isinstance(lon, int | float) and -90 <= lat <= 90 and -180 <= lon <= 180:
        return (shown, float(lat), float(lon))
    return (shown, None, None)


# OXP uints (batch identities, counters) reach 2^64 - 1; both engines' integers are signed 64-bit.
# Shifting by 2^63 maps 0 .. 2^64 - 1 onto the signed range exactly and keeps the order, so
# comparisons (the newest boot epoch and sequence) and the batch primary key work in SQL as before.
_UINT_SHIFT = 2**63


def to_uint_column(value: int | None) -> int | None:
    """An OXP uint as its column holds it (schema migration 4); None stays NULL."""
    return None if value is None else value - _UINT_SHIFT


@overload
def from_uint_column(value: int) -> int: ...


@overload
def from_uint_column(value: None) -> None: ...


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
    " counters, readings_stored, batches_stored, duplicates, status_ms, site, latitude, longitude, ring"
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
        ring=row[25],
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
        raise EnrolError(Answer.BAD_TOKEN, "the enrolment token is not known to this hub")
    if existing is not None and bytes(existing[0]) == key_id and existing[1] != "revoked":
        # A device that lost the answer retries with the same key: same answer, no token use.
        return EnrolOutcome(device_id, key_id, existing[1])
    if token[2] <= now_ms:
        raise EnrolError(Answer.EXPIRED_TOKEN, "the enrolment token has expired; ask city IT for a new one")
    if token[1] <= 0:
        raise EnrolError(Answer.USED_TOKEN, "the enrolment token has been used up; ask city IT for a new one")
    if key_revoked:
        raise EnrolError(Answer.CONFLICT, "this public key was revoked; generate a new key pair on the device")
    if existing is not None and existing[1] != "revoked":
        raise EnrolError(Answer.CONFLICT, f"device id {device_id!r} is already enrolled with another key; revoke it first to replace its key")
    if key_owner is not None and key_owner != device_id:
        raise EnrolError(Answer.CONFLICT, "this public key is already enrolled under another device id")
    return ("active" if token[3] else "pending", token[4])


def status_change_allowed(current: str, new: str) -> bool:
    """Approve a pending device, or revoke any device that is not revoked yet; a revoked key stays revoked."""
    return (current == "pending" and new == "active") or (new == "revoked" and current != "revoked")


def channel_map(batch: IncomingBatch, channel_id: Callable[[Channel], int]) -> dict[str, int]:
    """Numeric channel ids for every channel the batch declares or uses (an undeclared one is taken as declared bare)."""
    return {name: channel_id(channel) for name, channel in batch_channels(batch).items()}


def batch_channels(batch: IncomingBatch) -> dict[str, Channel]:
    """Every channel the batch declares or uses, by id, in that order (an undeclared one is taken as declared bare)."""
    found = {ch.id: ch for ch in batch.channels}
    for reading in batch.readings:
        if reading.channel not in found:
            found[reading.channel] = Channel(reading.channel, unit=reading.unit)
    return found


def quarantine_rows(batch: IncomingBatch) -> list[tuple[Any, ...]]:
    """The quarantine rows of a batch's refused readings: (device_id, key_id, boot_epoch, seq, channel, unit, reading, reason, received_ms)."""
    return [
        (batch.device_id, batch.key_id, to_uint_column(batch.boot_epoch), to_uint_column(batch.seq), q.reading.channel, q.reading.unit,
         cbor2.dumps([q.reading.ts_ms, q.reading.value, None if q.reading.quality is None else int(q.reading.quality)]), q.reason,
         batch.received_ms)
        for q in batch.quarantined
    ]


# --- people and the audit log ---------------------------------------------------------

ACCOUNT_COLUMNS = "name, roles, disabled, created_ms, updated_ms"
AUDIT_COLUMNS = "id, at_ms, actor, action, target, before_sha256, after_sha256, detail"


def account_from_row(row: Sequence[Any]) -> Account:
    """An Account from a row selected with ACCOUNT_COLUMNS."""
    return Account(name=row[0], roles=frozenset(r for r in str(row[1]).split(",") if r), disabled=bool(row[2]), created_ms=row[3], updated_ms=row[4])


def audit_from_row(row: Sequence[Any]) -> AuditEntry:
    """An AuditEntry from a row selected with AUDIT_COLUMNS."""
    return AuditEntry(id=row[0], at_ms=row[1], actor=row[2], action=row[3], target=row[4], before_sha256=row[5], after_sha256=row[6], detail=row[7])


def desired_entry(
    scope: str, name: str, old: Mapping[str, Any] | None, new: Mapping[str, Any] | None, *, may_change: frozenset[str], now_ms: int, actor: str
) -> AuditEntry | None:
    """The audit entry of replacing desired document ``old`` by ``new`` (None: cleared), or None when a clear finds nothing.

    Raises NotPermitted, before anything is written, when a part outside ``may_change`` would change.
    """
    if old is None and new is None:
        return None
    changed = [part for part in ("config", "policy") if (old or {}).get(part) != (new or {}).get(part)]
    for part in changed:
        if part not in may_change:
            permission = Permission.POLICY if part == "policy" else Permission.OPERATE
            raise NotPermitted(permission, f"the desired document of {scope} {name!r} would change its {part}")
    detail = (", ".join(f"{part} changed" for part in changed) or "nothing changed") if new is not None else f"cleared ({', '.join(changed)})"
    return AuditEntry(at_ms=now_ms, actor=actor, action="desired.set" if new is not None else "desired.clear", target=f"{scope}:{name}",
                      before_sha256=document_digest(old), after_sha256=document_digest(new), detail=detail)


def ring_entry(device_id: str, old: str, new: str, *, now_ms: int, actor: str) -> AuditEntry:
    """The audit entry of putting a device in a rollout ring (or taking it out: ``new`` "")."""
    return AuditEntry(at_ms=now_ms, actor=actor, action="device.ring", target=f"device:{device_id}",
                      detail=f"ring {old or '(none)'} -> {new or '(none)'}")


def status_entry(device_id: str, old: str, new: str, *, now_ms: int, actor: str) -> AuditEntry:
    """The audit entry of approving or revoking a device."""
    return AuditEntry(at_ms=now_ms, actor=actor, action="device.approve" if new == "active" else "device.revoke", target=f"device:{device_id}",
                      detail=f"{old} -> {new}")


def token_entry(token_id: int, *, uses: int, expires_ms: int, approve: bool, fleet: str, note: str, now_ms: int, actor: str) -> AuditEntry:
    """The audit entry of creating an enrolment token (never the token itself)."""
    return AuditEntry(at_ms=now_ms, actor=actor, action="token.create", target=f"token:{token_id}",
                      detail=f"{uses} use(s), fleet {fleet!r}, {'approved at once' if approve else 'approval by hand'}, "
                             f"expires at {expires_ms} ms{f', note {note!r}' if note else ''}")


# --- retention ------------------------------------------------------------------------

def expire_query(mark: str) -> str:
    """SELECT of up to N chunks of a device holding a reading older than a time: parameters (device, before_ms, N).

    In no order: each step takes whichever come first along the (channel, first_ms) index, so a step costs the
    same however many old chunks remain (an ORDER BY would sort them all each time)."""
    a, b, c = ("?", "?", "?") if mark == "?" else ("$1", "$2", "$3")
    return ("SELECT k.id, k.first_ms, k.last_ms, k.count, k.data FROM chunks k JOIN channels c ON c.id = k.channel_id"
            f" WHERE c.device_id = {a} AND k.first_ms < {b} LIMIT {c}")


class ExpiryPlan(NamedTuple):
    """What deleting readings older than a time writes: chunks to delete, chunks to rewrite, and the readings that go."""

    delete: list[tuple[int]]  # (chunk id,)
    rewrite: list[tuple[int, int, int, bytes, int]]  # (first_ms, last_ms, count, data, chunk id)
    readings: int


def expiry_plan(rows: Sequence[Sequence[Any]], before_ms: int) -> ExpiryPlan:
    """The plan for the chunk rows of expire_query: a chunk wholly older is deleted without decoding it, one that straddles is split."""
    plan = ExpiryPlan([], [], 0)
    deleted = 0
    for chunk_id, first_ms, last_ms, count, data in rows:
        if last_ms < before_ms:
            plan.delete.append((chunk_id,))
            deleted += count
            continue
        kept, gone = split_chunk(first_ms, data, lambda ts: "expired" if ts < before_ms else None)
        deleted += len(gone)
        if kept is None:
            plan.delete.append((chunk_id,))
        else:
            plan.rewrite.append((*kept, chunk_id))
    return plan._replace(readings=deleted)


# --- the northbound export (hub/export.py) --------------------------------------------

# A batch's chunks get outbox rows while an export lease was held within this long (by the batch's arrival):
# a hub that exported goes on queueing through a restart or a stop of up to a day, and stops queueing a day
# after export was switched off everywhere.
OUTBOX_GRACE_MS = 86_400_000
EXPORT_LEASE = "northbound"


def export_pending_query(mark: str) -> str:
    """SELECT of the oldest outbox rows with their chunks: (outbox id, chunk id, channel id, device, channel, unit, first_ms, count, data).

    The chunk columns are NULL where the chunk is gone (retention) or its channel is personal: the filter is
    here, in the SQL, as in every public read (hub.chunks), so nothing personal is ever exported.  One parameter: N.
    """
    limit = "?" if mark == "?" else "$1"
    return ("SELECT o.id, k.id, k.channel_id, c.device_id, c.name, c.unit, k.first_ms, k.count, k.data FROM export_outbox o"
            " LEFT JOIN (chunks k JOIN channels c ON c.id = k.channel_id AND NOT c.personal) ON k.id = o.chunk_id"
            f" ORDER BY o.id LIMIT {limit}")

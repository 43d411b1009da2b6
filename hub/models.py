"""What the hub stores, as plain frozen values: devices, keys, tokens, batches, channels, readings, notices; and the store's two errors.

Shared by the storage interface (hub.store), its engines (hub.engines) and every part of the
hub that reads what they return; it imports nothing of the hub's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge.protocol import Answer
from edge.protocol.types import Channel, Reading
from hub.bounds import Quarantined

__all__ = [
    "Device",
    "DeviceKey",
    "EnrolError",
    "EnrolOutcome",
    "IncomingBatch",
    "Notice",
    "StoreError",
    "StoredChannel",
    "StoredReading",
    "TokenInfo",
]


class StoreError(Exception):
    """The database URL or the database itself is unusable; the message says which and why."""


class EnrolError(Exception):
    """Enrolment refused; ``code`` is the OXP answer (bad_token, expired_token, used_token, conflict; §9)."""

    def __init__(self, code: Answer, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """What ingest needs to know about a key id: whose it is, the raw public key and whether it may send."""

    device_id: str
    key_id: bytes
    public_key: bytes
    status: str  # "active" | "pending" | "revoked"


@dataclass(frozen=True, slots=True)
class EnrolOutcome:
    """A registered device: its id, key id and status ("active" or "pending")."""

    device_id: str
    key_id: bytes
    status: str


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """An enrolment token as stored (never the token itself, only its hash)."""

    token_id: int
    uses_left: int
    expires_ms: int
    approve: bool
    fleet: str
    note: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class IncomingBatch:
    """A verified batch ready to store: its identity, header facts, the readings to store and those to quarantine (hub.bounds)."""

    device_id: str
    key_id: bytes
    boot_epoch: int
    seq: int
    created_ms: int
    received_ms: int
    policy_digest: bytes
    codec: str
    counters: Mapping[str, int]
    channels: Sequence[Channel]
    readings: Sequence[Reading]
    size: int = 0
    quarantined: Sequence[Quarantined] = ()


@dataclass(frozen=True, slots=True)
class Device:
    """One gateway as the fleet view shows it."""

    device_id: str
    key_id: bytes
    status: str
    fleet: str
    enrolled_ms: int
    last_seen_ms: int | None
    software_version: str
    boot_epoch: int | None
    last_seq: int | None
    unclean_stops: int
    readings_dropped: int
    spool_batches: int | None
    spool_bytes: int | None
    policy_digest: str
    config_digest: str
    applied_etag: str
    errors: tuple[str, ...]
    counters: Mapping[str, int]
    readings_stored: int
    batches_stored: int
    duplicates: int
    status_ms: int | None
    site: str = ""
    latitude: float | None = None
    longitude: float | None = None
    ring: str = ""  # the rollout ring an operator put it in ("": none; migration 10)


@dataclass(frozen=True, slots=True)
class StoredChannel:
    """A channel the hub has seen from a device, with the numeric id open-data APIs use.

    ``personal``: some batch flagged it personal (OXP kind + 4); it stays so, and is never published.
    """

    id: int
    device_id: str
    channel: str
    unit: str
    kind: str
    resolution: float | None
    description: str
    personal: bool = False


@dataclass(frozen=True, slots=True)
class StoredReading:
    """One stored reading with the numeric id open-data APIs use."""

    id: int
    channel_id: int
    device_id: str
    channel: str
    ts_ms: int
    value: int | float | str | bool
    unit: str
    quality: int | None


@dataclass(frozen=True, slots=True)
class Notice:
    """A transparency notice a gateway published: what it senses, why, and under which policy."""

    id: int
    device_id: str
    received_ms: int
    notice: Mapping[str, Any] = field(default_factory=dict)

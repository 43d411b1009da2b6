"""The hub's storage interface: what the hub keeps, independent of the database engine behind it."""

from __future__ import annotations

import abc
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from edge.protocol.types import Channel, Reading
from hub.bounds import Quarantined
from hub.budget import QueryBudget
from hub.reports import Freshness

__all__ = [
    "Device",
    "DeviceKey",
    "EnrolError",
    "EnrolOutcome",
    "IncomingBatch",
    "Notice",
    "Store",
    "StoreError",
    "StoredChannel",
    "StoredReading",
    "TokenInfo",
    "open_store",
]


class StoreError(Exception):
    """The database URL or the database itself is unusable; the message says which and why."""


class EnrolError(Exception):
    """Enrolment refused; ``code`` is the OXP error code (bad_token, expired_token, used_token, conflict)."""

    def __init__(self, code: str, detail: str) -> None:
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


class Store(abc.ABC):
    """Everything the hub stores.  One implementation per engine; all methods are safe to call concurrently.

    Ingest is idempotent on (key id, boot epoch, sequence): :meth:`store_batch`
    returns ``"stored"`` the first time and ``"duplicate"`` for every replay,
    whichever hub process receives it.

    Personal channels (OXP §6.2 kind + 4) are left out of :meth:`channels`,
    :meth:`readings` and :meth:`count_readings` unless the caller passes
    ``include_personal=True``: the filter is in the SQL, so a public route that
    forgets about the flag still publishes nothing personal.  A channel is marked
    in the same transaction that stores its first personal batch, before any of
    that batch's readings can be read, and is never unmarked.
    """

    url: str

    @abc.abstractmethod
    async def close(self) -> None:
        """Finish pending writes and release the database."""

    @abc.abstractmethod
    async def schema_version(self) -> int:
        """The number of the newest schema migration applied."""

    # enrolment and keys
    @abc.abstractmethod
    async def create_token(self, token_hash: bytes, *, uses: int, expires_ms: int, approve: bool, fleet: str, note: str, now_ms: int) -> int: ...

    @abc.abstractmethod
    async def tokens(self) -> list[TokenInfo]:
        """Every enrolment token (as stored: hashed), oldest first."""

    @abc.abstractmethod
    async def token_devices(self) -> dict[int, list[str]]:
        """The devices each token enrolled (a device counts for the token it last enrolled with), by token id."""

    @abc.abstractmethod
    async def enrol(self, token_hash: bytes, *, device_id: str, public_key: bytes, key_id: bytes, software_version: str, now_ms: int) -> EnrolOutcome: ...

    @abc.abstractmethod
    async def device_key(self, key_id: bytes) -> DeviceKey | None:
        """Who a key id belongs to and whether it may send (a revoked key stays known as revoked)."""

    @abc.abstractmethod
    async def set_device_status(self, device_id: str, status: str, *, now_ms: int) -> bool:
        """Approve ("active") a pending device or revoke ("revoked") any; False if that change is not allowed."""

    # ingest
    @abc.abstractmethod
    async def store_batch(self, batch: IncomingBatch) -> str:
        """Store a verified batch once: "stored" the first time, "duplicate" for every replay.

        Its ``readings`` go among the readings and its ``quarantined`` ones into quarantine, in one
        transaction, so a replay quarantines nothing twice.  Marks each channel the batch declares
        personal as personal for good, in the same transaction.
        """

    @abc.abstractmethod
    async def quarantined(self, device_id: str) -> dict[str, int]:
        """How many of a device's readings are quarantined, by reason (OXP §8.5); empty if none."""

    @abc.abstractmethod
    async def record_status(self, device_id: str, report: Mapping[str, Any], *, received_ms: int) -> None: ...

    @abc.abstractmethod
    async def add_notice(self, device_id: str, notice: Mapping[str, Any], *, received_ms: int) -> int: ...

    @abc.abstractmethod
    async def claim_freshness(self, key_id: bytes, device_id: str, message: Freshness, *, now_ms: int) -> Freshness | None:
        """Record ``message`` as the newest status-type message of ``key_id`` if it is fresh (hub.reports.is_fresh), and
        return None; or return the recorded freshness it is not newer than (a replay).  Check and record are one
        transaction, so of a message and its replay raced through any hub processes one is taken."""

    # fleet
    @abc.abstractmethod
    async def devices(self) -> list[Device]:
        """Every enrolled device, by id."""

    @abc.abstractmethod
    async def device(self, device_id: str) -> Device | None:
        """One device, or None if it is not enrolled."""

    @abc.abstractmethod
    async def notices(self, *, device_id: str | None = None, limit: int = 200) -> list[Notice]: ...

    @abc.abstractmethod
    async def set_desired(self, scope: str, name: str, document: Mapping[str, Any] | None, *, now_ms: int) -> None: ...

    @abc.abstractmethod
    async def desired(self, scope: str, name: str) -> tuple[dict[str, Any], int] | None:
        """The desired document of a fleet or device and when it was set, or None."""

    # open data
    @abc.abstractmethod
    async def channels(self, *, device_id: str | None = None, channel_id: int | None = None, include_personal: bool = False) -> list[StoredChannel]:
        """Channels by id; personal ones only with ``include_personal`` (never on a public route)."""

    async def readings(
        self,
        *,
        device_id: str | None = None,
        channel: str | None = None,
        channel_id: int | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        reading_id: int | None = None,
        match: Callable[[StoredReading], bool] | None = None,
        order: str = "ts_ms",
        descending: bool = False,
        limit: int = 1000,
        offset: int = 0,
        include_personal: bool = False,
        budget: QueryBudget | None = None,
    ) -> list[StoredReading]:
        """Readings in ``order`` ("ts_ms", "id" or "value"), filtered by device, channel, time [since, until) and ``match``.

        Readings of personal channels only with ``include_personal`` (never on a public route).
        With a ``budget`` (a public query) the query runs on the public lane, its own threads and
        connections, and stops with :class:`hub.budget.OverBudget` once it is spent.
        """
        from hub.chunks import Collector, chunk_query, split_reading_id  # chunks imports this module

        chunk_id, position = split_reading_id(reading_id) if reading_id is not None else (None, None)
        collector = Collector(since_ms=since_ms, until_ms=until_ms, match=match if budget is None else budget.meter(match),
                              order=order, descending=descending, offset=offset, limit=limit, position=position)
        sql, params = chunk_query(self.placeholder, device_id=device_id, channel=channel, channel_id=channel_id,
                                  since_ms=since_ms, until_ms=until_ms, chunk_id=chunk_id, order=order,
                                  descending=descending, include_personal=include_personal)
        if budget is None:
            return await self._collect_chunks(sql, params, collector)
        async with budget.on_lane():
            return await self._collect_chunks(sql, params, collector, budget=budget)

    async def count_readings(
        self,
        *,
        channel_id: int | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        match: Callable[[StoredReading], bool] | None = None,
        cap: int | None = None,
        include_personal: bool = False,
        budget: QueryBudget | None = None,
    ) -> int | None:
        """How many readings of a channel (or all) in [since, until) ``match``; None if more than ``cap`` had to be decoded.

        Readings of personal channels count only with ``include_personal``.  A ``budget`` as for :meth:`readings`
        (chunks counted without decoding them cost nothing of it).
        """
        from hub.chunks import MAX_WINDOW, Counter, count_query

        if budget is not None and match is not None:
            match = budget.meter(match)
        counter = Counter(since_ms=since_ms, until_ms=until_ms, match=match, cap=MAX_WINDOW if cap is None else cap)
        sql, params = count_query(self.placeholder, channel_id=channel_id, since_ms=since_ms, until_ms=until_ms,
                                  include_personal=include_personal)
        if budget is None:
            await self._collect_chunks(sql, params, counter)
        else:
            async with budget.on_lane():
                await self._collect_chunks(sql, params, counter, budget=budget)
        return None if counter.exceeded else counter.total

    placeholder: str  # the SQL parameter style chunk_query writes: "?" (SQLite) or "$" (PostgreSQL)
    # Public queries (those with a budget) run this many at a time on threads and connections of their own,
    # so a heavy one never holds what ingest and the dashboard read through.
    public_lane = 2

    @abc.abstractmethod
    async def _collect_chunks(self, sql: str, params: Sequence[Any], collector: Any, *, budget: QueryBudget | None = None) -> list[StoredReading]:
        """Feed ``collector`` the chunk rows of ``sql`` page by page until it has its page; return that page.

        With a ``budget``: on the public lane, stopped with OverBudget ("time") once its deadline passes.
        """

    # admin secrets (hashed)
    @abc.abstractmethod
    async def get_setting(self, key: str) -> str | None: ...

    @abc.abstractmethod
    async def set_setting(self, key: str, value: str, *, only_if_absent: bool = False) -> bool: ...

    @abc.abstractmethod
    async def add_secret(self, kind: str, secret_hash: bytes, *, expires_ms: int) -> None: ...

    @abc.abstractmethod
    async def use_secret(self, kind: str, secret_hash: bytes, *, now_ms: int, consume: bool) -> bool:
        """True if an unexpired secret (session, login link) with this hash exists; ``consume`` deletes it."""


def dumps(value: Any) -> str:
    """Canonical compact JSON for columns that hold documents."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///relative.db`` or ``sqlite:////absolute.db`` URL (SQLAlchemy's spelling)."""
    if not url.startswith("sqlite:///"):
        raise StoreError(f"--db {url!r}: expected sqlite:///relative/path.db or sqlite:////absolute/path.db")
    path = url[len("sqlite:///"):].split("?", 1)[0]
    if not path or path == ":memory:":
        raise StoreError(f"--db {url!r}: expected a file path; the hub must keep what it acknowledges")
    return path


def postgres_schema(url: str) -> tuple[str, str | None]:
    """Split an optional ``?schema=NAME`` off a PostgreSQL URL (the rest goes to asyncpg as is)."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    schema = query.pop("schema", [None])[0]
    rest = "&".join(f"{k}={v}" for k, values in query.items() for v in values)
    dsn = parts._replace(query=rest).geturl()
    if schema is not None and not schema.replace("_", "").isalnum():
        raise StoreError(f"--db {url!r}: schema {schema!r} must be letters, digits and '_'")
    return dsn, schema


async def open_store(url: str) -> Store:
    """Open (and migrate) the store a URL names: ``sqlite:///path.db`` or ``postgresql://user@host/db[?schema=s]``."""
    if url.startswith("sqlite:"):
        from hub.store_sqlite import SQLiteStore

        return await SQLiteStore.open(url)
    if url.startswith(("postgresql:", "postgres:")):
        from hub.store_postgres import PostgresStore

        return await PostgresStore.open(url)
    raise StoreError(f"--db {url!r}: expected a sqlite:///path.db or postgresql://user@host/database URL")


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
    ok = isinstance(lat, int | float) and isinstance(lon, int | float) and -90 <= lat <= 90 and -180 <= lon <= 180
    return (str(site or "")[:200], float(lat) if ok else None, float(lon) if ok else None)  # type: ignore[arg-type]

"""The hub's storage interface: what the hub keeps, independent of the database engine behind it.

The values it takes and returns are hub.models; the engines are hub.engines; hub.database opens
the one a --db URL names.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hub.budget import QueryBudget
from hub.chunks import MAX_WINDOW, Collector, Counter, Size, chunk_query, count_query, split_reading_id
from hub.models import Device, DeviceKey, EnrolOutcome, IncomingBatch, Notice, StoredChannel, StoredReading, TokenInfo
from hub.reports import Freshness

__all__ = ["Store"]


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
        chunk_id, position = split_reading_id(reading_id) if reading_id is not None else (None, None)
        collector = Collector(since_ms=since_ms, until_ms=until_ms, match=match if budget is None else budget.meter(match),
                              order=order, descending=descending, offset=offset, limit=limit, position=position)
        query = chunk_query(self.placeholder, device_id=device_id, channel=channel, channel_id=channel_id,
                            since_ms=since_ms, until_ms=until_ms, chunk_id=chunk_id, order=order,
                            descending=descending, include_personal=include_personal)
        if budget is None:
            return await self._collect_chunks(query.rows(), query.params, collector)
        async with budget.on_lane(offset + limit):
            if order == "value" and chunk_id is None:
                # Ordered by value, every reading in the range is decoded: refuse up front what the budget cannot pay for.
                size = Size()
                await self._collect_chunks(query.size(), query.params, size, budget=budget)
                budget.refuse_beyond(size.readings)
            return await self._collect_chunks(query.rows(), query.params, collector, budget=budget)

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

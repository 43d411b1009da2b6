"""The hub's storage interface: what the hub keeps, independent of the database engine behind it.

The values it takes and returns are hub.models; the engines are hub.engines; hub.database opens
the one a --db URL names.
"""

from __future__ import annotations

import abc
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from hub.accounts import BUILT_IN_ADMIN, Account
from hub.audit import AUTOMATIC, AuditEntry
from hub.budget import QueryBudget
from hub.chunks import MAX_WINDOW, Collector, Counter, Size, chunk_query, count_query, split_reading_id
from hub.models import Device, DeviceKey, EnrolOutcome, IncomingBatch, Notice, StoredChannel, StoredReading, TokenInfo
from hub.reports import Freshness

__all__ = ["DESIRED_PARTS", "NOTICE_WINDOW_MS", "ROLLOUT_COLUMNS", "SOFTWARE_SCOPE", "Rollout", "SoftwareUpdate", "Store", "rollout_entry", "rollout_from_row"]

NOTICE_WINDOW_MS = 86_400_000  # add_notice counts a device's notices over the 24 hours before the new one

DESIRED_PARTS = frozenset({"config", "policy"})
SOFTWARE_SCOPE = "software"  # desired rows (scope, device id) holding a device's software target (hub/rollout.py)


@dataclass(frozen=True, slots=True)
class Rollout:
    """A staged rollout of release ``version`` to ``fleet`` (hub/rollout.py, migration 9); ``id`` 0 before it is stored."""

    id: int
    version: str
    fleet: str
    stages: tuple[float, ...] | tuple[str, ...]  # percentages of the fleet, ascending; or ring names in order ("*": every device)
    wait_ms: int
    max_failure: float  # the failure rate of a stage (0..1) past which the rollout halts
    url: str
    key_id: str
    state: str  # running | halted | done
    stage: int
    stage_started_ms: int
    since_ms: int
    reason: str
    created_ms: int
    updated_ms: int
    pause_backlog: int = 0  # batches waiting in a gateway's spool above which it holds the download back (0: never)


@dataclass(frozen=True, slots=True)
class SoftwareUpdate:
    """A device's newest software_update outcome (OXP §7) and when it last changed."""

    device_id: str
    state: str
    version: str
    reason: str
    running: str
    changed_ms: int


ROLLOUT_COLUMNS = ("id, version, fleet, stages, wait_ms, max_failure, url, key_id, state, stage, stage_started_ms, since_ms, reason,"
                   " created_ms, updated_ms, pause_backlog")


def rollout_entry(entry: AuditEntry, rollout_id: int) -> AuditEntry:
    """``entry`` naming the rollout by id once it has one (a new rollout's entry is made with target "rollout:new")."""
    return replace(entry, target=f"rollout:{rollout_id}") if entry.target == "rollout:new" else entry


def _stages(raw: list[Any]) -> tuple[float, ...] | tuple[str, ...]:
    """A rollout's stages as stored: percentages (numbers) or ring names (text)."""
    return tuple(str(s) for s in raw) if raw and isinstance(raw[0], str) else tuple(float(s) for s in raw)


def rollout_from_row(row: Sequence[Any]) -> Rollout:
    """A Rollout from a row selected with ROLLOUT_COLUMNS (both engines)."""
    return Rollout(int(row[0]), row[1], row[2], _stages(json.loads(row[3])), int(row[4]), float(row[5]), row[6], row[7],
                   row[8], int(row[9]), int(row[10]), int(row[11]), row[12], int(row[13]), int(row[14]), int(row[15]))


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

    Every change an operator makes (tokens, approvals and revocations, desired documents, accounts)
    appends one :class:`hub.audit.AuditEntry` naming ``actor`` in the transaction that makes it; the
    audit log can only be appended to and read (:meth:`append_audit`, :meth:`audit_log`).
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
    async def create_token(
        self, token_hash: bytes, *, uses: int, expires_ms: int, approve: bool, fleet: str, note: str, now_ms: int, actor: str = AUTOMATIC
    ) -> int:
        """Store a new enrolment token (its hash); audited as ``token.create``.  Returns its number."""

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

    async def device_keys(self, key_ids: Sequence[bytes]) -> dict[bytes, DeviceKey]:
        """:meth:`device_key` for several key ids; an engine may read them all at once.  Ids of no device are left out."""
        found = {kid: await self.device_key(kid) for kid in dict.fromkeys(key_ids)}
        return {kid: device for kid, device in found.items() if device is not None}

    @abc.abstractmethod
    async def set_device_ring(self, device_id: str, ring: str, *, now_ms: int, actor: str = AUTOMATIC) -> bool:
        """Put a device in a rollout ring ("": in none); False if there is no such device.  Audited as ``device.ring`` when it changes."""

    @abc.abstractmethod
    async def set_device_status(self, device_id: str, status: str, *, now_ms: int, actor: str = AUTOMATIC) -> bool:
        """Approve ("active") a pending device or revoke ("revoked") any; False if that change is not allowed.

        A change is audited as ``device.approve`` or ``device.revoke``."""

    # ingest
    @abc.abstractmethod
    async def store_batch(self, batch: IncomingBatch) -> str:
        """Store a verified batch once: "stored" the first time, "duplicate" for every replay.

        Its ``readings`` go among the readings and its ``quarantined`` ones into quarantine, in one
        transaction, so a replay quarantines nothing twice.  Marks each channel the batch declares
        personal as personal for good, in the same transaction.
        """

    async def store_batches(self, batches: Sequence[IncomingBatch]) -> list[str | Exception]:
        """:meth:`store_batch` for several batches at once, each outcome (or the error storing it raised) in their order.

        An engine may store them in fewer transactions and statements (the MQTT side takes batches in groups); each is
        still stored once, a batch named twice is "stored" once and then "duplicate", and nothing is said before the
        transaction holding it has committed."""
        outcomes: list[str | Exception] = []
        for batch in batches:
            try:
                outcomes.append(await self.store_batch(batch))
            except Exception as exc:  # the caller answers each batch
                outcomes.append(exc)
        return outcomes

    @abc.abstractmethod
    async def quarantined(self, device_id: str) -> dict[str, int]:
        """How many of a device's readings are quarantined, by reason (OXP §8.5); empty if none."""

    @abc.abstractmethod
    async def record_status(self, device_id: str, report: Mapping[str, Any], *, received_ms: int) -> None: ...

    @abc.abstractmethod
    async def add_notice(self, device_id: str, notice: Mapping[str, Any], *, received_ms: int, daily_limit: int | None = None) -> int | None:
        """Store ``notice`` and return its id; or, with ``daily_limit``, store nothing and return None when the device has
        that many notices stored from the NOTICE_WINDOW_MS before ``received_ms`` (count and insert are one transaction, so every
        hub process on this database keeps one limit, across restarts)."""

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
    async def devices_named(self, device_ids: Sequence[str]) -> list[Device]:
        """The enrolled devices among ``device_ids``, in one read (ingest, for a group of batches: hub.ingest)."""

    @abc.abstractmethod
    async def device_fleets(self) -> dict[str, tuple[str, str]]:
        """Every enrolled device's status and fleet, by id: what the MQTT side looks at every second (hub.mqtt), without
        the rest of each device's row."""

    @abc.abstractmethod
    async def notices(self, *, device_id: str | None = None, limit: int = 200, latest: bool = False) -> list[Notice]:
        """Notices newest first, of one device or all; ``latest``: each device's newest only (the public register)."""

    @abc.abstractmethod
    async def set_desired(
        self, scope: str, name: str, document: Mapping[str, Any] | None, *, now_ms: int, actor: str = AUTOMATIC,
        may_change: frozenset[str] = DESIRED_PARTS,
    ) -> None:
        """Set (or clear, with None) the desired document of a fleet or device; audited as ``desired.set`` or ``desired.clear``
        (a clear of nothing changes nothing and is not).

        ``may_change`` are the parts ("config", "policy") the actor may change: the document stored now is read in
        the same transaction, and if another part would change :class:`hub.accounts.NotPermitted` is raised and
        nothing is written.
        """

    @abc.abstractmethod
    async def desired(self, scope: str, name: str) -> tuple[dict[str, Any], int] | None:
        """The desired document of a fleet or device and when it was set, or None."""

    @abc.abstractmethod
    async def desired_documents(self) -> dict[tuple[str, str], tuple[dict[str, Any], int]]:
        """Every desired document and when it was set, by (scope, name): one read for a caller that looks at every device."""

    @abc.abstractmethod
    async def desired_for(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], tuple[dict[str, Any], int]]:
        """The desired documents among ``keys`` (scope, name) and when each was set, in one read; a key without one is left out."""

    # software rollouts (hub.rollout)
    @abc.abstractmethod
    async def save_rollout(self, rollout: Rollout, entry: AuditEntry, *, replaces_ms: int = 0) -> int:
        """Insert (``id`` 0) or replace a rollout, appending ``entry`` to the audit log in the same transaction; its id.

        A replacement is written only if the stored rollout's ``updated_ms`` is still ``replaces_ms`` (else 0 is
        returned and nothing written): two hub processes advancing the same stage write it, and audit it, once."""

    @abc.abstractmethod
    async def rollouts(self, *, fleet: str | None = None) -> list[Rollout]:
        """Every rollout (of one fleet), newest first."""

    @abc.abstractmethod
    async def set_software_targets(self, targets: Mapping[str, Mapping[str, Any] | None], *, now_ms: int) -> None:
        """Set (or clear, with None) the software target of each device in one transaction: desired rows of scope
        SOFTWARE_SCOPE.  Not audited one by one: the rollout change that caused them is (Store.save_rollout)."""

    @abc.abstractmethod
    async def record_software_update(self, device_id: str, outcome: Mapping[str, str], *, received_ms: int) -> None:
        """Keep a status report's software_update; ``changed_ms`` moves only when the outcome differs from the one kept."""

    @abc.abstractmethod
    async def software_updates(self) -> dict[str, SoftwareUpdate]:
        """Every device's newest software_update outcome, by device id."""

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
    async def raise_setting(self, key: str, value: int) -> int:
        """Set a whole-number setting to ``value`` unless it holds more already, in one statement (two hub processes raising it
        at once keep the larger); the value it holds after."""

    @abc.abstractmethod
    async def add_secret(self, kind: str, secret_hash: bytes, *, expires_ms: int, account: str = BUILT_IN_ADMIN) -> None:
        """Keep a session or login link (its hash) for ``account`` until ``expires_ms``."""

    @abc.abstractmethod
    async def use_secret(self, kind: str, secret_hash: bytes, *, now_ms: int, consume: bool) -> str | None:
        """The account an unexpired secret (session, login link) with this hash belongs to, else None; ``consume`` deletes it."""

    # people
    @abc.abstractmethod
    async def add_account(self, name: str, roles: str, token_hash: bytes, *, now_ms: int, actor: str) -> bool:
        """Create an account with ``roles`` (hub.accounts.role_text) and the hash of its API token; False if the name is taken.

        Audited as ``account.add``."""

    @abc.abstractmethod
    async def accounts(self) -> list[Account]:
        """Every account, by name."""

    @abc.abstractmethod
    async def account(self, name: str) -> Account | None: ...

    @abc.abstractmethod
    async def account_by_token(self, token_hash: bytes) -> Account | None:
        """The account whose API token has this hash (a disabled account has none)."""

    @abc.abstractmethod
    async def change_account(self, name: str, changes: Mapping[str, object], entry: AuditEntry) -> bool:
        """Set ``changes`` (column -> value) on an enabled account and append ``entry`` in the same transaction; False if there
        is no such enabled account.  Disabling it (``account.disable``) also ends its sessions and login links."""

    async def set_account_roles(self, name: str, roles: str, *, now_ms: int, actor: str) -> bool:
        """Give an enabled account these roles; False if there is no such enabled account.  Audited as ``account.roles``."""
        return await self.change_account(name, {"roles": roles}, AuditEntry(
            at_ms=now_ms, actor=actor, action="account.roles", target=f"account:{name}", detail=f"roles {roles}"))

    async def set_account_token(self, name: str, token_hash: bytes, *, now_ms: int, actor: str) -> bool:
        """Replace an enabled account's API token (the old one stops working); False if there is no such enabled account.

        Audited as ``account.token``."""
        return await self.change_account(name, {"token_hash": token_hash}, AuditEntry(
            at_ms=now_ms, actor=actor, action="account.token", target=f"account:{name}", detail="new API token; the old one no longer works"))

    async def disable_account(self, name: str, *, now_ms: int, actor: str) -> bool:
        """Disable an account: its token, sessions and login links stop working at once; False if none was enabled.

        Audited as ``account.disable``."""
        return await self.change_account(name, {"disabled": True, "token_hash": None}, AuditEntry(
            at_ms=now_ms, actor=actor, action="account.disable", target=f"account:{name}",
            detail="disabled; its token, sessions and login links no longer work"))

    # the audit log: append and read, nothing else
    @abc.abstractmethod
    async def append_audit(self, entry: AuditEntry) -> int:
        """Append an entry for something that is not a stored change (a login link issued, a retention run); returns its id."""

    @abc.abstractmethod
    async def audit_log(self, *, limit: int = 100, before_id: int | None = None) -> list[AuditEntry]:
        """Entries newest first, at most ``limit``, only those older than ``before_id`` if given (the next page)."""

    @abc.abstractmethod
    async def audit_count(self) -> int: ...

    # retention
    @abc.abstractmethod
    async def expire_readings(self, device_id: str, before_ms: int, *, max_chunks: int) -> tuple[int, int]:
        """Delete a device's readings older than ``before_ms``, looking at no more than ``max_chunks`` chunks in one transaction.

        A chunk wholly older goes; one that straddles ``before_ms`` is rewritten with its younger readings
        (their reading ids change, as in quarantine).  Returns (readings deleted, chunks looked at): fewer than
        ``max_chunks`` looked at means nothing older is left.
        """

    @abc.abstractmethod
    async def expire_quarantine(self, device_id: str, before_ms: int, *, max_rows: int) -> int:
        """Delete up to ``max_rows`` of a device's quarantined readings received before ``before_ms``; returns how many."""

    # the northbound export (hub.export)
    @abc.abstractmethod
    async def hold_export_lease(self, holder: str, *, now_ms: int, ttl_ms: int) -> bool:
        """Take or renew the one export lease for ``holder`` until ``now_ms + ttl_ms``; False while another holder's runs.

        While some lease ran within the last day (hub.engines.sql.OUTBOX_GRACE_MS), :meth:`store_batch` writes an
        outbox row for each chunk it stores, in the same transaction."""

    @abc.abstractmethod
    async def release_export_lease(self, holder: str, *, now_ms: int) -> None:
        """End ``holder``'s lease now, so another hub process may take it at once."""

    @abc.abstractmethod
    async def export_pending(self, *, limit: int) -> list[tuple[Any, ...]]:
        """The oldest ``limit`` outbox rows as hub.engines.sql.export_pending_query selects them (a personal or deleted chunk as NULLs)."""

    @abc.abstractmethod
    async def export_done(self, outbox_ids: Sequence[int]) -> None:
        """Delete these outbox rows: the broker acknowledged every message made of them."""

"""The PostgreSQL store (asyncpg): many hub processes share one database; ingest stays exactly-once."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hub import schema
from hub.accounts import BUILT_IN_ADMIN, Account
from hub.audit import AUTOMATIC, AuditEntry
from hub.bounds import FLOOR_MS, MAX_SKEW_MS, reading_time_fault
from hub.budget import QueryBudget
from hub.chunks import CHUNK_PAGE, Collector, encode_chunks, outside_query, quarantine_plan
from hub.dbwords import database_problem
from hub.engines.sql import (
    ACCOUNT_COLUMNS,
    AUDIT_COLUMNS,
    DEVICE_COLUMNS,
    EXPORT_LEASE,
    LATEST_NOTICES,
    OUTBOX_GRACE_MS,
    account_from_row,
    audit_from_row,
    decide_enrolment,
    desired_entry,
    device_from_row,
    dumps,
    expire_query,
    expiry_plan,
    export_pending_query,
    from_uint_column,
    notice_location,
    quarantine_rows,
    ring_entry,
    status_change_allowed,
    status_entry,
    status_row,
    to_uint_column,
    token_entry,
)
from hub.models import Device, DeviceKey, EnrolOutcome, IncomingBatch, Notice, StoredChannel, StoredReading, StoreError, TokenInfo
from hub.reports import Freshness, is_fresh, next_mark
from hub.store import DESIRED_PARTS, NOTICE_WINDOW_MS, ROLLOUT_COLUMNS, SOFTWARE_SCOPE, Rollout, SoftwareUpdate, Store, rollout_entry, rollout_from_row

__all__ = ["PostgresStore"]

log = logging.getLogger("ocn.hub.store")


def _desired_lock(scope: str, name: str) -> int:
    """The advisory lock one desired document's changes take."""
    return int.from_bytes(hashlib.sha256(f"ocn-hub-desired:{scope}:{name}".encode()).digest()[:8], "big", signed=True)


def _lock_key(search_path: str | None) -> int:
    """The advisory lock that serialises migrations of one schema across hub processes."""
    digest = hashlib.sha256(f"ocn-hub-migrate:{search_path or 'public'}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def _audit(conn: Any, entry: AuditEntry) -> int:
    """Append ``entry`` in the transaction of the change it records."""
    return await conn.fetchval(
        "INSERT INTO audit (at_ms, actor, action, target, before_sha256, after_sha256, detail) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
        entry.at_ms, entry.actor, entry.action, entry.target, entry.before_sha256, entry.after_sha256, entry.detail,
    )


async def _quarantine_stored(conn: Any) -> None:
    """Move the readings already stored outside the time bounds into quarantine (schema migration 4)."""
    now = time.time_ns() // 1_000_000
    rows = await conn.fetch(outside_query("$"), FLOOR_MS, now + MAX_SKEW_MS)
    plan = quarantine_plan(rows, lambda ts: reading_time_fault(ts, now_ms=now), now_ms=now)
    await conn.executemany("INSERT INTO quarantine (device_id, channel, unit, reading, reason, received_ms) VALUES ($1, $2, $3, $4, $5, $6)",
                           plan.quarantine)
    await conn.executemany("UPDATE chunks SET first_ms = $1, last_ms = $2, count = $3, data = $4 WHERE id = $5", plan.rewrite)
    await conn.executemany("DELETE FROM chunks WHERE id = $1", plan.delete)
    if plan.quarantine:
        log.info("quarantined stored readings outside the time bounds", extra={"readings": len(plan.quarantine), "engine": "postgresql"})


# A batch stored in one statement (PostgresStore.store_batch).  The batches row decides: whichever
# process inserts it first stores the readings; another inserting the same batch at once waits on
# the row lock, then sees the conflict, and only counts a duplicate.  A channel's personal flag is
# only ever set (sticky), in the same statement that makes its readings visible.  Sub-statements
# of one statement cannot see each other's rows, so the devices row is updated once, for both outcomes.
# While an export lease ran within a day, each chunk stored gets a row in the northbound export's outbox.
STORE_BATCH = """
WITH batch AS (
    INSERT INTO batches (key_id, boot_epoch, seq, device_id, created_ms, received_ms, readings, size, policy_digest, codec, counters)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING RETURNING 1
), declared AS (
    INSERT INTO channels (device_id, name, unit, kind, resolution, description, personal)
    SELECT $4, c.name, c.unit, c.kind, c.resolution, c.description, c.personal
    FROM unnest($12::text[], $13::text[], $14::text[], $15::float8[], $16::text[], $17::boolean[])
        AS c(name, unit, kind, resolution, description, personal)
    WHERE EXISTS (SELECT 1 FROM batch)
    ON CONFLICT (device_id, name) DO UPDATE SET unit = excluded.unit, kind = excluded.kind, resolution = excluded.resolution,
        description = excluded.description, personal = channels.personal OR excluded.personal
    RETURNING id, name
), undeclared AS (
    INSERT INTO channels (device_id, name, unit, kind, resolution, description)
    SELECT $4, u.name, u.unit, 'number', NULL, '' FROM unnest($18::text[], $19::text[]) AS u(name, unit)
    WHERE EXISTS (SELECT 1 FROM batch)
    ON CONFLICT (device_id, name) DO UPDATE SET unit = channels.unit
    RETURNING id, name
), chunked AS (
    INSERT INTO chunks (channel_id, first_ms, last_ms, count, data)
    SELECT ids.id, k.first_ms, k.last_ms, k.count, k.data
    FROM unnest($20::text[], $21::bigint[], $22::bigint[], $23::integer[], $24::bytea[]) AS k(name, first_ms, last_ms, count, data)
    JOIN (SELECT id, name FROM declared UNION ALL SELECT id, name FROM undeclared) AS ids ON ids.name = k.name
    RETURNING id
), queued AS (
    INSERT INTO export_outbox (chunk_id)
    SELECT id FROM chunked WHERE EXISTS (SELECT 1 FROM export_lease WHERE expires_ms > $6 - {grace}) ORDER BY id
), apart AS (
    INSERT INTO quarantine (device_id, key_id, boot_epoch, seq, channel, unit, reading, reason, received_ms)
    SELECT $4, $1, $2, $3, q.channel, q.unit, q.reading, q.reason, $6
    FROM unnest($25::text[], $26::text[], $27::bytea[], $28::text[]) AS q(channel, unit, reading, reason)
    WHERE EXISTS (SELECT 1 FROM batch)
), outcome AS (
    SELECT EXISTS (SELECT 1 FROM batch) AS stored
), device AS (
    UPDATE devices AS d SET
        duplicates = d.duplicates + CASE WHEN o.stored THEN 0 ELSE 1 END,
        last_seen_ms = greatest(coalesce(d.last_seen_ms, 0), $6),
        readings_stored = d.readings_stored + CASE WHEN o.stored THEN $29 ELSE 0 END,
        batches_stored = d.batches_stored + CASE WHEN o.stored THEN 1 ELSE 0 END,
        boot_epoch = CASE WHEN {newer} THEN $2 ELSE d.boot_epoch END,
        last_seq = CASE WHEN {newer} THEN $3 ELSE d.last_seq END,
        counters = CASE WHEN {newer} THEN $11 ELSE d.counters END,
        policy_digest = CASE WHEN {newer} THEN $9 ELSE d.policy_digest END,
        unclean_stops = CASE WHEN {newer} THEN coalesce($30, d.unclean_stops) ELSE d.unclean_stops END,
        readings_dropped = CASE WHEN {newer} THEN coalesce($31, d.readings_dropped) ELSE d.readings_dropped END
    FROM outcome AS o
    WHERE d.device_id = $4
)
SELECT stored FROM outcome
""".format(
    grace=OUTBOX_GRACE_MS,
    # the batch is stored and is the device's newest: its boot epoch and sequence number become the device's
    newer="(o.stored AND (d.boot_epoch IS NULL OR d.boot_epoch < $2 OR (d.boot_epoch = $2 AND (d.last_seq IS NULL OR d.last_seq <= $3))))"
)


def _store_batch_args(batch: IncomingBatch) -> tuple[Any, ...]:
    """STORE_BATCH's parameters for one batch."""
    epoch, seq = to_uint_column(batch.boot_epoch), to_uint_column(batch.seq)
    declared = {ch.id for ch in batch.channels}
    undeclared = {r.channel: r.unit for r in batch.readings if r.channel not in declared}
    chunks = [(name, *chunk) for name, parts in encode_chunks(batch.readings).items() for chunk in parts]
    apart = quarantine_rows(batch)
    return (
        batch.key_id, epoch, seq, batch.device_id, to_uint_column(batch.created_ms), batch.received_ms,
        len(batch.readings) + len(batch.quarantined), batch.size, batch.policy_digest.hex(), batch.codec, dumps(dict(batch.counters)),
        [ch.id for ch in batch.channels], [ch.unit for ch in batch.channels], [ch.kind.value for ch in batch.channels],
        [ch.resolution for ch in batch.channels], [ch.description for ch in batch.channels], [ch.personal for ch in batch.channels],
        list(undeclared), list(undeclared.values()),
        [c[0] for c in chunks], [c[1] for c in chunks], [c[2] for c in chunks], [c[3] for c in chunks], [c[4] for c in chunks],
        [q[4] for q in apart], [q[5] for q in apart], [q[6] for q in apart], [q[7] for q in apart],
        len(batch.readings), to_uint_column(batch.counters.get("unclean_stops")), to_uint_column(batch.counters.get("readings_dropped")),
    )  # fmt: skip


class PostgresStore(Store):
    """The scale-out store: any number of stateless hub processes on one PostgreSQL database."""

    placeholder = "$"

    def __init__(self, url: str, pool: Any, public_pool: Any) -> None:
        self.url = url
        self._pool = pool
        # Public queries fetch through connections of their own and decode on threads of their own.
        self._public_pool = public_pool
        self._public = ThreadPoolExecutor(max_workers=self.public_lane, thread_name_prefix="hub-pg-public")

    @classmethod
    async def open(cls, dsn: str, *, schema: str | None, url: str, min_size: int = 2, max_size: int = 10) -> PostgresStore:
        """Connect to ``dsn`` (creating ``schema`` if one is named) and migrate; ``url`` is the --db URL it came from, for messages."""
        import asyncpg

        search_path = schema
        # The application name lets a DBA see (and tests find) the hub's connections.
        settings = {"application_name": f"ocn-hub:{search_path or 'public'}"}
        if search_path:
            settings["search_path"] = search_path
        try:
            if search_path:
                conn = await asyncpg.connect(dsn)
                try:
                    await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{search_path}"')
                except asyncpg.UniqueViolationError:
                    pass  # another hub process created it a moment ago
                finally:
                    await conn.close()
            pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, server_settings=settings)
            public_pool = await asyncpg.create_pool(dsn, min_size=0, max_size=cls.public_lane, server_settings=settings)
        except (OSError, asyncpg.PostgresError) as exc:
            raise StoreError(f"--db {url!r}: cannot connect: {database_problem(exc)}") from None
        store = cls(url, pool, public_pool)
        await store._migrate(search_path)
        return store

    async def _migrate(self, search_path: str | None) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            # Every process takes the same lock before looking at the version, so
            # concurrent starts apply each migration exactly once.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(search_path))
            await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            # Each migration not applied yet, by number: one numbered below a migration already applied still runs.
            applied = {row[0] for row in await conn.fetch("SELECT version FROM schema_version")}
            for version, sql in schema.MIGRATIONS:
                if version not in applied:
                    for statement in (*schema.migration_statements("postgresql", sql), *schema.engine_statements("postgresql", version)):
                        await conn.execute(statement)
                    if version == schema.QUARANTINE_STORED:
                        await _quarantine_stored(conn)
                    await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
                    log.info("applied schema migration", extra={"version": version, "engine": "postgresql"})

    async def close(self) -> None:
        await self._pool.close()
        await self._public_pool.close()
        self._public.shutdown(wait=True)

    async def schema_version(self) -> int:
        return await self._pool.fetchval("SELECT coalesce(max(version), 0) FROM schema_version")

    # --- enrolment and keys -----------------------------------------------------------

    async def create_token(
        self, token_hash: bytes, *, uses: int, expires_ms: int, approve: bool, fleet: str, note: str, now_ms: int, actor: str = AUTOMATIC
    ) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            token_id: int = await conn.fetchval(
                "INSERT INTO tokens (hash, uses_left, expires_ms, approve, fleet, note, created_ms) VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
                token_hash, uses, expires_ms, approve, fleet, note, now_ms,
            )
            await _audit(conn, token_entry(token_id, uses=uses, expires_ms=expires_ms, approve=approve, fleet=fleet, note=note, now_ms=now_ms, actor=actor))
            return token_id

    async def tokens(self) -> list[TokenInfo]:
        rows = await self._pool.fetch("SELECT id, uses_left, expires_ms, approve, fleet, note, created_ms FROM tokens ORDER BY id")
        return [TokenInfo(*r) for r in rows]

    async def token_devices(self) -> dict[int, list[str]]:
        rows = await self._pool.fetch("SELECT token_id, device_id FROM devices WHERE token_id IS NOT NULL ORDER BY device_id")
        out: dict[int, list[str]] = {}
        for token_id, device_id in rows:
            out.setdefault(token_id, []).append(device_id)
        return out

    async def enrol(self, token_hash: bytes, *, device_id: str, public_key: bytes, key_id: bytes, software_version: str, now_ms: int) -> EnrolOutcome:
        async with self._pool.acquire() as conn, conn.transaction():
            # Row locks on the token and the device serialise concurrent enrolments on any hub process.
            token = await conn.fetchrow("SELECT id, uses_left, expires_ms, approve, fleet FROM tokens WHERE hash = $1 FOR UPDATE", token_hash)
            existing = await conn.fetchrow("SELECT key_id, status FROM devices WHERE device_id = $1 FOR UPDATE", device_id)
            revoked = await conn.fetchval("SELECT 1 FROM revoked_keys WHERE key_id = $1", key_id)
            other = await conn.fetchval("SELECT device_id FROM devices WHERE key_id = $1", key_id)
            decision = decide_enrolment(token, existing, bool(revoked), other, device_id=device_id, key_id=key_id, now_ms=now_ms)
            if isinstance(decision, EnrolOutcome):
                return decision
            status, fleet = decision
            await conn.execute(
                "INSERT INTO devices (device_id, key_id, public_key, status, fleet, enrolled_ms, token_id, software_version, unclean_stops, readings_dropped)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9) ON CONFLICT (device_id) DO UPDATE SET key_id = excluded.key_id,"
                " public_key = excluded.public_key, status = excluded.status, fleet = excluded.fleet,"
                " enrolled_ms = excluded.enrolled_ms, token_id = excluded.token_id, software_version = excluded.software_version",
                device_id, key_id, public_key, status, fleet, now_ms, token[0], software_version, to_uint_column(0),
            )
            await conn.execute("UPDATE tokens SET uses_left = uses_left - 1 WHERE id = $1", token[0])
            return EnrolOutcome(device_id, key_id, status)

    async def device_key(self, key_id: bytes) -> DeviceKey | None:
        row = await self._pool.fetchrow("SELECT device_id, public_key, status FROM devices WHERE key_id = $1", key_id)
        if row is not None:
            return DeviceKey(row[0], key_id, bytes(row[1]), row[2])
        owner = await self._pool.fetchval("SELECT device_id FROM revoked_keys WHERE key_id = $1", key_id)
        return DeviceKey(owner, key_id, b"", "revoked") if owner else None

    async def device_keys(self, key_ids: Sequence[bytes]) -> dict[bytes, DeviceKey]:
        """Two queries for all of them (device_key costs one or two a key)."""
        wanted = list(dict.fromkeys(key_ids))
        rows = await self._pool.fetch("SELECT key_id, device_id, public_key, status FROM devices WHERE key_id = ANY($1::bytea[])", wanted)
        found = {bytes(r[0]): DeviceKey(r[1], bytes(r[0]), bytes(r[2]), r[3]) for r in rows}
        for r in await self._pool.fetch("SELECT key_id, device_id FROM revoked_keys WHERE key_id = ANY($1::bytea[])", wanted):
            found.setdefault(bytes(r[0]), DeviceKey(r[1], bytes(r[0]), b"", "revoked"))
        return found

    async def set_device_ring(self, device_id: str, ring: str, *, now_ms: int, actor: str = AUTOMATIC) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            old = await conn.fetchval("SELECT ring FROM devices WHERE device_id = $1 FOR UPDATE", device_id)
            if old is None:
                return False
            if old != ring:
                await conn.execute("UPDATE devices SET ring = $1 WHERE device_id = $2", ring, device_id)
                await _audit(conn, ring_entry(device_id, old, ring, now_ms=now_ms, actor=actor))
            return True

    async def set_device_status(self, device_id: str, status: str, *, now_ms: int, actor: str = AUTOMATIC) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("SELECT key_id, status FROM devices WHERE device_id = $1 FOR UPDATE", device_id)
            if row is None or not status_change_allowed(row[1], status):
                return False
            await conn.execute("UPDATE devices SET status = $1 WHERE device_id = $2", status, device_id)
            await _audit(conn, status_entry(device_id, row[1], status, now_ms=now_ms, actor=actor))
            if status == "revoked":
                await conn.execute(
                    "INSERT INTO revoked_keys (key_id, device_id, revoked_ms) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                    row[0], device_id, now_ms,
                )
            return True

    # --- ingest -----------------------------------------------------------------------

    async def store_batch(self, batch: IncomingBatch) -> str:
        # One statement, one round trip: under load each round trip waits its turn for a CPU
        # twice (hub, then server), so a dozen of them made a batch's latency a dozen waits.
        stored = await self._pool.fetchval(STORE_BATCH, *_store_batch_args(batch))
        return "stored" if stored else "duplicate"

    async def store_batches(self, batches: Sequence[IncomingBatch]) -> list[str | Exception]:
        """Several batches in one transaction, one commit (one WAL flush) for all; each the one statement store_batch runs.

        Taken in the order of their devices and identities, so two processes storing overlapping groups take the rows'
        locks in one order (no deadlock between them); a group that fails is stored again a batch at a time."""
        if len(batches) < 2:
            return await super().store_batches(batches)
        import asyncpg

        order = sorted(range(len(batches)), key=lambda i: (batches[i].device_id, batches[i].key_id, batches[i].boot_epoch, batches[i].seq))
        outcomes: list[str | Exception] = [""] * len(batches)
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                if hasattr(conn, "fetchmany"):
                    # asyncpg 0.30 and later: the statements of the whole group sent at once, in this order, and their
                    # outcomes read back together (one round trip and one await for the group, not one a batch).
                    rows = await conn.fetchmany(STORE_BATCH, [_store_batch_args(batches[i]) for i in order])
                    for i, row in zip(order, rows, strict=True):
                        outcomes[i] = "stored" if row[0] else "duplicate"
                else:
                    for i in order:
                        outcomes[i] = "stored" if await conn.fetchval(STORE_BATCH, *_store_batch_args(batches[i])) else "duplicate"
        except asyncpg.PostgresError:
            return await super().store_batches(batches)
        return outcomes

    async def quarantined(self, device_id: str) -> dict[str, int]:
        rows = await self._pool.fetch("SELECT reason, count(*) FROM quarantine WHERE device_id = $1 GROUP BY reason ORDER BY reason", device_id)
        return {r[0]: r[1] for r in rows}

    async def record_status(self, device_id: str, report: Mapping[str, Any], *, received_ms: int) -> None:
        cols = status_row(report)
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "UPDATE devices SET software_version = $1, spool_batches = $2, spool_bytes = $3, config_digest = $4, errors = $5,"
                " policy_digest = CASE WHEN $6 = '' THEN policy_digest ELSE $6 END,"
                " unclean_stops = coalesce($7, unclean_stops), readings_dropped = coalesce($8, readings_dropped),"
                " status_ms = $9, last_seen_ms = greatest(coalesce(last_seen_ms, 0), $9), applied_etag = $11 WHERE device_id = $10",
                cols["software_version"], cols["spool_batches"], cols["spool_bytes"], cols["config_digest"], cols["errors"],
                cols["policy_digest"], cols["unclean_stops"], cols["readings_dropped"], received_ms, device_id, cols["applied_etag"],
            )
            if cols["boot_epoch"] is not None:
                await conn.execute(
                    "UPDATE devices SET boot_epoch = $1, last_seq = NULL WHERE device_id = $2 AND (boot_epoch IS NULL OR boot_epoch < $1)",
                    cols["boot_epoch"], device_id,
                )

    async def add_notice(self, device_id: str, notice: Mapping[str, Any], *, received_ms: int, daily_limit: int | None = None) -> int | None:
        site, lat, lon = notice_location(notice)
        # Read committed whatever the server's default: the count after the lock must see what the lock waited for.
        async with self._pool.acquire() as conn, conn.transaction(isolation="read_committed"):
            if daily_limit is not None:
                # The device's row locked: another hub process adding a notice for it waits here until this one commits.
                await conn.execute("SELECT 1 FROM devices WHERE device_id = $1 FOR UPDATE", device_id)
                since = received_ms - NOTICE_WINDOW_MS
                stored = await conn.fetchval("SELECT count(*) FROM notices WHERE device_id = $1 AND received_ms > $2", device_id, since)
                if stored >= daily_limit:
                    return None
            nid = await conn.fetchval(
                "INSERT INTO notices (device_id, received_ms, notice) VALUES ($1, $2, $3) RETURNING id", device_id, received_ms, dumps(dict(notice))
            )
            if site or lat is not None:
                await conn.execute("UPDATE devices SET site = $1, latitude = $2, longitude = $3 WHERE device_id = $4", site, lat, lon, device_id)
            return nid

    async def claim_freshness(self, key_id: bytes, device_id: str, message: Freshness, *, now_ms: int) -> Freshness | None:
        async with self._pool.acquire() as conn, conn.transaction(isolation="read_committed"):  # as add_notice
            # A row to lock even for the first message of a key (NULLs: nothing recorded yet); the lock
            # makes every other hub process wait here until this one commits.
            await conn.execute(
                "INSERT INTO report_marks (key_id, device_id, boot_epoch, report_seq, updated_ms) VALUES ($1, $2, NULL, NULL, $3)"
                " ON CONFLICT (key_id) DO NOTHING",
                key_id, device_id, now_ms,
            )
            row = await conn.fetchrow("SELECT boot_epoch, report_seq FROM report_marks WHERE key_id = $1 FOR UPDATE", key_id)
            mark = None if row[0] is None else Freshness(from_uint_column(row[0]), from_uint_column(row[1]))
            if not is_fresh(message, mark):
                return mark
            kept = next_mark(message, mark)
            if kept is not None:
                await conn.execute(
                    "UPDATE report_marks SET boot_epoch = $2, report_seq = $3, updated_ms = $4 WHERE key_id = $1",
                    key_id, to_uint_column(kept.boot_epoch), to_uint_column(kept.report_seq), now_ms,
                )
            return None

    # --- fleet ------------------------------------------------------------------------

    async def devices(self) -> list[Device]:
        return [device_from_row(r) for r in await self._pool.fetch(f"SELECT {DEVICE_COLUMNS} FROM devices ORDER BY device_id")]

    async def device(self, device_id: str) -> Device | None:
        row = await self._pool.fetchrow(f"SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = $1", device_id)
        return device_from_row(row) if row else None

    async def devices_named(self, device_ids: Sequence[str]) -> list[Device]:
        rows = await self._pool.fetch(f"SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = ANY($1::text[])", list(device_ids))
        return [device_from_row(r) for r in rows]

    async def device_fleets(self) -> dict[str, tuple[str, str]]:
        return {r[0]: (r[1], r[2]) for r in await self._pool.fetch("SELECT device_id, status, fleet FROM devices")}

    async def notices(self, *, device_id: str | None = None, limit: int = 200, latest: bool = False) -> list[Notice]:
        newest = f" AND id IN ({LATEST_NOTICES})" if latest else ""
        if device_id is None:
            rows = await self._pool.fetch(f"SELECT id, device_id, received_ms, notice FROM notices WHERE true{newest} ORDER BY id DESC LIMIT $1", limit)
        else:
            rows = await self._pool.fetch(
                f"SELECT id, device_id, received_ms, notice FROM notices WHERE device_id = $1{newest} ORDER BY id DESC LIMIT $2", device_id, limit
            )
        return [Notice(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

    async def set_desired(
        self, scope: str, name: str, document: Mapping[str, Any] | None, *, now_ms: int, actor: str = AUTOMATIC,
        may_change: frozenset[str] = DESIRED_PARTS,
    ) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            # The lock on the (fleet or device) key serialises changes of one document across hub processes, the first one included,
            # so the permission check below sees the document the change replaces.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _desired_lock(scope, name))
            old = await conn.fetchval("SELECT document FROM desired WHERE scope = $1 AND name = $2", scope, name)
            entry = desired_entry(scope, name, None if old is None else json.loads(old), document, may_change=may_change, now_ms=now_ms, actor=actor)
            if entry is None:
                return
            await _audit(conn, entry)
            if document is None:
                await conn.execute("DELETE FROM desired WHERE scope = $1 AND name = $2", scope, name)
                return
            await conn.execute(
                "INSERT INTO desired (scope, name, document, updated_ms) VALUES ($1, $2, $3, $4)"
                " ON CONFLICT (scope, name) DO UPDATE SET document = excluded.document, updated_ms = excluded.updated_ms",
                scope, name, dumps(dict(document)), now_ms,
            )

    async def desired(self, scope: str, name: str) -> tuple[dict[str, Any], int] | None:
        row = await self._pool.fetchrow("SELECT document, updated_ms FROM desired WHERE scope = $1 AND name = $2", scope, name)
        return (json.loads(row[0]), row[1]) if row else None

    async def desired_documents(self) -> dict[tuple[str, str], tuple[dict[str, Any], int]]:
        rows = await self._pool.fetch("SELECT scope, name, document, updated_ms FROM desired")
        return {(r[0], r[1]): (json.loads(r[2]), r[3]) for r in rows}

    async def desired_for(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], tuple[dict[str, Any], int]]:
        rows = await self._pool.fetch(
            "SELECT d.scope, d.name, d.document, d.updated_ms FROM desired AS d"
            " JOIN unnest($1::text[], $2::text[]) AS k(scope, name) ON d.scope = k.scope AND d.name = k.name",
            [key[0] for key in keys], [key[1] for key in keys],
        )
        return {(r[0], r[1]): (json.loads(r[2]), r[3]) for r in rows}

    # --- software rollouts (hub.rollout) ---------------------------------------------------

    async def save_rollout(self, rollout: Rollout, entry: AuditEntry, *, replaces_ms: int = 0) -> int:
        values = (rollout.version, rollout.fleet, dumps(list(rollout.stages)), rollout.wait_ms, rollout.max_failure, rollout.url, rollout.key_id,
                  rollout.state, rollout.stage, rollout.stage_started_ms, rollout.since_ms, rollout.reason, rollout.created_ms, rollout.updated_ms,
                  rollout.pause_backlog)
        async with self._pool.acquire() as conn, conn.transaction():
            if rollout.id == 0:
                rid = await conn.fetchval(
                    "INSERT INTO rollouts (version, fleet, stages, wait_ms, max_failure, url, key_id, state, stage, stage_started_ms, since_ms,"
                    " reason, created_ms, updated_ms, pause_backlog)"
                    " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) RETURNING id", *values)
            else:
                rid = rollout.id
                done = await conn.execute(
                    "UPDATE rollouts SET version = $1, fleet = $2, stages = $3, wait_ms = $4, max_failure = $5, url = $6, key_id = $7, state = $8,"
                    " stage = $9, stage_started_ms = $10, since_ms = $11, reason = $12, created_ms = $13, updated_ms = $14, pause_backlog = $15"
                    " WHERE id = $16 AND updated_ms = $17", *values, rid, replaces_ms)
                if done == "UPDATE 0":
                    return 0  # changed meanwhile (another hub process, another operator): nothing written
            await _audit(conn, rollout_entry(entry, rid))
            return int(rid)

    async def rollouts(self, *, fleet: str | None = None) -> list[Rollout]:
        if fleet is None:
            rows = await self._pool.fetch(f"SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY id DESC")
        else:
            rows = await self._pool.fetch(f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE fleet = $1 ORDER BY id DESC", fleet)
        return [rollout_from_row(r) for r in rows]

    async def set_software_targets(self, targets: Mapping[str, Mapping[str, Any] | None], *, now_ms: int) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            for device_id, target in sorted(targets.items()):
                if target is None:
                    await conn.execute("DELETE FROM desired WHERE scope = $1 AND name = $2", SOFTWARE_SCOPE, device_id)
                else:
                    await conn.execute(
                        "INSERT INTO desired (scope, name, document, updated_ms) VALUES ($1, $2, $3, $4)"
                        " ON CONFLICT (scope, name) DO UPDATE SET document = excluded.document, updated_ms = excluded.updated_ms",
                        SOFTWARE_SCOPE, device_id, dumps(dict(target)), now_ms,
                    )

    async def record_software_update(self, device_id: str, outcome: Mapping[str, str], *, received_ms: int) -> None:
        await self._pool.execute(
            "INSERT INTO software_updates (device_id, state, version, reason, running, changed_ms) VALUES ($1, $2, $3, $4, $5, $6)"
            " ON CONFLICT (device_id) DO UPDATE SET state = excluded.state, version = excluded.version, reason = excluded.reason,"
            " running = excluded.running, changed_ms = excluded.changed_ms"
            " WHERE (software_updates.state, software_updates.version, software_updates.reason, software_updates.running)"
            " <> (excluded.state, excluded.version, excluded.reason, excluded.running)",
            device_id, outcome.get("state", ""), outcome.get("version", ""), outcome.get("reason", ""), outcome.get("running", ""), received_ms,
        )

    async def software_updates(self) -> dict[str, SoftwareUpdate]:
        rows = await self._pool.fetch("SELECT device_id, state, version, reason, running, changed_ms FROM software_updates")
        return {r[0]: SoftwareUpdate(r[0], r[1], r[2], r[3], r[4], int(r[5])) for r in rows}

    # --- open data --------------------------------------------------------------------

    async def channels(self, *, device_id: str | None = None, channel_id: int | None = None, include_personal: bool = False) -> list[StoredChannel]:
        rows = await self._pool.fetch(
            "SELECT id, device_id, name, unit, kind, resolution, description, personal FROM channels"
            " WHERE ($1::text IS NULL OR device_id = $1) AND ($2::bigint IS NULL OR id = $2) AND ($3 OR NOT personal) ORDER BY id",
            device_id, channel_id, include_personal,
        )
        return [StoredChannel(*r) for r in rows]

    async def _collect_chunks(self, sql: str, params: Sequence[Any], collector: Collector, *, budget: QueryBudget | None = None) -> list[StoredReading]:
        # Decoding chunks and testing readings is CPU work (about 2.5 s per million readings
        # under a $filter on result): off the event loop, as the SQLite engine's reader threads
        # do it, so ingest and other requests go on meanwhile.
        loop = asyncio.get_running_loop()
        pool, executor = (self._pool, None) if budget is None else (self._public_pool, self._public)
        start = 0
        while True:
            if budget is None:
                rows = await pool.fetch(f"{sql} LIMIT {CHUNK_PAGE} OFFSET {start}", *params)
            else:
                budget.check_time()
                try:
                    # asyncpg cancels the statement on the server when the timeout passes.
                    rows = await pool.fetch(f"{sql} LIMIT {CHUNK_PAGE} OFFSET {start}", *params, timeout=budget.remaining_s())
                except TimeoutError:
                    raise budget.out_of_time() from None
            if not await loop.run_in_executor(executor, collector.feed, rows) or len(rows) < CHUNK_PAGE:
                return await loop.run_in_executor(executor, collector.page)
            start += CHUNK_PAGE

    # --- settings and one-time secrets ------------------------------------------------

    async def get_setting(self, key: str) -> str | None:
        return await self._pool.fetchval("SELECT value FROM settings WHERE key = $1", key)

    async def set_setting(self, key: str, value: str, *, only_if_absent: bool = False) -> bool:
        if only_if_absent:
            done = await self._pool.fetchval("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING 1", key, value)
            return done is not None
        await self._pool.execute("INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value", key, value)
        return True

    async def raise_setting(self, key: str, value: int) -> int:
        # A value that is not a number (set by hand, say) counts as none and is replaced.
        held = await self._pool.fetchval(
            "INSERT INTO settings (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
            " WHERE (CASE WHEN settings.value ~ '^[0-9]{1,18}$' THEN settings.value::bigint ELSE -1 END) < excluded.value::bigint"
            " RETURNING value", key, str(value))
        if held is None:  # it held more already: nothing was written, so nothing returned
            held = await self._pool.fetchval("SELECT value FROM settings WHERE key = $1", key)
        return int(held)

    async def add_secret(self, kind: str, secret_hash: bytes, *, expires_ms: int, account: str = BUILT_IN_ADMIN) -> None:
        await self._pool.execute("INSERT INTO secrets (kind, hash, expires_ms, account) VALUES ($1, $2, $3, $4)", kind, secret_hash, expires_ms, account)

    async def use_secret(self, kind: str, secret_hash: bytes, *, now_ms: int, consume: bool) -> str | None:
        if consume:
            return await self._pool.fetchval(
                "DELETE FROM secrets WHERE kind = $1 AND hash = $2 AND expires_ms > $3 RETURNING account", kind, secret_hash, now_ms
            )
        return await self._pool.fetchval("SELECT account FROM secrets WHERE kind = $1 AND hash = $2 AND expires_ms > $3", kind, secret_hash, now_ms)

    # --- people -----------------------------------------------------------------------

    async def add_account(self, name: str, roles: str, token_hash: bytes, *, now_ms: int, actor: str) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            added = await conn.fetchval(
                "INSERT INTO accounts (name, roles, token_hash, disabled, created_ms, updated_ms) VALUES ($1, $2, $3, FALSE, $4, $4)"
                " ON CONFLICT DO NOTHING RETURNING 1",
                name, roles, token_hash, now_ms,
            )
            if added is None:
                return False
            await _audit(conn, AuditEntry(at_ms=now_ms, actor=actor, action="account.add", target=f"account:{name}", detail=f"roles {roles}"))
            return True

    async def accounts(self) -> list[Account]:
        return [account_from_row(r) for r in await self._pool.fetch(f"SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY name")]

    async def account(self, name: str) -> Account | None:
        row = await self._pool.fetchrow(f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE name = $1", name)
        return account_from_row(row) if row else None

    async def account_by_token(self, token_hash: bytes) -> Account | None:
        row = await self._pool.fetchrow(f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE token_hash = $1 AND NOT disabled", token_hash)
        return account_from_row(row) if row else None

    async def change_account(self, name: str, changes: Mapping[str, object], entry: AuditEntry) -> bool:
        sets = ", ".join(f"{column} = ${n}" for n, column in enumerate(changes, start=1))
        async with self._pool.acquire() as conn, conn.transaction():
            n = len(changes)
            done = await conn.fetchval(
                f"UPDATE accounts SET {sets}, updated_ms = ${n + 1} WHERE name = ${n + 2} AND NOT disabled RETURNING 1",
                *changes.values(), entry.at_ms, name,
            )
            if done is None:
                return False
            await _audit(conn, entry)
            if entry.action == "account.disable":
                await conn.execute("DELETE FROM secrets WHERE account = $1", name)
            return True

    # --- the audit log ----------------------------------------------------------------

    async def append_audit(self, entry: AuditEntry) -> int:
        async with self._pool.acquire() as conn:
            return await _audit(conn, entry)

    async def audit_log(self, *, limit: int = 100, before_id: int | None = None) -> list[AuditEntry]:
        rows = await self._pool.fetch(f"SELECT {AUDIT_COLUMNS} FROM audit WHERE ($1::bigint IS NULL OR id < $1) ORDER BY id DESC LIMIT $2",
                                      before_id, limit)
        return [audit_from_row(r) for r in rows]

    async def audit_count(self) -> int:
        return int(await self._pool.fetchval("SELECT count(*) FROM audit"))

    # --- retention --------------------------------------------------------------------

    async def expire_readings(self, device_id: str, before_ms: int, *, max_chunks: int) -> tuple[int, int]:
        async with self._pool.acquire() as conn, conn.transaction():
            # FOR UPDATE: a concurrent run on another hub process waits, then finds these chunks gone or rewritten.
            rows = await conn.fetch(expire_query("$") + " FOR UPDATE OF k", device_id, before_ms, max_chunks)
            # Splitting a straddling chunk decodes it: off the event loop.
            plan = await asyncio.get_running_loop().run_in_executor(None, expiry_plan, rows, before_ms)
            await conn.executemany("DELETE FROM chunks WHERE id = $1", plan.delete)
            await conn.executemany("UPDATE chunks SET first_ms = $1, last_ms = $2, count = $3, data = $4 WHERE id = $5", plan.rewrite)
            return plan.readings, len(rows)

    async def expire_quarantine(self, device_id: str, before_ms: int, *, max_rows: int) -> int:
        deleted = await self._pool.fetch(
            "DELETE FROM quarantine WHERE id IN (SELECT id FROM quarantine WHERE device_id = $1 AND received_ms < $2 LIMIT $3) RETURNING 1",
            device_id, before_ms, max_rows,
        )
        return len(deleted)

    # --- the northbound export --------------------------------------------------------

    async def hold_export_lease(self, holder: str, *, now_ms: int, ttl_ms: int) -> bool:
        held = await self._pool.fetchval(
            "INSERT INTO export_lease (name, holder, expires_ms) VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
            " expires_ms = excluded.expires_ms WHERE export_lease.holder = excluded.holder OR export_lease.expires_ms <= $4 RETURNING 1",
            EXPORT_LEASE, holder, now_ms + ttl_ms, now_ms,
        )
        return held is not None

    async def release_export_lease(self, holder: str, *, now_ms: int) -> None:
        await self._pool.execute("UPDATE export_lease SET expires_ms = $1 WHERE name = $2 AND holder = $3", now_ms, EXPORT_LEASE, holder)

    async def export_pending(self, *, limit: int) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self._pool.fetch(export_pending_query("$"), limit)]

    async def export_done(self, outbox_ids: Sequence[int]) -> None:
        await self._pool.execute("DELETE FROM export_outbox WHERE id = ANY($1::bigint[])", list(outbox_ids))

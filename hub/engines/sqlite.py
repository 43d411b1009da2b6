"""The SQLite store: one writer thread that group-commits, a small pool of reader threads (WAL)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from edge.private import private_database
from edge.protocol.types import Channel
from edge.util.files import file_problem
from hub import schema
from hub.accounts import BUILT_IN_ADMIN, Account
from hub.audit import AUTOMATIC, AuditEntry
from hub.bounds import FLOOR_MS, MAX_SKEW_MS, reading_time_fault
from hub.budget import QueryBudget
from hub.chunks import Collector, collect_pages, encode_chunks, outside_query, quarantine_plan
from hub.engines.sql import (
    ACCOUNT_COLUMNS,
    AUDIT_COLUMNS,
    DEVICE_COLUMNS,
    EXPORT_LEASE,
    LATEST_NOTICES,
    OUTBOX_GRACE_MS,
    account_from_row,
    audit_from_row,
    batch_channels,
    channel_map,
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

__all__ = ["SQLiteStore"]

log = logging.getLogger("ocn.hub.store")

T = TypeVar("T")

# Jobs waiting when the writer wakes are committed together: one fsync for many batches.
MAX_GROUP = 200
# Batches a multi-row INSERT of store_batches names at most (11 values each, well under SQLite's 32,766 variables).
GROUP_ROWS = 256
# Counters are cumulative on the device: only the newest batch (by boot epoch, sequence) speaks for it.
NEWEST_BATCH = (
    "UPDATE devices SET boot_epoch = ?, last_seq = ?, counters = ?, policy_digest = ?,"
    " unclean_stops = coalesce(?, unclean_stops), readings_dropped = coalesce(?, readings_dropped)"
    " WHERE device_id = ? AND (boot_epoch IS NULL OR boot_epoch < ? OR (boot_epoch = ? AND (last_seq IS NULL OR last_seq <= ?)))"
)


def _newest_row(batch: IncomingBatch) -> tuple[Any, ...]:
    """NEWEST_BATCH's parameters for a stored batch."""
    epoch, seq = to_uint_column(batch.boot_epoch), to_uint_column(batch.seq)
    unclean, dropped = to_uint_column(batch.counters.get("unclean_stops")), to_uint_column(batch.counters.get("readings_dropped"))
    return (epoch, seq, dumps(dict(batch.counters)), batch.policy_digest.hex(), unclean, dropped, batch.device_id, epoch, epoch, seq)

# A stored batch's mark on its device, in one statement: NEWEST_BATCH and the stored counts (every SET reads the row as it
# was, so the newest test is the same in each).
# A channel's row inserted or updated, {returning} read back either way; {rows}: CHANNEL_ROW once per channel.
CHANNEL_UPSERT = (
    "INSERT INTO channels (device_id, name, unit, kind, resolution, description, personal) VALUES {rows}"
    " ON CONFLICT (device_id, name) DO UPDATE SET unit = excluded.unit, kind = excluded.kind,"
    " resolution = excluded.resolution, description = excluded.description,"
    " personal = channels.personal OR excluded.personal RETURNING {returning}"
)
CHANNEL_ROW = "(?, ?, ?, ?, ?, ?, ?)"
STORED_BATCH = (
    "UPDATE devices SET readings_stored = readings_stored + ?1, batches_stored = batches_stored + 1, last_seen_ms = max(coalesce(last_seen_ms, 0), ?2),"
    " boot_epoch = CASE WHEN {newer} THEN ?3 ELSE boot_epoch END, last_seq = CASE WHEN {newer} THEN ?4 ELSE last_seq END,"
    " counters = CASE WHEN {newer} THEN ?5 ELSE counters END, policy_digest = CASE WHEN {newer} THEN ?6 ELSE policy_digest END,"
    " unclean_stops = CASE WHEN {newer} THEN coalesce(?7, unclean_stops) ELSE unclean_stops END,"
    " readings_dropped = CASE WHEN {newer} THEN coalesce(?8, readings_dropped) ELSE readings_dropped END"
    " WHERE device_id = ?9"
).format(newer="(boot_epoch IS NULL OR boot_epoch < ?3 OR (boot_epoch = ?3 AND (last_seq IS NULL OR last_seq <= ?4)))")


def _stored_row(batch: IncomingBatch) -> tuple[Any, ...]:
    """STORED_BATCH's parameters."""
    epoch, seq = to_uint_column(batch.boot_epoch), to_uint_column(batch.seq)
    unclean, dropped = to_uint_column(batch.counters.get("unclean_stops")), to_uint_column(batch.counters.get("readings_dropped"))
    return (len(batch.readings), batch.received_ms, epoch, seq, dumps(dict(batch.counters)), batch.policy_digest.hex(), unclean, dropped,
            batch.device_id)


def _connect(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _migrate(conn: sqlite3.Connection) -> None:
    # Switching a new file to WAL needs an exclusive lock, which SQLite may refuse at once
    # (without waiting) while another process is migrating; it is retried, never skipped.
    for attempt in range(100):
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or attempt == 99:
                raise
            time.sleep(0.05 + 0.01 * attempt)
    # BEGIN IMMEDIATE takes the write lock first, so two processes starting together
    # migrate one after the other and the second finds nothing left to do.
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        # Each migration not applied yet, by number (not "above the newest"): one numbered below a
        # migration already applied (kept for a change that landed later) still runs.
        applied = {row[0] for row in conn.execute("SELECT version FROM schema_version")}
        for version, sql in schema.MIGRATIONS:
            if version not in applied:
                for statement in (*schema.migration_statements("sqlite", sql), *schema.engine_statements("sqlite", version)):
                    conn.execute(statement)
                if version == schema.QUARANTINE_STORED:
                    _quarantine_stored(conn)
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                log.info("applied schema migration", extra={"version": version, "engine": "sqlite"})
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _audit(conn: sqlite3.Connection, entry: AuditEntry) -> int:
    """Append ``entry`` in the transaction of the change it records."""
    cur = conn.execute(
        "INSERT INTO audit (at_ms, actor, action, target, before_sha256, after_sha256, detail) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (entry.at_ms, entry.actor, entry.action, entry.target, entry.before_sha256, entry.after_sha256, entry.detail),
    )
    return int(cur.lastrowid or 0)


def _quarantine_stored(conn: sqlite3.Connection) -> None:
    """Move the readings already stored outside the time bounds into quarantine (schema migration 4)."""
    now = time.time_ns() // 1_000_000
    rows = conn.execute(outside_query("?"), (FLOOR_MS, now + MAX_SKEW_MS)).fetchall()
    plan = quarantine_plan(rows, lambda ts: reading_time_fault(ts, now_ms=now), now_ms=now)
    conn.executemany("INSERT INTO quarantine (device_id, channel, unit, reading, reason, received_ms) VALUES (?, ?, ?, ?, ?, ?)", plan.quarantine)
    conn.executemany("UPDATE chunks SET first_ms = ?, last_ms = ?, count = ?, data = ? WHERE id = ?", plan.rewrite)
    conn.executemany("DELETE FROM chunks WHERE id = ?", plan.delete)
    if plan.quarantine:
        log.info("quarantined stored readings outside the time bounds", extra={"readings": len(plan.quarantine), "engine": "sqlite"})


class SQLiteStore(Store):
    """The zero-setup store: a single SQLite file in WAL mode."""

    placeholder = "?"

    def __init__(self, url: str, path: str) -> None:
        self.url = url
        self.path = path
        self._jobs: queue.SimpleQueue[tuple[Callable[[sqlite3.Connection], Any], asyncio.Future[Any]] | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="hub-sqlite-read")
        # Each thread opens its own reader connection (self._reader), so public queries never share one with ingest.
        self._public = ThreadPoolExecutor(max_workers=self.public_lane, thread_name_prefix="hub-sqlite-public")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        # (device, channel) → (id, personal) as this process last wrote or read them.
        self._channel_ids: dict[tuple[str, str], tuple[int, bool]] = {}

    @classmethod
    async def open(cls, path: str, *, url: str) -> SQLiteStore:
        """Open (and migrate) the database file at ``path``; ``url`` is the --db URL it came from, for messages."""
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise StoreError(f"--db {url!r}: directory {parent} does not exist")
        store = cls(url, path)
        try:
            private_database(path)  # pseudonyms, token and session hashes: 0600, and its -wal and -shm follow
            conn = await asyncio.to_thread(_connect, path)
            await asyncio.to_thread(_migrate, conn)
        except OSError as exc:
            raise StoreError(f"--db {url!r}: cannot create {path}: {file_problem(exc)}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"--db {url!r}: cannot open {path}: {exc}") from exc
        conn.execute("PRAGMA synchronous = FULL")
        store._writer = threading.Thread(target=store._write_loop, args=(conn,), name="hub-sqlite-writer", daemon=True)
        store._writer.start()
        return store

    async def close(self) -> None:
        if self._writer is not None:
            self._jobs.put(None)
            await asyncio.to_thread(self._writer.join)
            self._writer = None
        self._readers.shutdown(wait=True)
        self._public.shutdown(wait=True)
        for conn in self._reader_conns:
            conn.close()
        self._reader_conns.clear()

    async def schema_version(self) -> int:
        rows = await self._read("SELECT coalesce(max(version), 0) FROM schema_version")
        return int(rows[0][0])

    # --- plumbing ---------------------------------------------------------------------

    def _write_loop(self, conn: sqlite3.Connection) -> None:
        while True:
            first = self._jobs.get()
            if first is None:
                break
            group = [first]
            stop = False
            while len(group) < MAX_GROUP:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stop = True
                    break
                group.append(job)
            outcomes: list[tuple[bool, Any]] = []
            try:
                conn.execute("BEGIN IMMEDIATE")
                for fn, _ in group:
                    conn.execute("SAVEPOINT job")
                    try:
                        outcomes.append((True, fn(conn)))
                        conn.execute("RELEASE job")
                    except Exception as exc:  # handed to the awaiting caller
                        conn.execute("ROLLBACK TO job")
                        conn.execute("RELEASE job")
                        self._channel_ids.clear()
                        outcomes.append((False, exc))
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):  # the writer must outlive a failed group
                        conn.execute("ROLLBACK")
                self._channel_ids.clear()
                outcomes = [(False, exc)] * len(group)
            # One wake-up of each waiting loop for the whole group, not one per job: a busy hub's loop is woken
            # through its self-pipe for each call from another thread.
            settled: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], bool, Any]]] = {}
            for (_, future), (ok, value) in zip(group, outcomes, strict=True):
                settled.setdefault(future.get_loop(), []).append((future, ok, value))
            for loop, results in settled.items():
                loop.call_soon_threadsafe(_settle_all, results)
            if stop:
                break
        conn.close()

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((fn, future))
        return future

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path)
            conn.execute("PRAGMA query_only = ON")
            self._local.conn = conn
            self._reader_conns.append(conn)
        return conn

    async def _read(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        def run() -> list[tuple[Any, ...]]:
            return self._reader().execute(sql, params).fetchall()

        return await asyncio.get_running_loop().run_in_executor(self._readers, run)

    # --- enrolment and keys -----------------------------------------------------------

    async def create_token(
        self, token_hash: bytes, *, uses: int, expires_ms: int, approve: bool, fleet: str, note: str, now_ms: int, actor: str = AUTOMATIC
    ) -> int:
        def run(conn: sqlite3.Connection) -> int:
            cur = conn.execute(
                "INSERT INTO tokens (hash, uses_left, expires_ms, approve, fleet, note, created_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (token_hash, uses, expires_ms, approve, fleet, note, now_ms),
            )
            token_id = int(cur.lastrowid or 0)
            _audit(conn, token_entry(token_id, uses=uses, expires_ms=expires_ms, approve=approve, fleet=fleet, note=note, now_ms=now_ms, actor=actor))
            return token_id

        return await self._write(run)

    async def tokens(self) -> list[TokenInfo]:
        rows = await self._read("SELECT id, uses_left, expires_ms, approve, fleet, note, created_ms FROM tokens ORDER BY id")
        return [TokenInfo(r[0], r[1], r[2], bool(r[3]), r[4], r[5], r[6]) for r in rows]

    async def token_devices(self) -> dict[int, list[str]]:
        rows = await self._read("SELECT token_id, device_id FROM devices WHERE token_id IS NOT NULL ORDER BY device_id")
        out: dict[int, list[str]] = {}
        for token_id, device_id in rows:
            out.setdefault(token_id, []).append(device_id)
        return out

    async def enrol(self, token_hash: bytes, *, device_id: str, public_key: bytes, key_id: bytes, software_version: str, now_ms: int) -> EnrolOutcome:
        def run(conn: sqlite3.Connection) -> EnrolOutcome:
            token = conn.execute("SELECT id, uses_left, expires_ms, approve, fleet FROM tokens WHERE hash = ?", (token_hash,)).fetchone()
            existing = conn.execute("SELECT key_id, status FROM devices WHERE device_id = ?", (device_id,)).fetchone()
            revoked = conn.execute("SELECT 1 FROM revoked_keys WHERE key_id = ?", (key_id,)).fetchone()
            other = conn.execute("SELECT device_id FROM devices WHERE key_id = ?", (key_id,)).fetchone()
            decision = decide_enrolment(token, existing, bool(revoked), other[0] if other else None, device_id=device_id, key_id=key_id, now_ms=now_ms)
            if isinstance(decision, EnrolOutcome):
                return decision
            status, fleet = decision
            if existing is not None:
                conn.execute(
                    "UPDATE devices SET key_id = ?, public_key = ?, status = ?, fleet = ?, enrolled_ms = ?, token_id = ?, software_version = ?"
                    " WHERE device_id = ?",
                    (key_id, public_key, status, fleet, now_ms, token[0], software_version, device_id),
                )
            else:
                conn.execute(
                    "INSERT INTO devices (device_id, key_id, public_key, status, fleet, enrolled_ms, token_id, software_version,"
                    " unclean_stops, readings_dropped) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (device_id, key_id, public_key, status, fleet, now_ms, token[0], software_version, to_uint_column(0), to_uint_column(0)),
                )
            conn.execute("UPDATE tokens SET uses_left = uses_left - 1 WHERE id = ?", (token[0],))
            return EnrolOutcome(device_id, key_id, status)

        return await self._write(run)

    async def device_key(self, key_id: bytes) -> DeviceKey | None:
        rows = await self._read("SELECT device_id, public_key, status FROM devices WHERE key_id = ?", (key_id,))
        if rows:
            return DeviceKey(rows[0][0], key_id, bytes(rows[0][1]), rows[0][2])
        rows = await self._read("SELECT device_id FROM revoked_keys WHERE key_id = ?", (key_id,))
        return DeviceKey(rows[0][0], key_id, b"", "revoked") if rows else None

    async def device_keys(self, key_ids: Sequence[bytes]) -> dict[bytes, DeviceKey]:
        """One hand-off to a reader for all of them (device_key costs two a key)."""
        wanted = list(dict.fromkeys(key_ids))

        def run() -> dict[bytes, DeviceKey]:
            conn, found = self._reader(), {}
            for start in range(0, len(wanted), GROUP_ROWS):
                part = wanted[start : start + GROUP_ROWS]
                marks = ", ".join("?" * len(part))
                for kid, device_id, public, status in conn.execute(
                        f"SELECT key_id, device_id, public_key, status FROM devices WHERE key_id IN ({marks})", part):
                    found[bytes(kid)] = DeviceKey(device_id, bytes(kid), bytes(public), status)
                for kid, device_id in conn.execute(f"SELECT key_id, device_id FROM revoked_keys WHERE key_id IN ({marks})", part):
                    found.setdefault(bytes(kid), DeviceKey(device_id, bytes(kid), b"", "revoked"))
            return found

        return await asyncio.get_running_loop().run_in_executor(self._readers, run) if wanted else {}

    async def set_device_ring(self, device_id: str, ring: str, *, now_ms: int, actor: str = AUTOMATIC) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT ring FROM devices WHERE device_id = ?", (device_id,)).fetchone()
            if row is None:
                return False
            if row[0] != ring:
                conn.execute("UPDATE devices SET ring = ? WHERE device_id = ?", (ring, device_id))
                _audit(conn, ring_entry(device_id, row[0], ring, now_ms=now_ms, actor=actor))
            return True

        return await self._write(run)

    async def set_device_status(self, device_id: str, status: str, *, now_ms: int, actor: str = AUTOMATIC) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            row = conn.execute("SELECT key_id, status FROM devices WHERE device_id = ?", (device_id,)).fetchone()
            if row is None or not status_change_allowed(row[1], status):
                return False
            conn.execute("UPDATE devices SET status = ? WHERE device_id = ?", (status, device_id))
            _audit(conn, status_entry(device_id, row[1], status, now_ms=now_ms, actor=actor))
            if status == "revoked":
                conn.execute("INSERT OR IGNORE INTO revoked_keys (key_id, device_id, revoked_ms) VALUES (?, ?, ?)", (row[0], device_id, now_ms))
            return True

        return await self._write(run)

    # --- ingest -----------------------------------------------------------------------

    def _channel_id(self, conn: sqlite3.Connection, device_id: str, channel: Channel) -> int:
        key = (device_id, channel.id)
        cached = self._channel_ids.get(key)
        # A cached channel not known to be personal is written again when a batch flags it: it must be
        # marked before this batch's readings are committed.  The flag is only ever set (sticky).
        if cached is None or (channel.personal and not cached[1]):
            # The row inserted or updated, and its id, in one statement (an upsert's RETURNING gives the row either way).
            [(cid, personal)] = conn.execute(
                CHANNEL_UPSERT.format(rows=CHANNEL_ROW, returning="id, personal"),
                (device_id, channel.id, channel.unit, channel.kind.value, channel.resolution, channel.description, channel.personal),
            ).fetchall()
            cached = (cid, bool(personal))
            self._channel_ids[key] = cached
        return cached[0]

    def _group_channel_ids(self, conn: sqlite3.Connection, batches: Sequence[IncomingBatch]) -> list[dict[str, int]]:
        """channel_map of each batch as _channel_id would make them one after another, the channels to write (not known
        yet, or newly flagged personal) written by one upsert a GROUP_ROWS, not one statement each: a device's first
        batch since the hub started writes all its channels (bench.mqtt_hub: about 7 % of the hub's samples).  A channel
        twice in the group is written as the second write would leave it (its values then, personal if either is), and
        new rows are inserted in the order they are met, so their ids are those one at a time would give."""
        used = [batch_channels(b) for b in batches]
        wanted: dict[tuple[str, str], Channel] = {}
        for b, channels in zip(batches, used, strict=True):
            for name, channel in channels.items():
                key = (b.device_id, name)
                pending = wanted.get(key)
                if pending is not None:
                    if channel.personal and not pending.personal:
                        wanted[key] = channel
                    continue
                cached = self._channel_ids.get(key)
                if cached is None or (channel.personal and not cached[1]):
                    wanted[key] = channel
        rows = list(wanted.items())
        for start in range(0, len(rows), GROUP_ROWS):
            part = rows[start : start + GROUP_ROWS]
            written = conn.execute(
                CHANNEL_UPSERT.format(rows=", ".join([CHANNEL_ROW] * len(part)), returning="id, personal, device_id, name"),
                [value for (device_id, name), ch in part for value in (device_id, name, ch.unit, ch.kind.value, ch.resolution, ch.description, ch.personal)],
            ).fetchall()
            for cid, personal, device_id, name in written:
                self._channel_ids[(device_id, name)] = (cid, bool(personal))
        return [{name: self._channel_ids[(b.device_id, name)][0] for name in channels} for b, channels in zip(batches, used, strict=True)]

    async def store_batch(self, batch: IncomingBatch) -> str:
        def run(conn: sqlite3.Connection) -> str:
            cur = conn.execute(
                "INSERT OR IGNORE INTO batches (key_id, boot_epoch, seq, device_id, created_ms, received_ms, readings, size, policy_digest, codec, counters)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (batch.key_id, to_uint_column(batch.boot_epoch), to_uint_column(batch.seq), batch.device_id, to_uint_column(batch.created_ms),
                 batch.received_ms, len(batch.readings) + len(batch.quarantined), batch.size, batch.policy_digest.hex(), batch.codec,
                 dumps(dict(batch.counters))),
            )
            if cur.rowcount == 0:
                conn.execute(
                    "UPDATE devices SET duplicates = duplicates + 1, last_seen_ms = max(coalesce(last_seen_ms, 0), ?) WHERE device_id = ?",
                    (batch.received_ms, batch.device_id),
                )
                return "duplicate"
            ids = channel_map(batch, lambda ch: self._channel_id(conn, batch.device_id, ch))
            # The northbound export's outbox (hub/export.py): this batch's chunks are the ids past the newest before it
            # (the writer holds the database's write lock, and a new rowid is the largest plus one).
            exporting = conn.execute("SELECT 1 FROM export_lease WHERE expires_ms > ? LIMIT 1", (batch.received_ms - OUTBOX_GRACE_MS,)).fetchone()
            newest = conn.execute("SELECT coalesce(max(id), 0) FROM chunks").fetchone()[0] if exporting else 0
            conn.executemany(
                "INSERT INTO chunks (channel_id, first_ms, last_ms, count, data) VALUES (?, ?, ?, ?, ?)",
                [(ids[name], *chunk) for name, chunks in encode_chunks(batch.readings).items() for chunk in chunks],
            )
            if exporting:
                conn.execute("INSERT INTO export_outbox (chunk_id) SELECT id FROM chunks WHERE id > ? ORDER BY id", (newest,))
            conn.executemany(
                "INSERT INTO quarantine (device_id, key_id, boot_epoch, seq, channel, unit, reading, reason, received_ms)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                quarantine_rows(batch),
            )
            conn.execute(
                "UPDATE devices SET readings_stored = readings_stored + ?, batches_stored = batches_stored + 1,"
                " last_seen_ms = max(coalesce(last_seen_ms, 0), ?) WHERE device_id = ?",
                (len(batch.readings), batch.received_ms, batch.device_id),
            )
            conn.execute(NEWEST_BATCH, _newest_row(batch))
            return "stored"

        return await self._write(run)

    async def store_batches(self, batches: Sequence[IncomingBatch]) -> list[str | Exception]:
        """Several batches in one job of the writer, each table written by one statement for all of them (store_batch
        costs eight statements and a savepoint a batch); a group that fails is stored again a batch at a time."""
        if len(batches) < 2:
            return await super().store_batches(batches)

        def run(conn: sqlite3.Connection) -> list[str]:
            identities = [(b.key_id, to_uint_column(b.boot_epoch), to_uint_column(b.seq)) for b in batches]
            inserted: set[tuple[bytes, int, int]] = set()
            for start in range(0, len(batches), GROUP_ROWS):
                part = batches[start : start + GROUP_ROWS]
                rows = conn.execute(
                    "INSERT OR IGNORE INTO batches (key_id, boot_epoch, seq, device_id, created_ms, received_ms, readings, size, policy_digest,"
                    " codec, counters) VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(part)) + " RETURNING key_id, boot_epoch, seq",
                    [value for b, identity in zip(part, identities[start : start + GROUP_ROWS], strict=True) for value in (
                        *identity, b.device_id, to_uint_column(b.created_ms), b.received_ms, len(b.readings) + len(b.quarantined), b.size,
                        b.policy_digest.hex(), b.codec, dumps(dict(b.counters)))],
                ).fetchall()
                inserted.update((bytes(k), e, s) for k, e, s in rows)
            # The first of a batch sent twice in one group is the one stored; the other is its duplicate.
            outcomes = []
            for identity in identities:
                outcomes.append("stored" if identity in inserted else "duplicate")
                inserted.discard(identity)
            stored = [b for b, outcome in zip(batches, outcomes, strict=True) if outcome == "stored"]
            received = min(b.received_ms for b in batches)
            exporting = conn.execute("SELECT 1 FROM export_lease WHERE expires_ms > ? LIMIT 1", (received - OUTBOX_GRACE_MS,)).fetchone()
            newest = conn.execute("SELECT coalesce(max(id), 0) FROM chunks").fetchone()[0] if exporting else 0
            chunks, apart = [], []
            for b, ids in zip(stored, self._group_channel_ids(conn, stored), strict=True):
                chunks += [(ids[name], *chunk) for name, parts in encode_chunks(b.readings).items() for chunk in parts]
                apart += quarantine_rows(b)
            conn.executemany("INSERT INTO chunks (channel_id, first_ms, last_ms, count, data) VALUES (?, ?, ?, ?, ?)", chunks)
            if exporting:
                conn.execute("INSERT INTO export_outbox (chunk_id) SELECT id FROM chunks WHERE id > ? ORDER BY id", (newest,))
            conn.executemany(
                "INSERT INTO quarantine (device_id, key_id, boot_epoch, seq, channel, unit, reading, reason, received_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                apart,
            )
            conn.executemany(
                "UPDATE devices SET duplicates = duplicates + 1, last_seen_ms = max(coalesce(last_seen_ms, 0), ?) WHERE device_id = ?",
                [(b.received_ms, b.device_id) for b, outcome in zip(batches, outcomes, strict=True) if outcome == "duplicate"],
            )
            conn.executemany(STORED_BATCH, [_stored_row(b) for b in stored])
            return outcomes

        try:
            return list(await self._write(run))
        except sqlite3.Error:
            return await super().store_batches(batches)

    async def quarantined(self, device_id: str) -> dict[str, int]:
        rows = await self._read("SELECT reason, count(*) FROM quarantine WHERE device_id = ? GROUP BY reason ORDER BY reason", (device_id,))
        return {reason: count for reason, count in rows}

    async def record_status(self, device_id: str, report: Mapping[str, Any], *, received_ms: int) -> None:
        cols = status_row(report)

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE devices SET software_version = ?, spool_batches = ?, spool_bytes = ?, config_digest = ?, applied_etag = ?, errors = ?,"
                " policy_digest = CASE WHEN ? = '' THEN policy_digest ELSE ? END,"
                " unclean_stops = coalesce(?, unclean_stops), readings_dropped = coalesce(?, readings_dropped),"
                " status_ms = ?, last_seen_ms = max(coalesce(last_seen_ms, 0), ?) WHERE device_id = ?",
                (cols["software_version"], cols["spool_batches"], cols["spool_bytes"], cols["config_digest"], cols["applied_etag"], cols["errors"],
                 cols["policy_digest"], cols["policy_digest"], cols["unclean_stops"], cols["readings_dropped"],
                 received_ms, received_ms, device_id),
            )
            if cols["boot_epoch"] is not None:
                conn.execute(
                    "UPDATE devices SET boot_epoch = ?, last_seq = NULL WHERE device_id = ? AND (boot_epoch IS NULL OR boot_epoch < ?)",
                    (cols["boot_epoch"], device_id, cols["boot_epoch"]),
                )

        await self._write(run)

    async def add_notice(self, device_id: str, notice: Mapping[str, Any], *, received_ms: int, daily_limit: int | None = None) -> int | None:
        site, lat, lon = notice_location(notice)

        def run(conn: sqlite3.Connection) -> int | None:
            # In the writer's IMMEDIATE transaction: other hub processes on this file wait for its commit.
            if daily_limit is not None and conn.execute(
                "SELECT count(*) FROM notices WHERE device_id = ? AND received_ms > ?", (device_id, received_ms - NOTICE_WINDOW_MS)
            ).fetchone()[0] >= daily_limit:
                return None
            cur = conn.execute("INSERT INTO notices (device_id, received_ms, notice) VALUES (?, ?, ?)", (device_id, received_ms, dumps(dict(notice))))
            if site or lat is not None:
                conn.execute("UPDATE devices SET site = ?, latitude = ?, longitude = ? WHERE device_id = ?", (site, lat, lon, device_id))
            return int(cur.lastrowid or 0)

        return await self._write(run)

    async def claim_freshness(self, key_id: bytes, device_id: str, message: Freshness, *, now_ms: int) -> Freshness | None:
        def run(conn: sqlite3.Connection) -> Freshness | None:
            # In the writer's IMMEDIATE transaction: other hub processes on this file wait for its commit.
            row = conn.execute("SELECT boot_epoch, report_seq FROM report_marks WHERE key_id = ?", (key_id,)).fetchone()
            mark = None if row is None else Freshness(from_uint_column(row[0]), from_uint_column(row[1]))
            if not is_fresh(message, mark):
                return mark
            kept = next_mark(message, mark)
            if kept is not None:
                conn.execute(
                    "INSERT INTO report_marks (key_id, device_id, boot_epoch, report_seq, updated_ms) VALUES (?, ?, ?, ?, ?)"
                    " ON CONFLICT (key_id) DO UPDATE SET boot_epoch = excluded.boot_epoch, report_seq = excluded.report_seq,"
                    " updated_ms = excluded.updated_ms",
                    (key_id, device_id, to_uint_column(kept.boot_epoch), to_uint_column(kept.report_seq), now_ms),
                )
            return None

        return await self._write(run)

    # --- fleet ------------------------------------------------------------------------

    async def devices(self) -> list[Device]:
        rows = await self._read(f"SELECT {DEVICE_COLUMNS} FROM devices ORDER BY device_id")
        return [device_from_row(r) for r in rows]

    async def device(self, device_id: str) -> Device | None:
        rows = await self._read(f"SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id = ?", (device_id,))
        return device_from_row(rows[0]) if rows else None

    async def devices_named(self, device_ids: Sequence[str]) -> list[Device]:
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(device_ids), GROUP_ROWS):
            part = list(device_ids[start : start + GROUP_ROWS])
            rows += await self._read(f"SELECT {DEVICE_COLUMNS} FROM devices WHERE device_id IN ({', '.join('?' * len(part))})", part)
        return [device_from_row(r) for r in rows]

    async def device_fleets(self) -> dict[str, tuple[str, str]]:
        return {device_id: (status, fleet) for device_id, status, fleet in await self._read("SELECT device_id, status, fleet FROM devices")}

    async def notices(self, *, device_id: str | None = None, limit: int = 200, latest: bool = False) -> list[Notice]:
        sql = "SELECT id, device_id, received_ms, notice FROM notices WHERE 1 = 1"
        params: list[Any] = []
        if device_id is not None:
            sql += " AND device_id = ?"
            params.append(device_id)
        if latest:
            sql += f" AND id IN ({LATEST_NOTICES})"
        rows = await self._read(sql + " ORDER BY id DESC LIMIT ?", (*params, limit))
        return [Notice(r[0], r[1], r[2], json.loads(r[3])) for r in rows]

    async def set_desired(
        self, scope: str, name: str, document: Mapping[str, Any] | None, *, now_ms: int, actor: str = AUTOMATIC,
        may_change: frozenset[str] = DESIRED_PARTS,
    ) -> None:
        def run(conn: sqlite3.Connection) -> None:
            row = conn.execute("SELECT document FROM desired WHERE scope = ? AND name = ?", (scope, name)).fetchone()
            entry = desired_entry(scope, name, None if row is None else json.loads(row[0]), document, may_change=may_change, now_ms=now_ms, actor=actor)
            if entry is None:
                return
            _audit(conn, entry)
            if document is None:
                conn.execute("DELETE FROM desired WHERE scope = ? AND name = ?", (scope, name))
            else:
                conn.execute(
                    "INSERT INTO desired (scope, name, document, updated_ms) VALUES (?, ?, ?, ?)"
                    " ON CONFLICT (scope, name) DO UPDATE SET document = excluded.document, updated_ms = excluded.updated_ms",
                    (scope, name, dumps(dict(document)), now_ms),
                )

        await self._write(run)

    async def desired(self, scope: str, name: str) -> tuple[dict[str, Any], int] | None:
        rows = await self._read("SELECT document, updated_ms FROM desired WHERE scope = ? AND name = ?", (scope, name))
        return (json.loads(rows[0][0]), rows[0][1]) if rows else None

    async def desired_documents(self) -> dict[tuple[str, str], tuple[dict[str, Any], int]]:
        rows = await self._read("SELECT scope, name, document, updated_ms FROM desired")
        return {(r[0], r[1]): (json.loads(r[2]), r[3]) for r in rows}

    async def desired_for(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], tuple[dict[str, Any], int]]:
        rows: list[tuple[Any, ...]] = []
        for start in range(0, len(keys), GROUP_ROWS):
            part = keys[start : start + GROUP_ROWS]
            rows += await self._read("SELECT scope, name, document, updated_ms FROM desired WHERE (scope, name) IN (VALUES "
                                     + ", ".join(["(?, ?)"] * len(part)) + ")", [value for key in part for value in key])
        return {(r[0], r[1]): (json.loads(r[2]), r[3]) for r in rows}

    # --- software rollouts (hub.rollout) ---------------------------------------------------

    async def save_rollout(self, rollout: Rollout, entry: AuditEntry, *, replaces_ms: int = 0) -> int:
        values = (rollout.version, rollout.fleet, dumps(list(rollout.stages)), rollout.wait_ms, rollout.max_failure, rollout.url, rollout.key_id,
                  rollout.state, rollout.stage, rollout.stage_started_ms, rollout.since_ms, rollout.reason, rollout.created_ms, rollout.updated_ms,
                  rollout.pause_backlog)

        def run(conn: sqlite3.Connection) -> int:
            if rollout.id == 0:
                cur = conn.execute(
                    "INSERT INTO rollouts (version, fleet, stages, wait_ms, max_failure, url, key_id, state, stage, stage_started_ms, since_ms,"
                    " reason, created_ms, updated_ms, pause_backlog) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", values)
                rid = int(cur.lastrowid or 0)
            else:
                rid = rollout.id
                cur = conn.execute(
                    "UPDATE rollouts SET version = ?, fleet = ?, stages = ?, wait_ms = ?, max_failure = ?, url = ?, key_id = ?, state = ?,"
                    " stage = ?, stage_started_ms = ?, since_ms = ?, reason = ?, created_ms = ?, updated_ms = ?, pause_backlog = ?"
                    " WHERE id = ? AND updated_ms = ?",
                    (*values, rid, replaces_ms))
                if cur.rowcount == 0:
                    return 0  # changed meanwhile (another hub process, another operator): nothing written
            _audit(conn, rollout_entry(entry, rid))
            return rid

        return await self._write(run)

    async def rollouts(self, *, fleet: str | None = None) -> list[Rollout]:
        if fleet is None:
            rows = await self._read(f"SELECT {ROLLOUT_COLUMNS} FROM rollouts ORDER BY id DESC", ())
        else:
            rows = await self._read(f"SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE fleet = ? ORDER BY id DESC", (fleet,))
        return [rollout_from_row(r) for r in rows]

    async def set_software_targets(self, targets: Mapping[str, Mapping[str, Any] | None], *, now_ms: int) -> None:
        def run(conn: sqlite3.Connection) -> None:
            for device_id, target in sorted(targets.items()):
                if target is None:
                    conn.execute("DELETE FROM desired WHERE scope = ? AND name = ?", (SOFTWARE_SCOPE, device_id))
                else:
                    conn.execute(
                        "INSERT INTO desired (scope, name, document, updated_ms) VALUES (?, ?, ?, ?)"
                        " ON CONFLICT (scope, name) DO UPDATE SET document = excluded.document, updated_ms = excluded.updated_ms",
                        (SOFTWARE_SCOPE, device_id, dumps(dict(target)), now_ms),
                    )

        await self._write(run)

    async def record_software_update(self, device_id: str, outcome: Mapping[str, str], *, received_ms: int) -> None:
        row = (device_id, outcome.get("state", ""), outcome.get("version", ""), outcome.get("reason", ""), outcome.get("running", ""), received_ms)

        def run(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO software_updates (device_id, state, version, reason, running, changed_ms) VALUES (?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (device_id) DO UPDATE SET state = excluded.state, version = excluded.version, reason = excluded.reason,"
                " running = excluded.running, changed_ms = excluded.changed_ms"
                " WHERE (software_updates.state, software_updates.version, software_updates.reason, software_updates.running)"
                " <> (excluded.state, excluded.version, excluded.reason, excluded.running)",
                row,
            )

        await self._write(run)

    async def software_updates(self) -> dict[str, SoftwareUpdate]:
        rows = await self._read("SELECT device_id, state, version, reason, running, changed_ms FROM software_updates", ())
        return {r[0]: SoftwareUpdate(r[0], r[1], r[2], r[3], r[4], int(r[5])) for r in rows}

    # --- open data --------------------------------------------------------------------

    async def channels(self, *, device_id: str | None = None, channel_id: int | None = None, include_personal: bool = False) -> list[StoredChannel]:
        sql = "SELECT id, device_id, name, unit, kind, resolution, description, personal FROM channels WHERE 1 = 1"
        if not include_personal:
            sql += " AND NOT personal"
        params: list[Any] = []
        if device_id is not None:
            sql += " AND device_id = ?"
            params.append(device_id)
        if channel_id is not None:
            sql += " AND id = ?"
            params.append(channel_id)
        rows = await self._read(sql + " ORDER BY id", params)
        return [StoredChannel(r[0], r[1], r[2], r[3], r[4], r[5], r[6], personal=bool(r[7])) for r in rows]

    async def _collect_chunks(self, sql: str, params: Sequence[Any], collector: Collector, *, budget: QueryBudget | None = None) -> list[StoredReading]:
        def run() -> list[StoredReading]:
            conn = self._reader()
            return collect_pages(lambda limit, offset: conn.execute(f"{sql} LIMIT {limit} OFFSET {offset}", params).fetchall(), collector)

        def run_within(budget: QueryBudget) -> list[StoredReading]:
            budget.check_time()
            conn = self._reader()
            # SQLite calls this every 10,000 virtual machine steps; True interrupts the statement.
            conn.set_progress_handler(budget.expired, 10_000)
            try:
                return run()
            except sqlite3.OperationalError:
                if budget.expired():
                    raise budget.out_of_time() from None
                raise
            finally:
                conn.set_progress_handler(None, 0)

        if budget is None:
            return await asyncio.get_running_loop().run_in_executor(self._readers, run)
        return await asyncio.get_running_loop().run_in_executor(self._public, run_within, budget)

    # --- settings and one-time secrets ------------------------------------------------

    async def get_setting(self, key: str) -> str | None:
        rows = await self._read("SELECT value FROM settings WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    async def set_setting(self, key: str, value: str, *, only_if_absent: bool = False) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            if only_if_absent:
                return conn.execute("INSERT OR IGNORE INTO settings (key, value) VALUES (?, ?)", (key, value)).rowcount == 1
            conn.execute("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value", (key, value))
            return True

        return await self._write(run)

    async def raise_setting(self, key: str, value: int) -> int:
        def run(conn: sqlite3.Connection) -> int:
            # A value that is not a number (set by hand, say) counts as none and is replaced.
            conn.execute("INSERT INTO settings (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value"
                         " WHERE settings.value = '' OR settings.value GLOB '*[^0-9]*' OR length(settings.value) > 18"
                         " OR CAST(settings.value AS INTEGER) < CAST(excluded.value AS INTEGER)", (key, str(value)))
            return int(conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()[0])

        return await self._write(run)

    async def add_secret(self, kind: str, secret_hash: bytes, *, expires_ms: int, account: str = BUILT_IN_ADMIN) -> None:
        await self._write(lambda conn: conn.execute(
            "INSERT INTO secrets (kind, hash, expires_ms, account) VALUES (?, ?, ?, ?)", (kind, secret_hash, expires_ms, account)))

    async def use_secret(self, kind: str, secret_hash: bytes, *, now_ms: int, consume: bool) -> str | None:
        def run(conn: sqlite3.Connection) -> str | None:
            conn.execute("DELETE FROM secrets WHERE expires_ms <= ?", (now_ms,))
            row = conn.execute("SELECT account FROM secrets WHERE kind = ? AND hash = ?", (kind, secret_hash)).fetchone()
            if row is not None and consume:
                conn.execute("DELETE FROM secrets WHERE kind = ? AND hash = ?", (kind, secret_hash))
            return None if row is None else str(row[0])

        if consume:
            return await self._write(run)
        rows = await self._read("SELECT account FROM secrets WHERE kind = ? AND hash = ? AND expires_ms > ?", (kind, secret_hash, now_ms))
        return str(rows[0][0]) if rows else None

    # --- people -----------------------------------------------------------------------

    async def add_account(self, name: str, roles: str, token_hash: bytes, *, now_ms: int, actor: str) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute("INSERT OR IGNORE INTO accounts (name, roles, token_hash, disabled, created_ms, updated_ms) VALUES (?, ?, ?, FALSE, ?, ?)",
                               (name, roles, token_hash, now_ms, now_ms))
            if cur.rowcount == 0:
                return False
            _audit(conn, AuditEntry(at_ms=now_ms, actor=actor, action="account.add", target=f"account:{name}", detail=f"roles {roles}"))
            return True

        return await self._write(run)

    async def accounts(self) -> list[Account]:
        return [account_from_row(r) for r in await self._read(f"SELECT {ACCOUNT_COLUMNS} FROM accounts ORDER BY name")]

    async def account(self, name: str) -> Account | None:
        rows = await self._read(f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE name = ?", (name,))
        return account_from_row(rows[0]) if rows else None

    async def account_by_token(self, token_hash: bytes) -> Account | None:
        rows = await self._read(f"SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE token_hash = ? AND NOT disabled", (token_hash,))
        return account_from_row(rows[0]) if rows else None

    async def change_account(self, name: str, changes: Mapping[str, object], entry: AuditEntry) -> bool:
        sets = ", ".join(f"{column} = ?" for column in changes)

        def run(conn: sqlite3.Connection) -> bool:
            if conn.execute(f"UPDATE accounts SET {sets}, updated_ms = ? WHERE name = ? AND NOT disabled",
                            (*changes.values(), entry.at_ms, name)).rowcount == 0:
                return False
            _audit(conn, entry)
            if entry.action == "account.disable":
                conn.execute("DELETE FROM secrets WHERE account = ?", (name,))
            return True

        return await self._write(run)

    # --- the audit log ----------------------------------------------------------------

    async def append_audit(self, entry: AuditEntry) -> int:
        return await self._write(lambda conn: _audit(conn, entry))

    async def audit_log(self, *, limit: int = 100, before_id: int | None = None) -> list[AuditEntry]:
        rows = await self._read(f"SELECT {AUDIT_COLUMNS} FROM audit WHERE id < ? ORDER BY id DESC LIMIT ?",
                                (2**63 - 1 if before_id is None else before_id, limit))
        return [audit_from_row(r) for r in rows]

    async def audit_count(self) -> int:
        return int((await self._read("SELECT count(*) FROM audit"))[0][0])

    # --- retention --------------------------------------------------------------------

    async def expire_readings(self, device_id: str, before_ms: int, *, max_chunks: int) -> tuple[int, int]:
        def run(conn: sqlite3.Connection) -> tuple[int, int]:
            rows = conn.execute(expire_query("?"), (device_id, before_ms, max_chunks)).fetchall()
            plan = expiry_plan(rows, before_ms)
            conn.executemany("DELETE FROM chunks WHERE id = ?", plan.delete)
            conn.executemany("UPDATE chunks SET first_ms = ?, last_ms = ?, count = ?, data = ? WHERE id = ?", plan.rewrite)
            return plan.readings, len(rows)

        return await self._write(run)

    async def expire_quarantine(self, device_id: str, before_ms: int, *, max_rows: int) -> int:
        def run(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "DELETE FROM quarantine WHERE id IN (SELECT id FROM quarantine WHERE device_id = ? AND received_ms < ? LIMIT ?)",
                (device_id, before_ms, max_rows),
            ).rowcount

        return await self._write(run)

    # --- the northbound export --------------------------------------------------------

    async def hold_export_lease(self, holder: str, *, now_ms: int, ttl_ms: int) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT INTO export_lease (name, holder, expires_ms) VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,"
                " expires_ms = excluded.expires_ms WHERE export_lease.holder = excluded.holder OR export_lease.expires_ms <= ?",
                (EXPORT_LEASE, holder, now_ms + ttl_ms, now_ms),
            )
            return cur.rowcount == 1

        return await self._write(run)

    async def release_export_lease(self, holder: str, *, now_ms: int) -> None:
        await self._write(lambda conn: conn.execute("UPDATE export_lease SET expires_ms = ? WHERE name = ? AND holder = ?", (now_ms, EXPORT_LEASE, holder)))

    async def export_pending(self, *, limit: int) -> list[tuple[Any, ...]]:
        return await self._read(export_pending_query("?"), (limit,))

    async def export_done(self, outbox_ids: Sequence[int]) -> None:
        await self._write(lambda conn: conn.executemany("DELETE FROM export_outbox WHERE id = ?", [(i,) for i in outbox_ids]))


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _settle_all(results: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for future, ok, value in results:
        _settle(future, ok, value)

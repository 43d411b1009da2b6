"""The durable store-and-forward of sealed batches: fsync'd before `put` returns, deleted only when acked.

One SQLite database in WAL mode with ``synchronous=FULL`` holds the batches
(byte for byte as sealed), a quarantine for batches the hub permanently
rejected, and a few persistent counters: the boot epoch, whether the last run
stopped cleanly, and the loss counters that travel upstream.  A committed
transaction survives ``kill -9`` and power loss; an interrupted one leaves no
trace.  See docs/spool-and-uplink.md for the guarantees and the measurements
behind the choice of SQLite over segment files.

The methods are synchronous and thread-safe; callers on the event loop run the
ones that commit (``put``, ``ack``, ``quarantine``) through ``asyncio.to_thread``.
``stats`` answers from figures kept in memory, so the event loop never waits on the
database for it.  A write the disk refuses (full, I/O error) is logged once, with
the path and the free space, and once more when a write succeeds again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.private import private_database, private_directory
from edge.protocol import peek_header
from edge.util.clock import now_ms
from edge.util.files import file_problem
from edge.util.logonce import LogOnce

__all__ = ["ACK_DELAY_S", "ACK_GROUP", "BatchId", "BootInfo", "Spool", "SpoolError", "SpoolStats", "StoredBatch", "WHEN_FULL"]

log = logging.getLogger("ocn.spool")

WHEN_FULL = ("drop_oldest", "refuse_newest")

_SCHEMA_VERSION = 1

# Acked batches are deleted with the next commit, or after this many acks / seconds, whichever comes first.
ACK_GROUP = 32
ACK_DELAY_S = 2.0
_QUARANTINE_LOG_S = 300.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    row INTEGER PRIMARY KEY,
    device_id TEXT NOT NULL,
    key_id BLOB NOT NULL,
    boot_epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    stored_ms INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    row INTEGER PRIMARY KEY,
    batch_row INTEGER NOT NULL,
    device_id TEXT NOT NULL,
    key_id BLOB NOT NULL,
    boot_epoch INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    readings INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    stored_ms INTEGER NOT NULL,
    data BLOB NOT NULL,
    quarantined_ms INTEGER NOT NULL,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
"""

# Persistent counters, all monotonic over the life of the spool file.
_COUNTERS = (
    "batches_dropped",
    "readings_dropped",
    "batches_quarantined",
    "readings_quarantined",
    "unclean_stops",
)


class SpoolError(Exception):
    """The spool cannot be opened or used; the message names the file and what to do."""


@dataclass(frozen=True, slots=True)
class BatchId:
    """A batch's identity on the wire: the hub acks exactly this."""

    device_id: str
    key_id: bytes
    boot_epoch: int
    seq: int

    def __str__(self) -> str:
        return f"{self.device_id}/{self.key_id.hex()}/{self.boot_epoch}/{self.seq}"


@dataclass(frozen=True, slots=True)
class StoredBatch:
    """A sealed batch as the spool holds it; ``row`` orders batches oldest first."""

    row: int
    id: BatchId
    readings: int
    created_ms: int
    stored_ms: int
    data: bytes


@dataclass(frozen=True, slots=True)
class BootInfo:
    """What `begin_boot` found: this run's epoch and whether the previous run stopped without saying so."""

    boot_epoch: int
    unclean_stop: bool
    unclean_stops_total: int


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """The spool at a glance, for the status line and the status report."""

    batches: int
    bytes: int
    readings: int
    oldest_age_s: float | None
    max_bytes: int
    when_full: str
    batches_dropped: int
    readings_dropped: int
    batches_quarantined: int
    readings_quarantined: int
    quarantine_batches: int
    unclean_stops: int


class Spool:
    """Sealed batches on disk, oldest first, with a size quota and persistent loss counters."""

    def __init__(
        self,
        path: Path,
        conn: sqlite3.Connection,
        *,
        max_bytes: int,
        when_full: str,
        clock_ms: Callable[[], int],
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.when_full = when_full
        self._conn = conn
        self._lock = threading.Lock()
        self._clock_ms = clock_ms
        self._leased: set[int] = set()
        # Acked batches whose DELETE rides on the next commit: (bytes, readings) per row.
        self._acked: dict[int, tuple[int, int]] = {}
        self._acked_since = 0.0
        self._pending_budget: tuple[int, int] | None = None
        self._last_quarantine_log = -_QUARANTINE_LOG_S
        self._notes = LogOnce(log)  # "full": the quota drops batches; "write": the disk refuses writes
        self._boot_epoch: int | None = None
        self._next_seq = 0
        # Since when the disk has refused writes (None: it takes them), and when pending ack deletions were last tried.
        self._write_failing_since = 0.0  # when the current write failure began (while "write" is failing)
        self._write_failures = 0
        self._last_ack_flush = 0.0
        self._load_figures()

    def _load_figures(self) -> None:
        """Read the counters and totals kept in memory from what is committed on disk."""
        conn = self._conn
        self._counters = {name: 0 for name in _COUNTERS}
        for name, value in conn.execute("SELECT name, value FROM meta"):
            if name in self._counters:
                self._counters[name] = value
        self._bytes, self._batches, self._readings = conn.execute(
            "SELECT COALESCE(SUM(LENGTH(data)), 0), COUNT(*), COALESCE(SUM(readings), 0) FROM batches"
        ).fetchone()
        self._quarantine_bytes, self._quarantine_batches = conn.execute(
            "SELECT COALESCE(SUM(LENGTH(data)), 0), COUNT(*) FROM quarantine"
        ).fetchone()
        for size, readings in self._acked.values():
            self._bytes -= size
            self._batches -= 1
            self._readings -= readings
        self._find_oldest()

    def _find_oldest(self, after: int = 0) -> None:
        """Set ``_oldest`` to (row, created_ms) of the first waiting batch past row ``after`` (the caller holds the lock
        or owns the spool alone); every batch before ``after`` must already be gone or acked."""
        rows = self._conn.execute(
            "SELECT row, created_ms FROM batches WHERE row > ? ORDER BY row LIMIT ?", (after, 1 + len(self._acked))
        ).fetchall()
        self._oldest: tuple[int, int] | None = next(((row, created) for row, created in rows if row not in self._acked), None)

    @classmethod
    async def open(
        cls,
        path: str | os.PathLike[str],
        *,
        max_bytes: int,
        when_full: str = "drop_oldest",
        clock_ms: Callable[[], int] = now_ms,
    ) -> Spool:
        """Open (creating if needed) the spool database at ``path``."""
        return await asyncio.to_thread(cls.open_blocking, path, max_bytes=max_bytes, when_full=when_full, clock_ms=clock_ms)

    @classmethod
    def open_blocking(
        cls,
        path: str | os.PathLike[str],
        *,
        max_bytes: int,
        when_full: str = "drop_oldest",
        clock_ms: Callable[[], int] = now_ms,
    ) -> Spool:
        """`open` for code without an event loop (tools, benchmarks)."""
        path = Path(path)
        if when_full not in WHEN_FULL:
            raise SpoolError(f"spool when_full = {when_full!r}: expected one of {', '.join(WHEN_FULL)}")
        if max_bytes <= 0:
            raise SpoolError(f"spool max_size = {max_bytes!r} bytes: expected a size above zero, e.g. \"200MB\"")
        try:
            private_directory(path.parent)
            private_database(path)  # readings not yet sent: 0600, and its -wal and -shm follow
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise SpoolError(f"spool {path}: the filesystem does not support SQLite WAL mode (got {mode!r})")
            # FULL: the WAL is fsync'd at every commit, so a batch is on disk before put() returns.
            conn.execute("PRAGMA synchronous=FULL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, _SCHEMA_VERSION):
                raise SpoolError(
                    f"spool {path}: schema version {version} was written by a newer ocn-edge; "
                    f"this one reads version {_SCHEMA_VERSION}"
                )
            if version == 0:  # a new file: an existing spool is opened without writing anything
                conn.executescript(_SCHEMA)
                conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
        except (OSError, sqlite3.DatabaseError) as exc:
            raise SpoolError(f"spool {path}: cannot open the spool database: {_storage_problem(exc, path)}") from exc
        return cls(path, conn, max_bytes=max_bytes, when_full=when_full, clock_ms=clock_ms)

    async def close(self) -> None:
        """Close the database; committed batches stay on disk."""
        await asyncio.to_thread(self.close_blocking)

    def close_blocking(self) -> None:
        """`close` for code without an event loop; pending ack deletions are committed first."""
        self.flush_acks()
        with self._lock:
            self._conn.close()

    # -- boots -------------------------------------------------------------------------

    async def begin_boot(self) -> BootInfo:
        """Start a new boot epoch; a previous run that never called `mark_clean_shutdown` counts as unclean."""
        return await asyncio.to_thread(self.begin_boot_blocking)

    def begin_boot_blocking(self) -> BootInfo:
        """`begin_boot` for code without an event loop.

        Raises SpoolError naming the file and the problem when the disk refuses the
        write (full, read-only, failing): without a recorded epoch no batch can be
        given an identity the hub has not seen, so the gateway must not start.
        """
        try:
            with self._lock, self._transaction():
                meta = dict(self._conn.execute("SELECT name, value FROM meta WHERE name IN ('boot_epoch', 'running')"))
                epoch = meta.get("boot_epoch", 0) + 1
                unclean = meta.get("running", 0) == 1
                if unclean:
                    self._counters["unclean_stops"] += 1
                    self._set_meta("unclean_stops", self._counters["unclean_stops"])
                self._set_meta("boot_epoch", epoch)
                self._set_meta("running", 1)
        except (OSError, sqlite3.Error) as exc:
            raise SpoolError(
                f"spool {self.path}: cannot record the start of this run: {_storage_problem(exc, self.path)}; "
                "nothing is read from the sensors until it can (the batches already in the spool are safe)"
            ) from exc
        self._boot_epoch = epoch
        # A restart is always a new epoch, so (epoch, seq) never repeats without persisting seq per batch.
        self._next_seq = 0
        if unclean:
            log.warning(
                "previous run stopped uncleanly",
                extra={"boot_epoch": epoch, "unclean_stops": self._counters["unclean_stops"]},
            )
        return BootInfo(epoch, unclean, self._counters["unclean_stops"])

    async def mark_clean_shutdown(self) -> None:
        """Record that this run stopped on purpose, after its last batch was stored."""
        await asyncio.to_thread(self.mark_clean_shutdown_blocking)

    def mark_clean_shutdown_blocking(self) -> None:
        """`mark_clean_shutdown` for code without an event loop."""
        with self._lock, self._writing():
            self._set_meta("running", 0)

    @property
    def boot_epoch(self) -> int:
        """The epoch `begin_boot` started."""
        if self._boot_epoch is None:
            raise SpoolError(f"spool {self.path}: begin_boot() must be called before batches are sealed")
        return self._boot_epoch

    def allocate_seq(self) -> int:
        """The next batch sequence number of this boot epoch; never handed out twice."""
        _ = self.boot_epoch
        with self._lock:
            seq = self._next_seq
            self._next_seq += 1
            return seq

    # -- batches -----------------------------------------------------------------------

    def put(self, data: bytes, *, readings: int) -> StoredBatch | None:
        """Store a sealed batch durably; returns it, or None if the quota refused it (counted as dropped)."""
        header = peek_header(data)
        batch_id = BatchId(header.device_id, bytes(header.key_id), header.boot_epoch, header.seq)
        size = len(data)
        now = self._clock_ms()
        with self._lock, self._writing():
            if not self._make_room(size):
                self._count_drop(1, readings)
                return None
            cur = self._conn.execute(
                "INSERT INTO batches (device_id, key_id, boot_epoch, seq, readings, created_ms, stored_ms, data)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (batch_id.device_id, batch_id.key_id, batch_id.boot_epoch, batch_id.seq, readings,
                 header.created_ms, now, data),
            )
            row = cur.lastrowid
            assert row is not None  # an INSERT of one row always sets it
            self._bytes += size
            self._batches += 1
            self._readings += readings
            if self._oldest is None:
                self._oldest = (row, header.created_ms)
        return StoredBatch(row, batch_id, readings, header.created_ms, now, bytes(data))

    def _make_room(self, size: int) -> bool:
        """Apply the quota inside the caller's transaction; True if a batch of ``size`` bytes now fits."""
        if self._used() + size <= self.max_bytes:
            if self._notes.failing("full"):
                self._notes.recovered("full", "spool has room again", extra=self._loss_fields())
            return True
        if not self._notes.failing("full"):
            self._notes.failure("full", f"spool full: {self.when_full.replace('_', ' ')} batches until there is room",
                                extra=self._loss_fields())
        if self.when_full == "refuse_newest" or size > self.max_bytes:
            return False
        # Quarantined batches will never be delivered: they go first, then the oldest pending ones.
        for table in ("quarantine", "batches"):
            after = 0
            while self._used() + size > self.max_bytes:
                rows = self._conn.execute(
                    f"SELECT row, readings, LENGTH(data) FROM {table} WHERE row > ? ORDER BY row LIMIT 64", (after,)
                ).fetchall()
                if not rows:
                    break
                for row, readings, length in rows:
                    after = row
                    if self._used() + size <= self.max_bytes:
                        break
                    if table == "batches" and row in self._leased:
                        continue  # in flight: the hub may be storing it right now
                    self._conn.execute(f"DELETE FROM {table} WHERE row = ?", (row,))
                    if table == "quarantine":
                        self._quarantine_bytes -= length
                        self._quarantine_batches -= 1
                    else:
                        self._bytes -= length
                        self._batches -= 1
                        self._readings -= readings
                        self._count_drop(1, readings)
                        if self._oldest is not None and self._oldest[0] == row:
                            self._find_oldest(row)
        return self._used() + size <= self.max_bytes

    def _loss_fields(self) -> dict[str, int]:
        return {
            "max_bytes": self.max_bytes,
            "batches_dropped": self._counters["batches_dropped"],
            "readings_dropped": self._counters["readings_dropped"],
        }

    def _used(self) -> int:
        return self._bytes + self._quarantine_bytes

    def _count_drop(self, batches: int, readings: int) -> None:
        self._counters["batches_dropped"] += batches
        self._counters["readings_dropped"] += readings
        self._set_meta("batches_dropped", self._counters["batches_dropped"])
        self._set_meta("readings_dropped", self._counters["readings_dropped"])

    def oldest(self, limit: int = 1) -> list[StoredBatch]:
        """The ``limit`` oldest batches waiting to be sent, leased ones included."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT row, device_id, key_id, boot_epoch, seq, readings, created_ms, stored_ms, data"
                " FROM batches ORDER BY row LIMIT ?",
                (limit + len(self._acked),),
            ).fetchall()
            return [self._stored(r) for r in rows if r[0] not in self._acked][:limit]

    def lease_oldest(self) -> StoredBatch | None:
        """The oldest batch not already leased, protected from `drop_oldest` until acked or released."""
        with self._lock:
            skip = tuple(self._leased | self._acked.keys())
            where = f"WHERE row NOT IN ({','.join('?' * len(skip))})" if skip else ""
            r = self._conn.execute(
                "SELECT row, device_id, key_id, boot_epoch, seq, readings, created_ms, stored_ms, data"
                f" FROM batches {where} ORDER BY row LIMIT 1",
                skip,
            ).fetchone()
            if r is None:
                return None
            self._leased.add(r[0])
        return self._stored(r)

    @property
    def waiting(self) -> int:
        """Batches `lease_oldest` could hand out now (not acked, not leased), from the figures in memory: no query."""
        return self._batches - len(self._leased)

    @property
    def acks_pending(self) -> bool:
        """Whether `flush_acks` has a deletion or a byte budget to commit."""
        return bool(self._acked) or self._pending_budget is not None

    def release(self, batch: StoredBatch) -> None:
        """Give back a leased batch unsent; it stays first in line."""
        with self._lock:
            self._leased.discard(batch.row)

    def ack(self, batch: StoredBatch, *, budget: tuple[int, int] | None = None) -> bool:
        """Forget a batch the hub has durably stored; False if it was no longer in the spool.

        The DELETE is committed together with the next write (a put, usually), or
        once `ACK_GROUP` acks or `ACK_DELAY_S` seconds have piled up, or by
        `flush_acks`: a commit of its own per ack would double the bytes written
        per batch.  If the gateway dies before that commit the batch is sent again
        and the hub, which deduplicates on identity, answers "duplicate".

        ``budget`` = (UTC day number, bytes sent that day) is remembered with the
        same commit, so the daily byte budget survives restarts at no extra write.

        A disk that refuses that commit (full) does not make the ack fail: the batch
        is forgotten in memory at once and its deletion tried again later.
        """
        with self._lock:
            self._leased.discard(batch.row)
            if budget is not None:
                self._pending_budget = budget
            if batch.row in self._acked:
                return False
            present = self._conn.execute("SELECT LENGTH(data), readings FROM batches WHERE row = ?", (batch.row,)).fetchone()
            if present is None:
                return False
            if not self._acked:
                self._acked_since = time.monotonic()
            self._acked[batch.row] = (present[0], present[1])
            self._bytes -= present[0]
            self._batches -= 1
            self._readings -= present[1]
            if self._oldest is not None and self._oldest[0] == batch.row:
                self._find_oldest(batch.row)
            due = len(self._acked) >= ACK_GROUP or time.monotonic() - self._acked_since >= ACK_DELAY_S
        if due:
            self.flush_acks()
        return True

    def flush_acks(self) -> bool:
        """Commit the deletions of acked batches now (the uplink calls this when no batch came for its `IDLE_POLL_S`).

        False if the disk refused (logged once): the deletions stay pending, are tried
        again at most every `ACK_DELAY_S` while the disk keeps refusing, and ride on
        the next commit that succeeds.  Until then an acked batch is only at risk of
        being sent once more after a restart, which the hub answers with "duplicate".
        """
        with self._lock:
            if not self._acked and self._pending_budget is None:
                return True
            now = time.monotonic()
            if self._notes.failing("write") and now - self._last_ack_flush < ACK_DELAY_S:
                return False
            self._last_ack_flush = now
            try:
                with self._writing():
                    pass
            except (OSError, sqlite3.Error):
                return False
        return True

    def _commit_acks(self) -> None:
        """Inside a write transaction: delete the acked batches and record the byte budget."""
        if self._acked:
            self._conn.executemany("DELETE FROM batches WHERE row = ?", [(row,) for row in self._acked])
        if self._pending_budget is not None:
            self._set_meta("budget_day", self._pending_budget[0])
            self._set_meta("budget_bytes", self._pending_budget[1])

    def _acks_committed(self) -> None:
        self._acked.clear()
        self._pending_budget = None

    def quarantine(self, batch: StoredBatch, *, reason: str, detail: str) -> None:
        """Move a batch the hub permanently rejected out of the send queue, keeping its bytes for inspection."""
        now = self._clock_ms()
        with self._lock, self._writing():
            self._leased.discard(batch.row)
            cur = self._conn.execute(
                "INSERT INTO quarantine (batch_row, device_id, key_id, boot_epoch, seq, readings, created_ms,"
                " stored_ms, data, quarantined_ms, reason, detail)"
                " SELECT row, device_id, key_id, boot_epoch, seq, readings, created_ms,"
                " stored_ms, data, ?, ?, ? FROM batches WHERE row = ?",
                (now, reason, detail, batch.row),
            )
            if cur.rowcount == 0:
                return
            self._conn.execute("DELETE FROM batches WHERE row = ?", (batch.row,))
            if self._oldest is not None and self._oldest[0] == batch.row:
                self._find_oldest(batch.row)
            self._bytes -= len(batch.data)
            self._batches -= 1
            self._readings -= batch.readings
            self._quarantine_bytes += len(batch.data)
            self._quarantine_batches += 1
            self._counters["batches_quarantined"] += 1
            self._counters["readings_quarantined"] += batch.readings
            self._set_meta("batches_quarantined", self._counters["batches_quarantined"])
            self._set_meta("readings_quarantined", self._counters["readings_quarantined"])
        now_s = time.monotonic()
        if now_s - self._last_quarantine_log >= _QUARANTINE_LOG_S:
            # One line per batch would flood the log if the hub rejects everything (a key mismatch, say).
            log.error(
                "hub rejected a batch for good: quarantined",
                extra={
                    "batch": str(batch.id),
                    "reason": reason,
                    "readings": batch.readings,
                    "batches_quarantined": self._counters["batches_quarantined"],
                },
            )
            self._last_quarantine_log = now_s

    def quarantined(self) -> list[tuple[StoredBatch, str, str]]:
        """Quarantined batches, oldest first, with the hub's error code and detail."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT row, device_id, key_id, boot_epoch, seq, readings, created_ms, stored_ms, data, reason, detail"
                " FROM quarantine ORDER BY row"
            ).fetchall()
        return [(self._stored(r[:9]), r[9], r[10]) for r in rows]

    def budget_used(self, day: int) -> int:
        """Bytes the uplink had sent on UTC day number ``day`` as of its last ack (0 for another day)."""
        with self._lock:
            if self._pending_budget is not None:
                return self._pending_budget[1] if self._pending_budget[0] == day else 0
            meta = dict(self._conn.execute("SELECT name, value FROM meta WHERE name IN ('budget_day', 'budget_bytes')"))
        return meta.get("budget_bytes", 0) if meta.get("budget_day") == day else 0

    # -- figures -----------------------------------------------------------------------

    def counters(self) -> dict[str, int]:
        """The persistent loss counters (totals over the spool's life) that travel in batch headers."""
        with self._lock:
            return dict(self._counters)

    def stats(self) -> dict[str, Any]:
        """Backlog, quota and loss counters for the status line and the status report (the fields of SpoolStats)."""
        return dataclasses.asdict(self.stats_record())

    def stats_record(self) -> SpoolStats:
        """`stats` as a typed record, from the figures kept in memory.

        No lock and no query: the event loop asks for this every few seconds and must
        not wait behind a commit's fsync.  While a write is under way the figures may
        be one batch behind; the counters are always the committed ones or newer.
        """
        oldest = self._oldest
        age = None if oldest is None else max(0.0, (self._clock_ms() - oldest[1]) / 1000)
        counters = dict(self._counters)
        return SpoolStats(
            batches=self._batches,
            bytes=self._bytes,
            readings=self._readings,
            oldest_age_s=age,
            max_bytes=self.max_bytes,
            when_full=self.when_full,
            batches_dropped=counters["batches_dropped"],
            readings_dropped=counters["readings_dropped"],
            batches_quarantined=counters["batches_quarantined"],
            readings_quarantined=counters["readings_quarantined"],
            quarantine_batches=self._quarantine_batches,
            unclean_stops=counters["unclean_stops"],
        )

    def check(self) -> list[str]:
        """SQLite's integrity check of the whole file: an empty list means intact."""
        with self._lock:
            result = [r[0] for r in self._conn.execute("PRAGMA integrity_check")]
        return [] if result == ["ok"] else result

    # -- internals ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A write transaction whose failure (disk full, I/O error) is logged once per episode, its recovery once."""
        try:
            with self._transaction():
                yield
        except (OSError, sqlite3.Error) as exc:
            self._write_failures += 1
            if not self._notes.failing("write"):
                self._write_failing_since = time.monotonic()
                self._notes.failure(
                    "write", "spool cannot write: new batches wait in memory, acknowledged ones are deleted later",
                    level=logging.ERROR, extra={"path": str(self.path), "error": _storage_problem(exc, self.path)},
                )
            raise
        if self._notes.failing("write"):
            self._notes.recovered(
                "write", "spool writable again",
                extra={
                    "path": str(self.path),
                    "failed_s": round(time.monotonic() - self._write_failing_since, 1),
                    "failed_writes": self._write_failures,
                },
            )
            self._write_failures = 0

    def _transaction(self) -> _Transaction:
        return _Transaction(
            self._conn, on_begin=self._commit_acks, on_commit=self._acks_committed, on_rollback=self._load_figures
        )

    def _set_meta(self, name: str, value: int) -> None:
        self._conn.execute(
            "INSERT INTO meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    @staticmethod
    def _stored(r: tuple[Any, ...]) -> StoredBatch:
        return StoredBatch(r[0], BatchId(r[1], bytes(r[2]), r[3], r[4]), r[5], r[6], r[7], bytes(r[8]))


# Below this much free space SQLite cannot grow its write-ahead log or shared-memory index by a page.
_NEARLY_FULL = 64 * 1024


def _storage_problem(exc: BaseException, path: Path) -> str:
    """What went wrong writing ``path``, in words a technician can act on (a full disk says how full).

    A full filesystem does not always come back as SQLITE_FULL or ENOSPC (growing the
    shared-memory index fails as a "disk I/O error"), so the free space decides too.
    """
    try:
        fs = os.statvfs(path.parent)
        free: int | None = fs.f_bavail * fs.f_frsize
        size = fs.f_blocks * fs.f_frsize
    except OSError:
        free = size = None
    code = getattr(exc, "sqlite_errorcode", None)
    full = code == sqlite3.SQLITE_FULL or getattr(exc, "errno", None) == errno.ENOSPC
    if full or (free is not None and free < _NEARLY_FULL):
        room = "free space unknown" if free is None else f"{free} bytes free of {size}"
        return f"the filesystem holding {path.parent} is full ({room}); free space there (old logs, core dumps)"
    if isinstance(exc, OSError):
        return file_problem(exc)  # may be another file than the database (its directory, the -wal): named
    name = getattr(exc, "sqlite_errorname", None)  # SQLite's own words ("disk I/O error"), with its code, never the class
    return f"{exc}" + (f" ({name})" if name else "")


class _Transaction:
    """BEGIN IMMEDIATE, pending ack deletions, the caller's writes, COMMIT; on error ROLLBACK and re-read figures."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        *,
        on_begin: Callable[[], None],
        on_commit: Callable[[], None],
        on_rollback: Callable[[], None],
    ) -> None:
        self._conn = conn
        self._on_begin = on_begin
        self._on_commit = on_commit
        self._on_rollback = on_rollback

    def __enter__(self) -> None:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            self._on_begin()
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                self._on_rollback()
                raise
            self._on_commit()
        else:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            self._on_rollback()

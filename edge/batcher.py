"""Collects released readings into batches, seals them and stores each in the spool.

A batch is sealed when the first of these happens:

- a reading falls in the next span window (windows are aligned to the epoch,
  so 5-minute batches cover 12:00–12:05, 12:05–12:10, …), or the wall clock
  passes the end of the current window;
- ``max_readings`` readings have been collected;
- ``flush_interval`` has passed since the first unsealed reading arrived, so a
  reading waits in memory (at risk of a power cut) for at most that long;
- the policy digest changes (a batch carries exactly one digest), or an
  already declared channel is declared differently (a batch is sealed with the
  declarations in force when its readings were added, so a policy swap never
  re-quantizes or re-types readings the old policy released);
- ``flush()`` is awaited (shutdown).

Sealing (encode, compress, sign) and the spool's fsync run in a worker thread
so the event loop keeps reading sensors meanwhile.

A batch is sealed once, with the next sequence number, and stored byte for byte:
when the spool cannot write (disk full), the sealed batch waits in memory and the
same bytes, with the same sequence number, are stored when it can, so the hub never
sees a gap that is not a loss.  While the spool refuses, `add` holds its caller back
once a few batches wait, so memory stays bounded (docs/spool-and-uplink.md, "Full disk").
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.protocol import BatchHeader, BatchTooLarge, key_id, seal_batch
from edge.protocol.codec import encode_body
from edge.protocol.types import Channel, Kind, Reading
from edge.spool import Spool, SpoolError, StoredBatch
from edge.util.clock import now_ms
from edge.util.logonce import LogOnce

__all__ = ["Batcher", "BatcherCounters"]

log = logging.getLogger("ocn.batcher")

# Closed batches allowed to wait for the spool before `add` seals them itself, and, while
# the spool cannot write, before `add` waits for it: memory then holds at most
# _MAX_READY + 2 batches (the one `add` closed, and the one the flush timer closed).
_MAX_READY = 4


@dataclass(slots=True)
class BatcherCounters:
    """Totals since the batcher started."""

    readings_in: int = 0
    readings_sealed: int = 0
    batches_sealed: int = 0
    bytes_sealed: int = 0
    readings_refused: int = 0  # sealed, but the spool's refuse_newest quota turned the batch away
    readings_unsealable: int = 0  # the codec rejected the batch; logged with the reason


@dataclass(slots=True)
class _Pending:
    """Readings waiting to be sealed into one batch."""

    window: int
    policy_digest: bytes
    # The channel table in force while readings were added; never mutated, only replaced.
    channels: Mapping[str, Channel]
    opened_at: float  # time.monotonic() of the first reading
    readings: list[Reading] = field(default_factory=list)
    # Channels that had readings here before any declaration: declaring one later closes the batch.
    undeclared: set[str] = field(default_factory=set)
    # Once sealed: the parts (bytes, readings) not yet in the spool, oldest first.  A store
    # that fails keeps them, so the retry stores the same bytes under the same sequence numbers.
    sealed: deque[tuple[bytes, int]] | None = None
    # Stored by the worker thread, not yet announced through ``on_stored`` on the event loop.
    stored: deque[StoredBatch] = field(default_factory=deque)

    @property
    def held(self) -> int:
        """Readings of this batch not yet in the spool."""
        return len(self.readings) if self.sealed is None else sum(n for _, n in self.sealed)


class Batcher:
    """Turns a stream of readings into sealed batches in the spool."""

    def __init__(
        self,
        *,
        device_id: str,
        private_key: Ed25519PrivateKey,
        spool: Spool,
        boot_epoch: int,
        policy_digest: bytes,
        span_s: float = 300.0,
        flush_interval_s: float = 30.0,
        max_readings: int = 20000,
        codec: str = "zstd",
        channels: Iterable[Channel] = (),
        clock_ms: Callable[[], int] = now_ms,
        on_stored: Callable[[StoredBatch], None] | None = None,
        store_retry_s: float = 5.0,
    ) -> None:
        if boot_epoch != spool.boot_epoch:
            raise ValueError(f"boot_epoch {boot_epoch} differs from the spool's current epoch {spool.boot_epoch}")
        if span_s <= 0 or flush_interval_s <= 0 or max_readings <= 0:
            raise ValueError(
                f"batch span {span_s!r} s, flush_interval {flush_interval_s!r} s and "
                f"max_readings {max_readings!r} must all be above zero"
            )
        self.device_id = device_id
        self.boot_epoch = boot_epoch
        self.codec = codec
        self.span_ms = int(span_s * 1000)
        self.flush_interval_s = flush_interval_s
        self.max_readings = max_readings
        self.counters = BatcherCounters()
        self._private_key = private_key
        self._key_id = key_id(private_key.public_key())
        self._spool = spool
        self._policy_digest = policy_digest
        self._clock_ms = clock_ms
        self._on_stored = on_stored
        self._channels: dict[str, Channel] = {}
        self._undeclared = LogOnce(log)  # said once per channel: a driver does not start declaring it later
        self._unsealable_logged: set[tuple[str, str]] = set()  # (channel, error kind) already said
        self._open: _Pending | None = None
        self._ready: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._seal_lock = asyncio.Lock()
        self._in_thread: asyncio.Future[None] | None = None
        self._in_thread_pending: _Pending | None = None
        self._store_retry_s = store_retry_s
        # A sequence number taken from the spool but not used (the batch could not be sealed): the next batch gets it.
        self._spare_seq: int | None = None
        self.set_channels(channels)

    # -- input -------------------------------------------------------------------------

    def set_channels(self, channels: Iterable[Channel]) -> None:
        """Declare (more) channels for the readings added from now on.

        New ids join the open batch; a changed declaration of a known id closes the
        open batch first, so what it holds is sealed as declared when it was added.
        """
        self._switch(self._policy_digest, channels)

    def set_policy_digest(self, digest: bytes) -> None:
        """Readings from now on fall under a new policy; the open batch is closed under the old one."""
        self._switch(digest, ())

    def set_policy(self, digest: bytes, channels: Iterable[Channel]) -> None:
        """Put a new policy in force between two readings: its digest and its channel declarations together.

        The open batch is closed under the old digest and declarations if either
        changes; ``channels`` are merged into the table like `set_channels` does.
        """
        self._switch(digest, channels)

    def _switch(self, digest: bytes, channels: Iterable[Channel]) -> None:
        table = dict(self._channels)
        for channel in channels:
            table[channel.id] = channel
        pending = self._open
        if pending is not None and (digest != pending.policy_digest or _redeclares(pending, table)):
            self._close_open()
        # Copy-on-write: batches already closed keep the table they were collected under.
        self._channels = table
        self._policy_digest = digest
        if self._open is not None:
            self._open.channels = table  # only new ids were added: nothing collected so far changes

    async def add(self, reading: Reading) -> None:
        """Take one released reading; waits only when closed-but-unstored batches pile up (backpressure).

        While the spool cannot write, that wait lasts until it can: the caller (and,
        through the bounded queues before it, the drivers) is held back rather than
        memory growing without bound.
        """
        self.add_nowait(reading)
        while self.holding_back:
            try:
                await self._seal_ready()
            except (OSError, sqlite3.Error, SpoolError) as exc:
                log.debug("spool refused a batch; retrying", extra={"error": str(exc)})
                await asyncio.sleep(self._store_retry_s)

    @property
    def holding_back(self) -> bool:
        """True while `add` would wait: too many closed batches are not yet in the spool."""
        # The batch in the sealing thread counts: a failed store puts it back in line.
        return len(self._ready) + (self._in_thread is not None) > _MAX_READY

    def add_nowait(self, reading: Reading) -> None:
        """Take one released reading without waiting (sealing happens in `run`, `flush` or the next `add`)."""
        self.add_all_nowait((reading,))

    def add_all_nowait(self, readings: Sequence[Reading]) -> int:
        """:meth:`add_nowait` for ``readings`` in order, in one call (a poll's readings); how many it took.

        It stops after a reading that closed a batch and made the batcher hold back, as a caller adding
        one by one and checking `holding_back` before each would: the rest are the caller's to hand
        over once the batcher has room."""
        span_ms, pending, taken = self.span_ms, self._open, 0
        try:
            for reading in readings:
                taken += 1
                closed = False
                window = reading.ts_ms // span_ms
                if pending is not None and window > pending.window:
                    self._close_open()
                    pending, closed = None, True
                if pending is None:
                    pending = self._open = _Pending(window, self._policy_digest, self._channels, time.monotonic())
                    self._wake.set()  # arm run()'s flush_interval timer for the new batch
                if reading.channel not in pending.channels:
                    pending.undeclared.add(reading.channel)
                pending.readings.append(reading)
                if len(pending.readings) >= self.max_readings:
                    self._close_open()
                    pending, closed = None, True
                if closed and self.holding_back:
                    break
        finally:
            self.counters.readings_in += taken
        return taken

    def stats(self) -> dict[str, int]:
        """Counters and the readings still in memory, for the status line and the local API."""
        return dict(dataclasses.asdict(self.counters), unsealed=self.unsealed)

    @property
    def unsealed(self) -> int:
        """Readings held in memory, not yet in the spool (sealed batches waiting for the spool included)."""
        held = sum(p.held for p in self._ready) + (len(self._open.readings) if self._open else 0)
        busy = self._in_thread_pending if self._in_thread is not None else None
        return held + (busy.held if busy is not None else 0)

    # -- sealing -----------------------------------------------------------------------

    async def run(self) -> None:
        """Seal batches as their time comes, until cancelled; then await `flush`."""
        while True:
            timeout = self._time_to_close()
            if not self._ready:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancel that arrives just as the event is set, and shutdown would hang.
                try:
                    async with asyncio.timeout(timeout):
                        await self._wake.wait()
                except TimeoutError:
                    pass
            self._wake.clear()
            left = self._time_to_close()
            if left is not None and left <= 0:
                self._close_open()
            try:
                await self._seal_ready()
            except (OSError, sqlite3.Error, SpoolError) as exc:
                # The spool has logged the failure (once); the batches wait here and are stored when it can.
                log.debug("spool refused a batch; retrying", extra={"error": str(exc)})
                await asyncio.sleep(self._store_retry_s)

    async def flush(self) -> None:
        """Seal and store everything collected so far (shutdown, or before a policy reload)."""
        self._close_open()
        await self._seal_ready()

    def _time_to_close(self) -> float | None:
        pending = self._open
        if pending is None:
            return None
        by_flush = pending.opened_at + self.flush_interval_s - time.monotonic()
        by_span = ((pending.window + 1) * self.span_ms - self._clock_ms()) / 1000
        return max(0.0, min(by_flush, by_span))

    def _close_open(self) -> None:
        if self._open is not None and self._open.readings:
            self._ready.append(self._open)
            self._wake.set()
        self._open = None

    async def _seal_ready(self) -> None:
        async with self._seal_lock:
            if self._in_thread is not None:
                # A seal whose awaiting task was cancelled is still writing: let it finish first.
                orphan, self._in_thread = self._in_thread, None
                pending = self._in_thread_pending
                assert pending is not None
                try:
                    await asyncio.shield(orphan)
                except (OSError, sqlite3.Error, SpoolError):
                    self._ready.appendleft(pending)
                finally:
                    self._announce(pending)
            while self._ready:
                pending = self._in_thread_pending = self._ready.popleft()
                self._in_thread = asyncio.ensure_future(asyncio.to_thread(self._seal_and_store, pending))
                try:
                    # Shielded: a cancelled run() must not abandon a batch half-way to the spool.
                    await asyncio.shield(self._in_thread)
                except (OSError, sqlite3.Error, SpoolError):
                    # The spool could not write (disk full, I/O error): keep what is not stored and try again later.
                    self._ready.appendleft(pending)
                    raise
                finally:
                    if self._in_thread.done():
                        self._in_thread = None
                    self._announce(pending)

    def _announce(self, pending: _Pending) -> None:
        while pending.stored:
            stored = pending.stored.popleft()
            if self._on_stored is not None:
                self._on_stored(stored)

    def _seal_and_store(self, pending: _Pending) -> None:
        """In a worker thread: seal the batch (once), then store its parts in order until one fails."""
        if pending.sealed is None:
            pending.sealed = self._seal(pending)
            pending.readings = []  # the sealed bytes are what is kept from now on
        while pending.sealed:
            data, count = pending.sealed[0]
            stored = self._spool.put(data, readings=count)
            pending.sealed.popleft()
            self.counters.batches_sealed += 1
            self.counters.bytes_sealed += len(data)
            self.counters.readings_sealed += count
            if stored is None:
                self.counters.readings_refused += count
            else:
                pending.stored.append(stored)

    def _seal(self, pending: _Pending) -> deque[tuple[bytes, int]]:
        """The batch as sealed parts (one, unless it overflows the size limit), each with the next sequence number."""
        parts: deque[tuple[bytes, int]] = deque()
        todo: list[Sequence[Reading]] = [pending.readings]
        while todo:
            readings = todo.pop()
            seq = self._spare_seq if self._spare_seq is not None else self._spool.allocate_seq()
            # Until this part is sealed its number is spare: a part that cannot be sealed must not leave a gap.
            self._spare_seq = seq
            try:
                data = self._seal_part(pending, readings, seq)
            except BatchTooLarge:
                if len(readings) < 2:
                    self._unsealable(readings, "a single reading exceeds the batch size limit")
                else:
                    # Hard-to-compress values overflowed the 1 MiB batch limit: halve until each part fits.
                    half = len(readings) // 2
                    todo += [readings[half:], readings[:half]]
                continue
            except Exception as exc:  # a codec bug or an impossible value must not stop the next batches
                if len(readings) < 2:
                    self._unsealable(readings, exc)
                    continue
                # Leave out only the readings that cannot be encoded and seal the rest as one batch;
                # when no single reading is at fault (values that only clash together), halve.
                bad = self._unencodable(pending, readings)
                if bad:
                    self._unsealable([readings[i] for i in sorted(bad)], exc)
                    rest = [r for i, r in enumerate(readings) if i not in bad]
                    if rest:  # none left: no batch of nothing (its number stays spare for the next)
                        todo.append(rest)
                else:
                    half = len(readings) // 2
                    todo += [readings[half:], readings[:half]]
                continue
            self._spare_seq = None
            parts.append((data, len(readings)))
        return parts

    def _seal_part(self, pending: _Pending, readings: Sequence[Reading], seq: int) -> bytes:
        channels = tuple(self._channel(cid, readings, pending.channels) for cid in sorted({r.channel for r in readings}))
        header = BatchHeader(
            device_id=self.device_id,
            key_id=self._key_id,
            boot_epoch=self.boot_epoch,
            seq=seq,
            policy_digest=pending.policy_digest,
            codec=self.codec,
            created_ms=self._clock_ms(),
            counters=self._upstream_counters(),
        )
        return seal_batch(header, channels, tuple(readings), self._private_key)

    def _unencodable(self, pending: _Pending, readings: Sequence[Reading]) -> set[int]:
        """Indexes of the readings that cannot be encoded even alone, found by bisection (no signing)."""
        bad: set[int] = set()
        todo = [list(range(len(readings)))]
        while todo:
            part = todo.pop()
            subset = [readings[i] for i in part]
            try:
                channels = tuple(self._channel(cid, subset, pending.channels) for cid in sorted({r.channel for r in subset}))
                encode_body(channels, subset)
            except Exception:  # whatever the codec refuses, the search narrows it down
                if len(part) == 1:
                    bad.add(part[0])
                else:
                    todo += [part[: len(part) // 2], part[len(part) // 2 :]]
        return bad

    def _unsealable(self, readings: Sequence[Reading], error: str | Exception) -> None:
        """Count readings that cannot be sealed; say so once per channel and kind of error.

        The log names the channels and the error's kind, never its text: a codec message
        can quote the value, and a value has no place in a log.
        """
        self.counters.readings_unsealable += len(readings)
        kind = error if isinstance(error, str) else type(error).__name__
        channels = sorted({r.channel for r in readings})
        new = [c for c in channels if (c, kind) not in self._unsealable_logged]
        if new:
            self._unsealable_logged.update((c, kind) for c in new)
            log.error(
                "readings that cannot be sealed are left out (counted upstream as readings_unsealable)",
                extra={"readings": len(readings), "channels": ",".join(channels), "error": kind},
            )
        else:
            log.debug("readings that cannot be sealed are left out", extra={"readings": len(readings), "error": kind})

    def _upstream_counters(self) -> dict[str, int]:
        counters = self._spool.counters()
        counters["readings_unsealable"] = self.counters.readings_unsealable
        return counters

    def _channel(self, channel_id: str, readings: Sequence[Reading], table: Mapping[str, Channel]) -> Channel:
        declared = table.get(channel_id)
        if declared is not None:
            return declared
        # Undeclared: travel without a resolution (floats), typed from the first value; logged once.
        sample = next(r for r in readings if r.channel == channel_id)
        kind = Kind.BOOL if isinstance(sample.value, bool) else Kind.STRING if isinstance(sample.value, str) else Kind.NUMBER
        self._undeclared.failure(channel_id, "reading of an undeclared channel: sent without a resolution",
                                 extra={"channel": channel_id})
        return Channel(channel_id, unit=sample.unit, kind=kind)


def _redeclares(pending: _Pending, table: Mapping[str, Channel]) -> bool:
    """Whether ``table`` declares differently a channel the pending batch may already hold readings of."""
    if any(cid in table for cid in pending.undeclared):
        return True
    return any(table[cid] != declared for cid, declared in pending.channels.items())

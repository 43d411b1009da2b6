"""Readings from the drivers through the privacy stage to the batcher: the bounded queues and the loops between them.

    drivers ─► [readings queue] ─► privacy ─► [released queue] ─► batcher

Both queues are bounded, so a slow stage makes the drivers wait in ``emit`` instead of
growing memory.  Readings move oldest first, and every reading is handled by exactly one
privacy stage, also while a new policy's stage replaces the old one (`swap`) and while
shutdown pushes what memory holds into the batcher (`flush`).

The queues are for when a stage is behind.  While nothing waits in them and the batcher takes
readings without holding anyone back, ``emit`` passes a reading through the privacy stage into
the batcher at once, in the driver's task: the same steps in the same order, without two queue
hops and two task switches per reading, which were most of a one-meter gateway's CPU.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge.batcher import Batcher
from edge.privacy import PrivacyStage
from edge.protocol.types import Reading

__all__ = ["QUEUE_SIZE", "PipelineCounters", "ReadingFlow"]

log = logging.getLogger("ocn.runtime")

QUEUE_SIZE = 10_000


@dataclass
class PipelineCounters:
    """What moved through the pipeline since start (the demo summary and the status line read these)."""

    readings_read: int = 0
    readings_released: int = 0
    readings_failed: int = 0  # readings a stage could not handle (a bug or an impossible value), dropped
    started_monotonic: float = field(default_factory=time.monotonic)


class ReadingFlow:
    """The queues and loops between the drivers, one privacy stage at a time, and the batcher."""

    def __init__(self, privacy: PrivacyStage, batcher: Batcher, *, counters: PipelineCounters, clock_ms: Callable[[], int]) -> None:
        self.privacy = privacy
        self.batcher = batcher
        self.counters = counters
        self._clock_ms = clock_ms
        self.readings: asyncio.Queue[Reading] = asyncio.Queue(QUEUE_SIZE)
        self.released: asyncio.Queue[Reading] = asyncio.Queue(QUEUE_SIZE)
        # Released by the privacy stage but not yet in the released queue (it was full):
        # kept here so a cancel or a policy swap can never lose or mislabel them.
        self._unreleased: collections.deque[Reading] = collections.deque()
        self._release_lock = asyncio.Lock()
        self._tick_wake = asyncio.Event()  # the privacy stage may now need ticks (a policy swap, a pseudonym key made)
        privacy.on_ticks_needed = self._tick_wake.set
        self._failed_channels: set[str] = set()
        # The last released reading of each channel and released counts by device: the technician's page and the metrics.
        self.latest: dict[str, Reading] = {}
        # Kept by channel, the key every reading already carries, and summed by device only when asked (per reading,
        # splitting the channel id to find its device was a visible share of the gateway's CPU in bench.pipeline).
        self._released_by_channel: collections.Counter[str] = collections.Counter()
        self._last_read_by_channel: dict[str, int] = {}

    def loops(self) -> list[tuple[Coroutine[Any, Any, None], str]]:
        """The coroutines that must run until the gateway stops, with their task names."""
        return [
            (self._privacy_loop(), "stage:privacy"),
            (self._privacy_ticks(), "stage:privacy-windows"),
            (self._batcher_loop(), "stage:batcher"),
            (self.batcher.run(), "stage:batcher-timer"),
        ]

    def queued(self) -> dict[str, int]:
        """Readings waiting in each queue (for the status page)."""
        return {"readings": self.readings.qsize(), "released": self.released.qsize() + len(self._unreleased)}

    async def emit(self, reading: Reading) -> None:
        """One reading in: see :meth:`emit_all`."""
        await self.emit_all((reading,))

    async def emit_all(self, readings: Sequence[Reading]) -> None:
        """The drivers' way in, readings in order: waits while the readings queue is full (or, going straight
        through, the released queue).  Each reading takes the same steps as if it came alone; a poll's
        readings together cost one call here instead of one coroutine each, and when nothing older waits,
        one call to the privacy stage and one to the batcher."""
        counters, last_read, queue = self.counters, self._last_read_by_channel, self.readings
        if not readings:
            return
        if counters.readings_read == 0:
            # The start-up marker bench.gateway_load reads: CLOCK_MONOTONIC, the clock an outside observer shares.
            now = time.monotonic()
            log.info("first reading", extra={"device": readings[0].channel.partition("/")[0], "monotonic": round(now, 4),
                                             "after_s": round(now - counters.started_monotonic, 3)})
        if not (self._unreleased or not queue.empty() or not self.released.empty() or self.batcher.holding_back):
            # Nothing older waits for the privacy stage or the batcher: the whole poll's turn is now, in one
            # call to each stage instead of a few per reading (the same steps, in the same order).
            counters.readings_read += len(readings)
            for reading in readings:
                last_read[reading.channel] = reading.ts_ms
            out = self.privacy.process_all(readings, self._failed)
            if out:
                self._count(out)
                taken = self.batcher.add_all_nowait(out)
                if taken < len(out):  # the poll's readings made the batcher hold back: the rest wait in line
                    await self._pass_on(out[taken:])
            return
        for reading in readings:
            counters.readings_read += 1
            last_read[reading.channel] = reading.ts_ms
            if self._unreleased or not queue.empty():
                await queue.put(reading)  # behind older readings: in line, oldest first
                continue
            # Nothing older waits for the privacy stage: this reading's turn is now.  What it releases
            # waits (in order) only if the released queue is full, as the privacy loop would.
            await self._release(self._process(reading))

    @property
    def released_by_device(self) -> dict[str, int]:
        """Readings released so far, by device."""
        out: collections.Counter[str] = collections.Counter()
        for channel, n in self._released_by_channel.items():
            out[channel.partition("/")[0]] += n
        return dict(out)

    @property
    def last_read_ms(self) -> dict[str, int]:
        """By device: when its driver last produced a reading, released or not."""
        out: dict[str, int] = {}
        for channel, ts in self._last_read_by_channel.items():
            device = channel.partition("/")[0]
            out[device] = max(ts, out.get(device, ts))
        return out

    def _count(self, out: list[Reading]) -> None:
        self.counters.readings_released += len(out)
        latest, released = self.latest, self._released_by_channel
        for reading in out:
            latest[reading.channel] = reading
            released[reading.channel] += 1

    async def _release(self, out: list[Reading]) -> None:
        if not out:
            return
        self._count(out)
        await self._pass_on(out)

    async def _pass_on(self, out: list[Reading]) -> None:
        """Released (and counted) readings to the batcher, in order: straight in while nothing older waits and
        it has room, else in line through the released queue, waiting while that is full."""
        if not self._unreleased and self.released.empty() and not self.batcher.holding_back:
            taken = self.batcher.add_all_nowait(out)
            if taken == len(out):
                return
            out = out[taken:]
        unreleased, queue = self._unreleased, self.released
        unreleased.extend(out)
        if not self._release_lock.locked():
            # The usual case, room in the queue: what the locked loop below would do without waiting, minus
            # an asyncio.Lock round and a coroutine per reading (a visible share of the gateway's CPU, py-spy).
            while unreleased and not queue.full():
                queue.put_nowait(unreleased.popleft())
            if not unreleased:
                return
        async with self._release_lock:
            while self._unreleased:
                await self.released.put(self._unreleased[0])
                self._unreleased.popleft()

    def _process(self, reading: Reading) -> list[Reading]:
        """One reading through the privacy stage; a reading it cannot handle is dropped and counted, not fatal."""
        try:
            return self.privacy.process(reading)
        except Exception as exc:  # noqa: BLE001 - one bad value must not stop every other reading
            self._failed(reading, exc)
            return []

    def _failed(self, reading: Reading, exc: Exception) -> None:
        """The privacy stage raised on ``reading``: counted, logged once per channel (never the value), dropped."""
        self.counters.readings_failed += 1
        if reading.channel not in self._failed_channels:
            self._failed_channels.add(reading.channel)
            log.error("privacy stage cannot handle a reading; dropped",
                      extra={"channel": reading.channel, "error": type(exc).__name__})

    async def _privacy_loop(self) -> None:
        while True:
            reading = await self.readings.get()
            await self._release(self._process(reading))

    async def _privacy_ticks(self) -> None:
        """Tick the privacy stage every second while it has windows to close or a pseudonym key to retire.

        A policy of per-reading rules only has nothing to tick: this task then sleeps until a policy
        swap or the first pseudonym key (``PrivacyStage.on_ticks_needed``) wakes it, instead of waking
        the gateway every second for nothing.
        """
        while True:
            self._tick_wake.clear()
            if not self.privacy.ticks_needed:
                await self._tick_wake.wait()
                continue
            await asyncio.sleep(1.0)
            await self._release(self.privacy.tick(self._clock_ms()))

    async def _batcher_loop(self) -> None:
        while True:
            reading = await self.released.get()
            await self.batcher.add(reading)

    def _hand_released_to_batcher(self) -> None:
        """Everything the privacy stage released so far, in order, straight into the batcher."""
        while not self.released.empty():
            self.batcher.add_nowait(self.released.get_nowait())
        while self._unreleased:
            self.batcher.add_nowait(self._unreleased.popleft())

    def _close_privacy(self) -> None:
        """The windows the privacy stage still holds, closed now and handed to the batcher."""
        closing = self.privacy.flush(self._clock_ms())
        self.counters.readings_released += len(closing)
        for reading in closing:
            self.batcher.add_nowait(reading)

    def swap(self, new_stage: Callable[[], PrivacyStage]) -> None:
        """Put the stage ``new_stage`` builds in place of the running one, between two readings.

        Synchronous on purpose: nothing else runs on the loop meanwhile, so every reading is
        handled by exactly one of the two stages.  What the old stage released (its last,
        closing windows included) reaches the batcher before the policy digest changes, and
        the new stage is built only after the old one charged its last releases to the
        budget file it reads.
        """
        self._hand_released_to_batcher()
        self._close_privacy()
        self.privacy = new_stage()
        self.privacy.on_ticks_needed = self._tick_wake.set
        self._tick_wake.set()
        self.batcher.set_policy(self.privacy.policy.digest, self.privacy.output_channels())

    async def flush(self) -> None:
        """At shutdown, once the loops are cancelled: everything in memory through privacy and the batcher into the spool."""
        # Oldest first: what was released, then what the privacy stage had not yet taken,
        # then the windows still open.  Nothing consumes the queues concurrently now.
        self._hand_released_to_batcher()
        while not self.readings.empty():
            out = self._process(self.readings.get_nowait())
            self.counters.readings_released += len(out)
            for reading in out:
                self.batcher.add_nowait(reading)
        self._close_privacy()
        await self.batcher.flush()
        left = self.batcher.unsealed
        if left:
            log.error("readings could not be stored in the spool at shutdown", extra={"readings": left})

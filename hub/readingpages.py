"""A public page of readings in time order, handed from the store's thread to its answer a few thousand at a time as they are found.

A Collector (hub.chunks) holds a whole page before the first byte of the answer is written:
100,000 readings are 28 MiB of Python objects, and the rendered answer came on top of that.
Under bench.hostile's four back-to-back heavy public queries that was most of the hub's RSS
growth.  Here a :class:`hub.chunks.Releaser` hands the page on as it is read, through a queue
two batches deep: the store's thread waits while the answer is being sent, so what a page
holds at once is a few batches, however long the page.

The answer's headers (its ``Link: rel=next``) and a CBOR array's length need the page's size
before its first reading: one count over the chunks' stored counts, that decodes only the chunks
straddling ``since`` or ``until`` and stops once the page is known to be full, gives it first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from hub.budget import OverBudget, QueryBudget
from hub.chunks import Counter, Releaser, check_window, chunk_query, count_query
from hub.models import StoredReading
from hub.store import Store

__all__ = ["ReadingPage", "reading_page"]

# Batches of readings (hub.chunks.RELEASE_BATCH each) read ahead of the answer being sent.
READ_AHEAD = 2


class Abandoned(Exception):
    """The answer stopped taking readings (its client left, or rendering failed): the store's thread stops reading."""


class ReadingPage:
    """``size`` readings, known before the first; :meth:`batches` gives them in time order as the store's thread reads them."""

    def __init__(self, size: int, budget: QueryBudget) -> None:
        self.size = size
        self._budget = budget
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[list[StoredReading] | None] = asyncio.Queue(maxsize=READ_AHEAD)
        self._closed = False
        self._reader: asyncio.Task[None] | None = None

    def put(self, batch: list[StoredReading]) -> None:
        """Called in the store's thread: wait for room, then hand ``batch`` on.

        Time spent waiting for the answer to be sent is not the query's: the budget's deadline moves by it,
        as it did when the whole page was read before rendering began.
        """
        if self._closed:
            raise Abandoned
        started = time.monotonic()
        asyncio.run_coroutine_threadsafe(self._queue.put(batch), self._loop).result()
        self._budget.deadline += time.monotonic() - started

    def read(self, reading: Coroutine[Any, Any, Any]) -> None:
        """Run ``reading`` (the store query feeding :meth:`put`) while the batches are taken."""

        async def run() -> None:
            try:
                await reading
            finally:
                if not self._closed:
                    await self._queue.put(None)

        self._reader = asyncio.create_task(run(), name="hub-public-page")

    async def batches(self) -> AsyncIterator[list[StoredReading]]:
        """The page's readings, a batch at a time; raises what stopped the store query (OverBudget, a store error)."""
        if self._reader is None:
            return
        while (batch := await self._queue.get()) is not None:
            yield batch
        await self._reader

    async def close(self) -> None:
        """Stop the store query if it is still reading, and wait for its thread to let go."""
        if self._reader is None or self._reader.done():
            return
        self._closed = True
        while not self._queue.empty():  # a thread waiting for room gets it, and stops at its next batch
            self._queue.get_nowait()
        with contextlib.suppress(Exception):  # Abandoned, or what the answer already failed on
            await self._reader


@contextlib.asynccontextmanager
async def reading_page(
    store: Store,
    *,
    device_id: str | None,
    channel: str | None,
    since_ms: int | None,
    until_ms: int | None,
    limit: int,
    offset: int,
    budget: QueryBudget,
) -> AsyncIterator[ReadingPage]:
    """Readings ordered by time (then id), filtered as :meth:`hub.store.Store.readings` does, the same page it returns,
    on the public lane within ``budget``; raises ValueError (before anything is read) when the page is too deep."""
    check_window(offset, limit)
    async with budget.on_lane(offset + limit):
        counter = Counter(since_ms=since_ms, until_ms=until_ms, match=None, enough=offset + limit)
        sql, params = count_query(store.placeholder, channel_id=None, device_id=device_id, channel=channel, since_ms=since_ms, until_ms=until_ms)
        await store._collect_chunks(sql, params, counter, budget=budget)
        if counter.exceeded:
            raise OverBudget("readings", "counting this page would decode more than a million readings")
        page = ReadingPage(min(limit, max(0, counter.total - offset)), budget)
        # The page examines at least the readings it skips and returns: past the budget, refuse before the answer begins.
        budget.refuse_beyond(offset + page.size)
        if page.size:
            releaser = Releaser(since_ms=since_ms, until_ms=until_ms, match=budget.meter(None), offset=offset, limit=page.size, emit=page.put)
            query = chunk_query(
                store.placeholder,
                device_id=device_id,
                channel=channel,
                channel_id=None,
                since_ms=since_ms,
                until_ms=until_ms,
                chunk_id=None,
                order="ts_ms",
                descending=False,
            )
            page.read(store._collect_chunks(query.rows(), query.params, releaser, budget=budget))
        try:
            yield page
        finally:
            await page.close()

"""A public page of readings is handed to its answer as it is read: the store is not read to the end before the first batch."""

from __future__ import annotations

from hub.budget import QueryBudget
from hub.chunks import RELEASE_BATCH
from hub.readingpages import READ_AHEAD, reading_page
from hub.store import Store
from tests.hub.test_store import batch, enrolled


async def test_the_first_batch_of_a_long_page_arrives_before_the_store_is_read_to_its_end(store: Store) -> None:
    key_id = await enrolled(store)
    for seq in range(1, 41):  # 40 batches, each a chunk of 500 readings after the last
        await store.store_batch(batch(key_id, seq=seq * 10, n=500))
    expected = await store.readings(channel="pm-1/pm2_5", limit=20_000)
    budget = QueryBudget(max_examined=10**6, seconds=60.0)
    async with reading_page(store, device_id=None, channel="pm-1/pm2_5", since_ms=None, until_ms=None, limit=20_000, offset=0, budget=budget) as page:
        assert page.size == 20_000
        batches = page.batches()
        first = await anext(batches)
        # The reader waits for the answer: at most READ_AHEAD more batches read while the first is being sent.
        assert budget.examined <= (READ_AHEAD + 2) * RELEASE_BATCH + 500 < 20_000
        got = list(first)
        async for more in batches:
            got.extend(more)
    assert got == expected


async def test_a_page_left_half_read_stops_its_store_query(store: Store) -> None:
    key_id = await enrolled(store)
    for seq in range(1, 41):
        await store.store_batch(batch(key_id, seq=seq * 10, n=500))
    budget = QueryBudget(max_examined=10**6, seconds=60.0)
    async with reading_page(store, device_id=None, channel=None, since_ms=None, until_ms=None, limit=30_000, offset=0, budget=budget) as page:
        await anext(page.batches())
    examined = budget.examined
    assert examined < 20_000 and page._reader is not None and page._reader.done()

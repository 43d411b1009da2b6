"""The northbound export's outbox and lease in the store, on both engines (hub/export.py drives them; tests/mqtt/test_export.py end to end).

Times are given, never waited for: a lease runs until the ``now_ms`` a call names passes its end.
"""

from __future__ import annotations

from edge.protocol.types import Channel, Reading
from hub.engines.sql import OUTBOX_GRACE_MS
from hub.models import IncomingBatch
from hub.store import Store

NOW = 1_790_000_000_000
TTL = 30_000
PUBLIC = (Channel("pm-1/pm2_5", unit="ug/m3", resolution=0.1), Channel("meter-1/power", unit="W", resolution=1.0))
PERSONAL = Channel("anpr-1/licence_plate", personal=True)


def batch(seq: int, *, received_ms: int) -> IncomingBatch:
    readings = tuple(Reading(ch.id, NOW + seq * 1000 + i, 10.5 + i, ch.unit) for ch in PUBLIC for i in range(3))
    return IncomingBatch(device_id="pole-1", key_id=b"\x02" * 8, boot_epoch=1, seq=seq, created_ms=NOW + seq * 1000, received_ms=received_ms,
                         policy_digest=b"\x01" * 32, codec="zstd", counters={}, channels=(*PUBLIC, PERSONAL),
                         readings=(*readings, Reading(PERSONAL.id, NOW + seq * 1000, "AB-123-CD")))


async def test_one_holder_at_a_time_until_its_lease_lapses_or_is_given_up(store: Store) -> None:
    assert await store.hold_export_lease("a", now_ms=NOW, ttl_ms=TTL)
    assert not await store.hold_export_lease("b", now_ms=NOW + 1, ttl_ms=TTL)
    assert await store.hold_export_lease("a", now_ms=NOW + TTL - 1, ttl_ms=TTL)  # renewed: runs to NOW + 2 TTL - 1
    assert not await store.hold_export_lease("b", now_ms=NOW + TTL + 1, ttl_ms=TTL)
    assert await store.hold_export_lease("b", now_ms=NOW + 2 * TTL, ttl_ms=TTL)  # a stopped renewing: b takes it
    assert not await store.hold_export_lease("a", now_ms=NOW + 2 * TTL + 1, ttl_ms=TTL)
    await store.release_export_lease("a", now_ms=NOW + 2 * TTL + 2)  # not a's to give up: nothing changes
    assert not await store.hold_export_lease("a", now_ms=NOW + 2 * TTL + 3, ttl_ms=TTL)
    await store.release_export_lease("b", now_ms=NOW + 2 * TTL + 4)
    assert await store.hold_export_lease("a", now_ms=NOW + 2 * TTL + 5, ttl_ms=TTL)  # given up: taken at once


async def test_the_outbox_fills_while_a_lease_ran_within_a_day_and_never_yields_a_personal_reading(store: Store) -> None:
    assert await store.store_batch(batch(1, received_ms=NOW)) == "stored"
    assert await store.export_pending(limit=100) == []  # never exported here: no outbox is kept
    assert await store.hold_export_lease("a", now_ms=NOW, ttl_ms=TTL)
    assert await store.store_batch(batch(2, received_ms=NOW + 1)) == "stored"
    assert await store.store_batch(batch(2, received_ms=NOW + 2)) == "duplicate"  # a replay queues nothing
    await store.release_export_lease("a", now_ms=NOW + 3)
    assert await store.store_batch(batch(3, received_ms=NOW + OUTBOX_GRACE_MS)) == "stored"  # within a day of the lease
    assert await store.store_batch(batch(4, received_ms=NOW + 3 + OUTBOX_GRACE_MS)) == "stored"  # a day after: no longer
    rows = await store.export_pending(limit=100)
    assert [row[0] for row in rows] == sorted(row[0] for row in rows)  # oldest first
    public = [row for row in rows if row[1] is not None]
    # Batches 2 and 3: a row per chunk, the personal one with nothing in it (its chunk columns NULL).
    assert len(rows) == 2 * 3 and len(public) == 2 * 2
    assert {(row[3], row[4], row[7]) for row in public} == {("pole-1", ch.id, 3) for ch in PUBLIC}
    assert all(row[1:] == (None,) * 8 for row in rows if row[1] is None)
    ids = {r.id >> 16 for r in await store.readings(since_ms=NOW + 2000, until_ms=NOW + 4000)}
    assert {row[1] for row in public} == ids  # the chunks the public read path gives for batches 2 and 3
    await store.export_done([row[0] for row in rows[:4]])
    assert [row[0] for row in await store.export_pending(limit=100)] == [row[0] for row in rows[4:]]
    assert [row[0] for row in await store.export_pending(limit=1)] == [rows[4][0]]

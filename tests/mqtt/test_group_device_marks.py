"""A group of batches (Store.store_batches) leaves its devices' rows as the same batches stored one at a time would: the
counts, when last seen, and the newest batch's boot epoch, sequence number, counters and policy, on both engines."""

from __future__ import annotations

import dataclasses

from edge.protocol.types import Reading
from hub.models import IncomingBatch
from hub.store import Store

from .test_group_store import CHANNELS, NOW, enrolled, store

__all__ = ["store"]


def _batch(device_id: str, key_id: bytes, epoch: int, seq: int, received: int, counters: dict[str, int], digest: int) -> IncomingBatch:
    start = NOW + seq * 10_000
    readings = tuple(Reading(ch.id, start + i * 1000, 1.5 + i, ch.unit) for ch in CHANNELS for i in range(seq % 3 + 1))
    return IncomingBatch(device_id=device_id, key_id=key_id, boot_epoch=epoch, seq=seq, created_ms=start, received_ms=NOW + received,
                         policy_digest=bytes([digest]) * 32, codec="zstd", counters=counters, channels=CHANNELS, readings=readings)


async def test_a_group_marks_its_devices_as_one_batch_at_a_time_would(store: Store) -> None:
    one, group = await enrolled(store, "pole-1"), await enrolled(store, "pole-2")
    # Out of order, a duplicate, a newer boot epoch, then an older one; counters and policy change along the way.
    plan = [(1, 3, 50, {"unclean_stops": 1}, 1), (1, 1, 70, {}, 2), (1, 3, 60, {"unclean_stops": 9}, 3),
            (2, 1, 40, {"unclean_stops": 2, "readings_dropped": 5}, 4), (1, 5, 90, {"readings_dropped": 7}, 5), (2, 2, 80, {}, 6)]
    for epoch, seq, received, counters, digest in plan:
        await store.store_batch(_batch("pole-1", one.key_id, epoch, seq, received, counters, digest))
    outcomes = await store.store_batches([_batch("pole-2", group.key_id, *step) for step in plan])
    assert outcomes == ["stored", "stored", "duplicate", "stored", "stored", "stored"]
    devices = {d.device_id: d for d in await store.devices()}
    marks = [{k: v for k, v in dataclasses.asdict(devices[name]).items() if k not in ("device_id", "key_id", "enrolled_ms")}
             for name in ("pole-1", "pole-2")]
    assert marks[0] == marks[1]
    assert (marks[1]["boot_epoch"], marks[1]["last_seq"], marks[1]["batches_stored"], marks[1]["duplicates"]) == (2, 2, 5, 1)
    assert marks[1]["last_seen_ms"] == NOW + 90 and marks[1]["unclean_stops"] == 2 and marks[1]["readings_dropped"] == 5

"""The acks of a group of batches (Ingest.batches) carry each device's desired ETag as one batch at a time would, when the
ETags are read for the whole group at once (Store.devices_named, Store.desired_for), on both engines."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.util.clock import now_ms
from hub.faults import DeviceFaults
from hub.fleet import desired_document
from hub.ingest import Acked, Ingest
from hub.keycache import KeyCache
from hub.ratelimit import RateLimiter, ReadingsBudget
from hub.store import Store
from hub.workers import Workers

from .test_group_store import enrolled, store

__all__ = ["store"]


async def test_a_groups_acks_carry_each_devices_desired_etag(store: Store) -> None:
    gateways = [await enrolled(store, f"pole-00{n}") for n in (41, 42, 43)]
    await store.set_desired("fleet", "default", {"config": {"batch": {"span": "1m"}}}, now_ms=now_ms(), actor="cli:test")
    await store.set_desired("device", "pole-0042", {"config": {"batch": {"span": "5s"}}}, now_ms=now_ms(), actor="cli:test")
    await store.set_device_status("pole-0043", "revoked", now_ms=now_ms())
    # What each device's ack must carry: its document as desired_etag makes it, one device at a time.
    expected = {}
    for device in await store.devices():
        expected[device.device_id] = (await desired_document(store, device))[1]
    assert all(expected.values())  # each has a document (its id is in it: each ETag is its own)
    workers = Workers(workers=1, queue=4)
    ingest = Ingest(store=store, keys=KeyCache(store), limiter=RateLimiter(rate=50.0, burst=200),
                    readings=ReadingsBudget(rate=1000.0, burst=100_000, ceiling=1_000_000), workers=workers,
                    faults=DeviceFaults(), signing_key=Ed25519PrivateKey.generate())
    try:
        outcomes = await ingest.batches([(g.batch(1), g.device_id) for g in gateways] + [(gateways[0].batch(2), "pole-0041")])
        acked = [(o.device_id, o.seq, o.desired_etag) for o in outcomes if isinstance(o, Acked)]
        assert acked == [("pole-0041", 1, expected["pole-0041"]), ("pole-0042", 1, expected["pole-0042"]), ("pole-0041", 2, expected["pole-0041"])]
        assert not isinstance(outcomes[2], Acked)  # revoked: refused, as before
    finally:
        workers.close()


async def test_the_devices_and_documents_of_a_group_are_read_at_once_and_what_is_not_there_is_left_out(store: Store) -> None:
    await enrolled(store, "pole-0041")
    await enrolled(store, "pole-0042")
    assert sorted(d.device_id for d in await store.devices_named(["pole-0042", "nobody", "pole-0041"])) == ["pole-0041", "pole-0042"]
    assert await store.devices_named([]) == []
    await store.set_desired("device", "pole-0042", {"config": {"batch": {"span": "5s"}}}, now_ms=1, actor="cli:test")
    found = await store.desired_for([("device", "pole-0042"), ("device", "pole-0041"), ("fleet", "default")])
    assert list(found) == [("device", "pole-0042")] and found[("device", "pole-0042")][0] == {"config": {"batch": {"span": "5s"}}}
    assert await store.desired_for([]) == {}

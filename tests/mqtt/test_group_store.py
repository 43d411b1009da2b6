"""Batches taken in groups (the MQTT side, Ingest.batches) are checked as one at a time would be, and stored by
Store.store_batches in one transaction: each once, in the order given, a batch named twice "stored" once and "duplicate"
after, on both engines; the outbox of the northbound export gets a row per chunk as store_batch writes them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.protocol import Answer, raw_public_key
from edge.protocol.types import Channel, Reading
from edge.util.clock import now_ms
from hub.auth import secret_hash
from hub.database import open_store
from hub.faults import DeviceFaults
from hub.ingest import Acked, Ingest, Refused
from hub.keycache import KeyCache
from hub.models import IncomingBatch
from hub.ratelimit import RateLimiter, ReadingsBudget
from hub.store import Store
from hub.workers import Workers
from tests.hub.conftest import drop_schema
from tests.hub.gateways import SimGateway

NOW = 1_790_000_000_000
CHANNELS = (Channel("pm-1/pm2_5", unit="ug/m3", resolution=0.1), Channel("meter-1/power", unit="W", resolution=1.0))


def batch(device: int, seq: int) -> IncomingBatch:
    start = NOW + seq * 10_000
    readings = tuple(Reading(ch.id, start + i * 1000, 10.5 + i, ch.unit) for ch in CHANNELS for i in range(4))
    return IncomingBatch(device_id=f"pole-{device}", key_id=bytes([device]) * 8, boot_epoch=1, seq=seq, created_ms=start, received_ms=NOW,
                         policy_digest=b"\x01" * 32, codec="zstd", counters={}, channels=CHANNELS, readings=readings)


async def enrolled(store: Store, device_id: str) -> SimGateway:
    gateway = SimGateway(device_id)
    await store.create_token(secret_hash(device_id), uses=1, expires_ms=now_ms() + 60_000, approve=True, fleet="default", note="", now_ms=now_ms())
    await store.enrol(secret_hash(device_id), device_id=device_id, public_key=raw_public_key(gateway.private_key),
                      key_id=gateway.key_id, software_version="0.1.0", now_ms=now_ms())
    return gateway


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path) -> AsyncIterator[Store]:
    if request.param == "sqlite":
        url, cleanup = f"sqlite:///{tmp_path}/hub.db", None
    else:
        url, dsn, schema = request.getfixturevalue("postgres_url")
        cleanup = (dsn, schema)
    opened = await open_store(url)
    try:
        yield opened
    finally:
        await opened.close()
        if cleanup is not None:
            await drop_schema(*cleanup)


async def test_a_group_of_batches_is_stored_once_each_and_a_replay_in_or_before_the_group_is_a_duplicate(store: Store) -> None:
    assert await store.store_batch(batch(1, 1)) == "stored"
    assert await store.hold_export_lease("test", now_ms=NOW, ttl_ms=60_000)
    group = [batch(1, 2), batch(2, 1), batch(1, 2), batch(1, 1), batch(2, 2), batch(3, 7)]
    assert await store.store_batches(group) == ["stored", "stored", "duplicate", "duplicate", "stored", "stored"]
    assert await store.store_batches(group[:2]) == ["duplicate", "duplicate"]
    assert await store.store_batches([]) == []
    for device, seqs in ((1, (1, 2)), (2, (1, 2)), (3, (7,))):
        readings = await store.readings(device_id=f"pole-{device}")
        expected = sorted((r.channel, r.ts_ms, r.value) for seq in seqs for r in batch(device, seq).readings)
        assert sorted((stored.channel, stored.ts_ms, stored.value) for stored in readings) == expected
    # The four batches the group stored, two chunks each (one a channel), queued for export once.
    pending = await store.export_pending(limit=100)
    assert len(pending) == 4 * len(CHANNELS) and len({row[1] for row in pending}) == len(pending)


async def test_a_group_is_answered_batch_by_batch_as_one_batch_at_a_time_would_be(store: Store) -> None:
    workers = Workers(workers=1, queue=4)
    ingest = Ingest(store=store, keys=KeyCache(store), limiter=RateLimiter(rate=50.0, burst=200),
                    readings=ReadingsBudget(rate=1000.0, burst=100_000, ceiling=1_000_000), workers=workers,
                    faults=DeviceFaults(), signing_key=Ed25519PrivateKey.generate())
    try:
        gateway, other = await enrolled(store, "pole-0042"), await enrolled(store, "pole-0043")
        forger = SimGateway("pole-0042")
        forged = bytearray(forger.batch(3))
        at = forged.index(forger.key_id)
        forged[at : at + 8] = gateway.key_id  # the key id of the enrolled device, the signature of another
        outcomes = await ingest.batches([
            (gateway.batch(1), "pole-0042"),
            (other.batch(1), "pole-0043"),
            (gateway.batch(1), "pole-0042"),  # the same bytes again in the group
            (other.batch(2), "pole-0042"),  # on another device's topic
            (SimGateway("pole-9").batch(1), "pole-9"),  # a key nobody enrolled
            (b"\xd2\x84", "pole-0042"),  # no message at all
            (bytes(forged), "pole-0042"),  # signed by another key
            (gateway.batch(2), "pole-0042"),
        ])
        assert outcomes[:3] == [Acked("pole-0042", gateway.key_id, 1, 1, "stored"), Acked("pole-0043", other.key_id, 1, 1, "stored"),
                                Acked("pole-0042", gateway.key_id, 1, 1, "duplicate")]
        refused = outcomes[3:7]
        assert all(isinstance(r, Refused) for r in refused)
        assert [(r.answer, r.charged) for r in refused if isinstance(r, Refused)] == [
            (Answer.MALFORMED, True), (Answer.UNKNOWN_DEVICE, True), (Answer.MALFORMED, True), (Answer.BAD_SIGNATURE, True)]
        assert ingest.faults.failing() == {}  # nothing the devices signed was refused
        assert outcomes[7] == Acked("pole-0042", gateway.key_id, 1, 2, "stored")
        assert await ingest.batch(gateway.batch(2)) == Acked("pole-0042", gateway.key_id, 1, 2, "duplicate")  # one at a time, as before
        assert [(d.device_id, d.batches_stored) for d in await store.devices()] == [("pole-0042", 2), ("pole-0043", 1)]
    finally:
        workers.close()


async def test_a_group_writes_new_and_newly_personal_channels_as_one_batch_at_a_time_would(tmp_path) -> None:
    """Store.store_batches writes a group's channels in one statement: the same rows (ids, units, personal flags) and the
    same readings as store_batch one batch after another, for channels new, repeated with other units, undeclared, and
    flagged personal only by a later batch."""
    import dataclasses

    def variant(device: int, seq: int, *, unit: str = "W", personal: bool = False, bare: bool = False) -> IncomingBatch:
        plain = batch(device, seq)
        channels = (*plain.channels[:1], Channel("meter-1/power", unit=unit, resolution=1.0, personal=personal))
        extra = (Reading("meter-1/energy", NOW + seq * 10_000, 5, "Wh"),) if bare else ()
        return dataclasses.replace(plain, channels=channels, readings=(*plain.readings, *extra))

    group = [variant(1, 1), variant(2, 1, bare=True), variant(1, 2, unit="kW"), variant(1, 3, personal=True), variant(3, 1, personal=True),
             variant(2, 2, unit="kW", personal=True, bare=True), variant(1, 4)]
    found = []
    for grouped in (True, False):
        opened = await open_store(f"sqlite:///{tmp_path}/hub-{grouped}.db")
        try:
            await opened.store_batch(batch(9, 1))  # a channel known before the group
            if grouped:
                assert await opened.store_batches([batch(9, 2), *group]) == ["stored"] * (len(group) + 1)
            else:
                for one in [batch(9, 2), *group]:
                    assert await opened.store_batch(one) == "stored"
            found.append((await opened.channels(include_personal=True), sorted(
                (r.channel, r.ts_ms, r.value) for r in await opened.readings(include_personal=True))))
        finally:
            await opened.close()
    assert found[0] == found[1]
    assert {(c.device_id, c.channel, c.personal) for c in found[0][0] if c.personal} == {
        ("pole-1", "meter-1/power", True), ("pole-2", "meter-1/power", True), ("pole-3", "meter-1/power", True)}

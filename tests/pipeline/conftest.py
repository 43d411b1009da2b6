"""Shared fixtures of the pipeline tests: a device key, a spool in a temporary directory, a receiver on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.protocol import BatchHeader, generate_keypair, key_id, seal_batch
from edge.protocol.types import Channel, Reading
from edge.spool import Spool
from tests.pipeline.receiver import Receiver


@pytest.fixture
def device_key() -> Ed25519PrivateKey:
    return generate_keypair()


@pytest.fixture
async def spool(tmp_path) -> AsyncIterator[Spool]:
    spool = await Spool.open(tmp_path / "spool.db", max_bytes=50_000_000)
    await spool.begin_boot()
    yield spool
    await spool.close()


@pytest.fixture
async def receiver(device_key) -> AsyncIterator[Receiver]:
    receiver = Receiver()
    receiver.trust(device_key.public_key())
    await receiver.start()
    yield receiver
    await receiver.stop()


def seal_readings(device_key: Ed25519PrivateKey, spool: Spool, count: int, *, start_ms: int = 1_790_000_000_000) -> bytes:
    """A real sealed batch of ``count`` readings under the spool's boot epoch and its next sequence number."""
    channel = Channel("meter-1/voltage", unit="V", resolution=0.1)
    readings = tuple(Reading(channel.id, start_ms + i * 1000, 230.0 + (i % 7) / 10) for i in range(count))
    header = BatchHeader(
        device_id="pole-0042",
        key_id=key_id(device_key.public_key()),
        boot_epoch=spool.boot_epoch,
        seq=spool.allocate_seq(),
        policy_digest=b"\x01" * 32,
        codec="zstd",
        created_ms=start_ms,
        counters=spool.counters(),
    )
    return seal_batch(header, (channel,), readings, device_key)

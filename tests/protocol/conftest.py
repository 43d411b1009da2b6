"""Shared fixtures for the protocol tests: a fixed device key and a small mixed batch."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.protocol import BatchHeader, key_id
from edge.protocol.types import Channel, Kind, Quality, Reading


@pytest.fixture
def device_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


@pytest.fixture
def other_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))


@pytest.fixture
def header(device_key: Ed25519PrivateKey) -> BatchHeader:
    return BatchHeader(
        device_id="pole-0042",
        key_id=key_id(device_key),
        boot_epoch=3,
        seq=17,
        policy_digest=bytes(32),
        codec="zstd",
        created_ms=1_700_000_300_000,
        counters={"readings_dropped": 2, "unclean_stops": 1},
    )


@pytest.fixture
def channels() -> tuple[Channel, ...]:
    return (
        Channel("meter-1/voltage_l1", "V", resolution=0.1),
        Channel("pm-1/pm2_5", "ug/m3", resolution=0.1),
        Channel("gps-1/lat", "lat"),
        Channel("counter-1/visitor", kind=Kind.STRING, personal=True),
        Channel("door-1/open", kind=Kind.BOOL),
    )


@pytest.fixture
def readings() -> list[Reading]:
    t = 1_700_000_000_000
    return [
        *[Reading("meter-1/voltage_l1", t + i * 10_000, 230.0 + (i % 7) / 10, "V") for i in range(30)],
        Reading("pm-1/pm2_5", t + 1_000, 12.3, "ug/m3"),
        Reading("pm-1/pm2_5", t + 151_000, 12.9, "ug/m3", Quality.SUSPECT),
        Reading("gps-1/lat", t + 200, 43.6452, "lat"),
        Reading("gps-1/lat", t + 400, 43.64521, "lat"),
        Reading("counter-1/visitor", t + 5, "p:9f2c"),
        Reading("counter-1/visitor", t + 9, "p:9f2c"),
        Reading("counter-1/visitor", t + 4, "p:77aa"),
        Reading("door-1/open", t, True, quality=Quality.GOOD),
        Reading("door-1/open", t + 60_000, False),
    ]

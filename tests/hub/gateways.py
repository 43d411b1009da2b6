"""Simulated gateways for hub tests and the bench: real keys, real sealed batches, real HTTP."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from multidict import CIMultiDictProxy

from edge.protocol import MEDIA_TYPE, BatchHeader, generate_keypair, key_id, raw_public_key, seal_batch, seal_status
from edge.protocol.types import Channel, Kind, Reading

T0 = 1_790_000_000_000
CHANNELS = (
    Channel("meter-1/voltage_l1", unit="V", resolution=0.1),
    Channel("meter-1/power", unit="W", resolution=1.0),
    Channel("pm-1/pm2_5", unit="ug/m3", resolution=0.1),
    Channel("door-1/open", kind=Kind.BOOL),
)


@dataclass
class SimGateway:
    """A gateway as the hub sees it: a device id, an Ed25519 key, a boot epoch and a sequence."""

    device_id: str
    private_key: Ed25519PrivateKey = field(default_factory=generate_keypair)
    boot_epoch: int = 1

    @property
    def key_id(self) -> bytes:
        return key_id(self.private_key)

    def enrol_body(self, token: str, *, software_version: str = "0.1.0") -> dict[str, str]:
        public = base64.urlsafe_b64encode(raw_public_key(self.private_key)).rstrip(b"=").decode()
        return {"token": token, "device_id": self.device_id, "public_key": public, "software_version": software_version}

    def readings(self, seq: int, n: int) -> list[Reading]:
        base = T0 + seq * 60_000
        out = []
        for i in range(n):
            ch = CHANNELS[i % 3]
            value = {0: 230.0 + (i % 17) * 0.1, 1: float(1000 + i % 50), 2: 5.0 + (i % 23) * 0.1}[i % 3]
            out.append(Reading(ch.id, base + (i // 3) * 1000, round(value, 1), ch.unit))
        return out

    def batch(self, seq: int, *, n: int = 30, counters: dict[str, int] | None = None, boot_epoch: int | None = None) -> bytes:
        header = BatchHeader(
            device_id=self.device_id, key_id=self.key_id, boot_epoch=self.boot_epoch if boot_epoch is None else boot_epoch, seq=seq,
            policy_digest=b"\x07" * 32, codec="zstd", created_ms=T0 + seq * 60_000, counters=counters or {},
        )
        return seal_batch(header, CHANNELS, self.readings(seq, n), self.private_key)

    def status(self, **fields: Any) -> bytes:
        report = {
            "ts_ms": T0, "software_version": "0.1.0", "boot_epoch": self.boot_epoch, "unclean_stops": 0, "spool_batches": 0,
            "spool_bytes": 0, "readings_dropped": 0, "policy_digest": b"", "config_digest": b"", "errors": [],
        }
        report.update(fields)
        return seal_status(report, device_id=self.device_id, private_key=self.private_key)

    def notice(self, notice: dict[str, Any]) -> bytes:
        return seal_status({"ts_ms": T0, "notice": notice}, device_id=self.device_id, private_key=self.private_key)


async def post_cose(session: aiohttp.ClientSession, url: str, data: bytes) -> tuple[int, dict[str, Any], CIMultiDictProxy[str]]:
    async with session.post(url, data=data, headers={"Content-Type": MEDIA_TYPE}) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers


async def enrol(session: aiohttp.ClientSession, hub_url: str, gateway: SimGateway, token: str) -> dict[str, Any]:
    async with session.post(f"{hub_url}/oxp/v1/enrol", json=gateway.enrol_body(token)) as resp:
        body = await resp.json()
        assert resp.status == 201, body
        return body

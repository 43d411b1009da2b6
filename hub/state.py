"""What every hub request handler shares: the store, caches, limits, keys and settings of one process."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hub.auth import Admin
from hub.faults import DeviceFaults
from hub.ratelimit import RateLimiter, ReadingsBudget
from hub.store import DeviceKey, Store
from hub.workers import Workers

__all__ = ["HUB", "Hub", "KeyCache"]


class KeyCache:
    """Device keys by key id, remembered for ``ttl_s`` so ingest rarely asks the database.

    A revocation made through this process takes effect at once; one made through
    another hub process takes effect here within ``ttl_s``.
    """

    def __init__(self, store: Store, *, ttl_s: float = 5.0) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._keys: dict[bytes, tuple[float, DeviceKey | None]] = {}

    async def get(self, key_id: bytes) -> DeviceKey | None:
        now = time.monotonic()
        hit = self._keys.get(key_id)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        found = await self.store.device_key(key_id)
        if len(self._keys) > 100_000:
            self._keys.clear()
        self._keys[key_id] = (now, found)
        return found

    def forget(self, key_id: bytes | None = None) -> None:
        if key_id is None:
            self._keys.clear()
        else:
            self._keys.pop(key_id, None)


@dataclass
class Hub:
    """One hub process's shared state.

    ``limiter`` counts batches and ``readings`` readings per device (charged once a signature
    verifies); ``addresses`` counts what each client address makes the hub do before anything
    is authenticated; ``trusted_proxies`` are the peers whose X-Forwarded-For names the client.
    """

    store: Store
    admin: Admin
    signing_key: Ed25519PrivateKey
    limiter: RateLimiter
    keys: KeyCache
    readings: ReadingsBudget
    addresses: RateLimiter
    workers: Workers
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    faults: DeviceFaults = field(default_factory=DeviceFaults)
    stale_after_ms: int = 15 * 60 * 1000
    database_down: bool = False


HUB = web.AppKey("hub", Hub)

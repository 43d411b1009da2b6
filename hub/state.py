"""What every hub request handler shares: the store, caches, limits, keys and settings of one process."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from hub.auth import Admin
from hub.faults import DeviceFaults
from hub.ingest import Ingest
from hub.keycache import KeyCache
from hub.ratelimit import RateLimiter, ReadingsBudget
from hub.store import Store
from hub.workers import Workers

__all__ = ["HUB", "Hub"]


@dataclass
class Hub:
    """One hub process's shared state.

    ``ingest`` takes batches, status reports and notices (hub.ingest), with this hub's
    ``limiter`` (batches per device), ``readings`` (readings per device), ``keys``, ``workers``
    and ``faults``; ``addresses`` counts what each client address makes the hub do before
    anything is authenticated; ``trusted_proxies`` are the peers whose X-Forwarded-For names the client.
    """

    store: Store
    admin: Admin
    signing_key: Ed25519PrivateKey
    limiter: RateLimiter
    keys: KeyCache
    readings: ReadingsBudget
    addresses: RateLimiter
    workers: Workers
    ingest: Ingest
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    faults: DeviceFaults = field(default_factory=DeviceFaults)
    stale_after_ms: int = 15 * 60 * 1000
    database_down: bool = False


HUB = web.AppKey("hub", Hub)

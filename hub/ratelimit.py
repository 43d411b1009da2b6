"""The hub's limits on work: batches per device, readings per device, unauthenticated requests per client address.

Token buckets kept in this hub process. The per-device limits are charged only for messages
whose signature verified, so a forged batch spends no device's quota; the per-address limit
is charged for what an anonymous client can make the hub do before anything is authenticated.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Iterable

__all__ = ["RateLimiter", "ReadingsBudget", "client_address", "parse_networks", "retry_after"]

OBSERVE_S = 86_400.0  # the shortest span a device's rate is averaged over
MAX_TRACKED = 100_000  # buckets kept before full ones are forgotten (an address scan must not grow memory)


def retry_after(wait_s: float) -> str:
    """The Retry-After header value (whole seconds, at least 1)."""
    return str(max(1, math.ceil(wait_s)))


class RateLimiter:
    """``rate`` requests per second per key (a device id or a client address) with bursts up to ``burst``."""

    def __init__(self, *, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def _tokens(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (float(self.burst), now))
        return min(float(self.burst), tokens + (now - last) * self.rate)

    def check(self, key: str, *, now: float | None = None) -> float:
        """Take one token for ``key``: 0.0 if allowed, else the seconds until the next token."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens = self._tokens(key, now)
        if len(self._buckets) >= MAX_TRACKED:
            self._forget_full(now)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self.rate

    def peek(self, key: str, *, now: float | None = None) -> float:
        """Like :meth:`check` without taking a token: how long ``key`` must wait before its next request."""
        if self.rate <= 0:
            return 0.0
        tokens = self._tokens(key, time.monotonic() if now is None else now)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        # A full bucket and a missing one mean the same; if none is full, start over.
        full = [key for key in self._buckets if self._tokens(key, now) >= self.burst]
        for key in full or list(self._buckets):
            del self._buckets[key]


class ReadingsBudget:
    """Readings each device may send: a token bucket over readings, refilled at the device's rate.

    The rate is ``rate`` readings per second, or ``headroom`` times the rate the device has
    shown in this process (averaged over at least a day, so a burst does not count as a rate)
    if that is higher, up to ``headroom`` times ``rate``: the budget follows a device that reads
    faster than the floor without letting one ramp itself up without end. A device starts with ``burst`` readings and
    saves up to ``ceiling`` (the protocol's largest batch), so every batch the protocol allows
    is accepted after a wait: a gateway catching up after an outage is slowed, never refused
    for good, while a batch that declares far more readings than its device could have read
    waits until it could have.
    """

    def __init__(self, *, rate: float, burst: int, ceiling: int, headroom: float = 4.0) -> None:
        self.rate = rate
        self.burst = burst
        self.ceiling = max(ceiling, burst)
        self.headroom = headroom
        self._buckets: dict[str, tuple[float, float]] = {}
        self._seen: dict[str, tuple[float, int]] = {}  # device -> (first accepted, readings accepted since)

    def _rate(self, device_id: str, now: float) -> float:
        first, total = self._seen.get(device_id, (now, 0))
        observed = total / max(now - first, OBSERVE_S)
        return min(self.headroom * self.rate, max(self.rate, self.headroom * observed))

    def _tokens(self, device_id: str, now: float) -> float:
        tokens, last = self._buckets.get(device_id, (float(self.burst), now))
        return min(float(self.ceiling), tokens + (now - last) * self._rate(device_id, now))

    def wait(self, device_id: str, readings: int, *, now: float | None = None) -> float:
        """0.0 if ``device_id`` may send a batch of ``readings`` now, else the seconds until it may."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        self._buckets.setdefault(device_id, (float(self.burst), now))  # its saving starts at its first batch
        missing = min(readings, self.ceiling) - self._tokens(device_id, now)
        return 0.0 if missing <= 0 else missing / self._rate(device_id, now)

    def take(self, device_id: str, readings: int, *, now: float | None = None) -> None:
        """Charge ``device_id`` for ``readings`` accepted readings."""
        if self.rate <= 0:
            return
        now = time.monotonic() if now is None else now
        if len(self._buckets) >= MAX_TRACKED:
            self._buckets.clear()
            self._seen.clear()
        self._buckets[device_id] = (self._tokens(device_id, now) - readings, now)
        first, total = self._seen.get(device_id, (now, 0))
        self._seen[device_id] = (first, total + readings)


def parse_networks(values: Iterable[str]) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """``--trusted-proxy`` values as networks; ValueError names the value and what would be accepted."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"--trusted-proxy {value!r}: expected an address or network, e.g. 127.0.0.1/32 or 10.0.0.0/8") from None
    return tuple(networks)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def client_address(peer: str | None, forwarded_for: Iterable[str], trusted: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> str:
    """The address a request came from: the peer, or, when the peer is a trusted proxy, the
    nearest address in ``forwarded_for`` (the X-Forwarded-For headers) that is not a trusted
    proxy: the ones further left were written by the client and prove nothing."""
    address = _ip(peer or "")
    if address is None:
        return peer or "unknown"
    if not trusted or not any(address in net for net in trusted):
        return str(address)
    for hop in reversed(",".join(forwarded_for).split(",")):
        forwarded = _ip(hop)
        if forwarded is None:
            return str(address)  # an unreadable hop: trust nothing beyond the proxy itself
        if not any(forwarded in net for net in trusted):
            return str(forwarded)
        address = forwarded
    return str(address)

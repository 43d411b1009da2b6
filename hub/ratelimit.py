"""Per-device rate limits on ingest: a token bucket per device, kept in this hub process."""

from __future__ import annotations

import math
import time

__all__ = ["RateLimiter"]


class RateLimiter:
    """``rate`` requests per second per device with bursts up to ``burst``; ``check`` says how long to wait."""

    def __init__(self, *, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: dict[str, tuple[float, float]] = {}

    def check(self, device_id: str, *, now: float | None = None) -> float:
        """Take one token for ``device_id``: 0.0 if allowed, else the seconds until the next token."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(device_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._buckets[device_id] = (tokens - 1.0, now)
            return 0.0
        self._buckets[device_id] = (tokens, now)
        return (1.0 - tokens) / self.rate

    @staticmethod
    def retry_after(wait_s: float) -> str:
        """The Retry-After header value (whole seconds, at least 1)."""
        return str(max(1, math.ceil(wait_s)))

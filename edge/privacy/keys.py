"""Secret keys that live only in memory: created from the kernel's random source, zeroed when retired."""

from __future__ import annotations

import hmac

__all__ = ["EphemeralKey", "RotatingKey"]

KEY_BYTES = 32


class EphemeralKey:
    """One HMAC-SHA256 key held in a ``bytearray`` so it can be overwritten with zeros when retired.

    The key is read straight into the bytearray (``readinto``) rather than through
    ``os.urandom``, which would leave an immutable ``bytes`` copy on the heap that
    cannot be wiped.  The HMAC state lives inside OpenSSL, not in Python objects.
    """

    __slots__ = ("_key", "_mac")

    def __init__(self) -> None:
        self._key = bytearray(KEY_BYTES)
        with open("/dev/urandom", "rb", buffering=0) as source:
            if source.readinto(self._key) != KEY_BYTES:
                raise OSError("short read from /dev/urandom")
        self._mac: hmac.HMAC | None = hmac.new(self._key, digestmod="sha256")

    def digest(self, value: bytes) -> bytes:
        """HMAC-SHA256 of ``value`` under this key."""
        if self._mac is None:
            raise RuntimeError("key already destroyed")
        mac = self._mac.copy()
        mac.update(value)
        return mac.digest()

    def destroy(self) -> None:
        """Overwrite the key with zeros and drop the HMAC state; the key can never be used again."""
        for i in range(len(self._key)):
            self._key[i] = 0
        self._mac = None

    @property
    def destroyed(self) -> bool:
        return self._mac is None

    def __repr__(self) -> str:  # never show key bytes, even in a traceback
        return f"<EphemeralKey {'destroyed' if self.destroyed else 'active'}>"


class RotatingKey:
    """A key replaced on a fixed UTC schedule: period ``period_ms``, boundaries at ``offset_ms`` past midnight.

    The key for an interval is created the first time it is needed and destroyed as
    soon as time moves into the next interval, so two intervals never share a key and
    a retired key cannot be recovered.
    """

    __slots__ = ("period_ms", "offset_ms", "_epoch", "_key", "rotations")

    def __init__(self, *, period_ms: int, offset_ms: int = 0) -> None:
        self.period_ms = period_ms
        self.offset_ms = offset_ms % period_ms if period_ms else 0
        self._epoch: int | None = None
        self._key: EphemeralKey | None = None
        self.rotations = 0

    def interval(self, now_ms: int) -> int:
        return (now_ms - self.offset_ms) // self.period_ms

    def key(self, now_ms: int) -> EphemeralKey:
        """The key of the interval containing ``now_ms``; retires the previous interval's key."""
        epoch = self.interval(now_ms)
        if self._key is None or epoch != self._epoch:  # a clock stepped backwards also rotates
            return self.rotate(epoch)
        return self._key

    def rotate(self, epoch: int | None = None) -> EphemeralKey:
        """Destroy the current key (if any) and start a fresh one; returns it."""
        if self._key is not None:
            self._key.destroy()
            self.rotations += 1
        key = self._key = EphemeralKey()
        if epoch is not None:
            self._epoch = epoch
        return key

    def expire(self, now_ms: int) -> None:
        """Destroy the key if its interval has ended, without creating the next one."""
        if self._key is not None and self.interval(now_ms) != self._epoch:
            self._key.destroy()
            self._key = None
            self.rotations += 1

    def destroy(self) -> None:
        if self._key is not None:
            self._key.destroy()
            self._key = None

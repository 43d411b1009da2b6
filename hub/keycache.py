"""Device keys by key id, remembered for a few seconds so ingest rarely asks the database."""

from __future__ import annotations

import time
from collections.abc import Iterable

from hub.models import DeviceKey
from hub.store import Store

__all__ = ["KeyCache"]


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

    async def fetch(self, key_ids: Iterable[bytes]) -> None:
        """Read the keys among ``key_ids`` not remembered (or remembered too long) in one go: a transport that takes
        messages in groups (hub.mqtt) asks once for a group, not once a message."""
        now = time.monotonic()
        stale = [kid for kid in dict.fromkeys(key_ids) if (hit := self._keys.get(kid)) is None or now - hit[0] >= self.ttl_s]
        if len(stale) < 2:
            return  # get reads a single one as before
        found = await self.store.device_keys(stale)
        if len(self._keys) > 100_000:
            self._keys.clear()
        for kid in stale:
            self._keys[kid] = (now, found.get(kid))

    def forget(self, key_id: bytes | None = None) -> None:
        if key_id is None:
            self._keys.clear()
        else:
            self._keys.pop(key_id, None)

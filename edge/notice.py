"""The transparency notice for the policy in force: built once per policy, shown locally, published to the hub until it lands.

The hub keeps a public register of every gateway's notices; a gateway publishes its notice at
start and after each policy change, retrying with backoff until the hub takes it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from edge.privacy import Policy
from edge.util.backoff import Backoff

__all__ = ["NoticePublisher"]


class NoticePublisher:
    """The notice for ``policy()`` (rebuilt when its digest changes) and the loop that publishes it through ``send``."""

    def __init__(
        self,
        policy: Callable[[], Policy],
        build: Callable[[Policy], dict[str, Any]],
        send: Callable[[Mapping[str, Any]], Awaitable[bool]],
    ) -> None:
        self._policy = policy
        self._build = build
        self._send = send
        self._cache: tuple[bytes, dict[str, Any]] | None = None
        self._changed = asyncio.Event()
        self._changed.set()  # the first notice of this pipeline goes out at start

    @property
    def pending(self) -> bool:
        """True until the hub has taken the notice for the policy in force."""
        return self._changed.is_set()

    def changed(self) -> None:
        """The policy changed: publish again."""
        self._changed.set()

    def notice(self) -> dict[str, Any]:
        """The transparency notice for the policy in force now."""
        policy = self._policy()
        if self._cache is None or self._cache[0] != policy.digest:
            self._cache = (policy.digest, self._build(policy))
        return self._cache[1]

    async def run(self) -> None:
        """Publish at start and after each change, until the hub takes it; runs until cancelled."""
        backoff = Backoff(2.0, 300.0, jitter=0)
        while True:
            await self._changed.wait()
            digest = self._policy().digest
            # Cleared only if the policy did not change while the notice was on its way.
            if await self._send(self.notice()) and self._policy().digest == digest:
                self._changed.clear()
                backoff.reset()
                continue
            await asyncio.sleep(backoff.next())

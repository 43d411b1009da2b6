"""The transparency notice for the policy in force: built once per policy, shown locally, published to the hub until it lands.

The hub keeps a public register of every gateway's notices; a gateway publishes its notice at
start and after each policy change, retrying with backoff until the hub takes it.  A notice
travels as one signed status-type message, at most ``MAX_STATUS_BYTES`` (OXP §7.3): one too
long for that is published abridged (``edge.privacy.notice.abridgements``), said in one error
line, and shown whole on the gateway's own notice page.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import cbor2

from edge.privacy import Policy
from edge.privacy.notice import MAX_STORED_NOTICE_BYTES, abridgements, stored_notice_bytes
from edge.protocol import MAX_STATUS_BYTES
from edge.util.backoff import Backoff

__all__ = ["NOTICE_BYTES", "NoticePublisher", "notice_bytes"]

log = logging.getLogger("ocn.notice")

# What the notice itself may take of a signed message: the rest is the envelope (COSE header, Ed25519
# signature, device id, time, boot epoch and report number: under 400 bytes with the longest device id).
NOTICE_BYTES = MAX_STATUS_BYTES - 1024


def notice_bytes(notice: Mapping[str, Any]) -> int:
    """The notice's size as it travels: canonical CBOR, as seal_status encodes it."""
    return len(cbor2.dumps(notice, canonical=True))


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


class NoticePublisher:
    """The notice for ``policy()`` (rebuilt when its digest changes) and the loop that publishes it through ``send``."""

    def __init__(
        self,
        policy: Callable[[], Policy],
        build: Callable[[Policy], dict[str, Any]],
        send: Callable[[Mapping[str, Any]], Awaitable[bool]],
        *,
        limit: int = NOTICE_BYTES,
    ) -> None:
        self._policy = policy
        self._build = build
        self._send = send
        self._limit = limit
        self._cache: tuple[bytes, dict[str, Any]] | None = None
        self._published: tuple[bytes, dict[str, Any] | None] | None = None
        self._changed = asyncio.Event()
        self._changed.set()  # the first notice of this pipeline goes out at start

    @property
    def pending(self) -> bool:
        """True until the hub has taken the notice for the policy in force (or it was found to fit no signed message)."""
        return self._changed.is_set()

    def changed(self) -> None:
        """The policy changed: publish again."""
        self._changed.set()

    def notice(self) -> dict[str, Any]:
        """The transparency notice for the policy in force now, whole (the local page shows it)."""
        policy = self._policy()
        if self._cache is None or self._cache[0] != policy.digest:
            self._cache = (policy.digest, self._build(policy))
        return self._cache[1]

    def published(self) -> dict[str, Any] | None:
        """The notice as it goes to the hub: whole if it fits a signed message, else abridged; None if nothing fits."""
        notice = self.notice()
        digest = self._policy().digest
        if self._published is None or self._published[0] != digest:
            self._published = (digest, self._fit(notice))
        return self._published[1]

    def _fits(self, notice: dict[str, Any]) -> bool:
        """Within the room of a signed message, and within what a hub's register stores (OXP §7.3: 413 beyond)."""
        return notice_bytes(notice) <= self._limit and stored_notice_bytes(notice) <= MAX_STORED_NOTICE_BYTES

    def _fit(self, notice: dict[str, Any]) -> dict[str, Any] | None:
        size = notice_bytes(notice)
        if self._fits(notice):
            return notice
        if size <= self._limit:  # it fits a signed message, but not what a register stores: its texts escape in JSON
            stored = stored_notice_bytes(notice)
            log.error(
                f"the transparency notice is {size:,} bytes, but {stored:,} as the JSON a hub's register stores, over the "
                f"{MAX_STORED_NOTICE_BYTES:,} a hub keeps (OXP §7.3): it is not published to the hub's register; this gateway's own "
                f"notice page shows it. The policy's texts hold control characters, which JSON writes as six bytes each: remove them",
                extra={"bytes": size, "stored_bytes": stored, "limit": MAX_STORED_NOTICE_BYTES},
            )
            return None
        channels = descriptions = 0
        for shorter in abridgements(notice):
            shorter["abridged"].update(full_bytes=size, limit_bytes=self._limit)
            channels, descriptions = shorter["abridged"]["channels"], len(notice.get("data") or [])
            if self._fits(shorter):
                left_out = shorter["abridged"]["left_out"]
                log.error(
                    f"the transparency notice is {size:,} bytes, over the {self._limit:,} a notice may take of a {MAX_STATUS_BYTES:,}-byte "
                    f"signed message (OXP §7.3): the hub's register gets it without its {_listed(left_out)} ({notice_bytes(shorter):,} bytes); "
                    f"this gateway's own notice page shows it whole. To publish it whole, give channels that are alike one rule and purpose "
                    f"in the policy, or spread the devices over more gateways",
                    extra={"bytes": size, "limit": self._limit, "channels": channels, "descriptions": descriptions, "left_out": ", ".join(left_out)},
                )
                return shorter
        log.error(
            f"the transparency notice is {size:,} bytes and no shorter form of it fits the {self._limit:,} a notice may take (OXP §7.3): "
            f"it is not published to the hub's register; this gateway's own notice page shows it. Shorten the policy's texts",
            extra={"bytes": size, "limit": self._limit, "channels": channels, "descriptions": descriptions},
        )
        return None

    async def run(self) -> None:
        """Publish at start and after each change, until the hub takes it; runs until cancelled."""
        backoff = Backoff(2.0, 300.0, jitter=0)
        while True:
            await self._changed.wait()
            digest = self._policy().digest
            notice = self.published()
            if notice is None:
                self._changed.clear()  # nothing to publish until the policy changes; said once, in _fit
                continue
            try:
                taken = await self._send(notice)
            except ValueError as exc:  # the envelope refused it after all: say so and wait for the next policy, never stop the gateway
                log.error("the transparency notice could not be sealed; it is not published until the policy changes", extra={"error": str(exc)[:300]})
                self._changed.clear()
                continue
            # Cleared only if the policy did not change while the notice was on its way.
            if taken and self._policy().digest == digest:
                self._changed.clear()
                backoff.reset()
                continue
            await asyncio.sleep(backoff.next())

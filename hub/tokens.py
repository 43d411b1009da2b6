"""Enrolment tokens: generated once, shown once, stored only as their SHA-256."""

from __future__ import annotations

import secrets
import time

from hub.audit import AUTOMATIC
from hub.auth import secret_hash
from hub.store import Store

__all__ = ["create_token", "TOKEN_PREFIX", "MAX_TOKEN_DAYS", "MAX_TOKEN_USES"]

# A recognisable prefix lets secret scanners find a leaked token.
TOKEN_PREFIX = "ocnenrol_"
MAX_TOKEN_USES = 1_000_000  # more devices than any city has: a larger number is a typo
MAX_TOKEN_DAYS = 3650  # a token is for a roll-out, not forever


async def create_token(store: Store, *, uses: int = 1, expires_s: float = 7 * 86400, approve: bool = False, fleet: str = "default", note: str = "",
                       actor: str = AUTOMATIC) -> str:
    """Create an enrolment token good for ``uses`` devices until ``expires_s`` from now; returns it (only time it exists in clear).

    Recorded in the audit log as created by ``actor``."""
    if uses < 1:
        raise ValueError(f"uses = {uses!r}: expected at least 1 device")
    if expires_s <= 0:
        raise ValueError(f"expires = {expires_s!r} s: expected a positive duration")
    token = TOKEN_PREFIX + secrets.token_urlsafe(24)
    now = time.time_ns() // 1_000_000
    await store.create_token(secret_hash(token), uses=uses, expires_ms=now + int(expires_s * 1000), approve=approve, fleet=fleet, note=note, now_ms=now,
                             actor=actor)
    return token

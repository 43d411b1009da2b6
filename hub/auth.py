"""Who may see admin pages: the admin token (stored hashed), session cookies and one-time login links."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from urllib.parse import quote

from aiohttp import web

from hub.store import Store

__all__ = ["SESSION_COOKIE", "Admin", "secret_hash"]

SESSION_COOKIE = "ocn_hub_session"
SESSION_MS = 12 * 3600 * 1000
LOGIN_LINK_MS = 10 * 60 * 1000
ADMIN_SETTING = "admin_token_sha256"


def secret_hash(secret: str) -> bytes:
    """Secrets (tokens, sessions, links) are kept only as their SHA-256."""
    return hashlib.sha256(secret.encode()).digest()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Admin:
    """Checks admin credentials against the store; the admin token itself is never stored."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._token_hash: bytes | None = None

    async def setup(self, admin_token: str | None) -> str | None:
        """Install ``admin_token`` (or keep the stored one); returns a newly generated token to print once, else None."""
        if admin_token:
            await self.store.set_setting(ADMIN_SETTING, secret_hash(admin_token).hex())
            self._token_hash = secret_hash(admin_token)
            return None
        generated = secrets.token_urlsafe(24)
        created = await self.store.set_setting(ADMIN_SETTING, secret_hash(generated).hex(), only_if_absent=True)
        stored = await self.store.get_setting(ADMIN_SETTING)
        self._token_hash = bytes.fromhex(stored or "")
        return generated if created else None

    def token_ok(self, token: str) -> bool:
        return self._token_hash is not None and hmac.compare_digest(secret_hash(token), self._token_hash)

    async def allowed(self, request: web.Request) -> bool:
        """True for a request carrying the admin token (Bearer) or a live session cookie."""
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer ") and self.token_ok(header[7:].strip()):
            return True
        session = request.cookies.get(SESSION_COOKIE)
        if session:
            return await self.store.use_secret("session", secret_hash(session), now_ms=now_ms(), consume=False)
        return False

    async def require(self, request: web.Request) -> None:
        """Raise 401 (API) or redirect to the login page (browser) unless the request is an admin's."""
        if await self.allowed(request):
            return
        if "text/html" in request.headers.get("Accept", "") and request.method == "GET":
            raise web.HTTPSeeOther(f"/login?next={request.path_qs}")
        raise web.HTTPUnauthorized(
            text='{"error": "unauthorized", "detail": "admin pages need the admin token (Authorization: Bearer ...) or a session"}',
            content_type="application/json",
        )

    async def start_session(self, response: web.StreamResponse, *, secure: bool) -> None:
        session = secrets.token_urlsafe(32)
        await self.store.add_secret("session", secret_hash(session), expires_ms=now_ms() + SESSION_MS)
        response.set_cookie(SESSION_COOKIE, session, max_age=SESSION_MS // 1000, httponly=True, samesite="Strict", secure=secure, path="/")

    async def login_link(self, base_url: str, *, next_path: str = "/fleet") -> str:
        """A one-time link (valid 10 minutes) that opens an admin session in a browser, then shows ``next_path``."""
        code = secrets.token_urlsafe(24)
        await self.store.add_secret("login", secret_hash(code), expires_ms=now_ms() + LOGIN_LINK_MS)
        suffix = "" if next_path == "/fleet" else f"?next={quote(next_path)}"
        return f"{base_url.rstrip('/')}/login/{code}{suffix}"

    async def use_login_link(self, code: str) -> bool:
        return await self.store.use_secret("login", secret_hash(code), now_ms=now_ms(), consume=True)

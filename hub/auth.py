"""Who may see admin pages: the admin token (stored hashed), session cookies and one-time login links.

A state change (POST, PUT, DELETE) made with a session cookie must also come from this hub's own
pages: a browser sends the cookie with a form another site submits, so the request must show
``Sec-Fetch-Site: same-origin`` or, from a browser that does not send that header, an ``Origin``
naming this hub. A request that carries the admin token in its ``Authorization`` header is not
checked: no browser adds that header to another site's request, so it cannot be forged that way.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from urllib.parse import quote

from aiohttp import web
from yarl import URL

from hub.store import Store

__all__ = ["SESSION_COOKIE", "Admin", "secret_hash"]

SESSION_COOKIE = "ocn_hub_session"
SESSION_MS = 12 * 3600 * 1000
LOGIN_LINK_MS = 10 * 60 * 1000
ADMIN_SETTING = "admin_token_sha256"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# "none": the user opened the URL themselves (typed, bookmarked); no other site can make a browser send that.
OWN_SITE = frozenset({"same-origin", "none"})


def secret_hash(secret: str) -> bytes:
    """Secrets (tokens, sessions, links) are kept only as their SHA-256."""
    return hashlib.sha256(secret.encode()).digest()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def from_own_pages(request: web.Request) -> bool:
    """True when the browser says the request comes from this hub's pages (``Sec-Fetch-Site``, else ``Origin`` against ``Host``)."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None:
        return site in OWN_SITE
    origin = request.headers.get("Origin")
    if origin is None or request.host == "":
        return False
    try:
        claimed = URL(origin)
        # Host read in the origin's scheme, so a default port written or left out compares equal (behind a TLS proxy too).
        own = URL.build(scheme=claimed.scheme, authority=request.host)
    except ValueError:
        return False
    return claimed.scheme in ("http", "https") and claimed.host is not None and (claimed.host.lower(), claimed.port) == (
        (own.host or "").lower(), own.port)


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

    async def credential(self, request: web.Request) -> str | None:
        """"token" for a request carrying the admin token (Bearer), "session" for a live session cookie, else None."""
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer ") and self.token_ok(header[7:].strip()):
            return "token"
        session = request.cookies.get(SESSION_COOKIE)
        if session and await self.store.use_secret("session", secret_hash(session), now_ms=now_ms(), consume=False):
            return "session"
        return None

    async def require(self, request: web.Request) -> None:
        """Raise 401 (API) or redirect to the login page (browser) unless the request is an admin's;
        403 for a state change made with a session from a page that is not this hub's."""
        credential = await self.credential(request)
        if credential == "session" and request.method not in SAFE_METHODS and not from_own_pages(request):
            raise web.HTTPForbidden(
                text='{"error": "cross_site", "detail": "a change made with a session cookie must come from this hub\'s own pages '
                     '(Sec-Fetch-Site: same-origin or an Origin naming this hub); scripts use Authorization: Bearer <admin token>"}',
                content_type="application/json",
            )
        if credential is not None:
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

"""Who is asking, and may they: the admin token and people's API tokens (stored hashed), session cookies and one-time login links.

A request is made by a :class:`Principal`: a person's account (hub/accounts.py) or the built-in
``admin`` of the admin token, the break-glass credential that holds every role.  Sessions and
login links remember whose they are; an account's roles are read on every request, so a role
change or a disabled account takes effect at once.

A state change (POST, PUT, DELETE) made with a session cookie must also come from this hub's own
pages: a browser sends the cookie with a form another site submits, so the request must show
``Sec-Fetch-Site: same-origin`` or, from a browser that does not send that header, an ``Origin``
naming this hub. A request that carries a token in its ``Authorization`` header is not checked:
no browser adds that header to another site's request, so it cannot be forged that way.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass
from urllib.parse import quote

from aiohttp import web
from yarl import URL

from hub.accounts import BUILT_IN_ADMIN, ROLES, Account, AccountError, NotPermitted, Permission, check_name, parse_roles, role_text
from hub.audit import AuditEntry
from hub.store import Store

__all__ = ["ACCOUNT_TOKEN_PREFIX", "SESSION_COOKIE", "Admin", "Principal", "add_account", "disable", "new_account_token", "secret_hash",
           "set_roles", "stored_account"]

# A recognisable prefix lets secret scanners find a leaked token.
ACCOUNT_TOKEN_PREFIX = "ocnuser_"

SESSION_COOKIE = "ocn_hub_session"
SESSION_MS = 12 * 3600 * 1000
LOGIN_LINK_MS = 10 * 60 * 1000
ADMIN_SETTING = "admin_token_sha256"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# "none": the user opened the URL themselves (typed, bookmarked); no other site can make a browser send that.
OWN_SITE = frozenset({"same-origin", "none"})


def secret_hash(secret: str) -> bytes:
    """Secrets (tokens, sessions, links) are kept only as their SHA-256.

    A header's bytes that are not UTF-8 reach us as surrogate escapes, and JSON may carry a lone surrogate ("\\ud800"):
    hashed with the surrogates as they are, they match no secret (401), where a strict encode failed the request (500).
    """
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


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


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: an account name (``admin`` for the admin token), its roles, and how it proved it ("token" or "session")."""

    name: str
    roles: frozenset[str]
    credential: str

    def may(self, permission: Permission) -> bool:
        return any(role in self.roles for role in permission.granted_by)

    def parts_it_may_change(self) -> frozenset[str]:
        """The parts of a desired document ("config", "policy") this principal may change."""
        return frozenset(part for part, needs in (("config", Permission.OPERATE), ("policy", Permission.POLICY)) if self.may(needs))


def _refusal(status: type[web.HTTPException], error: str, detail: str) -> web.HTTPException:
    return status(text=json.dumps({"error": error, "detail": detail}), content_type="application/json")


class Admin:
    """Checks credentials against the store; no token itself is ever stored, only its SHA-256."""

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
        """True for the admin token."""
        return self._token_hash is not None and hmac.compare_digest(secret_hash(token), self._token_hash)

    async def by_token(self, token: str, *, credential: str = "token") -> Principal | None:
        """The principal a token names: the admin token, or a person's API token; None for anything else."""
        if self.token_ok(token):
            return Principal(BUILT_IN_ADMIN, frozenset(ROLES), credential)
        if not token.startswith(ACCOUNT_TOKEN_PREFIX):
            return None
        account = await self.store.account_by_token(secret_hash(token))
        return None if account is None else Principal(account.name, account.roles, credential)

    async def _by_name(self, name: str, credential: str) -> Principal | None:
        if name == BUILT_IN_ADMIN:
            return Principal(BUILT_IN_ADMIN, frozenset(ROLES), credential)
        account = await self.store.account(name)
        return None if account is None or account.disabled else Principal(account.name, account.roles, credential)

    async def identify(self, request: web.Request) -> Principal | None:
        """Who the request comes from (Bearer token, else session cookie), or None."""
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            principal = await self.by_token(header[7:].strip())
            if principal is not None:
                return principal
        session = request.cookies.get(SESSION_COOKIE)
        if session:
            name = await self.store.use_secret("session", secret_hash(session), now_ms=now_ms(), consume=False)
            if name is not None:
                return await self._by_name(name, "session")
        return None

    async def require(self, request: web.Request, permission: Permission = Permission.READ) -> Principal:
        """The principal of a request that may do what ``permission`` covers.

        Raises 401 (API) or redirects to the login page (browser) without credentials; 403 for a state
        change made with a session from a page that is not this hub's; :class:`hub.accounts.NotPermitted`
        when the principal's roles do not give ``permission`` (the caller answers 403 in its own format).
        """
        principal = await self.identify(request)
        if principal is not None and principal.credential == "session" and request.method not in SAFE_METHODS and not from_own_pages(request):
            raise _refusal(web.HTTPForbidden, "cross_site", "a change made with a session cookie must come from this hub's own pages "
                           "(Sec-Fetch-Site: same-origin or an Origin naming this hub); scripts use Authorization: Bearer <token>")
        if principal is None:
            if "text/html" in request.headers.get("Accept", "") and request.method == "GET":
                raise web.HTTPSeeOther(f"/login?next={request.path_qs}")
            raise _refusal(web.HTTPUnauthorized, "unauthorized",
                           "admin pages need a token (Authorization: Bearer ...: your API token or the admin token) or a session")
        if not principal.may(permission):
            raise NotPermitted(permission, f"{principal.name} ({role_text(principal.roles) or 'no role'}) may not do this")
        return principal

    async def start_session(self, response: web.StreamResponse, *, secure: bool, account: str = BUILT_IN_ADMIN) -> None:
        session = secrets.token_urlsafe(32)
        await self.store.add_secret("session", secret_hash(session), expires_ms=now_ms() + SESSION_MS, account=account)
        response.set_cookie(SESSION_COOKIE, session, max_age=SESSION_MS // 1000, httponly=True, samesite="Strict", secure=secure, path="/")

    async def login_link(self, base_url: str, *, next_path: str = "/fleet", account: str = BUILT_IN_ADMIN, actor: str | None = None) -> str:
        """A one-time link (valid 10 minutes) that opens a session of ``account`` in a browser, then shows ``next_path``.

        With an ``actor`` (who asked for it), issuing it is recorded in the audit log as ``account.login_link``.
        Raises AccountError when ``account`` is not an enabled account.
        """
        if account != BUILT_IN_ADMIN:
            found = await self.store.account(account)
            if found is None or found.disabled:
                raise AccountError(f"account {account!r}: {'is disabled' if found else 'does not exist'} (see `ocn-edge hub user list`)")
        code = secrets.token_urlsafe(24)
        await self.store.add_secret("login", secret_hash(code), expires_ms=now_ms() + LOGIN_LINK_MS, account=account)
        if actor is not None:
            await self.store.append_audit(AuditEntry(at_ms=now_ms(), actor=actor, action="account.login_link", target=f"account:{account}",
                                                     detail="one-time login link, valid 10 minutes"))
        suffix = "" if next_path == "/fleet" else f"?next={quote(next_path)}"
        return f"{base_url.rstrip('/')}/login/{code}{suffix}"

    async def use_login_link(self, code: str) -> str | None:
        """The account a login link opens a session for (the link is used up), or None if it is unknown, used or expired."""
        name = await self.store.use_secret("login", secret_hash(code), now_ms=now_ms(), consume=True)
        if name is None or (await self._by_name(name, "session")) is None:
            return None
        return name


async def add_account(store: Store, name: str, roles: str, *, actor: str) -> str:
    """Create an account; returns its API token (shown once).  Raises AccountError for a bad name or role or a taken name."""
    check_name(name)
    token = ACCOUNT_TOKEN_PREFIX + secrets.token_urlsafe(24)
    if not await store.add_account(name, role_text(parse_roles(roles)), secret_hash(token), now_ms=now_ms(), actor=actor):
        raise AccountError(f"account {name!r} exists already (see `ocn-edge hub user list`)")
    return token


async def new_account_token(store: Store, name: str, *, actor: str) -> str:
    """Give an account a new API token (the old one stops working); returns it.  Raises AccountError if no such enabled account."""
    token = ACCOUNT_TOKEN_PREFIX + secrets.token_urlsafe(24)
    if not await store.set_account_token(name, secret_hash(token), now_ms=now_ms(), actor=actor):
        raise AccountError(f"account {name!r}: no such enabled account (see `ocn-edge hub user list`)")
    return token


async def set_roles(store: Store, name: str, roles: str, *, actor: str) -> Account:
    """Give an account new roles; returns it as stored.  Raises AccountError for a bad role or no such enabled account."""
    if not await store.set_account_roles(name, role_text(parse_roles(roles)), now_ms=now_ms(), actor=actor):
        raise AccountError(f"account {name!r}: no such enabled account (see `ocn-edge hub user list`)")
    return await stored_account(store, name)


async def stored_account(store: Store, name: str) -> Account:
    """An account as stored now.  Raises AccountError if there is none (accounts are disabled, never deleted, so only a wrong name)."""
    account = await store.account(name)
    if account is None:
        raise AccountError(f"account {name!r} does not exist (see `ocn-edge hub user list`)")
    return account


async def disable(store: Store, name: str, *, actor: str) -> None:
    """Disable an account.  Raises AccountError if there is no such enabled account."""
    if not await store.disable_account(name, now_ms=now_ms(), actor=actor):
        raise AccountError(f"account {name!r}: no such enabled account (see `ocn-edge hub user list`)")

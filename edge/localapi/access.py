"""Who may use the local API: anyone on the gateway itself; beyond loopback, only with the access token.

On 127.0.0.1 the only people who can connect already have a shell on the gateway, so the
page asks nothing of them.  Listening on the LAN (a technician's phone on the pole's Wi-Fi)
puts the live values, bus statistics and commissioning actions within reach of anyone on that
network: then every route except the public notice needs the token that
``ocn-edge access-token create`` made.  Only its SHA-256 is kept, in the state directory, so
a copy of the state directory does not hand out the token.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

__all__ = ["COOKIE", "TOKEN_FILE", "AccessToken", "create_access_token", "cross_site", "needs_token"]

# "none": the person opened the address themselves; no other site can make a browser send that.
OWN_SITE = frozenset({"same-origin", "none"})

TOKEN_FILE = "local-api-token.sha256"
COOKIE = "ocn_local_token"


def needs_token(host: str) -> bool:
    """True unless ``host`` is a loopback address (or ``localhost``): only then is the gateway's own shell the only way in."""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name, or "0.0.0.0"-like wildcards spelled otherwise: assume it reaches the network
        return True


def cross_site(headers: Mapping[str, str], host: str, *, tokenless: bool) -> str | None:
    """Why a state-changing request (a read, a scan) may come from another site's page, or None when it cannot.

    A browser sends the token's cookie, and on loopback nothing at all is asked, with a form
    another site submits: such a request shows ``Sec-Fetch-Site: cross-site`` or an ``Origin``
    naming that site.  A script on the gateway (curl, ``ocn-edge read``) sends neither.  On
    loopback, where no token is asked (``tokenless``), the ``Host`` must also be an address or
    localhost: a page whose own name was made to point at 127.0.0.1 (DNS rebinding) would
    otherwise count as this gateway's own page.  Beyond loopback the token's cookie is not sent
    to such a name, so the token already stops it.
    """
    site = headers.get("Sec-Fetch-Site")
    if site is not None and site not in OWN_SITE:
        return f"Sec-Fetch-Site: {site}"
    origin = headers.get("Origin")
    if origin is not None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or parts.netloc.lower() != host.lower():
            return f"Origin {origin} is not this gateway ({host})"
    name = urlsplit(f"//{host}").hostname or ""
    if not tokenless or name == "localhost" or _is_address(name):
        return None
    return f"Host {host} is neither an address nor localhost"


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def create_access_token(state_dir: str | Path) -> str:
    """A new token for the local API; its SHA-256 replaces any earlier one in ``state_dir``. The token itself is returned once."""
    token = secrets.token_urlsafe(24)
    path = Path(state_dir) / TOKEN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as out:
        out.write(_digest(token) + "\n")
    os.replace(tmp, path)
    return token


class AccessToken:
    """The token check for one local API: reads the stored digest on each check, so a new token works without a restart.

    ``required`` is set by the server from the address it listens on (`needs_token`).
    """

    def __init__(self, state_dir: str | Path | None, *, required: bool = False) -> None:
        self.path = Path(state_dir) / TOKEN_FILE if state_dir is not None else None
        self.required = required

    def configured(self) -> bool:
        return self.path is not None and self.path.is_file()

    def accepts(self, token: str) -> bool:
        """True if ``token`` is the one whose digest is stored; no token is accepted when none is stored."""
        if not token or self.path is None:
            return False
        try:
            stored = self.path.read_text(encoding="ascii").strip()
        except OSError:
            return False
        return bool(stored) and hmac.compare_digest(stored, _digest(token))

"""A broker the hub connects to, named by an ``mqtt://`` or ``mqtts://`` URL: checked once, then turned into connection arguments.

Shared by the hub's OXP side (hub.mqtt, ``--mqtt-*``) and its northbound export (hub.export, ``--export-*``).
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, unquote, urlsplit

__all__ = ["check_broker", "connection"]


def check_broker(url: str, *, options: str, expected: str, password_file: str, ca: str, user_named: bool = False) -> SplitResult:
    """The URL's parts, or ValueError naming the option: ``options`` is the prefix (``--mqtt``, ``--export``) of
    ``-broker``, ``-password-file`` and ``-ca``; ``expected`` says what a good URL looks like; ``user_named``: a
    password file needs the URL to name its user (there is no default user)."""
    parts = urlsplit(url)
    try:
        _ = parts.port
    except ValueError:
        parts = parts._replace(netloc="")
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"{options}-broker {url!r}: expected {expected}")
    if parts.password:
        raise ValueError(f"{options}-broker: a password in the URL would show in the process list; put it in a file named by {options}-password-file")
    if user_named and password_file and not parts.username:
        raise ValueError(f"{options}-password-file {password_file!r}: name the broker user in {options}-broker, e.g. mqtt://ocn@{parts.hostname}")
    if password_file and not Path(password_file).is_file():
        raise ValueError(f"{options}-password-file {password_file!r}: no such file")
    if ca and not Path(ca).is_file():
        raise ValueError(f"{options}-ca {ca!r}: no such file; expected a PEM CA bundle")
    return parts


def connection(url: str, *, password_file: str, ca: str) -> dict[str, Any]:
    """aiomqtt.Client's host, port, user, password and TLS arguments for a checked URL (the user None when it names none)."""
    parts = urlsplit(url)
    return {
        "hostname": parts.hostname or "",
        "port": parts.port or (8883 if parts.scheme == "mqtts" else 1883),
        "username": unquote(parts.username) if parts.username else None,
        "password": Path(password_file).read_text().strip() if password_file else None,
        "tls_context": ssl.create_default_context(cafile=ca or None) if parts.scheme == "mqtts" else None,
    }

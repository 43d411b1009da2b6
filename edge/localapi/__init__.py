"""The gateway's local HTTP API on 127.0.0.1: the public transparency notice and the gateway's status.

Its parts load when asked for (PEP 562): the installer and `ocn-edge status` read only ``edge.localapi.access``,
and importing that must not load the server, aiohttp and the commissioning code behind it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edge.localapi.app import create_app
    from edge.localapi.server import LocalApi, LocalApiError

__all__ = ["LocalApi", "LocalApiError", "create_app"]


def __getattr__(name: str) -> object:
    if name == "create_app":
        from edge.localapi import app

        return app.create_app
    if name in ("LocalApi", "LocalApiError"):
        from edge.localapi import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The gateway's local HTTP API on 127.0.0.1: the public transparency notice and the gateway's status.

Its parts load when asked for (PEP 562): the installer and `ocn-edge status` read only ``edge.localapi.access``,
and importing that must not load the server, aiohttp and the commissioning code behind it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edge.util.lazy import lazy_names

if TYPE_CHECKING:
    from edge.localapi.app import create_app
    from edge.localapi.server import LocalApi, LocalApiError

__all__ = ["LocalApi", "LocalApiError", "create_app"]


__getattr__ = lazy_names(__name__, {"create_app": "edge.localapi.app", "LocalApi": "edge.localapi.server",
                                      "LocalApiError": "edge.localapi.server"})

"""How the gateway reaches its hub: the transport contract, and the transport each hub URL scheme names.

`open_transport` picks the transport by the scheme of ``[uplink] hub``; a new transport is a
module implementing `Transport` (see `contract.py`) and one line in ``_BY_SCHEME``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from edge.transport.contract import (
    Ack,
    DesiredListener,
    DesiredNews,
    DesiredOffer,
    DesiredWatch,
    HubKeySource,
    Refused,
    Taken,
    Transport,
    TransportError,
    UplinkError,
)
from edge.transport.http import HttpTransport
from edge.transport.tls import tls_context

__all__ = [
    "Ack",
    "DesiredListener",
    "DesiredNews",
    "DesiredOffer",
    "DesiredWatch",
    "HubKeySource",
    "Refused",
    "Taken",
    "Transport",
    "TransportError",
    "TransportFactory",
    "UplinkError",
    "open_transport",
    "tls_context",
]



class TransportFactory(Protocol):
    """What a transport module offers the registry: a transport for one hub URL."""

    def __call__(self, hub_url: str, *, ca: str | Path | None, timeout_s: float) -> Transport: ...


_BY_SCHEME: dict[str, TransportFactory] = {
    "http": HttpTransport,
    "https": HttpTransport,
}


def open_transport(hub_url: str, *, ca: str | Path | None = None, timeout_s: float = 30.0) -> Transport:
    """The transport for ``hub_url``'s scheme, not yet connected (it connects on its first exchange)."""
    make = _BY_SCHEME.get(urlsplit(hub_url).scheme)
    if make is None:
        schemes = " or ".join(f"{s}://" for s in _BY_SCHEME)
        raise UplinkError(f"uplink hub = {hub_url!r}: expected an {schemes} URL")
    return make(hub_url, ca=ca, timeout_s=timeout_s)

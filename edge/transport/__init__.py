"""How the gateway reaches its hub: the transport contract, and the transport each hub URL scheme names.

`open_transport` picks the transport by the scheme of ``[uplink] broker`` when one is set (MQTT),
else of ``[uplink] hub`` (HTTP); a new transport is a module implementing `Transport` (see
`contract.py`) and one line in ``_BY_SCHEME``.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    "Link",
    "Refused",
    "Taken",
    "Transport",
    "TransportError",
    "TransportFactory",
    "UplinkError",
    "open_transport",
    "tls_context",
]



@dataclass(frozen=True, slots=True)
class Link:
    """Where and how the gateway reaches its hub, as ``[uplink]`` says."""

    hub: str  # the hub's HTTP(S) URL: enrolment, the hub's key, and the wire itself unless a broker is set
    broker: str = ""  # an mqtt:// or mqtts:// URL: OXP over MQTT through that broker
    device_id: str = ""
    broker_password: str | Path | None = None  # the file holding this gateway's broker password
    ca: str | Path | None = None
    timeout_s: float = 30.0


class TransportFactory(Protocol):
    """What a transport module offers the registry: a transport for one link."""

    def __call__(self, link: Link) -> Transport: ...


def _http(link: Link) -> Transport:
    return HttpTransport(link.hub, ca=link.ca, timeout_s=link.timeout_s)


def _mqtt(link: Link) -> Transport:
    # aiomqtt loads only for a gateway configured with a broker: the HTTP gateway's start-up and memory do not pay for it.
    from edge.transport.mqtt import MqttTransport

    return MqttTransport(link.broker, hub_url=link.hub, device_id=link.device_id, password_file=link.broker_password, ca=link.ca,
                         timeout_s=link.timeout_s)


_BY_SCHEME: dict[str, TransportFactory] = {
    "http": _http,
    "https": _http,
    "mqtt": _mqtt,
    "mqtts": _mqtt,
}


def open_transport(hub_url: str, *, ca: str | Path | None = None, timeout_s: float = 30.0, broker: str = "", device_id: str = "",
                   broker_password: str | Path | None = None) -> Transport:
    """The transport for the broker's scheme, or the hub URL's without a broker; not yet connected (it connects on its first exchange)."""
    link = Link(hub_url, broker, device_id, broker_password, ca, timeout_s)
    url, setting = (broker, "broker") if broker else (hub_url, "hub")
    make = _BY_SCHEME.get(urlsplit(url).scheme)
    if make is None:
        schemes = " or ".join(f"{s}://" for s in _BY_SCHEME if (s.startswith("mqtt") == bool(broker)))
        raise UplinkError(f"uplink {setting} = {url!r}: expected an {schemes} URL")
    return make(link)

"""The contract between delivery and a transport: sealed bytes go down, plain typed answers come back.

A transport carries OXP messages to one hub and nothing else: it knows its wire (HTTP today),
never the spool, the retry schedule or the byte budget.  Everything a delivery decision needs
comes back as a value: an `Ack` naming the batch the hub stored, `Taken` for a status report
or notice, or a `Refused` that says whether sending the same bytes again can help, the hub's
reason code and how long the hub asked to be left alone.  Like httpx's ``AsyncBaseTransport``,
this is the point of cut-off: order, window, retry and backoff, budget and ack → spool live
above it, in `edge.uplink`.

Desired state arrives however the wire brings it: a pull transport (HTTP) finds it in the
answer to a status report, a push transport (MQTT) when the hub publishes it.  Either way the
transport hands it to the one `DesiredListener` it was given with `listen`.

Imports nothing of ours, so a transport module depends on this file and the protocol only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

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
    "UplinkError",
]


class UplinkError(Exception):
    """The uplink is configured in a way that cannot work; the message names the setting."""


class TransportError(Exception):
    """A request outside the delivery loop (the hub's key) could not be answered; the message says why in one line."""


@dataclass(frozen=True, slots=True)
class Ack:
    """The hub's word that it durably stored a batch, and which one (an ack for another batch is no ack)."""

    device_id: str
    key_id: bytes
    boot_epoch: int
    seq: int
    duplicate: bool  # the hub already held it: a retry of a batch whose first ack was lost
    overhead_bytes: int = 0  # what the link carried besides the batch itself, both ways
    desired_etag: str | None = None  # the ETag of the desired document the hub holds for us; None: the ack did not say


@dataclass(frozen=True, slots=True)
class Taken:
    """The hub took a status report or a notice."""

    overhead_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Refused:
    """A message the hub did not take, or that never reached it.

    ``final``: the hub will never take these bytes however often they are sent (malformed, bad
    signature, too large); otherwise sending again later may work.  ``code`` is the hub's
    reason code (OXP error codes such as ``busy``, ``stale``, ``unknown_device``; "" when the
    hub never answered).  ``message`` is what a person reads: logged, reported upstream and kept
    beside a quarantined batch.  ``retry_after`` is the wait in seconds the hub asked for.
    """

    final: bool
    code: str
    message: str
    retry_after: float | None = None
    overhead_bytes: int = 0


@dataclass(frozen=True, slots=True)
class DesiredOffer:
    """Desired state as the hub signed it (verified later, by the applier) and its ETag ("": the hub holds none)."""

    signed: object
    etag: str


DesiredListener = Callable[[DesiredOffer], None]


@dataclass(frozen=True, slots=True)
class DesiredNews:
    """The answer to a wait for a new desired ETag.

    ``etag``: the hub's ETag when it differs from the one known, None when it did not change
    within the wait (or no answer came: then ``error`` says why).  ``unsupported``: this hub has
    no such wait; do not ask again.
    """

    etag: str | None
    overhead_bytes: int = 0
    error: str = ""
    unsupported: bool = False


@runtime_checkable
class DesiredWatch(Protocol):
    """A transport that can wait, cheaply, for the hub's desired ETag to change (a pull transport's long poll)."""

    async def watch_desired(self, device_id: str, known_etag: str, wait_s: float) -> DesiredNews:
        """Return once the hub's desired ETag for ``device_id`` differs from ``known_etag``, or after about ``wait_s``."""
        ...


class HubKeySource(Protocol):
    """Where the hub's signing key can be fetched, for pinning on first use."""

    async def fetch_hub_key(self) -> bytes:
        """The hub's public key (PEM); raises TransportError when it cannot be fetched trustworthily."""
        ...


class Transport(HubKeySource, Protocol):
    """One hub, reached over one kind of wire.  Each call is one exchange; retrying is the caller's job."""

    @property
    def hub(self) -> str:
        """Where the hub is, as a person configured it (for logs and the status page)."""
        ...

    def listen(self, on_desired: DesiredListener) -> None:
        """Hand every desired-state offer from the hub to ``on_desired`` (set once, before the first exchange)."""
        ...

    async def send_batch(self, data: bytes) -> Ack | Refused:
        """Send one sealed batch; the hub's ack for it, or why not."""
        ...

    async def send_status(self, data: bytes) -> Taken | Refused:
        """Send one sealed status report."""
        ...

    async def publish_notice(self, data: bytes) -> Taken | Refused:
        """Send one sealed transparency notice to the hub's public register."""
        ...

    async def aclose(self) -> None:
        """Release the connection; a later exchange may open it again."""
        ...

"""Socket options the MQTT clients of the gateway and the hub set on their connection, in one place."""

from __future__ import annotations

import contextlib
import socket
from typing import Any

__all__ = ["no_delay"]


def no_delay(sock: Any) -> None:
    """Send each packet at once (TCP_NODELAY on ``sock``, a socket or an SSL socket; None is ignored), which paho-mqtt does
    not ask for.  Under Nagle's algorithm a small write that follows one not yet acknowledged waits for the peer's delayed
    TCP acknowledgement, about 40 ms: an OXP batch published just after the PUBACK of the last ack, or an answer just
    after a PUBACK, would wait that long each time, and share no segment with anything in return."""
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

"""What every bus owner shares, whatever it carries: the config it reads, time on the wire, reopening a lost port.

Kept apart from both bus owners so the serial bus never imports Modbus code and the other way round.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from edge.util.backoff import Backoff
from edge.util.logonce import LogOnce

__all__ = ["BusConfigLike", "Reopener", "bits_per_char"]

log = logging.getLogger("ocn.bus")


class BusConfigLike(Protocol):
    """What a bus owner needs from the gateway config's ``[[buses]]`` entry (port for serial and RTU, host for TCP)."""

    @property
    def name(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def port(self) -> str | None: ...

    @property
    def baudrate(self) -> int: ...

    @property
    def parity(self) -> str: ...

    @property
    def stopbits(self) -> float: ...

    @property
    def bytesize(self) -> int: ...

    @property
    def host(self) -> str | None: ...

    @property
    def tcp_port(self) -> int: ...

    @property
    def timeout(self) -> float: ...

    @property
    def frame_gap(self) -> float: ...


def bits_per_char(config: BusConfigLike) -> int:
    """Bits one byte takes on an asynchronous serial line: start bit, data, parity, stop bits."""
    return 1 + config.bytesize + (0 if config.parity == "N" else 1) + int(config.stopbits)


class Reopener:
    """Capped exponential backoff for reopening a port, logging once on loss and once on recovery.

    No jitter: each bus owner reopens its own local port, and nothing else competes for it.
    """

    def __init__(self, what: str, reopen_max: float) -> None:
        self.what = what
        self.reopen_max = reopen_max
        self._backoff = Backoff(0.1, reopen_max, jitter=0)
        self._notes = LogOnce(log)
        self._down_since = 0.0
        self.reason = ""  # why the port is not open now ("" while it is), for the health diagnosis

    def failed(self, reason: str) -> float:
        """Record a failed open (or a loss); returns how long to wait before the next try."""
        if not self._notes.failing(self.what):
            self._down_since = time.monotonic()
        self.reason = reason
        # An error: every device on the port delivers nothing until it is back (journalctl -p err finds it).
        self._notes.failure(self.what, "%s unavailable: %s; reopening with backoff up to %gs", self.what, reason,
                            self.reopen_max, level=logging.ERROR)
        return self._backoff.next()

    def opened(self) -> None:
        self.reason = ""
        self._notes.recovered(self.what, "%s back after %.1fs", self.what, time.monotonic() - self._down_since)
        self._backoff.reset()

"""systemd readiness and watchdog notifications (sd_notify) over a plain datagram socket."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier", "watchdog_loop"]

log = logging.getLogger("ocn.notify")


class Notifier:
    """Sends `KEY=VALUE` datagrams to `$NOTIFY_SOCKET`; does nothing when it is not set.

    The protocol is a single AF_UNIX datagram per message (see sd_notify(3)); an
    address starting with "@" is in the abstract namespace.  No library is needed
    for it, and the service must not depend on libsystemd being present.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address: str | bytes | None = None
        if address.startswith("@"):
            self._address = b"\0" + address[1:].encode()
        elif address.startswith("/"):
            self._address = address
        self._watchdog_s = _watchdog_interval(env)
        self._sock: socket.socket | None = None
        self._failed = False

    @property
    def enabled(self) -> bool:
        return self._address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """systemd's WatchdogSec for this process in seconds, or None when no watchdog is armed."""
        return self._watchdog_s

    def send(self, message: str) -> bool:
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), self._address)
        except OSError as exc:
            if not self._failed:  # say it once; systemd will act on the missing pings anyway
                log.warning("cannot notify systemd at NOTIFY_SOCKET: %s", exc)
                self._failed = True
            return False
        if self._failed:
            log.info("systemd notification socket works again")
            self._failed = False
        return True

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # the watchdog is meant for another process (e.g. our parent)
    return int(usec) / 1_000_000


async def watchdog_loop(notifier: Notifier) -> None:
    """Ping the watchdog at half its interval, from the event loop itself.

    Because the ping is sent by a coroutine on the gateway's own loop, a loop that
    is blocked or starved stops pinging and systemd restarts the service.
    """
    interval = notifier.watchdog_interval
    if interval is None:
        return
    while True:
        notifier.watchdog()
        await asyncio.sleep(interval / 2)

"""The serial bus owner: one task per serial port carrying one streaming device."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import time
from typing import Any

import serial

from drivers.health import FAILING, Health
from drivers.line import BusConfigLike, Reopener, bits_per_char
from drivers.sdk import BusDown
from edge.util.linkwords import os_words
from edge.util.logonce import LogOnce

__all__ = ["SerialBus"]

log = logging.getLogger("ocn.bus")


class SerialBus:
    """Owns one serial port carrying one streaming device; survives the port disappearing and coming back.

    A driver reads with :meth:`receive`, writes with :meth:`write`, and re-sends
    its setup commands whenever :attr:`session` changes (each successful open
    starts a new session: a replugged sensor forgets its mode).
    """

    def __init__(self, config: BusConfigLike, *, reopen_max: float = 30.0) -> None:
        self.config = config
        self.name = config.name
        self.what = f"serial bus {config.name!r} ({config.port})"
        self.session = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.losses = 0
        self.dropped_bytes = 0
        self._stall = LogOnce(log)
        self._reopen = Reopener(self.what, reopen_max)
        self._port: serial.Serial | None = None
        self._chunks: asyncio.Queue[bytes] = asyncio.Queue(maxsize=1024)
        self._open = asyncio.Event()
        self._lost = asyncio.Event()
        self._started = time.monotonic()

    @property
    def is_open(self) -> bool:
        return self._port is not None

    async def run(self) -> None:
        """Keep the port open until cancelled, reopening it with capped backoff when it disappears."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    self._port = serial.Serial(
                        self.config.port, baudrate=self.config.baudrate, parity=self.config.parity,
                        stopbits=self.config.stopbits, bytesize=self.config.bytesize, timeout=0,
                        exclusive=True,
                    )
                except (OSError, serial.SerialException, ValueError) as exc:
                    await asyncio.sleep(self._reopen.failed(_reason(exc)))
                    continue
                self._reopen.opened()
                self.session += 1
                self._lost.clear()
                fd = self._port.fileno()
                loop.add_reader(fd, self._readable, fd)
                self._open.set()
                await self._lost.wait()
                self.losses += 1
                self._close(loop)
                await asyncio.sleep(self._reopen.failed("port lost"))
        finally:
            self._close(loop)

    def _readable(self, fd: int) -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # EIO or hangup: the adapter was unplugged or the device went away
            asyncio.get_running_loop().remove_reader(fd)
            self._lost.set()
            return
        self.bytes_in += len(data)
        if self._chunks.full():
            # A stalled driver loses the oldest bytes, not the newest; said once per stall.
            self.dropped_bytes += len(self._chunks.get_nowait())
            self._stall.failure("stall", "%s: the driver is not keeping up; dropping the oldest received bytes", self.what)
        elif self._chunks.qsize() < self._chunks.maxsize // 2:
            self._stall.recovered("stall", "%s: the driver keeps up again; %d bytes dropped so far", self.what,
                                  self.dropped_bytes)
        self._chunks.put_nowait(data)

    def _close(self, loop: asyncio.AbstractEventLoop) -> None:
        self._open.clear()
        if self._port is not None:
            try:
                loop.remove_reader(self._port.fileno())
            except (ValueError, OSError, serial.SerialException):
                pass
            try:
                self._port.close()
            except (OSError, serial.SerialException):
                pass
            self._port = None

    async def aclose(self) -> None:
        """Close the port now (the runtime calls this at shutdown, after cancelling run())."""
        self._close(asyncio.get_running_loop())

    async def wait_open(self) -> int:
        """Wait until the port is open; returns the current session number."""
        await self._open.wait()
        return self.session

    async def receive(self) -> bytes:
        """The next bytes that arrived (waits while the port is closed)."""
        return await self._chunks.get()

    async def write(self, data: bytes) -> None:
        """Send ``data``; raises BusDown when the port is not open."""
        if self._port is None:
            raise BusDown(f"{self.what} is not open")
        try:
            os.write(self._port.fileno(), data)
        except OSError as exc:
            self._lost.set()
            raise BusDown(f"{self.what}: {os_words(exc)}") from exc
        self.bytes_out += len(data)

    def health_of(self, device: str, address: int | str | None) -> Health | None:
        """Failing while the port is not open, with why and what to do; no opinion while it is (the driver knows the data)."""
        if self._port is not None:
            return None
        port = self.config.port or ""
        where = f"serial port {port} (bus {self.name}, {device})"
        if not os.path.exists(port):
            return Health(FAILING, f"{where} is not there (adapter unplugged?)",
                          "plug the adapter in and check its name with ocn-edge ports")
        why = self._reopen.reason
        if not why:
            return None  # opening: nothing has failed yet
        if "ermission" in why:
            step = "add the gateway's user to the dialout group"
        elif "busy" in why.lower():
            step = "another program holds the port: stop it (ocn-edge ports shows the ports)"
        else:
            step = "check the adapter and its cable; ocn-edge ports lists the ports"
        return Health(FAILING, f"{where} cannot be opened: {why}", step)

    def stats(self) -> dict[str, Any]:
        elapsed = max(1e-9, time.monotonic() - self._started)
        wire_s = (self.bytes_in + self.bytes_out) * bits_per_char(self.config) / self.config.baudrate
        return {
            "bus": self.name,
            "type": "serial",
            "open": self.is_open,
            "session": self.session,
            "losses": self.losses,
            "dropped_bytes": self.dropped_bytes,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "wire_utilisation": round(wire_s / elapsed, 4),
        }



_OPEN_WORDS = {  # why a serial port does not open, in our words (pyserial's sentence repeats the path and the errno)
    errno.ENOENT: "the port is not there (adapter unplugged?)",
    errno.ENODEV: "the port is not there (adapter unplugged?)",
    errno.EACCES: "permission denied (is the service's user in the dialout group?)",
    errno.EBUSY: "the port is in use by another program",
    errno.EAGAIN: "the port is in use by another program",  # EWOULDBLOCK: pyserial's exclusive lock is held elsewhere
}


def _reason(exc: BaseException) -> str:
    """Why the port did not open, by the OS error's number: never pyserial's text ("could not open port …: [Errno 2] …")."""
    if isinstance(exc, OSError) and isinstance(exc.errno, int):
        return _OPEN_WORDS.get(exc.errno) or os_words(exc)
    if isinstance(exc, ValueError):
        return "the port does not take these settings (baud rate, parity, stop bits or byte size)"
    return "the port does not open"

"""A virtual serial port: a real pseudo-terminal whose bytes are paced at the baud rate, and can be unplugged."""

from __future__ import annotations

import array
import asyncio
import fcntl
import os
import termios
import tty
from collections.abc import Callable
from pathlib import Path

__all__ = ["VirtualPort"]

# Bytes waiting unread in the gateway's input queue beyond which nobody is
# listening: a real UART with no reader loses them, so we discard them too.
_UNREAD_LIMIT = 1024


class VirtualPort:
    """The device end of a pty; the gateway opens `link` (a symlink to the pty) like /dev/ttyUSB0.

    Bytes written with :meth:`write` reach the gateway at the wire speed of
    `baudrate` with `bits_per_byte` bits per character (10 at 8N1).  Bytes the
    gateway writes are handed to `on_data`.  :meth:`unplug` closes the pty (the
    gateway's reads fail with EIO) and removes the symlink; :meth:`plug` makes a
    new pty and points the symlink at it.
    """

    def __init__(
        self, *, link: Path, baudrate: int, bits_per_byte: int = 10, on_data: Callable[[bytes], None] | None = None
    ) -> None:
        self.link = link
        self.baudrate = baudrate
        self.bits_per_byte = bits_per_byte
        self.on_data = on_data
        self.tty_path: str | None = None
        self._master: int | None = None
        self._slave: int | None = None
        self._line_free_at = 0.0
        self._write_lock = asyncio.Lock()

    @property
    def byte_time(self) -> float:
        """Seconds one character takes on the wire."""
        return self.bits_per_byte / self.baudrate

    @property
    def present(self) -> bool:
        """Whether the device is plugged in."""
        return self._master is not None

    def plug(self) -> None:
        """Create the pty (raw mode) and point the symlink at it."""
        if self._master is not None:
            return
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self.tty_path = os.ttyname(slave)
        tmp = self.link.with_name(self.link.name + ".new")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(self.tty_path)
        tmp.replace(self.link)  # atomic: a gateway never sees a half-made link
        asyncio.get_running_loop().add_reader(master, self._readable)

    def unplug(self) -> None:
        """Close the pty and remove the symlink, as when a USB adapter is pulled out."""
        if self._master is None:
            return
        asyncio.get_running_loop().remove_reader(self._master)
        self.link.unlink(missing_ok=True)
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None
        self.tty_path = None

    def _readable(self) -> None:
        assert self._master is not None
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError:
            # EIO: the slave side went away; the port stays present and waits for the next open.
            return
        if data and self.on_data is not None:
            self.on_data(data)

    def _discard_if_unheard(self) -> None:
        assert self._slave is not None
        waiting = array.array("i", [0])
        fcntl.ioctl(self._slave, termios.FIONREAD, waiting)
        if waiting[0] > _UNREAD_LIMIT:
            termios.tcflush(self._slave, termios.TCIFLUSH)

    async def write(self, data: bytes) -> None:
        """Send `data` paced at the baud rate: each byte arrives when its last bit would have."""
        if not data:
            return
        async with self._write_lock:
            loop = asyncio.get_running_loop()
            byte_time = self.byte_time
            start = max(loop.time(), self._line_free_at)
            sent = 0
            while sent < len(data):
                if self._master is None:
                    return  # unplugged mid-frame: the rest is lost, as on a real wire
                now = loop.time()
                due = min(len(data), int((now - start) / byte_time))
                if due > sent:
                    self._discard_if_unheard()
                    try:
                        os.write(self._master, data[sent:due])
                    except BlockingIOError:
                        if self._slave is not None:
                            termios.tcflush(self._slave, termios.TCIFLUSH)
                    sent = due
                if sent < len(data):
                    await asyncio.sleep(max(0.0, start + (sent + 1) * byte_time - loop.time()))
            self._line_free_at = start + len(data) * byte_time

    async def idle(self, seconds: float) -> None:
        """Keep the line silent for `seconds` after the last byte sent (inter-frame gap)."""
        loop = asyncio.get_running_loop()
        wait = self._line_free_at + seconds - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)

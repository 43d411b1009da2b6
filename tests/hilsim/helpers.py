"""Small gateway-side helpers for hil-sim tests: a raw serial end on a pty and a scenario file writer."""

from __future__ import annotations

import asyncio
import os
import termios
import tty
from pathlib import Path


def write_scenario(tmp_path: Path, text: str, name: str = "scenario.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


class RawPort:
    """The gateway's end of a simulated serial line, opened like /dev/ttyUSB0, read without blocking the loop."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        tty.setraw(self.fd)
        termios.tcflush(self.fd, termios.TCIOFLUSH)

    def close(self) -> None:
        os.close(self.fd)

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)

    async def read_for(self, seconds: float) -> bytes:
        """Everything that arrives within `seconds`."""
        out = bytearray()
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            out += self._read_now()
            await asyncio.sleep(0.002)
        return bytes(out + self._read_now())

    async def read_exactly(self, n: int, *, timeout: float = 3.0) -> tuple[bytes, list[float]]:
        """`n` bytes and the loop time each chunk arrived at (for wire-time checks)."""
        out = bytearray()
        stamps: list[float] = []
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while len(out) < n and loop.time() < end:
            chunk = self._read_now()
            if chunk:
                stamps.extend([loop.time()] * len(chunk))
                out += chunk
            else:
                await asyncio.sleep(0.0002)
        return bytes(out), stamps

    def _read_now(self) -> bytes:
        try:
            return os.read(self.fd, 4096)
        except BlockingIOError:
            return b""

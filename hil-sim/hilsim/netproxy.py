"""A TCP proxy in front of the hub on 127.0.0.1 that passes, delays, throttles, black-holes or cuts the uplink.

Modes follow a schedule given at start and can be switched by a test at any
time with :meth:`UplinkProxy.set_mode`:

- ``pass``: bytes flow both ways untouched.
- ``delay``: every chunk is held `delay` seconds in each direction (a long, slow path).
- ``throttle``: each direction flows at most `rate` bytes per second (a congested cellular link).
- ``blackhole``: connections are accepted and bytes are read, but nothing is forwarded or answered.
- ``cut``: open connections are reset and new ones are closed at once (link down).
- ``http503``: the hub seems overloaded: every request is answered ``503 Service Unavailable`` by the proxy.
- ``garbage``: something between gateway and hub mangles answers: every request gets bytes that are not HTTP.

Switching to ``cut``, ``http503`` or ``garbage`` resets the open connections, so a kept-alive
connection does not slip past the new mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MODES", "ProxyStep", "UplinkProxy"]

MODES = ("pass", "delay", "throttle", "blackhole", "cut", "http503", "garbage")

_ANSWERS = {
    "http503": b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 12\r\nConnection: close\r\n\r\noverloaded\r\n",
    "garbage": bytes(range(256)) * 4,
}

log = logging.getLogger("hilsim.netproxy")


@dataclass(frozen=True, slots=True)
class ProxyStep:
    """From `at` seconds after start, run in `mode` (with its `delay` seconds or `rate` bytes per second)."""

    at: float
    mode: str
    delay: float = 0.5
    rate: int = 4096

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"uplink proxy mode = {self.mode!r}: expected one of {', '.join(MODES)}")


class UplinkProxy:
    """Listens on 127.0.0.1 (ephemeral port) and forwards to `upstream_host`:`upstream_port`."""

    def __init__(self, *, upstream_host: str = "127.0.0.1", upstream_port: int,
                 schedule: Sequence[ProxyStep] = ()) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.schedule = sorted(schedule, key=lambda step: step.at)
        self.step = ProxyStep(0.0, "pass")
        self.port = 0
        self.connections = 0
        self.bytes_up = 0  # gateway -> hub, forwarded
        self.bytes_down = 0  # hub -> gateway, forwarded
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._scheduler: asyncio.Task[None] | None = None

    @property
    def mode(self) -> str:
        return self.step.mode

    @property
    def url(self) -> str:
        """The hub URL a gateway should use to go through the proxy."""
        return f"http://127.0.0.1:{self.port}/"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        if self.schedule:
            self._scheduler = asyncio.create_task(self._follow_schedule())

    async def stop(self) -> None:
        if self._scheduler is not None:
            self._scheduler.cancel()
        if self._server is not None:
            self._server.close()
        self._reset_all()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> UplinkProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def set_mode(self, mode: str, *, delay: float = 0.5, rate: int = 4096) -> None:
        """Switch mode now; `cut` also resets every open connection."""
        self.step = ProxyStep(0.0, mode, delay, rate)
        log.info("uplink proxy: %s", mode)
        if mode in ("cut", *_ANSWERS):
            self._reset_all()

    async def _follow_schedule(self) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        for step in self.schedule:
            await asyncio.sleep(max(0.0, start + step.at - loop.time()))
            self.set_mode(step.mode, delay=step.delay, rate=step.rate)

    def _reset_all(self) -> None:
        for writer in list(self._writers):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                # SO_LINGER 0: close with RST, as a dropped link looks to the other end.
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            writer.close()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode == "cut":
            self._writers.add(writer)
            self._reset_all()
            return
        self._writers.add(writer)
        if self.mode == "blackhole":
            await self._swallow(reader, writer)
            return
        if self.mode in _ANSWERS:
            await self._answer(reader, writer, _ANSWERS[self.mode])
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            writer.close()
            self._writers.discard(writer)
            return
        self._writers.add(up_writer)
        for source, sink, direction in ((reader, up_writer, "up"), (up_reader, writer, "down")):
            task = asyncio.create_task(self._pump(source, sink, direction))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _swallow(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while await reader.read(65536):
                pass
        writer.close()
        self._writers.discard(writer)

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: bytes) -> None:
        """Answer the first request on the connection with `answer` (read up to the end of its head), then close."""
        with contextlib.suppress(OSError, asyncio.CancelledError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            async with asyncio.timeout(10):
                await reader.readuntil(b"\r\n\r\n")
            self.bytes_down += len(answer)
            writer.write(answer)
            await writer.drain()
        writer.close()
        self._writers.discard(writer)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, direction: str) -> None:
        try:
            while chunk := await source.read(65536):
                step = self.step
                if step.mode == "blackhole":
                    continue
                if direction == "up":
                    self.bytes_up += len(chunk)
                else:
                    self.bytes_down += len(chunk)
                if step.mode == "delay":
                    await asyncio.sleep(step.delay)
                if step.mode == "throttle":
                    for offset in range(0, len(chunk), max(1, step.rate // 10)):
                        sink.write(chunk[offset : offset + max(1, step.rate // 10)])
                        await sink.drain()
                        await asyncio.sleep(0.1)
                    continue
                sink.write(chunk)
                await sink.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.close()
            self._writers.discard(sink)

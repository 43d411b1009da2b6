"""Bus owners: one task per physical bus (a serial port or a Modbus TCP host:port) through which every transaction goes."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Protocol

import serial

from drivers.modbus.adapter import ExceptionReply, GarbledReply, LinkDown, LinkError, ModbusLink, NoReply

__all__ = [
    "BusConfigLike",
    "BusDown",
    "ExceptionReply",
    "GarbledReply",
    "LinkError",
    "ModbusBus",
    "NoReply",
    "SerialBus",
    "UnitBackingOff",
    "create_bus",
]

log = logging.getLogger("ocn.bus")

# A unit that fails again within this long of recovering is flapping: logged once, not per transition.
FLAP_S = 60.0


class BusConfigLike(Protocol):
    """What a bus owner needs from the gateway config's ``[[buses]]`` entry."""

    name: str
    type: str
    port: str
    baudrate: int
    parity: str
    stopbits: int
    bytesize: int
    host: str
    tcp_port: int
    timeout: float
    frame_gap: float


class BusDown(LinkDown):
    """The bus's port or connection is not open right now; the owner is reopening it."""


class UnitBackingOff(LinkError):
    """The unit stopped answering; it is skipped until its backoff ends, so it cannot hold up the bus."""


def create_bus(config: BusConfigLike, *, reopen_max: float = 30.0, unit_backoff_max: float = 60.0) -> ModbusBus | SerialBus:
    """The bus owner for one ``[[buses]]`` entry; run its ``run()`` as a task for the gateway's lifetime."""
    if config.type in ("modbus-rtu", "modbus-tcp"):
        return ModbusBus(config, reopen_max=reopen_max, unit_backoff_max=unit_backoff_max)
    if config.type == "serial":
        return SerialBus(config, reopen_max=reopen_max)
    raise ValueError(f"bus {config.name!r}: type = {config.type!r}: expected 'serial', 'modbus-rtu' or 'modbus-tcp'")


def _bits_per_char(config: BusConfigLike) -> int:
    return 1 + config.bytesize + (0 if config.parity == "N" else 1) + int(config.stopbits)


class _Reopener:
    """Capped exponential backoff for reopening a port, logging once on loss and once on recovery."""

    def __init__(self, what: str, reopen_max: float) -> None:
        self.what = what
        self.reopen_max = reopen_max
        self.down_since: float | None = None
        self.delay = 0.0

    def failed(self, reason: str) -> float:
        """Record a failed open (or a loss); returns how long to wait before the next try."""
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning("%s unavailable: %s; reopening with backoff up to %gs", self.what, reason, self.reopen_max)
        self.delay = min(self.reopen_max, max(0.1, self.delay * 2))
        return self.delay

    def opened(self) -> None:
        if self.down_since is not None:
            log.info("%s back after %.1fs", self.what, time.monotonic() - self.down_since)
        self.down_since = None
        self.delay = 0.0


@dataclass(slots=True)
class _Unit:
    requests: int = 0
    replies: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    exceptions: int = 0
    failures_in_a_row: int = 0
    skip_until: float = 0.0
    recovered_at: float = -FLAP_S
    last_failure_at: float = 0.0
    flapping: bool = False

    @property
    def state(self) -> str:
        return "backing-off" if self.failures_in_a_row else "intermittent" if self.flapping else "ok"


class ModbusBus:
    """Owns one Modbus line: serialises transactions, paces frames, isolates silent units, keeps statistics."""

    def __init__(self, config: BusConfigLike, *, reopen_max: float = 30.0, unit_backoff_max: float = 60.0) -> None:
        self.config = config
        self.name = config.name
        self.timeout = float(config.timeout)
        self.frame_gap = float(config.frame_gap)
        self.unit_backoff_max = unit_backoff_max
        if config.type == "modbus-tcp":
            self.link = ModbusLink("tcp", host=config.host, tcp_port=config.tcp_port, timeout=self.timeout)
            self.what = f"Modbus TCP bus {config.name!r} ({config.host}:{config.tcp_port})"
        else:
            self.link = ModbusLink(
                "rtu", port=config.port, baudrate=config.baudrate, parity=config.parity,
                stopbits=config.stopbits, bytesize=config.bytesize, timeout=self.timeout,
            )
            self.what = f"Modbus RTU bus {config.name!r} ({config.port})"
        self._reopen = _Reopener(self.what, reopen_max)
        self._lock = asyncio.Lock()
        self._open = asyncio.Event()
        self._last_frame_end = 0.0
        self._units: dict[int, _Unit] = {}
        self._started = time.monotonic()
        self._busy_s = 0.0
        self.requests = 0
        self.registers_read = 0
        self.registers_used = 0

    async def run(self) -> None:
        """Keep the link open until cancelled, reopening it with capped backoff when it drops."""
        try:
            while True:
                try:
                    await self.link.open()
                except LinkDown as exc:
                    await asyncio.sleep(self._reopen.failed(str(exc)))
                    continue
                self._reopen.opened()
                self._open.set()
                await self.link.wait_lost()
                self._open.clear()
                self._reopen.failed("connection lost")
                self.link.close()
        finally:
            self._open.clear()
            self.link.close()

    async def wait_open(self) -> None:
        """Wait until the line is open (drivers call this once before their first poll)."""
        await self._open.wait()

    async def aclose(self) -> None:
        """Close the line now (the runtime calls this at shutdown, after cancelling run())."""
        self._open.clear()
        self.link.close()

    async def read(self, unit: int, function: str, address: int, count: int, *,
                   timeout: float | None = None, used: int | None = None) -> list[int] | list[bool]:
        """Read ``count`` registers (bits for coil/discrete) of ``unit`` from ``address``.

        Raises :class:`BusDown` when the line is not open, :class:`UnitBackingOff`
        while a silent unit waits out its backoff, or the adapter's ``NoReply``,
        ``GarbledReply`` or ``ExceptionReply``.  ``used`` says how many of the
        addresses carry wanted values (for the registers-read-vs-used statistic).
        """
        state = self._units.setdefault(unit, _Unit())
        if time.monotonic() < state.skip_until:
            raise UnitBackingOff(f"unit {unit} is silent; next try in {state.skip_until - time.monotonic():.1f}s")
        async with self._lock:
            if not self.link.connected:
                raise BusDown(f"{self.what} is not open")
            # Re-check after waiting for the lock: the unit may have failed meanwhile.
            if time.monotonic() < state.skip_until:
                raise UnitBackingOff(f"unit {unit} is silent; next try in {state.skip_until - time.monotonic():.1f}s")
            gap = self._last_frame_end + self.frame_gap - time.monotonic()
            if gap > 0:
                await asyncio.sleep(gap)
            began = time.monotonic()
            state.requests += 1
            self.requests += 1
            # The timeout is how long the unit may take to answer; the bytes' own time on a slow line is added.
            wait = (timeout or self.timeout) + self._wire_time(function, count)
            try:
                values = await self.link.read(function, unit, address, count, timeout=wait)
            except NoReply as exc:
                state.timeouts += 1
                self._unit_failed(unit, state, exc)
                raise
            except GarbledReply as exc:
                state.crc_errors += 1
                self._unit_failed(unit, state, exc)
                raise
            except ExceptionReply:
                state.exceptions += 1
                self._unit_answered(unit, state)
                raise
            finally:
                self._last_frame_end = time.monotonic()
                self._busy_s += self._last_frame_end - began
            self._unit_answered(unit, state)
            self.registers_read += count
            self.registers_used += count if used is None else used
            return values

    def _wire_time(self, function: str, count: int) -> float:
        """Seconds an RTU read request and its reply spend on the wire (0 for TCP)."""
        if self.config.type != "modbus-rtu":
            return 0.0
        data = (count + 7) // 8 if function in ("coil", "discrete") else 2 * count
        request, reply = 8, 5 + data  # unit, function, address, count, CRC / unit, function, byte count, data, CRC
        return (request + reply) * _bits_per_char(self.config) / self.config.baudrate

    def _unit_failed(self, unit: int, state: _Unit, why: LinkError) -> None:
        now = time.monotonic()
        state.last_failure_at = now
        if state.failures_in_a_row == 0 and not state.flapping:
            if now - state.recovered_at < FLAP_S:
                # It failed again soon after recovering: say so once, then stay quiet until it is steady.
                state.flapping = True
                log.warning("%s: unit %d answers only intermittently (%s); next note when steady for %gs",
                            self.what, unit, why, FLAP_S)
            else:
                log.warning("%s: unit %d stopped answering (%s); backing off up to %gs", self.what, unit, why,
                            self.unit_backoff_max)
        state.failures_in_a_row += 1
        backoff = min(self.unit_backoff_max, self.timeout * 2 ** (state.failures_in_a_row - 1))
        state.skip_until = now + backoff

    def _unit_answered(self, unit: int, state: _Unit) -> None:
        now = time.monotonic()
        state.replies += 1
        if state.flapping:
            if now - state.last_failure_at >= FLAP_S:
                log.info("%s: unit %d steady again", self.what, unit)
                state.flapping = False
        elif state.failures_in_a_row:
            log.info("%s: unit %d answers again", self.what, unit)
            state.recovered_at = now
        state.failures_in_a_row = 0
        state.skip_until = 0.0

    def stats(self) -> dict[str, Any]:
        """Counters since start, plus an estimate of how busy the line is."""
        elapsed = max(1e-9, time.monotonic() - self._started)
        units = {u: {"requests": s.requests, "replies": s.replies, "timeouts": s.timeouts,
                     "crc_errors": s.crc_errors, "exceptions": s.exceptions, "state": s.state}
                 for u, s in sorted(self._units.items())}
        out: dict[str, Any] = {
            "bus": self.name,
            "type": self.config.type,
            "open": self.link.connected,
            "requests": self.requests,
            "timeouts": sum(s.timeouts for s in self._units.values()),
            "crc_errors": sum(s.crc_errors for s in self._units.values()),
            "exceptions": sum(s.exceptions for s in self._units.values()),
            "bytes_out": self.link.bytes_out,
            "bytes_in": self.link.bytes_in,
            "busy_s": round(self._busy_s, 6),
            "utilisation": round(self._busy_s / elapsed, 4),
            "registers_read": self.registers_read,
            "registers_used": self.registers_used,
            "units": units,
        }
        if self.config.type == "modbus-rtu":
            wire_s = (self.link.bytes_out + self.link.bytes_in) * _bits_per_char(self.config) / self.config.baudrate
            out["wire_utilisation"] = round(wire_s / elapsed, 4)
        return out


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
        self._dropping = False
        self._reopen = _Reopener(self.what, reopen_max)
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
            if not self._dropping:
                self._dropping = True
                log.warning("%s: the driver is not keeping up; dropping the oldest received bytes", self.what)
        elif self._dropping and self._chunks.qsize() < self._chunks.maxsize // 2:
            self._dropping = False
            log.info("%s: the driver keeps up again; %d bytes dropped so far", self.what, self.dropped_bytes)
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
            raise BusDown(f"{self.what}: {exc.strerror}") from exc
        self.bytes_out += len(data)

    def stats(self) -> dict[str, Any]:
        elapsed = max(1e-9, time.monotonic() - self._started)
        wire_s = (self.bytes_in + self.bytes_out) * _bits_per_char(self.config) / self.config.baudrate
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


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc).split(":", 1)[0] if str(exc) else type(exc).__name__

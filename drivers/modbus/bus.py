"""The Modbus bus owner: one task per RTU line or TCP host:port (Modbus TCP or RTU over TCP), through which every transaction goes."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from drivers.health import DEGRADED, FAILING, HEALTHY, Health, HealthWord
from drivers.line import BusConfigLike, Reopener, bits_per_char
from drivers.modbus.adapter import ExceptionReply, GarbledReply, LinkDown, LinkError, ModbusLink, NoReply, reply_data_bytes
from drivers.sdk import BusDown
from edge.util.backoff import Backoff
from edge.util.logonce import LogOnce

__all__ = ["BUSY_RETRIES", "FLAP_S", "FreshReads", "ModbusBus", "ModbusBusDown", "ScanAnswer", "ScanResult", "ScanRunning",
           "UnitBackingOff"]

log = logging.getLogger("ocn.bus")

# A unit that fails again within this long of recovering is flapping: logged once, not per transition.
FLAP_S = 60.0

# Exception 6 (server device busy) says "ask again shortly": a meter busy with its own measurement
# cycle or a display refresh answers the next try.  A few tries, the first after 50 ms and doubling
# (50, 100, 200 ms: under 0.4 s in all, well within any poll interval), then the reply is reported
# as any other exception.  The line is free for other units between tries.
BUSY = 6
BUSY_RETRIES = 3
BUSY_FIRST_S = 0.05
BUSY_MAX_S = 0.2


class ModbusBusDown(BusDown, LinkDown):
    """The line is not open right now: a ``BusDown`` for the SDK, a ``LinkDown`` for a Modbus driver's handling."""


class UnitBackingOff(LinkError):
    """The unit stopped answering; it is skipped until its backoff ends, so it cannot hold up the bus."""


class ScanRunning(Exception):
    """A scan of this bus is under way already: one at a time, so two cannot take the line from the devices."""


@dataclass(frozen=True, slots=True)
class ScanAnswer:
    """A unit that answered a scan probe: with the value read, or with an exception (it is there all the same)."""

    unit: int
    answer: str
    reply_ms: float


@dataclass(slots=True)
class ScanResult:
    """What a scan found: the units that answered, those whose replies were corrupt, and why it ended early if it did."""

    tried: list[int] = field(default_factory=list)
    answers: list[ScanAnswer] = field(default_factory=list)
    garbled: list[int] = field(default_factory=list)
    lost: str = ""


@dataclass(slots=True)
class _Unit:
    backoff: Backoff
    requests: int = 0
    replies: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    exceptions: int = 0
    skip_until: float = 0.0
    why: str = ""  # the last failure, for the health diagnosis
    answered_again_at: float | None = None  # when it last answered after failing (a failure soon after is a flap)


class ModbusBus:
    """Owns one Modbus line: serialises transactions, paces frames, isolates silent units, keeps statistics."""

    def __init__(self, config: BusConfigLike, *, reopen_max: float = 30.0, unit_backoff_max: float = 60.0,
                 busy_retries: int = BUSY_RETRIES) -> None:
        self.config = config
        self.name = config.name
        self.timeout = float(config.timeout)
        self.frame_gap = float(config.frame_gap)
        self.unit_backoff_max = unit_backoff_max
        self.busy_retries = busy_retries
        if config.type == "modbus-tcp":
            self.link = ModbusLink("tcp", host=config.host or "", tcp_port=config.tcp_port, timeout=self.timeout)
            self.what = f"Modbus TCP bus {config.name!r} ({config.host}:{config.tcp_port})"
        elif config.type == "modbus-rtu-over-tcp":
            self.link = ModbusLink("rtu-over-tcp", host=config.host or "", tcp_port=config.tcp_port,
                                   timeout=self.timeout)
            self.what = f"Modbus RTU-over-TCP bus {config.name!r} ({config.host}:{config.tcp_port})"
        else:
            self.link = ModbusLink(
                "rtu", port=config.port or "", baudrate=config.baudrate, parity=config.parity,
                stopbits=config.stopbits, bytesize=config.bytesize, timeout=self.timeout,
            )
            self.what = f"Modbus RTU bus {config.name!r} ({config.port})"
        self._reopen = Reopener(self.what, reopen_max)
        self._notes = LogOnce(log, flap_s=FLAP_S)
        self._lock = asyncio.Lock()
        self._open = asyncio.Event()
        self._last_frame_end = 0.0
        self._units: dict[int, _Unit] = {}
        self._devices: dict[int, list[str]] = {}
        self._started = time.monotonic()
        self._busy_s = 0.0
        self.requests = 0
        self.registers_read = 0
        self.registers_used = 0
        self.busy_retried = 0
        self.scan_probes = 0
        self._scanning = False

    def name_unit(self, unit: int, device: str) -> None:
        """Say which configured device ``unit`` is, so the log and the health name it (``unit 11 on rs485-1 (weather-1)``)."""
        names = self._devices.setdefault(unit, [])
        if device not in names:
            names.append(device)

    def _unit_name(self, unit: int) -> str:
        names = self._devices.get(unit)
        return f"unit {unit} on {self.name}" + (f" ({', '.join(names)})" if names else "")

    def _advice(self, unit: int, state: _Unit) -> tuple[str, str, HealthWord]:
        """(what happened, the next step, its health word) for a unit that failed its last request."""
        who = self._unit_name(unit)
        # Behind an RTU-over-TCP converter is an RS-485 line: its faults are the line's, set on the converter.
        rtu = self.config.type in ("modbus-rtu", "modbus-rtu-over-tcp")
        check_unit = ("check the unit id with ocn-edge scan, baud rate and parity, A/B wiring" if rtu
                      else "check the unit id with ocn-edge scan and the device's Modbus TCP settings")
        if state.replies == 0:
            if state.crc_errors and not state.timeouts:
                return (f"{who} has never answered with a valid frame ({state.why})",
                        "check baud rate and parity, A/B wiring and termination" if rtu
                        else "check that the device speaks Modbus TCP on this port", FAILING)
            if state.why.startswith("exception code"):
                return (f"{who} has never answered: the Modbus gateway cannot reach it ({state.why})",
                        "check the unit id with ocn-edge scan and the wiring behind the converter", FAILING)
            return f"{who} has never answered ({state.why})", check_unit, FAILING
        if self._notes.flapping(unit):  # said once as intermittent; its readings mostly come
            return (f"{who} answers only intermittently ({state.why})",
                    "check termination, A/B wiring and cable length" if rtu else "check the network path", DEGRADED)
        return (f"{who} stopped answering ({state.why})",
                "check power to the unit and the A/B wiring" if rtu else "check power to the unit and the network path",
                FAILING)

    def health_of(self, device: str, address: int | str | None) -> Health | None:
        """How ``device`` (unit ``address``) is doing as far as this bus can tell; None: nothing known yet."""
        if not self.link.connected:
            if not self._reopen.reason:
                return None  # opening: nothing has failed yet
            why = self._reopen.reason
            where = self.what
            step = ("check the adapter is plugged in (ocn-edge ports) and no other program holds the port"
                    if self.config.type == "modbus-rtu" else "check the converter's address, power and network")
            return Health(FAILING, f"{where} for {device} is not open: {why}", step)
        if not isinstance(address, int):
            return None
        state = self._units.get(address)
        if state is None:
            return None
        if state.backoff.attempts or self._notes.flapping(address):
            cause, step, word = self._advice(address, state)
            return Health(word, cause, step)
        return HEALTHY

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
        A unit answering "busy" (exception 6) is asked again up to ``busy_retries``
        times, after a short backoff, before its ExceptionReply is raised.
        """
        return await self._read(unit, function, address, count, timeout=timeout, used=used, fresh=False)

    def fresh_reads(self) -> FreshReads:
        """This bus as a technician's one-off read sees it: a unit waiting out its backoff is asked anyway."""
        return FreshReads(self)

    async def _read(self, unit: int, function: str, address: int, count: int, *,
                    timeout: float | None, used: int | None, fresh: bool) -> list[int] | list[bool]:
        busy = None  # made at the first "busy" only: a Backoff seeds a Random, which would cost every request
        while True:
            try:
                return await self._transact(unit, function, address, count, timeout=timeout, used=used, fresh=fresh)
            except ExceptionReply as exc:
                if busy is None:
                    busy = Backoff(BUSY_FIRST_S, BUSY_MAX_S, jitter=0)
                if exc.code != BUSY or busy.attempts >= self.busy_retries:
                    raise
            self.busy_retried += 1
            await asyncio.sleep(busy.next())

    # A turn on the line is one request and its reply, under the line's lock:
    #     async with self._lock:
    #         began = await self._take_turn()
    #         try: ... finally: self._end_turn(began)
    # Two plain methods rather than an async context manager of its own: that cost two generator steps
    # and an object per request, a visible share of a 20-meter bus's CPU (py-spy).

    async def _take_turn(self, unit: int = 0, *, fresh: bool = True) -> float:
        """Under the lock: refuse if the line is closed or ``unit`` is backing off, wait out the frame gap; when it began."""
        if not self.link.connected:
            raise ModbusBusDown(f"{self.what} is not open")
        if not fresh:
            self._not_backing_off(unit)
        gap = self._last_frame_end + self.frame_gap - time.monotonic()
        if gap > 0:
            await asyncio.sleep(gap)
        return time.monotonic()

    def _end_turn(self, began: float) -> None:
        self._last_frame_end = time.monotonic()
        self._busy_s += self._last_frame_end - began

    def _not_backing_off(self, unit: int) -> None:
        state = self._units.get(unit)
        if state is not None and time.monotonic() < state.skip_until:
            raise UnitBackingOff(f"unit {unit} is silent; next try in {state.skip_until - time.monotonic():.1f}s")

    async def _transact(self, unit: int, function: str, address: int, count: int, *,
                        timeout: float | None, used: int | None, fresh: bool) -> list[int] | list[bool]:
        """One request and its reply, under the line's lock; ``fresh`` asks a unit that is backing off all the same."""
        state = self._units.get(unit)
        if state is None:
            # No jitter: the units share one line and one lock, so they cannot retry in step anyway.
            state = self._units[unit] = _Unit(Backoff(self.timeout, self.unit_backoff_max, jitter=0))
        if not fresh:
            self._not_backing_off(unit)
        # Checked again once the line is ours: the unit may have failed meanwhile.
        async with self._lock:
            began = await self._take_turn(unit, fresh=fresh)
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
                self._end_turn(began)
        self._unit_answered(unit, state)
        self.registers_read += count
        self.registers_used += count if used is None else used
        return values

    async def scan(self, units: Sequence[int], function: str, address: int, *, timeout: float) -> ScanResult:
        """Probe each of ``units`` with one small read, between the devices' polls; who answers, and how.

        A probe is no device's request: it changes no unit's state, health or log, only the line's
        statistics (``scan_probes``).  After each probe the line is left to the devices for at
        least as long as the probe held it, so a scan takes at most half the line.  One scan at a
        time (:class:`ScanRunning` otherwise).
        """
        if self._scanning:
            raise ScanRunning(f"{self.what} is being scanned already; wait for that scan to end")
        self._scanning = True
        result = ScanResult()
        held = 0.0
        try:
            for i, unit in enumerate(units):
                if i:
                    # The line to the devices' polls for at least as long as the last probe held it.
                    await asyncio.sleep(max(self.frame_gap, held))
                result.tried.append(unit)
                began = time.monotonic()
                try:
                    answer = await self._probe(unit, function, address, timeout)
                except NoReply:
                    pass
                except GarbledReply:
                    result.garbled.append(unit)
                except LinkDown as exc:
                    result.lost = str(exc)
                    break
                else:
                    result.answers.append(answer)
                finally:
                    held = time.monotonic() - began
        finally:
            self._scanning = False
        return result

    async def _probe(self, unit: int, function: str, address: int, timeout: float) -> ScanAnswer:
        async with self._lock:
            began = await self._take_turn()
            self.scan_probes += 1
            try:
                values = await self.link.read(function, unit, address, 1, timeout=timeout + self._wire_time(function, 1))
            except ExceptionReply as exc:
                answer = f"exception {exc.code}: {exc.meaning}"
            else:
                answer = f"{function} {address} = {values[0]}"
            finally:
                self._end_turn(began)
            return ScanAnswer(unit, answer, round((time.monotonic() - began) * 1000, 1))

    def _wire_time(self, function: str, count: int) -> float:
        """Seconds an RTU read request and its reply spend on the wire (0 for TCP)."""
        if self.config.type != "modbus-rtu":
            return 0.0
        request, reply = 8, 5 + reply_data_bytes(function, count)  # unit, function, address, count, CRC / unit, function, byte count, data, CRC
        return (request + reply) * bits_per_char(self.config) / self.config.baudrate

    def _unit_failed(self, unit: int, state: _Unit, why: LinkError) -> None:
        state.why = str(why)
        cause, step, _ = self._advice(unit, state)
        # Silence is an error (the device delivers nothing); a unit that fails again within FLAP_S of
        # answering again is noted as intermittent instead, a warning: its readings mostly come.
        flap = state.answered_again_at is not None and time.monotonic() - state.answered_again_at < FLAP_S
        if not self._notes.failure(unit, "%s: %s; backing off up to %gs", cause, step, self.unit_backoff_max,
                                   level=logging.WARNING if flap else logging.ERROR,
                                   intermittent=("%s answers only intermittently (%s); next note when steady for %gs",
                                                 self._unit_name(unit), why, FLAP_S)):
            # Said once already; at debug each failure is there, with its time, for whoever hunts an intermittent.
            log.debug("%s failed again (%s)", self._unit_name(unit), why)
        state.skip_until = time.monotonic() + state.backoff.next()

    def _unit_answered(self, unit: int, state: _Unit) -> None:
        state.replies += 1
        failing = self._notes.failing(unit)
        if failing:
            state.answered_again_at = time.monotonic()
        # recovered() has nothing to do for a unit neither failing nor flapping: its names are not built then.
        if failing or self._notes.flapping(unit):
            self._notes.recovered(unit, "%s answers again", self._unit_name(unit),
                                  steady=("%s steady again", self._unit_name(unit)))
        state.backoff.reset()
        state.skip_until = 0.0

    def _unit_state(self, unit: int, state: _Unit) -> str:
        return "backing-off" if state.backoff.attempts else "intermittent" if self._notes.flapping(unit) else "ok"

    def stats(self) -> dict[str, Any]:
        """Counters since start, plus an estimate of how busy the line is."""
        elapsed = max(1e-9, time.monotonic() - self._started)
        units = {u: {"requests": s.requests, "replies": s.replies, "timeouts": s.timeouts,
                     "crc_errors": s.crc_errors, "exceptions": s.exceptions, "state": self._unit_state(u, s)}
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
            "busy_retries": self.busy_retried,
            "scan_probes": self.scan_probes,
            "units": units,
        }
        if self.config.type == "modbus-rtu":
            wire_s = (self.link.bytes_out + self.link.bytes_in) * bits_per_char(self.config) / self.config.baudrate
            out["wire_utilisation"] = round(wire_s / elapsed, 4)
        return out


class FreshReads:
    """A bus owner seen through a technician's one-off read ("read now"): the same line, lock and statistics,
    but a unit waiting out its backoff is asked at once, since the technician may just have fixed its wiring."""

    def __init__(self, bus: ModbusBus) -> None:
        self._bus = bus

    async def wait_open(self) -> None:
        await self._bus.wait_open()

    async def read(self, unit: int, function: str, address: int, count: int, *,
                   timeout: float | None = None, used: int | None = None) -> list[int] | list[bool]:
        return await self._bus._read(unit, function, address, count, timeout=timeout, used=used, fresh=True)

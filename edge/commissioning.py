"""Commissioning through the running gateway's bus owners: "read this device once" and "scan this bus".

Both run inside the gateway, so neither opens a port a second time.  A Modbus device's read plan
is queued on its running bus owner between the normal polls (a unit waiting out its backoff is
asked at once: the technician may just have fixed it); a streaming device shows the next frames
its running driver decodes, within a bounded wait; a scan probes unit ids through the same bus
owner with short timeouts, a bounded number per request, one scan per bus at a time, leaving the
line to the polls at least half the time (`ModbusBus.scan`).

What comes back shows a value only for a channel the policy releases and that is not personal;
every other channel is listed as withheld, with no value, even to the technician.  The sentences
(`diagnose`, `stream_diagnosis`) are the ones `ocn-edge read` prints.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from drivers.buses import SerialBus, is_modbus
from edge.devices import Device, Devices
from edge.privacy import Policy
from edge.privacy.rules import kind_of
from edge.protocol.types import Channel, Reading

if TYPE_CHECKING:
    from drivers.modbus.bus import ModbusBus

__all__ = [
    "FUNCTIONS",
    "READ_WAIT_S",
    "SCAN_MAX_UNITS",
    "Commissioning",
    "CommissioningError",
    "gather_frames",
    "parse_register",
    "parse_units",
    "shown_value",
    "stream_diagnosis",
    "withheld_because",
]

log = logging.getLogger("ocn.commissioning")

FUNCTIONS = ("holding", "input", "coil", "discrete")
SCAN_MAX_UNITS = 64  # per request: at a 0.3 s timeout a scan of silent ids holds the request under 40 s
SCAN_TIMEOUT_S = (0.05, 2.0)
SCAN_DEFAULT_TIMEOUT_S = 0.3
READ_WAIT_S = (0.5, 30.0)
PERSONAL = "personal"
NOT_RELEASED = "not released by the policy"


class CommissioningError(Exception):
    """A request the gateway cannot carry out; ``status`` is the HTTP status the local API answers with."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# --- shared with `ocn-edge read` and `scan` -------------------------------------------------------

def parse_units(text: str, *, field: str = "--units") -> list[int]:
    """'1-247', '1,2,10-20' -> unit ids; ValueError naming ``field`` otherwise."""
    units: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        if not first.isdigit() or (last and not last.isdigit()):
            raise ValueError(f"{field} {text!r}: expected ids like '1-247' or '1,2,10-20'")
        lo, hi = int(first), int(last or first)
        if not 1 <= lo <= hi <= 247:
            raise ValueError(f"{field} {text!r}: unit ids are 1..247")
        units.extend(range(lo, hi + 1))
    return units


def parse_register(text: str, *, field: str = "--register") -> tuple[str, int]:
    """'holding:0' -> ('holding', 0); ValueError naming ``field`` otherwise."""
    function, _, address = text.partition(":")
    if function not in FUNCTIONS or not address.isdigit() or int(address) > 0xFFFF:
        raise ValueError(f"{field} {text!r}: expected FUNCTION:ADDRESS, e.g. holding:0 or input:0")
    return function, int(address)


def withheld_because(channel: Channel, policy: Policy | None) -> str | None:
    """Why a channel's value is not shown to the technician, or None when it may be.

    Personal: declared so by its driver, or decided by a rule made for personal data
    (pseudonymize, count_distinct, generalize_location): the raw value is what that rule hides.
    Without a policy nothing is released (default deny), so nothing shows.
    """
    rule = policy.rule_for(channel.id) if policy is not None else None
    kind = kind_of(rule) if rule is not None else None
    if channel.personal or (kind is not None and kind.releases and kind.safe_for_personal):
        return PERSONAL
    if kind is None or not kind.releases:
        return NOT_RELEASED
    return None


def shown_value(reading: Reading, channel: Channel | None) -> str:
    """The value as a technician reads it: personal values masked, numbers to the channel's resolution."""
    if channel is not None and channel.personal:
        return "<personal value, not shown>"
    if isinstance(reading.value, float) and channel is not None and channel.resolution:
        decimals = max(0, -math.floor(math.log10(channel.resolution)))
        return f"{reading.value:.{decimals}f}"
    return str(reading.value)


async def gather_frames(source: asyncio.Queue[Reading], channels: Iterable[str], wait: float) -> list[Reading]:
    """Readings from ``source`` until every channel was seen, or ~1.2 s of frames after the first, or ``wait`` s."""
    wanted = set(channels)
    got: list[Reading] = []
    deadline = time.monotonic() + wait
    first_at: float | None = None
    while True:
        now = time.monotonic()
        # Not every frame fills every channel (GGA vs RMC, a pedestrian counter with nobody around).
        until = deadline if first_at is None else min(deadline, first_at + 1.2)
        if now >= until or (got and {r.channel for r in got} >= wanted):
            return got
        try:
            reading = await asyncio.wait_for(source.get(), until - now)
        except TimeoutError:
            return got
        got.append(reading)
        if first_at is None:
            first_at = time.monotonic()


def stream_diagnosis(bytes_in: int, stats: Mapping[str, Any], wait: float) -> str:
    """Why a streaming device gave no reading in ``wait`` s, from the bytes its port received and its decoder's counters."""
    if not bytes_in:
        return (f"nothing received in {wait:g} s: check the port, the wiring (TX/RX crossed?) and that the sensor "
                "has power")
    if stats.get("frames", 0) == 0 and (stats.get("garbage_bytes") or stats.get("bad_checksum")):
        return (f"{bytes_in} bytes received but no valid frame: most likely the wrong baud rate, "
                "or a different device on this port")
    return f"no readings in {wait:g} s (decoder counters: {dict(stats)})"


def _line(bus: ModbusBus) -> str:
    c = bus.config
    if c.type == "modbus-rtu":
        return f"{c.port} at {c.baudrate} {c.bytesize}{c.parity}{c.stopbits}"
    return f"{c.host}:{c.tcp_port}" + (" (RTU frames over TCP)" if c.type == "modbus-rtu-over-tcp" else "")


def _counters(driver: object) -> dict[str, int]:
    stats = getattr(driver, "stats", None)
    out = stats() if callable(stats) else {}
    return {k: v for k, v in out.items() if isinstance(v, int)} if isinstance(out, Mapping) else {}


# --- the gateway's side ---------------------------------------------------------------------------

class Commissioning:
    """The two commissioning actions of one running gateway, over its devices and the policy in force."""

    def __init__(self, devices: Callable[[], Devices | None], policy: Callable[[], Policy | None]) -> None:
        self._devices = devices
        self._policy = policy
        self._reading: set[str] = set()

    def _running(self) -> Devices:
        devices = self._devices()
        if devices is None:
            raise CommissioningError("the gateway is not running its devices yet; try again in a moment", status=503)
        return devices

    def _device(self, devices: Devices, name: str) -> Device:
        for device in devices.devices:
            if device.config.name == name:
                return device
        known = ", ".join(d.config.name for d in devices.devices) or "none"
        raise CommissioningError(f"no enabled device named {name!r} (devices: {known})", status=404)

    async def read_device(self, name: str, *, wait: float = 5.0) -> dict[str, Any]:
        """Read ``name`` once through its bus owner: its released values with units, what is withheld, and what went wrong."""
        devices = self._running()
        device = self._device(devices, name)
        if not READ_WAIT_S[0] <= wait <= READ_WAIT_S[1]:
            raise CommissioningError(f"wait = {wait!r}: expected {READ_WAIT_S[0]:g}..{READ_WAIT_S[1]:g} seconds")
        if name in self._reading:
            raise CommissioningError(f"{name} is being read already; wait for that reading", status=409)
        self._reading.add(name)
        try:
            readings, problems = await self._read(devices, device, wait)
        finally:
            self._reading.discard(name)
        return self._document(device, readings, problems)

    async def _read(self, devices: Devices, device: Device, wait: float) -> tuple[list[Reading], list[str]]:
        bus = device.context.bus
        if is_modbus(bus):
            # The Modbus stack is loaded: the bus is one of its owners.
            from drivers.modbus.diagnosis import diagnose
            from drivers.modbus.driver import ModbusDriver

            driver = device.driver_cls(dataclasses.replace(device.context, bus=bus.fresh_reads()))
            if isinstance(driver, ModbusDriver):
                result = await driver.poll()
                problems = [diagnose(exc, driver.unit, req) for req, exc in result.failures]
                if result.skipped:
                    problems.append(f"{len(result.skipped)} more request(s) not sent after the unit went silent")
                return result.readings, problems
        # A streaming device, or a driver without a one-off poll: the next readings the running driver emits.
        runner = device.runner
        before_bytes = bus.bytes_in if isinstance(bus, SerialBus) else 0
        before = _counters(runner.driver if runner is not None else None)
        with devices.tap(device.config.name) as queue:
            readings = await gather_frames(queue, (c.id for c in device.channels), wait)
        if readings:
            return readings, []
        health = device.health()
        if isinstance(bus, SerialBus) and not bus.is_open and health.cause:
            return [], [health.sentence]
        if isinstance(bus, SerialBus):
            after = _counters(runner.driver if runner is not None else None)
            delta = {k: v - before.get(k, 0) for k, v in after.items()}
            return [], [stream_diagnosis(bus.bytes_in - before_bytes, delta, wait)]
        return [], [health.sentence or f"no readings in {wait:g} s"]

    def _document(self, device: Device, readings: Sequence[Reading], problems: list[str]) -> dict[str, Any]:
        policy = self._policy()
        channels = {c.id: c for c in device.channels}
        latest = {r.channel: r for r in readings}
        values: list[dict[str, Any]] = []
        withheld: list[dict[str, str]] = []
        for cid in [*channels, *(c for c in latest if c not in channels)]:
            channel = channels.get(cid)
            why = withheld_because(channel, policy) if channel is not None else NOT_RELEASED
            if why is not None:
                withheld.append({"channel": cid, "why": why})
            elif cid in latest:
                r = latest[cid]
                values.append({"channel": cid, "name": cid.partition("/")[2], "value": r.value,
                               "text": shown_value(r, channel), "unit": r.unit, "ts_ms": r.ts_ms})
        return {
            "device": device.config.name,
            "driver": device.config.driver,
            "bus": device.config.bus or "",
            "read": len(latest),
            "values": values,
            "withheld": withheld,
            "problems": problems,
            "health": device.health().as_dict(),
        }

    async def scan_bus(self, name: str, *, units: str = "1-16", register: str = "holding:0",
                       timeout: float | None = None) -> dict[str, Any]:
        """Probe ``units`` on Modbus bus ``name`` through its owner; which answered, and the configured units that did not."""
        devices = self._running()
        bus = devices.buses.get(name)
        if bus is None:
            known = ", ".join(devices.buses) or "none"
            raise CommissioningError(f"no bus named {name!r} in use (buses: {known})", status=404)
        if not is_modbus(bus):
            raise CommissioningError(f"bus {name!r} is a serial line carrying one streaming device: there are no unit ids "
                                     "to scan; use Read now on its device")
        try:
            ids = parse_units(units, field="units")
            function, address = parse_register(register, field="register")
        except ValueError as exc:
            raise CommissioningError(str(exc)) from None
        if len(ids) > SCAN_MAX_UNITS:
            raise CommissioningError(f"units {units!r}: {len(ids)} ids; at most {SCAN_MAX_UNITS} per scan, so the "
                                     f"devices' polls keep their line: scan in parts, e.g. 1-{SCAN_MAX_UNITS}")
        wait = min(bus.timeout, SCAN_DEFAULT_TIMEOUT_S) if timeout is None else timeout
        if not SCAN_TIMEOUT_S[0] <= wait <= SCAN_TIMEOUT_S[1]:
            raise CommissioningError(f"timeout = {timeout!r}: expected {SCAN_TIMEOUT_S[0]:g}..{SCAN_TIMEOUT_S[1]:g} seconds")
        from drivers.modbus.adapter import LinkError
        from drivers.modbus.bus import ScanRunning

        try:
            result = await bus.scan(ids, function, address, timeout=wait)
        except ScanRunning as exc:
            raise CommissioningError(str(exc), status=409) from None
        except LinkError as exc:
            raise CommissioningError(f"{bus.what}: {exc}", status=503) from None
        configured: dict[int, list[str]] = {}
        for d in devices.devices:
            if d.config.bus == name and isinstance(d.config.address, int):
                configured.setdefault(d.config.address, []).append(d.config.name)
        answered = {a.unit for a in result.answers}
        # One line per scan (who took part of the line, and what was there); the probes themselves log nothing.
        log.info("bus scanned for the technician", extra={"bus": name, "units": units, "answered": sorted(answered)})
        problems = []
        if result.lost:
            problems.append(f"the scan stopped: {result.lost}")
        if result.garbled:
            problems.append(f"{len(result.garbled)} replies were corrupt (CRC errors) at this bus's line settings: devices "
                            "are there but at another baud rate or parity; the running gateway holds the line at its "
                            "configured settings only")
        return {
            "bus": name,
            "type": bus.config.type,
            "line": _line(bus),
            "baudrate": bus.config.baudrate if bus.config.type == "modbus-rtu" else None,
            "register": f"{function}:{address}",
            "timeout_s": wait,
            "tried": len(result.tried),
            "found": [{"unit": a.unit, "answer": a.answer, "reply_ms": a.reply_ms, "devices": configured.get(a.unit, [])}
                      for a in result.answers],
            "garbled": result.garbled,
            "configured_silent": [{"unit": u, "devices": names} for u, names in sorted(configured.items())
                                  if u in result.tried and u not in answered],
            "problems": problems,
        }

"""Serial devices on ptys: the shared frame sender with faults, and the SDS011, PMS5003 and NMEA GPS models.

Frames follow the public datasheets: Nova Fitness "Laser Dust Sensor Control
Protocol V1.3" (SDS011), Plantower "PMS5003 series data manual V2.5", and
NMEA 0183 GGA/RMC.  See hil-sim/README.md for the byte layouts.
"""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from hilsim.device import SimDevice
from hilsim.ledger import Value
from hilsim.ports import VirtualPort

__all__ = ["PMS5003_FIELDS", "SerialDevice", "Sds011", "Pms5003", "NmeaGps", "gga_values", "nmea_sentence", "sds011_checksum", "pms_checksum"]

_SERIAL_FAULTS = ("bad_checksum", "drop_reply", "late_reply", "split_frame", "partial_frame", "disconnect",
                  "stuck_value", "line_noise")


class SerialDevice(SimDevice):
    """A device with its own serial line: a pty, paced bytes, commands in, frames out through the fault layer."""

    default_baudrate: ClassVar[int] = 9600
    link_prefix: ClassVar[str] = "ttySIM"
    fault_kinds: ClassVar[tuple[str, ...]] = _SERIAL_FAULTS

    def __init__(self, *, run_dir: Path, baudrate: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.baudrate = baudrate or self.default_baudrate
        self.port = VirtualPort(link=run_dir / f"{self.link_prefix}-{self.name}", baudrate=self.baudrate,
                                on_data=self._on_data)
        self._rx = bytearray()
        self._pending: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.port.plug()
        await super().start()
        await self.power_up()

    async def stop(self) -> None:
        await super().stop()
        for task in list(self._pending):
            task.cancel()
        self.port.unplug()

    async def disconnect(self) -> None:
        self.port.unplug()
        self._rx.clear()

    async def reconnect(self) -> None:
        self.port.plug()
        await self.power_up()

    async def power_up(self) -> None:
        """What the device does when it gets power (override)."""

    def _on_data(self, data: bytes) -> None:
        self._rx += data
        for command in self.take_commands(self._rx):
            task = asyncio.create_task(self.answer(command))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

    def take_commands(self, buffer: bytearray) -> list[bytes]:
        """Remove and return complete, valid command frames from `buffer` (override; default: ignore input)."""
        buffer.clear()
        return []

    async def answer(self, command: bytes) -> None:
        """Reply to one command frame (override)."""

    def corrupt_checksum(self, frame: bytes) -> bytes:
        """`frame` with a wrong checksum (override for the device's layout; default: flip the last byte)."""
        return frame[:-1] + bytes([frame[-1] ^ 0xFF])

    async def transmit(self, frame: bytes, *, served: Mapping[str, Value] | None = None) -> None:
        """Send one frame through the device's fault timeline; `served` (the values it carries) goes to the ledger."""
        if not self.port.present:
            return
        hits = self.faults.draw(self.clock.t(), self.next_frame())
        if "drop_reply" in hits:
            if served:
                self.served(served, hits)
            return
        if "late_reply" in hits:
            await asyncio.sleep(hits["late_reply"].delay)
        if "line_noise" in hits:
            await self.port.write(self.faults.randbytes(self.faults.randint(1, hits["line_noise"].burst)))
        if "bad_checksum" in hits:
            frame = self.corrupt_checksum(frame)
        if "partial_frame" in hits:
            frame = frame[: self.faults.randint(1, len(frame) - 1)]
        if "split_frame" in hits and len(frame) > 1:
            cut = self.faults.randint(1, len(frame) - 1)
            await self.port.write(frame[:cut])
            await asyncio.sleep(hits["split_frame"].gap)
            await self.port.write(frame[cut:])
        else:
            await self.port.write(frame)
        if served:
            self.served(served, hits)


def sds011_checksum(body: bytes) -> int:
    """SDS011 checksum: the low 8 bits of the sum of the data bytes."""
    return sum(body) & 0xFF


class Sds011(SerialDevice):
    """Nova Fitness SDS011 PM2.5/PM10 sensor (control protocol V1.3)."""

    kind = "sds011"
    driver = "sds011"
    link_prefix = "ttySDS011"
    quantities = {
        "pm2_5": {"model": "diurnal", "mean": 9.0, "amplitude": 4.0, "peak": "08:30", "noise": 1.2, "min": 0.0},
        "pm10": {"model": "diurnal", "mean": 16.0, "amplitude": 6.0, "peak": "08:30", "noise": 2.0, "min": 0.0},
    }
    options_spec = {"mode": "active", "device_id": 0xA160, "firmware": "18-11-16"}
    option_choices = {"mode": ("active", "query")}

    async def power_up(self) -> None:
        self.query_mode = self.options["mode"] == "query"
        self.working = True
        self.period_min = 0
        self.device_id = int(self.options["device_id"]) & 0xFFFF
        self._next_report = self.clock.t()

    def data_frame(self) -> bytes:
        pm25 = min(9999, max(0, round(self.values.get("pm2_5", 0.0) * 10)))
        pm10 = min(9999, max(0, round(self.values.get("pm10", 0.0) * 10)))
        body = pm25.to_bytes(2, "little") + pm10.to_bytes(2, "little") + self.device_id.to_bytes(2, "big")
        return b"\xAA\xC0" + body + bytes([sds011_checksum(body), 0xAB])

    async def transmit_data(self) -> None:
        frame = self.data_frame()
        await self.transmit(frame, served={"pm2_5": int.from_bytes(frame[2:4], "little") / 10,
                                           "pm10": int.from_bytes(frame[4:6], "little") / 10})

    def reply(self, command: int, d1: int, d2: int, d3: int = 0) -> bytes:
        body = bytes([command, d1, d2, d3]) + self.device_id.to_bytes(2, "big")
        return b"\xAA\xC5" + body + bytes([sds011_checksum(body), 0xAB])

    def corrupt_checksum(self, frame: bytes) -> bytes:
        return frame[:8] + bytes([frame[8] ^ 0x5A]) + frame[9:]

    def take_commands(self, buffer: bytearray) -> list[bytes]:
        commands: list[bytes] = []
        while True:
            start = buffer.find(b"\xAA\xB4")
            if start < 0:
                del buffer[:-1]
                return commands
            del buffer[:start]
            if len(buffer) < 19:
                return commands
            frame = bytes(buffer[:19])
            if frame[18] == 0xAB and sds011_checksum(frame[2:17]) == frame[17]:
                del buffer[:19]
                commands.append(frame)
            else:
                del buffer[:1]  # not a frame start after all: resynchronise on the next 0xAA

    async def answer(self, command: bytes) -> None:
        target = int.from_bytes(command[15:17], "big")
        if target not in (0xFFFF, self.device_id):
            return
        cmd, d2, d3 = command[2], command[3], command[4]
        if not self.working and cmd != 6:
            return  # a sleeping SDS011 only listens for the wake-up command
        if cmd == 2:
            if d2 == 1:
                self.query_mode = d3 == 1
            await self.transmit(self.reply(2, d2, int(self.query_mode)))
        elif cmd == 4:
            await self.transmit_data()
        elif cmd == 5:
            self.device_id = int.from_bytes(command[13:15], "big")
            await self.transmit(self.reply(5, 0, 0))
        elif cmd == 6:
            if d2 == 1:
                self.working = d3 == 1
                self._next_report = self.clock.t() + 1.0
            await self.transmit(self.reply(6, d2, int(self.working)))
        elif cmd == 7:
            year, month, day = (int(part) for part in str(self.options["firmware"]).split("-"))
            await self.transmit(self.reply(7, year, month, day))
        elif cmd == 8:
            if d2 == 1:
                self.period_min = min(30, d3)
            await self.transmit(self.reply(8, d2, self.period_min))

    async def every_step(self) -> None:
        if self.query_mode or not self.working:
            return
        now = self.clock.t()
        if now >= self._next_report:
            self._next_report = now + (self.period_min * 60.0 if self.period_min else 1.0)
            await self.transmit_data()


# The 12 data words of a PMS5003 frame, by the names the gateway's pms5003 driver gives its channels.
PMS5003_FIELDS = ("pm1_0_cf1", "pm2_5_cf1", "pm10_cf1", "pm1_0", "pm2_5", "pm10", "particles_0_3um", "particles_0_5um",
                  "particles_1_0um", "particles_2_5um", "particles_5_0um", "particles_10um")


def pms_checksum(data: bytes) -> int:
    """PMS5003 check code: the 16-bit sum of every byte before it."""
    return sum(data) & 0xFFFF


class Pms5003(SerialDevice):
    """Plantower PMS5003 particle sensor (data manual V2.5): active and passive modes, sleep and wake."""

    kind = "pms5003"
    driver = "pms5003"
    link_prefix = "ttyPMS5003"
    quantities = {
        "pm1_0": {"model": "diurnal", "mean": 6.0, "amplitude": 3.0, "peak": "08:30", "noise": 0.8, "min": 0.0},
        "pm2_5": {"model": "diurnal", "mean": 9.0, "amplitude": 4.0, "peak": "08:30", "noise": 1.2, "min": 0.0},
        "pm10": {"model": "diurnal", "mean": 14.0, "amplitude": 5.0, "peak": "08:30", "noise": 1.8, "min": 0.0},
    }
    options_spec = {"mode": "active", "interval": 1.0}
    option_choices = {"mode": ("active", "passive")}

    async def power_up(self) -> None:
        self.passive = self.options["mode"] == "passive"
        self.sleeping = False
        self._next_report = self.clock.t()

    def data_frame(self) -> bytes:
        pm1 = max(0, round(self.values.get("pm1_0", 0.0)))
        pm25 = max(pm1, round(self.values.get("pm2_5", 0.0)))
        pm10 = max(pm25, round(self.values.get("pm10", 0.0)))
        # Particle counts per 0.1 L, falling with size; the ratios are those of urban background aerosol.
        c03 = 150 * pm1 + 40 * pm25 + 60
        counts = [c03, c03 * 30 // 100, c03 * 8 // 100, c03 * 1 // 100, pm10 - pm25, (pm10 - pm25) // 3]
        words = [pm1, pm25, pm10, pm1, pm25, pm10, *counts, 0]
        body = b"\x42\x4D\x00\x1C" + b"".join(min(0xFFFF, w).to_bytes(2, "big") for w in words)
        return body + pms_checksum(body).to_bytes(2, "big")

    async def transmit_data(self) -> None:
        frame = self.data_frame()
        words = [int.from_bytes(frame[i : i + 2], "big") for i in range(4, 28, 2)]
        await self.transmit(frame, served=dict(zip(PMS5003_FIELDS, words, strict=True)))

    def command_reply(self, command: int, data: int) -> bytes:
        body = bytes([0x42, 0x4D, 0x00, 0x04, command, data])
        return body + pms_checksum(body).to_bytes(2, "big")

    def take_commands(self, buffer: bytearray) -> list[bytes]:
        commands: list[bytes] = []
        while True:
            start = buffer.find(b"\x42\x4D")
            if start < 0:
                del buffer[:-1]
                return commands
            del buffer[:start]
            if len(buffer) < 7:
                return commands
            frame = bytes(buffer[:7])
            if pms_checksum(frame[:5]) == int.from_bytes(frame[5:7], "big"):
                del buffer[:7]
                commands.append(frame)
            else:
                del buffer[:1]

    async def answer(self, command: bytes) -> None:
        cmd, data = command[2], command[4]
        if cmd == 0xE4:
            self.sleeping = data == 0
            self._next_report = self.clock.t() + 1.0
            await self.transmit(self.command_reply(0xE4, data))
        elif self.sleeping:
            return  # fan stopped: nothing but wake-up is answered
        elif cmd == 0xE1:
            self.passive = data == 0
            await self.transmit(self.command_reply(0xE1, data))
        elif cmd == 0xE2 and self.passive:
            await self.transmit_data()

    async def every_step(self) -> None:
        if self.passive or self.sleeping:
            return
        now = self.clock.t()
        if now >= self._next_report:
            self._next_report = now + float(self.options["interval"])
            await self.transmit_data()


def nmea_sentence(body: str) -> bytes:
    """`$body*CS\\r\\n` with the NMEA 0183 XOR checksum of `body`."""
    checksum = 0
    for char in body.encode("ascii"):
        checksum ^= char
    return f"${body}*{checksum:02X}\r\n".encode("ascii")


def _nmea_angle(value: float, *, degree_digits: int, positive: str, negative: str) -> tuple[str, str]:
    hemisphere = positive if value >= 0 else negative
    value = abs(value)
    degrees = int(value)
    minutes = (value - degrees) * 60.0
    return f"{degrees:0{degree_digits}d}{minutes:08.5f}", hemisphere


class NmeaGps(SerialDevice):
    """An NMEA 0183 GPS receiver: GGA and RMC once a second at a fixed position with realistic jitter."""

    kind = "nmea-gps"
    driver = "nmea-gps"
    link_prefix = "ttyGPS"
    fault_kinds = (*_SERIAL_FAULTS, "no_fix")
    options_spec = {"latitude": 43.6452, "longitude": -79.3957, "altitude": 92.0, "jitter_m": 2.5, "satellites": 9}

    async def power_up(self) -> None:
        self._next_fix = math.floor(self.clock.t()) + 1.0

    def corrupt_checksum(self, frame: bytes) -> bytes:
        star = frame.rindex(b"*")
        wrong = (int(frame[star + 1 : star + 3], 16) ^ 0x21) & 0xFF
        return frame[: star + 1] + f"{wrong:02X}".encode() + frame[star + 3 :]

    def sentences(self, tick: int, wall_s: float) -> list[bytes]:
        moment = datetime.fromtimestamp(wall_s, tz=UTC)
        hhmmss = moment.strftime("%H%M%S") + f".{moment.microsecond // 10000:02d}"
        ddmmyy = moment.strftime("%d%m%y")
        if self.faults.windows("no_fix", self.clock.t()):
            return [nmea_sentence(f"GPGGA,{hhmmss},,,,,0,00,99.99,,,,,,"),
                    nmea_sentence(f"GPRMC,{hhmmss},V,,,,,,,{ddmmyy},,,N")]
        rng = random.Random(f"{self.seed}:{self.name}:fix:{tick}")
        jitter = float(self.options["jitter_m"])
        lat = float(self.options["latitude"]) + rng.gauss(0.0, jitter) / 111_320.0
        lon = float(self.options["longitude"]) + rng.gauss(0.0, jitter) / (
            111_320.0 * max(0.01, math.cos(math.radians(float(self.options["latitude"])))))
        alt = float(self.options["altitude"]) + rng.gauss(0.0, jitter * 1.5)
        sats = max(4, int(self.options["satellites"]) + rng.randint(-2, 2))
        hdop = 0.7 + 0.1 * rng.randint(0, 6)
        lat_s, ns = _nmea_angle(lat, degree_digits=2, positive="N", negative="S")
        lon_s, ew = _nmea_angle(lon, degree_digits=3, positive="E", negative="W")
        return [
            nmea_sentence(f"GPGGA,{hhmmss},{lat_s},{ns},{lon_s},{ew},1,{sats:02d},{hdop:.1f},{alt:.1f},M,-34.2,M,,"),
            nmea_sentence(f"GPRMC,{hhmmss},A,{lat_s},{ns},{lon_s},{ew},0.02,,{ddmmyy},,,A"),
        ]

    async def every_step(self) -> None:
        now = self.clock.t()
        if now < self._next_fix:
            return
        tick = int(now)
        self._next_fix = tick + 1.0
        for sentence in self.sentences(tick, self.clock.start_wall + tick):
            await self.transmit(sentence, served=gga_values(sentence))


def gga_values(sentence: bytes) -> dict[str, Value]:
    """What a `$GPGGA` sentence says (fix quality, satellites and, with a fix, the position and altitude); {} for others."""
    fields = sentence.decode("ascii").split("*")[0].split(",")
    if fields[0] != "$GPGGA":
        return {}
    out: dict[str, Value] = {"fix_quality": int(fields[6]), "satellites": int(fields[7] or 0)}
    if out["fix_quality"] and fields[2] and fields[4]:
        lat = int(fields[2][:2]) + float(fields[2][2:]) / 60.0
        lon = int(fields[4][:3]) + float(fields[4][3:]) / 60.0
        out["latitude"] = -lat if fields[3] == "S" else lat
        out["longitude"] = -lon if fields[5] == "W" else lon
        out["altitude"] = float(fields[9])
    return out



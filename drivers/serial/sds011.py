"""Nova Fitness SDS011 particulate matter sensor: 0xAA 0xC0 data frames, active or query reporting mode."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from drivers.sdk import Manifest, OptionSpec
from drivers.serial.stream import Decoder, StreamDriver
from edge.protocol.types import Channel, Reading

__all__ = ["Sds011Decoder", "Sds011Driver", "Sds011Frame", "command"]

HEAD, TAIL = 0xAA, 0xAB
DATA, REPLY = 0xC0, 0xC5
FRAME_LEN = 10


@dataclass(frozen=True, slots=True)
class Sds011Frame:
    pm2_5: float  # µg/m³
    pm10: float


def command(cmd: int, data: bytes = b"", *, device: int = 0xFFFF) -> bytes:
    """A 19-byte host-to-sensor command (datasheet "Laser Dust Sensor Control Protocol" V1.3)."""
    body = bytes([cmd]) + data.ljust(12, b"\0") + device.to_bytes(2, "big")
    return bytes([HEAD, 0xB4]) + body + bytes([sum(body) & 0xFF, TAIL])


SET_ACTIVE = command(2, bytes([1, 0]))  # data reporting mode: set, active
SET_QUERY = command(2, bytes([1, 1]))  # data reporting mode: set, query
QUERY = command(4)
WORK = command(6, bytes([1, 1]))  # sleep/work: set, work


class Sds011Decoder(Decoder[Sds011Frame]):
    """Finds 10-byte frames ``AA C0 pm25L pm25H pm10L pm10H id id sum AB``; skips command replies (``AA C5``)."""

    def _next(self) -> Sds011Frame | None:
        buf = self._buffer
        while True:
            start = buf.find(HEAD)
            if start < 0:
                self._skip(len(buf))
                return None
            if start:
                self._skip(start)
            if len(buf) < FRAME_LEN:
                return None
            kind = buf[1]
            if kind not in (DATA, REPLY) or buf[9] != TAIL:
                self._skip(1)
                continue
            if sum(buf[2:8]) & 0xFF != buf[8]:
                self.stats.bad_checksum += 1
                self._skip(1)
                continue
            frame = bytes(buf[:FRAME_LEN])
            del buf[:FRAME_LEN]
            if kind == REPLY:
                continue  # acknowledgement of our mode command
            self.stats.frames += 1
            return Sds011Frame(pm2_5=int.from_bytes(frame[2:4], "little") / 10,
                               pm10=int.from_bytes(frame[4:6], "little") / 10)


class Sds011Driver(StreamDriver[Sds011Frame]):
    """SDS011 on its own serial port (9600 8N1); in query mode the gateway asks once per poll interval."""

    manifest = Manifest(
        name="sds011",
        version="1.0.0",
        summary="Nova Fitness SDS011 PM2.5/PM10 sensor (UART, 9600 baud)",
        hardware=("Nova Fitness SDS011", "Nova Fitness SDS021"),
        transport="serial",
        options={
            "mode": OptionSpec(str, default="query", choices=("query", "active"),
                               help="query: one reading per poll interval (saves the laser); active: every second"),
        },
    )

    def make_decoder(self) -> Sds011Decoder:
        return Sds011Decoder()

    def channels(self) -> Sequence[Channel]:
        return [
            Channel(self.ctx.channel_id("pm2_5"), unit="ug/m3", resolution=0.1, description="PM2.5 mass concentration"),
            Channel(self.ctx.channel_id("pm10"), unit="ug/m3", resolution=0.1, description="PM10 mass concentration"),
        ]

    def setup_commands(self) -> Sequence[bytes]:
        return (WORK, SET_QUERY if self.options["mode"] == "query" else SET_ACTIVE)

    def query_command(self) -> bytes | None:
        return QUERY if self.options["mode"] == "query" else None

    def readings(self, frame: Sds011Frame, ts_ms: int) -> Sequence[Reading]:
        return (Reading(self.ctx.channel_id("pm2_5"), ts_ms, frame.pm2_5, "ug/m3"),
                Reading(self.ctx.channel_id("pm10"), ts_ms, frame.pm10, "ug/m3"))

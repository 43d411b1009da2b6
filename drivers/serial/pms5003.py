"""Plantower PMS5003 particulate matter sensor: 32-byte 0x42 0x4D frames, active or passive mode."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from drivers.sdk import Manifest, OptionSpec
from drivers.serial.stream import Decoder, StreamDriver
from edge.protocol.types import Channel, Reading

__all__ = ["Pms5003Decoder", "Pms5003Driver", "Pms5003Frame", "command"]

START = b"\x42\x4d"
DATA_LEN = 28  # frame length field of a data frame: 13 data words + checksum
REPLY_LEN = 4  # frame length field of a command acknowledgement

# (channel, unit, description) of the 12 data words in datasheet order; word 13 is reserved.
FIELDS = (
    ("pm1_0_cf1", "ug/m3", "PM1.0, CF=1 standard particle"),
    ("pm2_5_cf1", "ug/m3", "PM2.5, CF=1 standard particle"),
    ("pm10_cf1", "ug/m3", "PM10, CF=1 standard particle"),
    ("pm1_0", "ug/m3", "PM1.0 under atmospheric environment"),
    ("pm2_5", "ug/m3", "PM2.5 under atmospheric environment"),
    ("pm10", "ug/m3", "PM10 under atmospheric environment"),
    ("particles_0_3um", "count", "particles > 0.3 um in 0.1 L of air"),
    ("particles_0_5um", "count", "particles > 0.5 um in 0.1 L of air"),
    ("particles_1_0um", "count", "particles > 1.0 um in 0.1 L of air"),
    ("particles_2_5um", "count", "particles > 2.5 um in 0.1 L of air"),
    ("particles_5_0um", "count", "particles > 5.0 um in 0.1 L of air"),
    ("particles_10um", "count", "particles > 10 um in 0.1 L of air"),
)


@dataclass(frozen=True, slots=True)
class Pms5003Frame:
    values: tuple[int, ...]  # the 12 data words, in FIELDS order


def command(cmd: int, data: int = 0) -> bytes:
    """A 7-byte host command ``42 4D cmd dataH dataL sumH sumL`` (datasheet appendix II)."""
    body = START + bytes([cmd]) + data.to_bytes(2, "big")
    return body + (sum(body) & 0xFFFF).to_bytes(2, "big")


SET_PASSIVE = command(0xE1, 0)
SET_ACTIVE = command(0xE1, 1)
READ = command(0xE2)
WAKE = command(0xE4, 1)


class Pms5003Decoder(Decoder[Pms5003Frame]):
    """Finds frames ``42 4D len(2) words... sum(2)``; the checksum is the sum of every byte before it."""

    def _next(self) -> Pms5003Frame | None:
        buf = self._buffer
        while True:
            start = buf.find(START)
            if start < 0:
                keep = 1 if buf[-1:] == START[:1] else 0  # a start split across reads
                self._skip(len(buf) - keep)
                return None
            if start:
                self._skip(start)
            if len(buf) < 4:
                return None
            length = int.from_bytes(buf[2:4], "big")
            if length not in (DATA_LEN, REPLY_LEN):
                self._skip(1)
                continue
            total = 4 + length
            if len(buf) < total:
                return None
            if sum(buf[: total - 2]) & 0xFFFF != int.from_bytes(buf[total - 2 : total], "big"):
                self.stats.bad_checksum += 1
                self._skip(1)
                continue
            frame = bytes(buf[:total])
            del buf[:total]
            if length == REPLY_LEN:
                continue  # acknowledgement of a mode command
            self.stats.frames += 1
            return Pms5003Frame(tuple(int.from_bytes(frame[4 + 2 * i : 6 + 2 * i], "big") for i in range(12)))


class Pms5003Driver(StreamDriver[Pms5003Frame]):
    """PMS5003 on its own serial port (9600 8N1); passive mode reads once per poll interval."""

    manifest = Manifest(
        name="pms5003",
        version="1.0.0",
        summary="Plantower PMS5003 PM1/PM2.5/PM10 and particle counts (UART, 9600 baud)",
        hardware=("Plantower PMS5003", "Plantower PMS7003"),
        transport="serial",
        options={
            "mode": OptionSpec(str, default="passive", choices=("passive", "active"),
                               help="passive: one frame per poll interval on request; active: the sensor streams"),
        },
    )

    def make_decoder(self) -> Pms5003Decoder:
        return Pms5003Decoder()

    def channels(self) -> Sequence[Channel]:
        return [Channel(self.ctx.channel_id(name), unit=unit, resolution=1.0, description=desc)
                for name, unit, desc in FIELDS]

    def setup_commands(self) -> Sequence[bytes]:
        return (WAKE, SET_PASSIVE if self.options["mode"] == "passive" else SET_ACTIVE)

    def query_command(self) -> bytes | None:
        return READ if self.options["mode"] == "passive" else None

    def readings(self, frame: Pms5003Frame, ts_ms: int) -> Sequence[Reading]:
        return [Reading(self.ctx.channel_id(name), ts_ms, value, unit)
                for (name, unit, _), value in zip(FIELDS, frame.values, strict=True)]

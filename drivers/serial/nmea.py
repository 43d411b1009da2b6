"""NMEA 0183 GNSS receivers: GGA and RMC sentences from any talker, checksum checked."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from drivers.sdk import Manifest
from drivers.serial.stream import Decoder, StreamDriver
from edge.types import Channel, Reading

__all__ = ["Fix", "Motion", "NmeaDecoder", "NmeaDriver"]

MAX_SENTENCE = 120  # NMEA 0183 allows 82 characters; some receivers exceed it a little
KNOT_M_S = 1852 / 3600


@dataclass(frozen=True, slots=True)
class Fix:
    """From GGA: position and fix quality."""

    latitude: float | None
    longitude: float | None
    altitude: float | None
    quality: int
    satellites: int
    hdop: float | None


@dataclass(frozen=True, slots=True)
class Motion:
    """From RMC: position and speed over ground when the receiver says the data are valid."""

    latitude: float | None
    longitude: float | None
    speed: float | None  # m/s
    valid: bool


def _coordinate(value: str, hemisphere: str, degree_digits: int) -> float | None:
    if not value:
        return None
    degrees = int(value[:degree_digits])
    minutes = float(value[degree_digits:])
    # The XOR checksum lets one corrupted sentence in 256 through: reject what no place on Earth has.
    if not (0 <= minutes < 60 and hemisphere in ("N", "S", "E", "W")):
        raise ValueError("coordinate out of range")
    result = degrees + minutes / 60
    if not 0 <= result <= (90 if degree_digits == 2 else 180):
        raise ValueError("coordinate out of range")
    return -result if hemisphere in ("S", "W") else result


def _float(value: str) -> float | None:
    if not value:
        return None
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("not a number")
    return number


class NmeaDecoder(Decoder):
    """Splits the stream into ``$...*hh`` sentences; returns Fix and Motion objects for good GGA and RMC."""

    def _next(self) -> Fix | Motion | None:
        buf = self._buffer
        while True:
            start = buf.find(b"$")
            if start < 0:
                self._skip(len(buf))
                return None
            if start:
                self._skip(start)
            end = buf.find(b"\n")
            if end < 0:
                if len(buf) > MAX_SENTENCE:
                    self._skip(1)
                    continue
                return None
            line = bytes(buf[:end]).rstrip(b"\r")
            if b"$" in line[1:]:  # a sentence cut short by garbage: resync on the next '$'
                self._skip(line.index(b"$", 1))
                continue
            del buf[: end + 1]
            parsed = self._sentence(line)
            if parsed is not None:
                return parsed

    def _sentence(self, line: bytes) -> Fix | Motion | None:
        body, star, checksum = line[1:].partition(b"*")
        if not star or len(checksum) != 2:
            self.stats.bad_frames += 1
            return None
        calc = 0
        for b in body:
            calc ^= b
        try:
            if calc != int(checksum, 16):
                self.stats.bad_checksum += 1
                return None
            fields = body.decode("ascii").split(",")
        except (ValueError, UnicodeDecodeError):
            self.stats.bad_frames += 1
            return None
        kind = fields[0][-3:]
        try:
            if kind == "GGA" and len(fields) >= 10:
                result: Fix | Motion = Fix(
                    latitude=_coordinate(fields[2], fields[3], 2),
                    longitude=_coordinate(fields[4], fields[5], 3),
                    altitude=_float(fields[9]),
                    quality=int(fields[6] or 0),
                    satellites=int(fields[7] or 0),
                    hdop=_float(fields[8]),
                )
            elif kind == "RMC" and len(fields) >= 8:
                knots = _float(fields[7])
                result = Motion(
                    latitude=_coordinate(fields[3], fields[4], 2),
                    longitude=_coordinate(fields[5], fields[6], 3),
                    speed=None if knots is None else knots * KNOT_M_S,
                    valid=fields[2] == "A",
                )
            else:
                return None  # other sentences (GSA, GSV, VTG, ...) are valid but not used
        except ValueError:
            self.stats.bad_frames += 1
            return None
        self.stats.frames += 1
        return result


class NmeaDriver(StreamDriver):
    """A GNSS receiver streaming NMEA 0183 (GGA for position, altitude and fix; RMC for speed)."""

    manifest = Manifest(
        name="nmea-gps",
        version="1.0.0",
        summary="NMEA 0183 GNSS receiver: position, altitude, fix quality, satellites, speed",
        hardware=("u-blox NEO-6/7/8/M8N", "Quectel L76/L76K", "any NMEA 0183 receiver"),
        transport="serial",
        options={},
    )

    def make_decoder(self) -> NmeaDecoder:
        return NmeaDecoder()

    def channels(self) -> Sequence[Channel]:
        cid = self.ctx.channel_id
        return [
            Channel(cid("latitude"), unit="lat", resolution=1e-7, personal=True,
                    description="latitude, WGS84 (an exact position is personal: the privacy policy must coarsen it)"),
            Channel(cid("longitude"), unit="lon", resolution=1e-7, personal=True,
                    description="longitude, WGS84 (an exact position is personal: the privacy policy must coarsen it)"),
            Channel(cid("altitude"), unit="m", resolution=0.1, description="altitude above mean sea level"),
            Channel(cid("fix_quality"), unit="", resolution=1.0,
                    description="GGA fix quality: 0 none, 1 GPS, 2 DGPS, 4 RTK fixed, 5 RTK float, 6 estimated"),
            Channel(cid("satellites"), unit="count", resolution=1.0, description="satellites used in the fix"),
            Channel(cid("speed"), unit="m/s", resolution=0.01, description="speed over ground"),
        ]

    def readings(self, frame: Fix | Motion, ts_ms: int) -> Sequence[Reading]:  # type: ignore[override]
        cid = self.ctx.channel_id
        out: list[Reading] = []
        if isinstance(frame, Fix):
            out.append(Reading(cid("fix_quality"), ts_ms, frame.quality, ""))
            out.append(Reading(cid("satellites"), ts_ms, frame.satellites, "count"))
            if frame.quality > 0 and frame.latitude is not None and frame.longitude is not None:
                out.append(Reading(cid("latitude"), ts_ms, frame.latitude, "lat"))
                out.append(Reading(cid("longitude"), ts_ms, frame.longitude, "lon"))
                if frame.altitude is not None:
                    out.append(Reading(cid("altitude"), ts_ms, frame.altitude, "m"))
        elif frame.valid and frame.speed is not None:
            out.append(Reading(cid("speed"), ts_ms, frame.speed, "m/s"))
        return out

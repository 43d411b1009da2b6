"""NMEA 0183 GNSS receivers: GGA and RMC sentences from any talker, checksum checked."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from drivers.sdk import Manifest
from drivers.serial.stream import Decoder, StreamDriver
from edge.protocol.types import Channel, Reading

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


# The 8-bit XOR checksum lets one corrupted sentence in 256 through, and a faulty receiver can send a
# well-formed lie: a value no receiver can measure is refused with its whole sentence, so nothing
# from it (a position least of all) is released.  The bounds are physical, not typical:
FIX_QUALITIES = range(0, 9)  # GGA quality indicator, NMEA 0183 4.x: 0 no fix ... 8 simulator
MAX_SATELLITES = 99  # the GGA field has two digits; four constellations in view give some 60 at most
MAX_DOP = 100.0  # receivers print 99.99 (or 99.9) when they have no geometry at all; a DOP is always > 0
# Below the lowest dry land (the Dead Sea shore, -430 m) with room for vertical error, which is about
# twice the horizontal; above 50 km no civil receiver gives a fix (u-blox's airborne ceiling is 50 km).
ALTITUDE_M = (-1_000.0, 50_000.0)
# Civil receivers stop reporting at 1,000 knots (515 m/s, the export "COCOM" limit); speed is never negative.
MAX_SPEED_KNOTS = 1_000.0

_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)")  # NMEA numbers: optional minus, digits, decimals; no exponent
_COUNT = re.compile(r"\d{1,2}")
_LATITUDE = re.compile(r"(\d{2})(\d{2}(?:\.\d+)?)")  # ddmm.mmmm
_LONGITUDE = re.compile(r"(\d{3})(\d{2}(?:\.\d+)?)")  # dddmm.mmmm


def _coordinate(value: str, hemisphere: str, *, latitude: bool) -> float | None:
    if not value:
        return None
    match = (_LATITUDE if latitude else _LONGITUDE).fullmatch(value)
    if match is None or hemisphere not in (("N", "S") if latitude else ("E", "W")):
        raise ValueError("coordinate not in NMEA form")
    minutes = float(match.group(2))
    result = int(match.group(1)) + minutes / 60
    if not (minutes < 60 and result <= (90 if latitude else 180)):
        raise ValueError("coordinate out of range")
    return -result if hemisphere in ("S", "W") else result


def _number(value: str, low: float, high: float) -> float | None:
    """An optional decimal field within [low, high]; the error never holds the value (it may be a position)."""
    if not value:
        return None
    if _NUMBER.fullmatch(value) is None:
        raise ValueError("not an NMEA number")
    number = float(value)
    if not low <= number <= high:
        raise ValueError("out of range")
    return number


def _count(value: str, allowed: range) -> int:
    """A whole-number field (empty means 0) that must lie in ``allowed``."""
    if not value:
        return 0
    if _COUNT.fullmatch(value) is None or int(value) not in allowed:
        raise ValueError("out of range")
    return int(value)


def _dop(value: str) -> float | None:
    dop = _number(value, 0.0, MAX_DOP)
    if dop == 0:
        raise ValueError("a dilution of precision is never 0")
    return dop


def _gga(fields: list[str]) -> Fix:
    return Fix(
        latitude=_coordinate(fields[2], fields[3], latitude=True),
        longitude=_coordinate(fields[4], fields[5], latitude=False),
        altitude=_number(fields[9], *ALTITUDE_M),
        quality=_count(fields[6], FIX_QUALITIES),
        satellites=_count(fields[7], range(MAX_SATELLITES + 1)),
        hdop=_dop(fields[8]),
    )


def _rmc(fields: list[str]) -> Motion:
    if fields[2] not in ("A", "V"):
        raise ValueError("status is A or V")
    knots = _number(fields[7], 0.0, MAX_SPEED_KNOTS)
    return Motion(
        latitude=_coordinate(fields[3], fields[4], latitude=True),
        longitude=_coordinate(fields[5], fields[6], latitude=False),
        speed=None if knots is None else knots * KNOT_M_S,
        valid=fields[2] == "A",
    )


# Sentence type -> (fields it has at least, parser).  Other sentences (GSA, GSV, VTG, ...) are valid but unused:
# GGA alone carries the position released, RMC only the speed.
# sentence type -> (fields it needs at least, its parser)
_PARSERS: dict[str, tuple[int, Callable[[list[str]], Fix | Motion]]] = {"GGA": (10, _gga), "RMC": (8, _rmc)}


class NmeaDecoder(Decoder[Fix | Motion]):
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
        known = _PARSERS.get(fields[0][-3:])
        if known is None:
            return None
        least, parse = known
        try:
            if len(fields) < least:
                raise ValueError("fields missing")
            result = parse(fields)
        except ValueError:
            self.stats.bad_frames += 1
            return None
        self.stats.frames += 1
        return result


class NmeaDriver(StreamDriver[Fix | Motion]):
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
                    description="GGA fix quality: 0 none, 1 GPS, 2 DGPS, 3 PPS, 4 RTK fixed, 5 RTK float, 6 estimated, "
                                "7 manual, 8 simulator"),
            Channel(cid("satellites"), unit="count", resolution=1.0, description="satellites used in the fix"),
            Channel(cid("speed"), unit="m/s", resolution=0.01, description="speed over ground"),
        ]

    def readings(self, frame: Fix | Motion, ts_ms: int) -> Sequence[Reading]:
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

"""Wi-Fi/BLE pedestrian counter (hil-sim line protocol v1): one reading set per sighting; the MAC is personal."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from drivers.sdk import Manifest
from drivers.serial.stream import Decoder, StreamDriver
from edge.protocol.types import Channel, Kind, Reading

__all__ = ["Heartbeat", "PedestrianCounterDriver", "PedestrianDecoder", "Sighting"]

MAX_LINE = 200
_SEEN = re.compile(rb"SEEN (\d{1,16}) (wifi|ble) ((?:[0-9a-f]{2}:){5}[0-9a-f]{2}) (-\d{1,3})")
_HB = re.compile(rb"HB (\d{1,16}) (\d{1,20}) (\d{1,20})")
_HELLO = re.compile(rb"HELLO (\S{1,64}) (\S{1,64}) (\d{1,4})")
_STARTS = (b"SEEN ", b"HB ", b"HELLO ")


@dataclass(frozen=True, slots=True)
class Sighting:
    """One device heard.  ``mac`` is personal data: it must never be logged, and it has no repr."""

    ts_ms: int
    radio: str
    mac: str
    rssi: int

    def __repr__(self) -> str:  # keeps the MAC out of tracebacks and debug output
        return f"Sighting(ts_ms={self.ts_ms}, radio={self.radio!r}, mac=<personal>, rssi={self.rssi})"


@dataclass(frozen=True, slots=True)
class Heartbeat:
    ts_ms: int
    sightings: int
    uptime_s: int


class PedestrianDecoder(Decoder[Sighting | Heartbeat]):
    """Splits CRLF lines; ``SEEN`` gives a Sighting, ``HB`` a Heartbeat, ``HELLO`` is noted, anything else is a bad frame."""

    def __init__(self) -> None:
        super().__init__()
        self.hello: tuple[str, str, int] | None = None  # model, firmware, protocol version

    def _next(self) -> Sighting | Heartbeat | None:
        buf = self._buffer
        while True:
            end = buf.find(b"\n")
            if end < 0:
                if len(buf) > MAX_LINE:  # no line end in sight: noise; drop it and keep looking
                    self.stats.bad_frames += 1
                    self._skip(len(buf))
                return None
            line = bytes(buf[:end]).rstrip(b"\r")
            del buf[: end + 1]
            if not line:
                continue
            # Noise, or a line cut short, runs into the next line with no line end between them:
            # the last line start in it is where the intact line begins.
            start = max(line.rfind(keyword) for keyword in _STARTS)
            if start > 0:
                self.stats.bad_frames += 1
                self.stats.garbage_bytes += start
                line = line[start:]
            if m := _SEEN.fullmatch(line):
                self.stats.frames += 1
                return Sighting(int(m[1]), m[2].decode(), m[3].decode(), int(m[4]))
            if m := _HB.fullmatch(line):
                self.stats.frames += 1
                return Heartbeat(int(m[1]), int(m[2]), int(m[3]))
            if m := _HELLO.fullmatch(line):
                self.stats.frames += 1
                self.hello = (m[1].decode(), m[2].decode(), int(m[3]))
                continue
            self.stats.bad_frames += 1
            self.stats.garbage_bytes += len(line)


class PedestrianCounterDriver(StreamDriver[Sighting | Heartbeat]):
    """Emits ``mac`` (personal), ``rssi`` and ``radio`` for each sighting; the privacy policy must transform ``mac``."""

    manifest = Manifest(
        name="pedestrian-counter",
        version="1.0.0",
        summary="Wi-Fi/BLE presence counter (line protocol v1, 115200 baud); emits personal MAC addresses",
        hardware=("OCN hil-sim pedestrian counter", "counters speaking OCN line protocol v1"),
        transport="serial",
        options={},
    )

    def make_decoder(self) -> PedestrianDecoder:
        return PedestrianDecoder()

    def channels(self) -> Sequence[Channel]:
        cid = self.ctx.channel_id
        return [
            Channel(cid("mac"), kind=Kind.STRING, personal=True,
                    description="MAC address of a device heard (personal data: pseudonymise or count, never keep)"),
            Channel(cid("rssi"), unit="dBm", resolution=1.0, description="signal strength of the sighting"),
            Channel(cid("radio"), kind=Kind.STRING, description="'wifi' or 'ble'"),
        ]

    def readings(self, frame: Sighting | Heartbeat, ts_ms: int) -> Sequence[Reading]:
        if not isinstance(frame, Sighting):
            return ()
        cid = self.ctx.channel_id
        return (Reading(cid("mac"), ts_ms, frame.mac),
                Reading(cid("rssi"), ts_ms, frame.rssi, "dBm"),
                Reading(cid("radio"), ts_ms, frame.radio))

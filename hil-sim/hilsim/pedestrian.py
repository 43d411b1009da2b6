"""A Wi-Fi/BLE pedestrian counter on a pty: a seeded population of phones reported as `SEEN` lines.

The line protocol (version 1) is documented in hil-sim/README.md.  The MAC
addresses are personal data: this device exists so the privacy stage has
something real to tame, and so a leak test can search for every MAC emitted.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from hilsim.durations import parse_duration
from hilsim.ledger import Value, mac_digest
from hilsim.serial_devices import SerialDevice

__all__ = ["PedestrianCounter", "PROTOCOL_VERSION", "format_mac"]

PROTOCOL_VERSION = 1
_MODEL = "ocn-pedsim"
_FIRMWARE = "1.2.0"
_HEARTBEAT_EVERY = 10


def format_mac(octets: bytes) -> str:
    return ":".join(f"{b:02x}" for b in octets)


def _universal_mac(rng: random.Random) -> str:
    octets = bytearray(rng.randbytes(6))
    octets[0] &= 0xFC  # globally unique (0x02 clear), unicast (0x01 clear): a phone's burnt-in address
    return format_mac(bytes(octets))


def _random_mac(rng: random.Random) -> str:
    octets = bytearray(rng.randbytes(6))
    octets[0] = (octets[0] & 0xFC) | 0x02  # locally administered: a privacy-randomised address
    return format_mac(bytes(octets))


@dataclass(frozen=True, slots=True)
class _Phone:
    """Someone with a daily routine: arrives near the same time of day and stays a while."""

    index: int
    arrival: float  # fraction of the day
    stay: float  # fraction of the day
    radio: str
    mac: str  # the burnt-in address (regulars) or "" (randomisers)
    rotate_s: float  # randomisers: how often the address changes
    distance: float  # 0 near .. 1 far, sets the RSSI


class PedestrianCounter(SerialDevice):
    """Reports every phone it hears: regulars who come back daily, passers-by, and randomised MACs."""

    kind = "pedestrian-counter"
    driver = "pedestrian-counter"
    link_prefix = "ttyPED"
    default_baudrate = 115200
    fault_kinds = ("drop_reply", "late_reply", "split_frame", "partial_frame", "disconnect", "line_noise")
    options_spec = {
        "regulars": 40,
        "randomisers": 25,
        "passers_per_minute": 6.0,
        "day_length": "24h",
        "hear_every": "5s",
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.day_s = parse_duration(self.options["day_length"], field=f"devices.{self.name}.options.day_length")
        self.hear_p = 1.0 / max(1.0, parse_duration(self.options["hear_every"],
                                                        field=f"devices.{self.name}.options.hear_every"))
        self.emitted: set[str] = set()
        self._passers: list[tuple[int, str, str, float]] = []  # (leave tick, mac, radio, distance)
        self.outbox: list[bytes] = []  # lines computed for past ticks, waiting to go on the line
        self._sightings = 0
        self._up_since = 0
        self._arrivals: dict[tuple[str, int], float] = {}
        self._phones = [self._phone(i, regular=True) for i in range(int(self.options["regulars"]))] + [
            self._phone(i, regular=False) for i in range(int(self.options["randomisers"]))
        ]

    def _phone(self, index: int, *, regular: bool) -> _Phone:
        rng = random.Random(f"{self.seed}:{self.name}:{'regular' if regular else 'randomiser'}:{index}")
        return _Phone(
            index=index,
            arrival=rng.uniform(0.25, 0.85),
            stay=rng.uniform(0.01, 0.05),
            radio="wifi" if rng.random() < 0.65 else "ble",
            mac=_universal_mac(rng) if regular else "",
            rotate_s=0.0 if regular else rng.uniform(180.0, 900.0),
            distance=rng.random(),
        )

    def _present(self, phone: _Phone, tick: int) -> bool:
        day, phase = divmod(tick / self.day_s, 1.0)
        key = (phone.mac or str(phone.index), int(day))
        if (start := self._arrivals.get(key)) is None:
            rng = random.Random(f"{self.seed}:{self.name}:day:{key[0]}:{key[1]}")
            # 15% of days off (start past the end of the day); otherwise the usual time give or take.
            start = 2.0 if rng.random() < 0.15 else phone.arrival + rng.gauss(0.0, 0.01)
            self._arrivals[key] = start
        return start <= phase < start + phone.stay

    def _address(self, phone: _Phone, tick: int) -> str:
        if phone.mac:
            return phone.mac
        epoch = int((tick + phone.index * 97) // phone.rotate_s)
        return _random_mac(random.Random(f"{self.seed}:{self.name}:rotate:{phone.index}:{epoch}"))

    def compute(self, tick: int, values: dict[str, float]) -> None:
        rng = random.Random(f"{self.seed}:{self.name}:tick:{tick}")
        lam = float(self.options["passers_per_minute"]) / 60.0
        # Poisson arrivals by inversion: few per tick, so the loop is short.
        arrivals, threshold, product = 0, math.exp(-lam), rng.random()
        while product > threshold:
            arrivals += 1
            product *= rng.random()
        for _ in range(arrivals):
            self._passers.append((tick + rng.randint(20, 150), _universal_mac(rng),
                                  "wifi" if rng.random() < 0.65 else "ble", rng.random()))
        self._passers = [p for p in self._passers if p[0] > tick]
        present = [(self._address(p, tick), p.radio, p.distance) for p in self._phones if self._present(p, tick)]
        present += [(mac, radio, distance) for _, mac, radio, distance in self._passers]
        base_ms = int(self.clock.start_wall * 1000) + tick * 1000
        seen = []
        for mac, radio, distance in present:
            if rng.random() < self.hear_p:
                rssi = int(-38 - 50 * distance - abs(rng.gauss(0.0, 4.0)))
                seen.append((base_ms + rng.randint(0, 999), radio, mac, max(-99, rssi)))
        for ts_ms, radio, mac, rssi in sorted(seen):
            self.outbox.append(f"SEEN {ts_ms} {radio} {mac} {rssi}\r\n".encode("ascii"))
        self._sightings += len(seen)
        if tick % _HEARTBEAT_EVERY == 0:
            self.outbox.append(f"HB {base_ms} {self._sightings} {tick - self._up_since}\r\n".encode("ascii"))

    async def power_up(self) -> None:
        self.outbox.clear()
        self._sightings = 0
        self._up_since = max(0, self.tick)
        await self.transmit(f"HELLO {_MODEL} {_FIRMWARE} {PROTOCOL_VERSION}\r\n".encode("ascii"))

    async def disconnect(self) -> None:
        await super().disconnect()
        self.outbox.clear()

    async def every_step(self) -> None:
        lines, self.outbox = self.outbox, []
        for line in lines:
            served: dict[str, Value] = {}
            if line.startswith(b"SEEN"):
                mac = line.split(b" ")[3].decode("ascii")
                self.emitted.add(mac)
                served["mac"] = mac_digest(mac)
            await self.transmit(line, served=served)

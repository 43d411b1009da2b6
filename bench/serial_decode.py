"""Serial decoding benchmark: readings per second each serial driver decodes from a byte stream, on one core.

    .venv/bin/python -m bench.serial_decode [--repeat 5]

Input streams are built from real data where it exists: SDS011 frames carry the
PM2.5/PM10 series of the Sensor.Community node in Aberdeen; the NMEA stream is a
real Quectel L76K capture (gpsd project) with every sentence type the receiver
sends, of which GGA and RMC become readings.  PMS5003 frames carry the same PM
series; no public data set publishes MAC addresses, so the pedestrian-counter
lines come from a seeded population.  Streams are fed in 256-byte reads, as a
UART delivers them.  A figure is the best of ``--repeat`` runs of decode plus
Reading construction (what the driver does per chunk), divided into readings.
"""

from __future__ import annotations

import argparse
import csv
import random
import time
from collections.abc import Callable

from bench.datasets import datasets
from drivers.sdk import DeviceContext
from drivers.serial.nmea import NmeaDriver
from drivers.serial.pedestrian import PedestrianCounterDriver
from drivers.serial.pms5003 import Pms5003Driver
from drivers.serial.sds011 import Sds011Driver
from drivers.serial.stream import StreamDriver

DATASETS = datasets()
SDS011_CSV = DATASETS / "sensor_community_sds011_8554_aberdeen_2019-01-10_2019-03-12.csv"
NMEA_LOG = DATASETS / "gpsd_quectel-l76k-nmea.log"
CHUNK = 256


def pm_series() -> list[tuple[float, float]]:
    with SDS011_CSV.open(newline="") as f:
        return [(float(row["P2"]), float(row["P1"])) for row in csv.DictReader(f, delimiter=";")]


def sds011_stream() -> bytes:
    out = bytearray()
    for pm25, pm10 in pm_series():
        body = round(pm25 * 10).to_bytes(2, "little") + round(pm10 * 10).to_bytes(2, "little") + b"\xa1\x60"
        out += b"\xaa\xc0" + body + bytes([sum(body) & 0xFF, 0xAB])
    return bytes(out)


def pms5003_stream() -> bytes:
    out = bytearray()
    for pm25, pm10 in pm_series():
        words = [round(pm25 * 0.7), round(pm25), round(pm10)] * 2 + [1200, 350, 60, 9, 2, 1, 0]
        body = b"\x42\x4d\x00\x1c" + b"".join(w.to_bytes(2, "big") for w in words)
        out += body + (sum(body) & 0xFFFF).to_bytes(2, "big")
    return bytes(out)


def nmea_stream() -> bytes:
    lines = [line for line in NMEA_LOG.read_bytes().splitlines(keepends=True) if line.startswith(b"$")]
    return b"".join(lines) * 20


def pedestrian_stream() -> bytes:
    rng = random.Random(1)
    phones = [":".join(f"{rng.randrange(256):02x}" for _ in range(6)) for _ in range(5000)]
    ts = 1764205200000
    lines = []
    for i in range(30000):
        ts += rng.randrange(50, 400)
        lines.append(f"SEEN {ts} {rng.choice(('wifi', 'ble'))} {rng.choice(phones)} {-rng.randrange(30, 96)}\r\n")
        if i % 200 == 0:
            lines.append(f"HB {ts} {i} {i // 10}\r\n")
    return "".join(lines).encode()


def run(driver_cls: type[StreamDriver], stream: bytes, options: dict) -> tuple[int, float]:
    driver = driver_cls(DeviceContext(device_id="dev-1", options=options))
    count = 0
    began = time.perf_counter()
    for i in range(0, len(stream), CHUNK):
        for frame in driver.decoder.feed(stream[i : i + CHUNK]):
            count += len(driver.readings(frame, 0))
    return count, time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    cases: list[tuple[str, type[StreamDriver], Callable[[], bytes], dict]] = [
        ("sds011 (Sensor.Community PM series)", Sds011Driver, sds011_stream, {"mode": "active"}),
        ("pms5003 (same PM series)", Pms5003Driver, pms5003_stream, {"mode": "active"}),
        ("nmea-gps (Quectel L76K capture x20)", NmeaDriver, nmea_stream, {}),
        ("pedestrian-counter (seeded population)", PedestrianCounterDriver, pedestrian_stream, {}),
    ]
    print(f"Serial decoding on one core, {CHUNK}-byte reads, best of {args.repeat}\n")
    print(f"{'driver (input)':<42} {'bytes':>10} {'readings':>9} {'readings/s':>12} {'MB/s':>6}")
    for name, cls, make, options in cases:
        stream = make()
        best = min((run(cls, stream, options) for _ in range(args.repeat)), key=lambda r: r[1])
        count, seconds = best
        print(f"{name:<42} {len(stream):>10,} {count:>9,} {count / seconds:>12,.0f} {len(stream) / seconds / 1e6:>6.1f}")


if __name__ == "__main__":
    main()

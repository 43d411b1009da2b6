"""OXP codec benchmark: bytes per reading on the wire, and encode/decode throughput on one core.

    .venv/bin/python -m bench.codec [--hours 24] [--quick]

Every figure comes from real recordings in ../shared/datasets (read in place):
each dataset is cut into batches aligned to 5-minute and 1-hour spans and each
batch is encoded five ways; the table shows total bytes / total readings.

  OXP zstd / OXP deflate  the sealed batch exactly as sent: COSE_Sign1 envelope,
                          OXP header, Ed25519 signature and compressed payload
  ThingsBoard JSON        the ThingsBoard IoT Gateway telemetry payload, one MQTT
                          message per device and timestamp:
                          {"<device>":[{"ts":<ms>,"values":{"<name>":<value>,...}}]}
                          (compact JSON, payload bytes only: no MQTT framing)
  SenML-JSON+gzip         RFC 8428 JSON of the batch (bn/bt, relative t), gzip -9
  SenML-CBOR+zstd         RFC 8428 CBOR of the batch, zstd level 19
Neither SenML nor ThingsBoard figure includes a signature; OXP's does (about 64
bytes of signature plus ~130 bytes of header per batch).

The "reference station" is one gateway on one pole, overlaid from real series
at their native rates on one clock: an electricity meter (AMPds2, 11 channels,
60 s, in the role of the SDM630), a particulate sensor (Sensor.Community SDS011,
2 channels, ~150 s), a weather station (data.gov.sg S43, 5 channels, 60 s) and
a GPS (Go!Track trajectories laid end to end, latitude/longitude every ~6 s at
the 1e-7 degree resolution the nmea-gps driver declares: a moving receiver,
the hardest case for the codec; the figures are also shown without it).
Resolutions are the decimals the source wrote (as `ocn-edge oxp encode` infers).

"as released (demo policy)" is the same station after the real privacy stage
(edge.privacy.PrivacyStage) under policies/demo.toml, i.e. what actually leaves
the gateway: the GPS generalized to the centre of its 250 m grid cell, the meter
released as 5-minute mean/min/max, particulate and weather unchanged. The raw
station above is the worst case (a moving GPS at 1e-7 degrees); both are shown.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.datasets import datasets
from edge.demo import DEMO_POLICY
from edge.privacy.load import load_policy
from edge.privacy.stage import PrivacyStage
from edge.protocol import Batch, BatchHeader, compression, key_id, open_batch, seal_batch, senml_cbor, to_senml
from edge.protocol import codec as oxp_codec
from edge.protocol.types import Channel, Reading

DATASETS = datasets()  # $OCN_DATASETS, else ../shared/datasets beside the checkout
SPANS = (("5 min", 300), ("1 h", 3600))
KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))


@dataclass
class Source:
    """One dataset as a gateway would see it: declared channels and time-ordered readings."""

    name: str
    channels: list[Channel]
    readings: list[Reading]


def _resolution(texts: Iterable[str]) -> float | None:
    decimals = [len(t.split(".")[1]) for t in texts if "." in t]
    return 10.0 ** -max(decimals) if decimals else None


def _number(text: str) -> int | float:
    return float(text) if "." in text or "e" in text.lower() else int(text)


def _columns(
    rows: list[dict], *, time_ms: Callable[[dict], int], columns: dict[str, tuple[str, str]], name: str
) -> Source:
    """Readings of the given columns (csv column -> (channel id, unit)); empty cells are gaps."""
    channels = []
    readings = []
    for column, (channel_id, unit) in columns.items():
        texts = [row[column] for row in rows if row[column] != ""]
        channels.append(Channel(channel_id, unit, resolution=_resolution(texts)))
    for row in rows:
        t = time_ms(row)
        for column, (channel_id, unit) in columns.items():
            if row[column] != "":
                readings.append(Reading(channel_id, t, _number(row[column]), unit))
    return Source(name, channels, readings)


def _iso_ms(text: str, tz: timezone = UTC) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=tz).timestamp() * 1000)


def _sensor_community(file: str, columns: dict[str, tuple[str, str]], name: str) -> Source:
    """A Sensor.Community archive CSV (semicolon-separated, UTC ISO timestamps)."""
    with (DATASETS / file).open() as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    return _columns(rows, time_ms=lambda r: _iso_ms(r["timestamp"]), columns=columns, name=name)


def load_sds011() -> Source:
    return _sensor_community(
        "sensor_community_sds011_8554_aberdeen_2019-01-10_2019-03-12.csv",
        {"P1": ("pm-1/pm10", "ug/m3"), "P2": ("pm-1/pm2_5", "ug/m3")},
        "SDS011 Aberdeen (2 ch, ~150 s)",
    )


def load_dht22() -> Source:
    return _sensor_community(
        "sensor_community_dht22_8555_aberdeen_2019-01-10_2019-03-12.csv",
        {"temperature": ("th-1/temperature", "Cel"), "humidity": ("th-1/humidity", "%RH")},
        "DHT22 Aberdeen (2 ch, ~150 s)",
    )


AMPDS_UNITS = {"V": "V", "I": "A", "f": "Hz", "DPF": "/", "APF": "/", "P": "W", "Pt": "Wh", "Q": "var", "Qt": "varh", "S": "VA", "St": "VAh"}


def load_ampds2() -> Source:
    with (DATASETS / "ampds2_Electricity_B1E-11.csv").open() as f:
        rows = list(csv.DictReader(f))
    return _columns(
        rows,
        time_ms=lambda r: int(r["unix_ts"]) * 1000,
        columns={col: (f"meter-1/{col.lower()}", unit) for col, unit in AMPDS_UNITS.items()},
        name="AMPds2 sub-meter (11 ch, 60 s)",
    )


def load_weather() -> Source:
    sgt = timezone(timedelta(hours=8))
    with (DATASETS / "data_gov_sg_weather_station_S43_2017-02_1min.csv").open() as f:
        rows = list(csv.DictReader(f))
    return _columns(
        rows,
        time_ms=lambda r: _iso_ms(r["timestamp_sgt"], sgt),
        columns={
            "air-temperature": ("weather-1/temperature", "Cel"),
            "relative-humidity": ("weather-1/humidity", "%RH"),
            "wind-speed": ("weather-1/wind_speed", "kn"),
            "wind-direction": ("weather-1/wind_direction", "deg"),
            "rainfall": ("weather-1/rain", "mm"),
        },
        name="S43 weather station (5 ch, 60 s)",
    )


def load_fremont() -> Source:
    with (DATASETS / "seattle_FremontBridge_hourly.csv").open() as f:
        rows = list(csv.DictReader(f))
    return _columns(
        rows,
        # local time, read as UTC: only the spacing matters here
        time_ms=lambda r: int(datetime.strptime(r["Date"], "%m/%d/%Y %I:%M:%S %p").replace(tzinfo=UTC).timestamp() * 1000),
        columns={
            "Fremont Bridge East Sidewalk": ("bikes-1/east", "count"),
            "Fremont Bridge West Sidewalk": ("bikes-1/west", "count"),
        },
        name="Fremont Bridge bikes (2 ch, 1 h)",
    )


def _gotrack_rows() -> list[dict]:
    with (DATASETS / "go_track_trackspoints.csv").open() as f:
        return list(csv.DictReader(f))


def _gps_channels() -> list[Channel]:
    return [Channel("gps-1/latitude", "lat", resolution=1e-7), Channel("gps-1/longitude", "lon", resolution=1e-7)]


def load_gotrack() -> Source:
    readings = []
    for row in _gotrack_rows():
        t = _iso_ms(row["time"])
        readings.append(Reading("gps-1/latitude", t, float(row["latitude"]), "lat"))
        readings.append(Reading("gps-1/longitude", t, float(row["longitude"]), "lon"))
    readings.sort(key=lambda r: r.ts_ms)
    return Source("Go!Track GPS (2 ch, ~6 s, moving)", _gps_channels(), readings)


def gps_end_to_end(start_ms: int) -> list[Reading]:
    """Go!Track tracks laid end to end from ``start_ms``, keeping each track's own time steps."""
    readings = []
    clock = start_ms
    last_track, last_t = None, 0
    for row in _gotrack_rows():
        t = _iso_ms(row["time"])
        if row["track_id"] != last_track:
            clock += 6_000
        elif t > last_t:
            clock += t - last_t
        last_track, last_t = row["track_id"], t
        readings.append(Reading("gps-1/latitude", clock, float(row["latitude"]), "lat"))
        readings.append(Reading("gps-1/longitude", clock, float(row["longitude"]), "lon"))
    return readings


def _nmea_degrees(value: str, hemisphere: str) -> float:
    whole = int(float(value) / 100)
    degrees = whole + (float(value) - whole * 100) / 60
    return -degrees if hemisphere in ("S", "W") else degrees


def load_nmea() -> Source:
    """GGA and RMC fixes of the Quectel L76K capture (stationary, 5 Hz, 30 s) as the nmea-gps driver emits them."""
    channels = [
        *_gps_channels(),
        Channel("gps-1/altitude", "m", resolution=0.1),
        Channel("gps-1/fix_quality", resolution=1.0),
        Channel("gps-1/satellites", "count", resolution=1.0),
        Channel("gps-1/speed", "m/s", resolution=0.01),
    ]
    readings = []
    day = datetime(2026, 8, 5, tzinfo=UTC)
    for line in (DATASETS / "gpsd_quectel-l76k-nmea.log").read_text().splitlines():
        fields = line.split("*")[0].split(",")
        if not fields[0].endswith(("GGA", "RMC")) or len(fields) < 10:
            continue
        stamp = fields[1]
        if not stamp:
            continue
        t = int((day + timedelta(hours=int(stamp[:2]), minutes=int(stamp[2:4]), seconds=float(stamp[4:]))).timestamp() * 1000)
        if fields[0].endswith("GGA") and fields[6] != "0":
            readings += [
                Reading("gps-1/latitude", t, _nmea_degrees(fields[2], fields[3]), "lat"),
                Reading("gps-1/longitude", t, _nmea_degrees(fields[4], fields[5]), "lon"),
                Reading("gps-1/altitude", t, float(fields[9]), "m"),
                Reading("gps-1/fix_quality", t, int(fields[6])),
                Reading("gps-1/satellites", t, int(fields[7]), "count"),
            ]
        elif fields[0].endswith("RMC") and fields[2] == "A":
            readings.append(Reading("gps-1/speed", t, round(float(fields[7]) * 0.514444, 2), "m/s"))
    return Source("Quectel L76K NMEA (6 ch, 5 Hz, 30 s only)", channels, readings)


def _shift(readings: list[Reading], to_ms: int) -> list[Reading]:
    offset = to_ms - readings[0].ts_ms
    return [Reading(r.channel, r.ts_ms + offset, r.value, r.unit, r.quality) for r in readings]


def reference_station(hours: float, *, with_gps: bool = True) -> Source:
    """One pole: meter, particulate sensor, weather station (and a GPS) on one clock, ``hours`` long."""
    start = 1_767_225_600_000  # 2026-01-01T00:00:00Z
    end = start + int(hours * 3_600_000)
    channels: list[Channel] = []
    readings: list[Reading] = []
    for source in (load_ampds2(), load_sds011(), load_weather()):
        channels += source.channels
        readings += [r for r in _shift(source.readings, start) if r.ts_ms < end]
    if with_gps:
        channels += _gps_channels()
        readings += [r for r in gps_end_to_end(start) if r.ts_ms < end]
    readings.sort(key=lambda r: r.ts_ms)
    name = f"reference station, {hours:g} h ({'with' if with_gps else 'without'} GPS)"
    return Source(name, channels, readings)




def as_released(source: Source, policy_path: Path = DEMO_POLICY) -> Source:
    """The readings of ``source`` as they leave the gateway: run through the real privacy stage under a policy.

    Under policies/demo.toml the GPS is generalized to the centre of its 250 m grid cell and
    the meter is released as 5-minute mean/min/max; particulate and weather pass unchanged.
    """
    policy = load_policy(policy_path)
    clock = [source.readings[0].ts_ms if source.readings else 0]
    stage = PrivacyStage(policy, source.channels, clock_ms=lambda: clock[0], rng=random.Random(1))
    released: list[Reading] = []
    for r in source.readings:
        clock[0] = r.ts_ms
        released += stage.tick(r.ts_ms)
        released += stage.process(r)
    released += stage.flush(clock[0])
    released.sort(key=lambda r: r.ts_ms)
    name = source.name.replace("reference station", "as released (demo policy)")
    return Source(name, list(stage.output_channels()), released)


def windows(source: Source, span_s: int) -> list[list[Reading]]:
    span = span_s * 1000
    groups: dict[int, list[Reading]] = {}
    for r in source.readings:
        groups.setdefault(r.ts_ms // span, []).append(r)
    return [groups[k] for k in sorted(groups)]


def _header(seq: int, codec: str, created_ms: int) -> BatchHeader:
    return BatchHeader("pole-0042", key_id(KEY), 1, seq, bytes(32), codec, created_ms, {"readings_dropped": 0})


def _channels_of(source: Source, group: list[Reading]) -> tuple[Channel, ...]:
    used = {r.channel for r in group}
    return tuple(c for c in source.channels if c.id in used)


def thingsboard_bytes(group: list[Reading]) -> int:
    messages: dict[tuple[str, int], dict] = {}
    for r in group:
        device, _, name = r.channel.partition("/")
        messages.setdefault((device, r.ts_ms), {})[name] = r.value
    return sum(
        len(json.dumps({device: [{"ts": ts, "values": values}]}, separators=(",", ":")).encode())
        for (device, ts), values in messages.items()
    )


ZSTD19 = zstandard.ZstdCompressor(level=19)


def sizes(source: Source, span_s: int) -> dict[str, int]:
    """Total bytes of each encoding over all batches of ``span_s`` seconds."""
    total = dict.fromkeys(["OXP zstd", "OXP deflate", "ThingsBoard JSON", "SenML-JSON+gzip", "SenML-CBOR+zstd"], 0)
    for seq, group in enumerate(windows(source, span_s), start=1):
        channels = _channels_of(source, group)
        created = group[-1].ts_ms
        total["OXP zstd"] += len(seal_batch(_header(seq, "zstd", created), channels, group, KEY))
        total["OXP deflate"] += len(seal_batch(_header(seq, "deflate", created), channels, group, KEY))
        total["ThingsBoard JSON"] += thingsboard_bytes(group)
        view = Batch(_header(seq, "zstd", created), channels, tuple(group))
        senml = json.dumps(to_senml(view), separators=(",", ":")).encode()
        total["SenML-JSON+gzip"] += len(gzip.compress(senml, 9, mtime=0))
        total["SenML-CBOR+zstd"] += len(ZSTD19.compress(senml_cbor(view)))
    return total


def print_sizes(sources: list[Source]) -> None:
    formats = ["OXP zstd", "OXP deflate", "ThingsBoard JSON", "SenML-JSON+gzip", "SenML-CBOR+zstd"]
    print("\nBytes per reading on the wire (envelope and signature included for OXP)\n")
    head = f"{'dataset':46} {'span':6} {'readings':>9} " + " ".join(f"{f:>17}" for f in formats)
    print(head)
    print("-" * len(head))
    for source in sources:
        for label, span in SPANS:
            total = sizes(source, span)
            n = len(source.readings)
            print(f"{source.name:46} {label:6} {n:>9} " + " ".join(f"{total[f] / n:>17.2f}" for f in formats))


def fixed_cost(source: Source) -> None:
    """Where the bytes of a batch go: envelope, channel table, readings."""
    print(f"\nWhere the bytes go, {source.name} (averages per batch)")
    print("  envelope: COSE structure, protected header, signature; table: the payload of the same")
    print("  channels with one reading each (channel table plus first values); data: the rest\n")
    print(f"{'span':6} {'readings':>9} {'sealed B':>9} {'envelope B':>11} {'table B':>8} {'data B/rd':>10}")
    for label, span in SPANS:
        groups = windows(source, span)
        sealed = envelope = table = 0
        for seq, group in enumerate(groups, 1):
            channels = _channels_of(source, group)
            data = seal_batch(_header(seq, "zstd", group[-1].ts_ms), channels, group, KEY)
            payload = compression.compress(oxp_codec.encode_body(channels, group), "zstd")
            # the table alone: the same channels, one reading each at the batch's first time
            first = [Reading(c.id, group[0].ts_ms, next(r.value for r in group if r.channel == c.id), c.unit) for c in channels]
            table += len(compression.compress(oxp_codec.encode_body(channels, first), "zstd"))
            sealed += len(data)
            envelope += len(data) - len(payload)
        n, b = len(source.readings), len(groups)
        print(f"{label:6} {n / b:>9.0f} {sealed / b:>9.0f} {envelope / b:>11.0f} {table / b:>8.0f} {(sealed - envelope - table) / n:>10.2f}")


def throughput(source: Source, span_s: int, repeats: int) -> tuple[float, float]:
    """Readings per second sealing (encode, compress, sign) and opening (verify, decompress, decode)."""
    batches = windows(source, span_s)
    prepared = [(_header(i, "zstd", g[-1].ts_ms), _channels_of(source, g), g) for i, g in enumerate(batches, 1)]
    n = len(source.readings)
    best_seal = best_open = float("inf")
    public = KEY.public_key()
    for _ in range(repeats):
        start = time.perf_counter()
        sealed = [seal_batch(h, c, g, KEY) for h, c, g in prepared]
        best_seal = min(best_seal, time.perf_counter() - start)
        start = time.perf_counter()
        for data in sealed:
            open_batch(data, public)
        best_open = min(best_open, time.perf_counter() - start)
    return n / best_seal, n / best_open


def level_sweep(source: Source) -> None:
    print(f"\nzstd level on the {source.name}: bytes per reading and compression speed\n")
    print(f"{'level':>5} {'5 min B/rd':>11} {'1 h B/rd':>9} {'compress rd/s (1 h)':>20}")
    bodies: dict[int, list[tuple[bytes, int]]] = {}
    for _, span in SPANS:
        bodies[span] = []
        for seq, group in enumerate(windows(source, span), 1):
            sealed = seal_batch(_header(seq, "zstd", group[-1].ts_ms), _channels_of(source, group), group, KEY)
            payload_len = len(compression.compress(oxp_codec.encode_body(_channels_of(source, group), group), "zstd"))
            bodies[span].append((oxp_codec.encode_body(_channels_of(source, group), group), len(sealed) - payload_len))
    n = len(source.readings)
    for level in (1, 3, 6, 9, 12, 15, 19):
        per_span = {}
        for _, span in SPANS:
            per_span[span] = sum(len(compression.compress(b, "zstd", level=level)) + overhead for b, overhead in bodies[span]) / n
        start = time.perf_counter()
        for body, _ in bodies[3600]:
            compression.compress(body, "zstd", level=level)
        rate = n / (time.perf_counter() - start)
        mark = "  <- pinned (ZSTD_LEVEL)" if level == compression.ZSTD_LEVEL else ""
        print(f"{level:>5} {per_span[300]:>11.3f} {per_span[3600]:>9.3f} {rate:>20,.0f}{mark}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hours", type=float, default=24.0, help="length of the reference station run (default 24)")
    parser.add_argument("--quick", action="store_true", help="reference station only, no dataset table")
    args = parser.parse_args(argv)

    station = reference_station(args.hours)
    station_no_gps = reference_station(args.hours, with_gps=False)
    sources = [station, as_released(station), station_no_gps]
    if not args.quick:
        sources += [load_ampds2(), load_sds011(), load_dht22(), load_weather(), load_fremont(), load_gotrack(), load_nmea()]
    print_sizes(sources)

    for source in (station, station_no_gps):
        fixed_cost(source)

    print(f"\nThroughput on one core (one Python thread), {station.name}, best of 3\n")
    for label, span in SPANS:
        seal_rate, open_rate = throughput(station, span, 3)
        print(f"  {label:6} batches: seal {seal_rate:>10,.0f} readings/s   open (verify+decode) {open_rate:>10,.0f} readings/s")
    level_sweep(station)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

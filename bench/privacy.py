"""Privacy stage benchmark: CPU time per reading for each rule type, and per draw of the discrete Laplace sampler.

    .venv/bin/python -m bench.privacy [--repeat N]

Inputs are real where real data exists: PM2.5 from the Sensor.Community SDS011 node
in Aberdeen and smartphone GPS fixes from the go_track data set (../shared/datasets).
No public data set publishes MAC addresses (they are personal data), so the MACs for
pseudonymize and count_distinct are drawn from a seeded population of 5,000 phones,
each heard many times, as a pedestrian counter hears them.  Each figure is the best
of N runs of ``process`` over every reading (windows closed by ``tick`` included),
divided by the number of readings.
"""

from __future__ import annotations

import argparse
import csv
import random
import sys
import time
from datetime import UTC, datetime

from bench.datasets import datasets
from edge.privacy import PrivacyStage, parse_policy
from edge.privacy.dp import discrete_laplace, noise_scale
from edge.protocol.types import Channel, Kind, Reading

DATASETS = datasets()
SDS011 = DATASETS / "sensor_community_sds011_8554_aberdeen_2019-01-10_2019-03-12.csv"
GPS = DATASETS / "go_track_trackspoints.csv"

HEADER = """
[policy]
organisation = "bench"
contact = "bench@example"
purpose = "benchmark"
[privacy_budget]
epsilon = 1000000.0
"""

RULES = {
    "keep": '[channels."pm-1/pm2_5"]\nrule = "keep"\n',
    "drop": '[channels."pm-1/pm2_5"]\nrule = "drop"\n',
    "default deny": '[channels."other/x"]\nrule = "keep"\n',
    "quantize": '[channels."pm-1/pm2_5"]\nrule = "quantize"\nstep = 0.5\n',
    "round_time": '[channels."pm-1/pm2_5"]\nrule = "round_time"\nstep = "1m"\n',
    "aggregate (mean,min,max / 1h)": '[channels."pm-1/pm2_5"]\nrule = "aggregate"\nwindow = "1h"\nfunctions = ["mean", "min", "max"]\n',
    "generalize_location (250 m grid)": '[channels."gps-1/*"]\nrule = "generalize_location"\ngrid = "250m"\n',
    "generalize_location (geohash 6)": '[channels."gps-1/*"]\nrule = "generalize_location"\ngeohash = 6\n',
    "pseudonymize (64 bits)": '[channels."ped-1/mac"]\nrule = "pseudonymize"\nbits = 64\n',
    "count_distinct (15m, k=5)": '[channels."ped-1/mac"]\nrule = "count_distinct"\nwindow = "15m"\nk = 5\n',
    "count_distinct (15m, k=5, DP eps 0.5)": '[channels."ped-1/mac"]\nrule = "count_distinct"\nwindow = "15m"\nk = 5\nepsilon = 0.5\n',
    "count_distinct (DP + max_windows 16)": '[channels."ped-1/mac"]\nrule = "count_distinct"\nwindow = "15m"\nk = 5\nepsilon = 0.5\nmax_windows = 16\n',
}

CHANNELS = [
    Channel("pm-1/pm2_5", unit="ug/m3", resolution=0.1),
    Channel("gps-1/latitude", unit="lat", resolution=1e-7, personal=True),
    Channel("gps-1/longitude", unit="lon", resolution=1e-7, personal=True),
    Channel("ped-1/mac", kind=Kind.STRING, personal=True),
]


def _ms(text: str, fmt: str) -> int:
    return int(datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp() * 1000)


def pm_readings() -> list[Reading]:
    with SDS011.open(newline="") as f:
        rows = list(csv.DictReader(f, delimiter=";"))
    return [Reading("pm-1/pm2_5", _ms(r["timestamp"], "%Y-%m-%dT%H:%M:%S"), float(r["P2"]), "ug/m3") for r in rows if r["P2"]]


def gps_readings() -> list[Reading]:
    out = []
    with GPS.open(newline="") as f:
        for r in csv.DictReader(f):
            ts = _ms(r["time"], "%Y-%m-%d %H:%M:%S")
            out.append(Reading("gps-1/latitude", ts, float(r["latitude"]), "lat"))
            out.append(Reading("gps-1/longitude", ts, float(r["longitude"]), "lon"))
    return sorted(out, key=lambda r: r.ts_ms)


def mac_readings(n: int = 40_000, phones: int = 5_000) -> list[Reading]:
    rng = random.Random(6)
    population = [":".join(f"{b:02x}" for b in rng.randbytes(6)) for _ in range(phones)]
    start = 1_795_737_600_000
    return [Reading("ped-1/mac", start + i * 250, rng.choice(population)) for i in range(n)]


def run(rule: str, readings: list[Reading], repeat: int) -> float:
    """Best seconds per reading over ``repeat`` runs, windows closed as time passes."""
    policy = parse_policy(HEADER + RULES[rule])
    best = float("inf")
    now = [0]
    for _ in range(repeat):
        now[0] = readings[0].ts_ms
        stage = PrivacyStage(policy, CHANNELS, clock_ms=lambda: now[0])
        next_tick = now[0] + 1000
        t0 = time.perf_counter()
        for reading in readings:
            now[0] = reading.ts_ms
            stage.process(reading)
            if reading.ts_ms >= next_tick:  # the runtime ticks once a second
                stage.tick(reading.ts_ms)
                next_tick = reading.ts_ms + 1000
        stage.flush(now[0])
        best = min(best, (time.perf_counter() - t0) / len(readings))
    return best


def sampler(epsilon: float, draws: int = 20_000) -> float:
    rng = random.SystemRandom()
    t, s = noise_scale(epsilon)
    t0 = time.perf_counter()
    for _ in range(draws):
        discrete_laplace(rng, t, s)
    return (time.perf_counter() - t0) / draws


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="runs per rule; the best is reported (default 3)")
    args = parser.parse_args()
    pm, gps, macs = pm_readings(), gps_readings(), mac_readings()
    inputs: dict[str, tuple[str, list[Reading]]] = {}
    for rule in RULES:
        if rule.startswith("generalize"):
            inputs[rule] = ("go_track GPS", gps)
        elif rule.startswith(("pseudonymize", "count_distinct")):
            inputs[rule] = ("5,000 phones", macs)
        else:
            inputs[rule] = ("SDS011 PM2.5", pm)
    print(f"privacy stage, CPU time per reading (best of {args.repeat}, one core, Python {sys.version.split()[0]})")
    print(f"{'rule':<40} {'input':<14} {'readings':>9} {'µs/reading':>11} {'readings/s':>11}")
    for rule, (label, readings) in inputs.items():
        per = run(rule, readings, args.repeat)
        print(f"{rule:<40} {label:<14} {len(readings):>9,} {per * 1e6:>11.2f} {1 / per:>11,.0f}")
    print()
    print("discrete Laplace sampler (exact, integer-only, SystemRandom), per draw")
    for epsilon in (1.0, 0.5, 0.1):
        print(f"  epsilon {epsilon:<4}  {sampler(epsilon) * 1e6:8.2f} µs")


if __name__ == "__main__":
    main()

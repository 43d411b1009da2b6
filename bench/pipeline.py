"""Pipeline benchmark: readings per second through the whole gateway, and its CPU time per 1,000 readings.

    .venv/bin/python -m bench.pipeline [--readings 440000] [--repeat 3] [--policy keep|demo|both] [--quick]

A real gateway (edge.runtime.Gateway, built from a gateway.toml as in production) runs in
this process: driver → privacy → batcher → spool → uplink, delivering to a real hub
(`ocn-edge hub`, SQLite) in its own process on loopback, enrolled as a gateway enrols.
The only thing not real is the device: a synthetic meter driver emits the AMPds2 sub-meter
recording (11 channels) as fast as the pipeline takes it, one row per second of a
simulated clock that the gateway also runs on, so privacy windows and batch spans close as
they would over hours of operation (5-minute batches), in seconds.

Two policies:
  keep         every reading is released unchanged: every stage handles every reading
  demo         policies/demo.toml: the meter released as 5-minute mean/min/max (the
               privacy stage aggregates; few readings reach the batcher)

readings/s is readings taken from the driver divided by the wall time from the gateway's
start until every reading is in the hub (the gateway's stop flushes and drains); CPU is this
process's CPU time (time.process_time: the gateway's every thread, the synthetic driver
included) over the same span, divided by the readings taken from the driver.  The hub's
CPU time is shown beside it; the hub shares the machine's cores.  Best of --repeat runs.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from bench.datasets import dataset
from bench.hub import cpu_seconds, spawn_hub
from drivers.sdk import DeviceContext, Driver, Emit, Manifest
from edge.config import load_config
from edge.demo import DEMO_POLICY
from edge.enrol import enrol
from edge.protocol.types import Channel, Reading
from edge.runtime import Gateway

DATASET = "ampds2_Electricity_B1E-11.csv"  # in $OCN_DATASETS, else ../shared/datasets
# AMPds2 column -> (channel name, unit, resolution): the decimals the recording was written with.
COLUMNS = {"V": ("voltage", "V", 0.1), "I": ("current", "A", 0.1), "f": ("frequency", "Hz", 0.01), "DPF": ("dpf", "/", 0.01),
           "APF": ("apf", "/", 0.01), "P": ("power", "W", 1.0), "Pt": ("energy", "Wh", 1.0), "Q": ("reactive_power", "var", 1.0),
           "Qt": ("reactive_energy", "varh", 1.0), "S": ("apparent_power", "VA", 1.0), "St": ("apparent_energy", "VAh", 1.0)}
DEVICE = "meter-1"
GATEWAY_ID = "bench-pipeline"
STEP_MS = 1_000  # one meter row per simulated second
ROOT = Path(__file__).resolve().parent.parent

KEEP_POLICY = """\
[policy]
name = "bench: keep everything"
version = "1"
organisation = "OCN bench"
contact = "bench@ocn.example"
purpose = "Measure the pipeline"
retention = "None"
access = "None"

[channels."meter-*/*"]
rule = "keep"
purpose = "Energy use"
"""


def meter_rows(count: int) -> list[list[float]]:
    """The first ``count`` rows of the recording (cycled if it is shorter), as numbers in COLUMNS order."""
    rows: list[list[float]] = []
    with dataset(DATASET).open(newline="") as f:
        for row in csv.DictReader(f):
            rows.append([float(row[c]) for c in COLUMNS])
            if len(rows) >= count:
                break
    while len(rows) < count:
        rows += rows[: count - len(rows)]
    return rows


class SimulatedClock:
    """The time the meter and the gateway share: it advances one step per meter row, far faster than real time."""

    def __init__(self, start_ms: int) -> None:
        self.ms = start_ms

    def now_ms(self) -> int:
        return self.ms


def synthetic_meter(rows: list[list[float]], clock: SimulatedClock, finished: asyncio.Event) -> type[Driver]:
    """A driver class that emits ``rows`` as fast as the gateway takes them, then idles until cancelled."""
    units = list(COLUMNS.values())

    class SyntheticMeter(Driver):
        manifest: ClassVar[Manifest] = Manifest(name="bench-meter", version="1", summary="the AMPds2 recording, as fast as it is taken")

        def __init__(self, ctx: DeviceContext) -> None:
            super().__init__(ctx)
            self.ids = [ctx.channel_id(name) for name, _, _ in units]

        def channels(self) -> Sequence[Channel]:
            return [Channel(cid, unit, resolution=res) for cid, (_, unit, res) in zip(self.ids, units, strict=True)]

        async def run(self, emit: Emit) -> None:
            if finished.is_set():  # restarted after a failure: the run is void, and the row count says so
                await asyncio.Event().wait()
            for row in rows:
                clock.ms += STEP_MS
                ts = clock.ms
                for cid, value, (_, unit, _) in zip(self.ids, row, units, strict=True):
                    await emit(Reading(cid, ts, value, unit))
            finished.set()
            await asyncio.Event().wait()

    return SyntheticMeter


def gateway_toml(state: Path, hub_url: str, policy: Path) -> str:
    return f"""\
[gateway]
id = "{GATEWAY_ID}"
site = "bench"
latitude = 0.0
longitude = 0.0
state_dir = {json.dumps(str(state))}
log_level = "warning"

[[devices]]
name = "{DEVICE}"
driver = "bench-meter"
poll_interval = "1s"

[privacy]
policy = {json.dumps(str(policy))}

[batch]
span = "5m"
flush_interval = "30s"
max_readings = 20000
codec = "zstd"

[spool]
max_size = "1GB"

[uplink]
hub = "{hub_url}"
key = {json.dumps(str(state / "device.key"))}

[local_api]
enabled = false
"""


def hub_command(*args: str) -> list[str]:
    # This tree's hub, not whichever `ocn-edge` is installed: the bench also runs in a worktree of an older commit.
    return [sys.executable, "-c", "import sys; from edge.cli import main; sys.exit(main())", "hub", *args]


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "hil-sim"), os.environ.get("PYTHONPATH", "")])}


async def start_hub(db: str, state: Path) -> tuple[asyncio.subprocess.Process, str]:
    return await spawn_hub(
        *hub_command("--listen", "127.0.0.1:0", "--db", db, "--state-dir", str(state), "--admin-token", "bench-admin-token",
                     "--rate", "100000", "--burst", "1000000", "--readings-rate", "0", "--log-level", "warning"),
        env=child_env(), cwd=ROOT,
    )


async def hub_readings(db: str) -> int:
    """Readings the hub stored for the gateway (read from its database once it has stopped)."""
    from hub.database import open_store

    store = await open_store(db)
    try:
        device = await store.device(GATEWAY_ID)
        return device.readings_stored if device is not None else 0
    finally:
        await store.close()


@dataclasses.dataclass
class Run:
    policy: str
    readings: int
    stored: int
    seconds: float
    cpu_s: float
    hub_cpu_s: float

    @property
    def readings_s(self) -> float:
        return self.readings / self.seconds

    @property
    def cpu_ms_per_1000(self) -> float:
        return self.cpu_s * 1000 / self.readings * 1000


async def run_once(policy_name: str, rows: list[list[float]], directory: Path) -> Run:
    state = directory / "gateway"
    state.mkdir()
    db = f"sqlite:///{directory / 'hub.db'}"
    token = subprocess.run(hub_command("token", "create", "--db", db, "--state-dir", str(directory / "hub"), "--uses", "1", "--approve"),
                           check=True, capture_output=True, text=True, env=child_env(), cwd=ROOT).stdout.strip()
    proc, url = await start_hub(db, directory / "hub")
    try:
        policy = DEMO_POLICY
        if policy_name == "keep":
            policy = directory / "keep.toml"
            policy.write_text(KEEP_POLICY)
        # The simulated clock ends about now: the hub holds readings against its own clock (protocol §8.5).
        clock = SimulatedClock(time.time_ns() // 1_000_000 - len(rows) * STEP_MS)
        finished = asyncio.Event()
        meter = synthetic_meter(rows, clock, finished)

        def lookup(name: str) -> type[Driver]:
            return meter

        config_path = directory / "gateway.toml"
        config_path.write_text(gateway_toml(state, url, policy))
        config = load_config(config_path, driver_lookup=lookup)
        await enrol(hub_url=url, token=token, device_id=GATEWAY_ID, key_path=state / "device.key")
        gateway = Gateway(config, driver_lookup=lookup, clock_ms=clock.now_ms)
        hub_cpu0 = cpu_seconds(proc.pid)
        cpu0, t0 = time.process_time(), time.perf_counter()
        await gateway.start()
        await finished.wait()
        await gateway.stop(drain_timeout_s=120)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        hub_cpu = cpu_seconds(proc.pid) - hub_cpu0
    finally:
        proc.terminate()
        await proc.wait()
    stored = await hub_readings(db)
    return Run(policy_name, len(rows) * len(COLUMNS), stored, seconds, cpu, hub_cpu)


def measure(policy: str, readings: int, repeat: int = 1) -> Run:
    """The fastest of ``repeat`` runs of about ``readings`` readings under ``policy`` (\"keep\" or \"demo\")."""
    return min(measure_runs(policy, readings, repeat), key=lambda r: r.seconds)


def measure_runs(policy: str, readings: int, repeat: int) -> list[Run]:
    """Every one of ``repeat`` runs of about ``readings`` readings under ``policy``."""
    rows = meter_rows(max(1, readings // len(COLUMNS)))
    runs = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory(prefix="ocn-pipeline-bench-", dir=os.environ.get("OCN_BENCH_DIR")) as d:
            run = asyncio.run(run_once(policy, rows, Path(d)))
        runs.append(run)
    return runs


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=440_000, help="readings per run (default 440000 = 40000 rows of 11 channels)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per policy; the fastest is shown (default 3)")
    parser.add_argument("--policy", choices=("keep", "demo", "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="11,000 readings, one run per policy (a smoke test)")
    parser.add_argument("--json", metavar="FILE", help="also write every run (not only the fastest) here, with readings/s per CPU-second")
    args = parser.parse_args(argv)
    if args.quick:
        args.readings, args.repeat = 11_000, 1
    logging.basicConfig(level=logging.ERROR)
    print(f"synthetic meter ({len(COLUMNS)} channels of {DATASET}, one row per simulated second) -> gateway -> hub (SQLite) on loopback")
    print(f"{'policy':<8}{'readings':>10}{'at hub':>10}{'seconds':>9}{'readings/s':>12}{'CPU ms/1000 rdg':>17}{'hub CPU s':>11}")
    every: list[dict[str, object]] = []
    for policy in ("keep", "demo"):
        if args.policy not in (policy, "both"):
            continue
        runs = measure_runs(policy, args.readings, args.repeat)
        every += [{**dataclasses.asdict(run), "readings_s": run.readings_s, "readings_per_cpu_s": run.readings / run.cpu_s} for run in runs]
        r = min(runs, key=lambda run: run.seconds)
        print(f"{r.policy:<8}{r.readings:>10}{r.stored:>10}{r.seconds:>9.2f}{r.readings_s:>12,.0f}{r.cpu_ms_per_1000:>17.1f}{r.hub_cpu_s:>11.1f}",
              flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(every, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Hub ingest throughput: 1,000+ simulated gateways post pre-sealed batches of real meter data to a hub process.

    .venv/bin/python -m bench.hub                      # SQLite and PostgreSQL, 1000 gateways
    .venv/bin/python -m bench.hub --db sqlite --minutes 5 --batches 10

The hub runs as its own process (`ocn-edge hub`), exactly as deployed; batches are sealed
beforehand with edge.protocol.seal_batch from the AMPds2 sub-meter recording (11 channels a
minute), so the figures measure the hub: verify, decode, deduplicate, store, ack.
Prints sustained readings/s and batches/s, ingest latency percentiles (from the moment a
request can go out on one of the pool's connections to its ack) and the hub process's CPU
time (the client shares the machine's cores).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import csv
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp

from bench.datasets import dataset
from edge.protocol import MEDIA_TYPE, BatchHeader, generate_keypair, key_id, raw_public_key, seal_batch
from edge.protocol.types import Channel, Reading

DATASET = "ampds2_Electricity_B1E-11.csv"  # in $OCN_DATASETS, else ../shared/datasets
COLUMNS = {"V": ("V", 0.1), "I": ("A", 0.1), "f": ("Hz", 0.01), "DPF": ("/", 0.01), "APF": ("/", 0.01), "P": ("W", 1.0),
           "Pt": ("Wh", 1.0), "Q": ("var", 1.0), "Qt": ("varh", 1.0), "S": ("VA", 1.0), "St": ("VAh", 1.0)}
SERVING = re.compile(r"OCN hub serving on (http://\S+)")

_rows: list[dict[str, str]] = []


def _load() -> list[dict[str, str]]:
    if not _rows:
        with dataset(DATASET).open(newline="") as f:
            _rows.extend(csv.DictReader(f))
    return _rows


def seal_gateway(args: tuple[int, int, int]) -> tuple[str, bytes, list[bytes], int]:
    """(device id, raw public key, sealed batches, readings per batch) for gateway ``index``."""
    index, batches, minutes = args
    rows = _load()
    key = generate_keypair()
    device_id = f"bench-{index:05d}"
    channels = [Channel(f"meter-1/{name.lower()}", unit=unit, resolution=res) for name, (unit, res) in COLUMNS.items()]
    sealed = []
    for seq in range(batches):
        start = (index * batches + seq) * minutes % (len(rows) - minutes)
        readings = [
            Reading(f"meter-1/{name.lower()}", int(row["unix_ts"]) * 1000, float(row[name]), COLUMNS[name][0])
            for row in rows[start : start + minutes]
            for name in COLUMNS
        ]
        # Sealed when its last reading was read, as on a gateway: the dataset is years old, and a hub holds
        # readings against their batch's sealing time (protocol §8.5); sealed "now", it would quarantine them all.
        header = BatchHeader(device_id=device_id, key_id=key_id(key), boot_epoch=1, seq=seq, policy_digest=b"\x01" * 32,
                             codec="zstd", created_ms=readings[-1].ts_ms, counters={"readings_dropped": 0})
        sealed.append(seal_batch(header, channels, readings, key))
    return device_id, raw_public_key(key), sealed, minutes * len(COLUMNS)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ocn_edge() -> str:
    return str(Path(sys.executable).with_name("ocn-edge"))


async def spawn_hub(*command: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> tuple[asyncio.subprocess.Process, str]:
    """Start a hub process (``command``: its whole command line) and wait, up to 60 s a line, until it says where it serves:
    the process and its URL.  What it says afterwards is read and dropped, so a full pipe can never stall it."""
    proc = await asyncio.create_subprocess_exec(*command, stderr=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL, env=env, cwd=cwd)
    assert proc.stderr is not None
    while True:
        line = (await asyncio.wait_for(proc.stderr.readline(), timeout=60)).decode()
        if not line:
            raise SystemExit(f"hub exited with {await proc.wait()}")
        match = SERVING.search(line)
        if match:
            asyncio.get_running_loop().create_task(_drain(proc.stderr))
            return proc, match.group(1)


async def start_hub(db: str, state_dir: str) -> tuple[asyncio.subprocess.Process, str]:
    return await spawn_hub(
        ocn_edge(), "hub", "--listen", "127.0.0.1:0", "--db", db, "--state-dir", state_dir, "--admin-token", secrets.token_hex(8),
        # No per-device limit, and a worker queue as deep as the client's pool: the bench measures capacity.
        "--rate", "100000", "--burst", "1000000", "--ingest-queue", "256", "--log-level", "warning",
    )


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.readline():
        pass


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


async def run_one(db_name: str, db: str, gateways: list[tuple[str, bytes, list[bytes], int]], concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as state:
        token = subprocess.run([ocn_edge(), "hub", "token", "create", "--db", db, "--state-dir", state, "--uses", str(len(gateways)), "--approve"],
                               check=True, capture_output=True, text=True).stdout.strip()
        proc, url = await start_hub(db, state)
        try:
            connector = aiohttp.TCPConnector(limit=concurrency)
            async with aiohttp.ClientSession(connector=connector) as http:
                async def enrol(device_id: str, public: bytes) -> None:
                    body = {"token": token, "device_id": device_id, "public_key": base64.urlsafe_b64encode(public).rstrip(b"=").decode(),
                            "software_version": "bench"}
                    async with http.post(f"{url}/oxp/v1/enrol", json=body) as resp:
                        assert resp.status == 201, await resp.text()

                await asyncio.gather(*(enrol(d, k) for d, k, _, _ in gateways))
                latencies: list[float] = []
                stored = 0

                slots = asyncio.Semaphore(concurrency)

                busy = 0

                async def gateway(sealed: list[bytes]) -> None:
                    nonlocal stored, busy
                    for data in sealed:  # a gateway sends its spool in order, one batch at a time
                        while True:
                            async with slots:  # latency counts from the moment the request can go out
                                t0 = time.perf_counter()
                                async with http.post(f"{url}/oxp/v1/batches", data=data, headers={"Content-Type": MEDIA_TYPE}) as resp:
                                    ack = await resp.json()
                                latencies.append(time.perf_counter() - t0)
                            if resp.status != 503:
                                break
                            busy += 1  # as a gateway does: wait what the hub says, then send the batch again
                            await asyncio.sleep(float(resp.headers.get("Retry-After", "1")))
                        assert resp.status == 200 and ack["status"] == "stored", ack
                        stored += 1

                cpu0, client0 = cpu_seconds(proc.pid), time.process_time()
                t0 = time.perf_counter()
                await asyncio.gather(*(gateway(sealed) for _, _, sealed, _ in gateways))
                elapsed = time.perf_counter() - t0
                cpu = cpu_seconds(proc.pid) - cpu0
                client_cpu = time.process_time() - client0
        finally:
            proc.terminate()
            await proc.wait()
    batches = sum(len(s) for _, _, s, _ in gateways)
    readings = sum(len(s) * n for _, _, s, n in gateways)
    assert stored == batches
    return {"db": db_name, "gateways": len(gateways), "batches": batches, "readings": readings, "elapsed": elapsed,
            "readings_s": readings / elapsed, "batches_s": batches / elapsed, "p50_ms": percentile(latencies, 0.5) * 1000,
            "p99_ms": percentile(latencies, 0.99) * 1000, "busy": busy, "hub_cpu_s": cpu, "client_cpu_s": client_cpu,
            "readings_per_cpu_s": readings / cpu if cpu else 0.0}


async def drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--postgres", default=os.environ.get("OCN_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"))
    parser.add_argument("--gateways", type=int, default=1000)
    parser.add_argument("--batches", type=int, default=3, help="batches per gateway (default 3)")
    parser.add_argument("--minutes", type=int, default=100, help="minutes of the 11-channel meter per batch (default 100 = 1100 readings)")
    parser.add_argument("--concurrency", type=int, default=64, help="HTTP connections in the client pool (default 64)")
    parser.add_argument("--runs", type=int, default=1, help="runs per store, each against a fresh hub and database (default 1)")
    parser.add_argument("--json", metavar="FILE", help="also write every run's figures here (python -m bench's report reads it)")
    args = parser.parse_args()

    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        gateways = list(pool.map(seal_gateway, [(i, args.batches, args.minutes) for i in range(args.gateways)], chunksize=20))
    print(f"sealed {sum(len(g[2]) for g in gateways)} batches for {len(gateways)} gateways in {time.perf_counter() - t0:.1f} s "
          f"({gateways[0][3]} readings, ~{sum(len(b) for b in gateways[0][2]) // len(gateways[0][2])} bytes each)")

    results = []
    for name in ("sqlite", "postgresql"):
        if args.db not in (name, "both"):
            continue
        for _ in range(args.runs):
            if name == "sqlite":
                with tempfile.TemporaryDirectory() as d:
                    results.append(asyncio.run(run_one(name, f"sqlite:///{d}/hub.db", gateways, args.concurrency)))
            else:
                schema = f"bench_{secrets.token_hex(4)}"
                try:
                    results.append(asyncio.run(run_one(name, f"{args.postgres}?schema={schema}", gateways, args.concurrency)))
                finally:
                    asyncio.run(drop_schema(args.postgres, schema))
    print(f"\n{'store':<11} {'gateways':>8} {'batches':>8} {'readings':>10} {'seconds':>8} {'readings/s':>11} {'batches/s':>10} "
          f"{'p50 ms':>7} {'p99 ms':>7} {'503 busy':>8} {'hub CPU s':>9} {'client CPU s':>12} {'readings/hub-CPU-s':>19}")
    for r in results:
        print(f"{r['db']:<11} {r['gateways']:>8} {r['batches']:>8} {r['readings']:>10} {r['elapsed']:>8.1f} {r['readings_s']:>11,.0f} "
              f"{r['batches_s']:>10,.0f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['busy']:>8} {r['hub_cpu_s']:>9.1f} {r['client_cpu_s']:>12.1f} "
              f"{r['readings_per_cpu_s']:>19,.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()

"""Spool and uplink benchmark: disk bytes and fsyncs per batch and per reading; batches per second stored and sent.

    .venv/bin/python -m bench.spool [--hours N]

Real readings (the AMPds2 electricity sub-meter and the S43 weather station
from ../shared/datasets, one row a minute each, 16 channels) are sealed into
OXP batches at three spans, then each batch goes through its whole life in
the spool: `put` (durable), then `ack` (deleted) once the next batch is stored,
as when the uplink keeps up.  Disk bytes are the kernel's `write_bytes` for
this process (pages dirtied, so a 100-byte commit that dirties a page costs
4096; the ext4 journal is extra and not counted); fsyncs are counted with
strace when it is installed.  The same lifecycle is measured on a minimal
append-only segment file (record + fdatasync per put, an ack record +
fdatasync per ack, and with acks grouped as the spool groups them) — the
alternative design, reduced to its writes — for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zlib
from datetime import datetime, timedelta, timezone
from pathlib import Path

from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.datasets import datasets
from edge.protocol import BatchHeader, generate_keypair, key_id, open_batch, seal_batch
from edge.protocol.types import Channel, Reading
from edge.spool import Spool
from edge.transport import open_transport
from edge.uplink import Uplink

DATASETS = datasets()
METER = DATASETS / "ampds2_Electricity_B1E-11.csv"
WEATHER = DATASETS / "data_gov_sg_weather_station_S43_2017-02_1min.csv"
SPANS = (("30 s", 30), ("5 min", 300), ("1 h", 3600))
MAX_BATCHES = 1500


def _resolution(texts: list[str]) -> float:
    decimals = max((len(t.split(".")[1]) if "." in t else 0) for t in texts)
    return 10.0**-decimals


def load_readings(hours: float) -> tuple[list[Channel], list[Reading]]:
    """Meter and weather rows mapped onto one clock, as one gateway would read them."""
    readings: list[Reading] = []
    channels: list[Channel] = []
    with METER.open() as f:
        rows = list(csv.DictReader(f))[: int(hours * 60)]
    start_ms = int(rows[0]["unix_ts"]) * 1000
    columns = [n for n in rows[0] if n != "unix_ts"]
    mchannels = [Channel(f"meter-1/{n.lower()}", resolution=_resolution([r[n] for r in rows[:2000]])) for n in columns]
    channels += mchannels
    for row in rows:
        ts = int(row["unix_ts"]) * 1000
        readings += [Reading(c.id, ts, float(row[n])) for n, c in zip(columns, mchannels, strict=True)]
    with WEATHER.open() as f:
        wrows = list(csv.DictReader(f))[: int(hours * 60)]
    names = [n for n in wrows[0] if n != "timestamp_sgt"]
    wchannels = [Channel(f"weather-1/{n.replace('-', '_')}", resolution=_resolution([r[n] for r in wrows[:2000] if r[n]])) for n in names]
    channels += wchannels
    first = datetime.strptime(wrows[0]["timestamp_sgt"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone(timedelta(hours=8)))
    for row in wrows:
        t = datetime.strptime(row["timestamp_sgt"], "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone(timedelta(hours=8)))
        ts = start_ms + int((t - first).total_seconds() * 1000)
        readings += [Reading(c.id, ts, float(row[n])) for n, c in zip(names, wchannels, strict=True) if row[n]]
    readings.sort(key=lambda r: r.ts_ms)
    return channels, readings


def seal_all(
    channels: list[Channel], readings: list[Reading], span_s: int, key: Ed25519PrivateKey | None = None
) -> list[tuple[bytes, int]]:
    """The batches a gateway would seal at this span, with their reading counts."""
    key = key or generate_keypair()
    by_id = {c.id: c for c in channels}
    windows: dict[int, list[Reading]] = {}
    for r in readings:
        windows.setdefault(r.ts_ms // (span_s * 1000), []).append(r)
    out = []
    for seq, (window, rs) in enumerate(sorted(windows.items())[:MAX_BATCHES]):
        header = BatchHeader("pole-0042", key_id(key), 1, seq, b"\x01" * 32, "zstd", window * span_s * 1000, {})
        used = tuple(by_id[cid] for cid in sorted({r.channel for r in rs}))
        out.append((seal_batch(header, used, tuple(rs), key), len(rs)))
    return out


def _write_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def run_sqlite(batches: list[tuple[bytes, int]], directory: Path) -> None:
    spool = Spool.open_blocking(directory / "spool.db", max_bytes=1 << 30)
    spool.begin_boot_blocking()
    previous = None
    for data, n in batches:
        stored = spool.put(data, readings=n)
        if previous is not None:
            spool.ack(previous)
        previous = stored
    spool.close_blocking()


def run_segments(batches: list[tuple[bytes, int]], directory: Path) -> None:
    """The alternative design, reduced to its writes: length+CRC-framed records and an ack log, fdatasync'd."""
    seg = os.open(directory / "segment-000001", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    acks = os.open(directory / "acks", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    for seq, (data, _) in enumerate(batches):
        os.write(seg, len(data).to_bytes(4, "big") + zlib.crc32(data).to_bytes(4, "big") + data)
        os.fdatasync(seg)
        if seq:
            os.write(acks, (seq - 1).to_bytes(8, "big") + zlib.crc32(b"").to_bytes(4, "big"))
            os.fdatasync(acks)
    os.close(seg)
    os.close(acks)


def run_segments_grouped(batches: list[tuple[bytes, int]], directory: Path) -> None:
    """The segment design at its leanest: acks written with the next put's fdatasync, as the SQLite spool does."""
    seg = os.open(directory / "segment-000001", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    acks = os.open(directory / "acks", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    for seq, (data, _) in enumerate(batches):
        if seq:
            os.write(acks, (seq - 1).to_bytes(8, "big") + zlib.crc32(b"").to_bytes(4, "big"))
        os.write(seg, len(data).to_bytes(4, "big") + zlib.crc32(data).to_bytes(4, "big") + data)
        os.fdatasync(seg)
        if seq % 32 == 0:
            os.fdatasync(acks)
    os.close(seg)
    os.close(acks)


ENGINES = {"sqlite-wal": run_sqlite, "segments": run_segments, "segments-grouped": run_segments_grouped}


def measure(engine: str, batches: list[tuple[bytes, int]]) -> tuple[float, float]:
    """(disk bytes written, seconds) for the whole lifecycle of ``batches``."""
    directory = Path(tempfile.mkdtemp(prefix="ocn-spool-bench-", dir=os.environ.get("OCN_BENCH_DIR")))
    try:
        before, t0 = _write_bytes(), time.perf_counter()
        ENGINES[engine](batches, directory)
        return _write_bytes() - before, time.perf_counter() - t0
    finally:
        shutil.rmtree(directory)


def count_fsyncs(engine: str, span_s: int, hours: float) -> int | None:
    """fsync + fdatasync calls of one lifecycle run, counted by strace in a child process."""
    strace = shutil.which("strace")
    if strace is None:
        return None
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        subprocess.run(
            [strace, "-f", "-c", "-e", "trace=fsync,fdatasync", "-o", out.name,
             sys.executable, "-m", "bench.spool", "--worker", engine, "--span", str(span_s), "--hours", str(hours)],
            check=True, stdout=subprocess.DEVNULL,
        )
        text = out.read()
    return sum(int(m.group(1)) for m in re.finditer(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?f(?:data)?sync$", text, re.M))


async def uplink_rate(batches: list[tuple[bytes, int]], key: Ed25519PrivateKey) -> tuple[float, float]:
    """(batches/s, readings/s) delivered by the uplink, one batch in flight, to a verifying receiver on loopback."""
    public = key.public_key()

    async def ingest(request: web.Request) -> web.Response:
        data = await request.read()
        h = open_batch(data, public).header
        return web.json_response({"device_id": h.device_id, "key_id": h.key_id.hex(), "boot_epoch": h.boot_epoch,
                                  "seq": h.seq, "status": "stored"})

    app = web.Application(client_max_size=2 << 20)
    app.router.add_post("/oxp/v1/batches", ingest)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    directory = Path(tempfile.mkdtemp(prefix="ocn-uplink-bench-", dir=os.environ.get("OCN_BENCH_DIR")))
    spool = await Spool.open(directory / "spool.db", max_bytes=1 << 30)
    await spool.begin_boot()
    for data, n in batches:
        spool.put(data, readings=n)
    uplink = Uplink(spool=spool, transport=open_transport(f"http://127.0.0.1:{port}/"), private_key=key, device_id="pole-0042",
                    status_interval_s=0)
    t0 = time.perf_counter()
    task = asyncio.create_task(uplink.run())
    while spool.stats()["batches"]:
        await asyncio.sleep(0.01)
    seconds = time.perf_counter() - t0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await uplink.aclose()
    await spool.close()
    await runner.cleanup()
    shutil.rmtree(directory)
    return len(batches) / seconds, sum(n for _, n in batches) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hours", type=float, default=24 * 30, help="hours of data to use (default: 30 days)")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--span", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    channels, readings = load_readings(args.hours)
    if args.worker:
        batches = seal_all(channels, readings, args.span)
        t0 = time.perf_counter()
        ENGINES[args.worker](batches, Path(tempfile.mkdtemp(prefix="ocn-spool-bench-")))
        print(time.perf_counter() - t0)
        return
    print(f"{len(readings)} readings of {len(channels)} channels ({METER.name}, {WEATHER.name}); "
          f"each batch stored, then acked and deleted; disk = write_bytes (4 KiB pages), journal not counted")
    print(f"{'span':<22}{'engine':<18}{'batches':>8}{'rdg/batch':>10}{'B/batch':>9}"
          f"{'disk B/batch':>13}{'disk B/rdg':>11}{'fsync/batch':>12}{'batches/s':>10}")
    for label, span_s in SPANS:
        batches = seal_all(channels, readings, span_s)
        n_readings = sum(n for _, n in batches)
        size = sum(len(d) for d, _ in batches)
        for engine in ENGINES:
            disk, seconds = measure(engine, batches)
            fsyncs = count_fsyncs(engine, span_s, args.hours)
            fs = f"{fsyncs / len(batches):.2f}" if fsyncs is not None else "n/a"
            print(f"{label:<22}{engine:<18}{len(batches):>8}{n_readings / len(batches):>10.0f}{size / len(batches):>9.0f}"
                  f"{disk / len(batches):>13.0f}{disk / n_readings:>11.2f}{fs:>12}{len(batches) / seconds:>10.0f}")
    key = generate_keypair()
    print("\nuplink, one batch in flight, to a verifying aiohttp receiver on 127.0.0.1 (spool acks included)")
    for label, span_s in SPANS[1:]:
        rate, readings_rate = asyncio.run(uplink_rate(seal_all(channels, readings, span_s, key)[:500], key))
        print(f"{label:<22}{rate:>8.0f} batches/s {readings_rate:>10.0f} readings/s")


if __name__ == "__main__":
    main()

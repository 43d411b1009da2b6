"""What the northbound export costs: store_batch with and without the outbox, and the exporter draining it to a broker.

    .venv/bin/python -m bench.export_outbox [--batches N] [--readings N] [--postgres DSN]

1. ``store_batch`` of N batches (4 channels, R readings each), 32 at a time as ingest calls it, into a database
   that never exported (no outbox rows) and one with an export lease held (an outbox row per chunk in the same
   transaction), three times in turns: the median batches/s of each, on SQLite and, given a DSN, PostgreSQL
   (fresh schemas, dropped after).
2. The exporter emptying that outbox into a Mosquitto on a free 127.0.0.1 port (QoS 1, each row deleted after
   its PUBACKs), SenML alone and SenML with SensorThings: messages/s and readings/s.

Nothing passes or fails on time; the machine's load shows in the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from edge.protocol.types import Channel, Reading
from hub.database import open_store
from hub.export import Exporter, ExportSettings
from hub.models import IncomingBatch
from hub.store import Store

T0 = 1_790_000_000_000
CHANNELS = (Channel("meter-1/voltage", unit="V", resolution=0.1), Channel("meter-1/power", unit="W", resolution=1.0),
            Channel("pm-1/pm2_5", unit="ug/m3", resolution=0.1), Channel("pm-1/pm10", unit="ug/m3", resolution=0.1))


def batch(seq: int, readings: int) -> IncomingBatch:
    base = T0 + seq * 600_000
    rows = tuple(Reading(ch.id, base + i * 1000, round(230.0 + (i % 17) / 10, 1), ch.unit) for ch in CHANNELS for i in range(readings))
    return IncomingBatch(device_id="bench-1", key_id=b"\x01" * 8, boot_epoch=1, seq=seq, created_ms=base, received_ms=int(time.time() * 1000),
                         policy_digest=b"\x01" * 32, codec="zstd", counters={}, channels=CHANNELS, readings=rows)


async def store_rate(store: Store, first: int, count: int, readings: int) -> float:
    batches = [batch(seq, readings) for seq in range(first, first + count)]
    started = time.perf_counter()
    pending = set()
    for b in batches:  # 32 in flight, as the ingest workers hand them over
        pending.add(asyncio.ensure_future(store.store_batch(b)))
        if len(pending) >= 32:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    await asyncio.gather(*pending)
    return count / (time.perf_counter() - started)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def drain(store: Store, port: int, formats: tuple[str, ...], messages_expected: int) -> float:
    exporter = Exporter(store, ExportSettings(f"mqtt://127.0.0.1:{port}", formats=formats))
    task = asyncio.create_task(exporter.run(public_url="http://127.0.0.1:8443"))
    started = time.perf_counter()
    while exporter.published < messages_expected:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - started
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await exporter.aclose()
    return elapsed


async def run(urls: tuple[str, str], label: str, args: argparse.Namespace, port: int) -> None:
    """``urls``: two empty databases, one that never exports (no outbox rows) and one with a lease held (rows written)."""
    plain, exporting = await open_store(urls[0]), await open_store(urls[1])
    try:
        assert await exporting.hold_export_lease("bench", now_ms=int(time.time() * 1000), ttl_ms=3_600_000)
        rates: dict[bool, list[float]] = {False: [], True: []}
        for rep in range(3):  # in turns, so the machine's other load falls on both alike
            for on, store in ((False, plain), (True, exporting)):
                rates[on].append(await store_rate(store, 1 + rep * args.batches, args.batches, args.readings))
        rate_off, rate_on = statistics.median(rates[False]), statistics.median(rates[True])
        print(f"{label:10s} store_batch, {len(CHANNELS)} channels x {args.readings} readings (median of 3 x {args.batches}): "
              f"{rate_off:6.0f} batches/s without the outbox, {rate_on:6.0f} with it ({(rate_off / rate_on - 1) * 100:+.1f} % time per batch)")
        await exporting.release_export_lease("bench", now_ms=int(time.time() * 1000))
        for formats, per_row in ((("senml",), 1), (("senml", "sensorthings"), 1 + args.readings)):
            if formats != ("senml",):  # queue as many chunks again for the second run
                await store_rate(exporting, 1 + 3 * args.batches, args.batches, args.readings)
            rows = len(await exporting.export_pending(limit=10**9))
            expected = rows * per_row
            elapsed = await drain(exporting, port, formats, expected)
            print(f"{label:10s} export {'+'.join(formats):18s}: {rows} chunks, {expected} messages in {elapsed:5.2f} s = "
                  f"{expected / elapsed:7.0f} messages/s, {rows * args.readings / elapsed:7.0f} readings/s")
    finally:
        await plain.close()
        await exporting.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--readings", type=int, default=30, help="readings per channel per batch (default 30)")
    parser.add_argument("--postgres", default="", metavar="DSN", help="also run on PostgreSQL (a fresh schema, dropped after)")
    args = parser.parse_args()
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        broker = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            await asyncio.sleep(0.3)
            await run((f"sqlite:///{tmp}/plain.db", f"sqlite:///{tmp}/exporting.db"), "sqlite", args, port)
            if args.postgres:
                import asyncpg

                schemas = (f"bench_plain_{secrets.token_hex(4)}", f"bench_export_{secrets.token_hex(4)}")
                try:
                    await run((f"{args.postgres}?schema={schemas[0]}", f"{args.postgres}?schema={schemas[1]}"), "postgresql", args, port)
                finally:
                    conn = await asyncpg.connect(args.postgres)
                    for schema in schemas:
                        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
                    await conn.close()
        finally:
            broker.terminate()
            broker.wait()


if __name__ == "__main__":
    asyncio.run(main())

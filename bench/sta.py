"""SensorThings query latency over a large store: what a time filter, a Datastream filter, several order keys and $count cost.

Fills a hub's store (SQLite, and PostgreSQL when ``--postgres DSN`` is given) with one
gateway's readings, then times typical integrator queries over real HTTP to the hub
in this process.  Prints the median of a few runs per query; nothing passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import secrets
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import aiohttp

from bench.hub import drop_schema
from edge.protocol import generate_keypair, key_id, raw_public_key
from edge.protocol.types import Channel, Reading
from hub.app import run_hub
from hub.models import IncomingBatch
from hub.render import iso_time
from hub.sensorthings import Catalog, Options
from hub.store import Store

T0 = 1_790_000_000_000
CHANNELS = [Channel(f"meter-1/{name}", unit=unit, resolution=0.1) for name, unit in (("voltage", "V"), ("current", "A"), ("power", "W"), ("frequency", "Hz"))]


async def fill(store: Store, device_id: str, key: bytes, *, batches: int, per_channel: int) -> int:
    """Store ``batches`` batches of ``per_channel`` one-second readings per channel; the number of readings."""
    total = 0
    for seq in range(batches):
        start = T0 + seq * per_channel * 1000
        readings = [
            Reading(ch.id, start + i * 1000, round(200 + (seq * 7 + i * 13 + n * 31) % 600 / 10, 1), ch.unit)
            for i in range(per_channel)
            for n, ch in enumerate(CHANNELS)
        ]
        await store.store_batch(IncomingBatch(
            device_id=device_id, key_id=key, boot_epoch=1, seq=seq, created_ms=start, received_ms=start, policy_digest=b"\x01" * 32,
            codec="zstd", counters={}, channels=CHANNELS, readings=readings,
        ))
        total += len(readings)
    return total


async def timed(http: aiohttp.ClientSession, url: str, runs: int) -> tuple[float, int | str]:
    """Median milliseconds of ``runs`` GETs and the number of values in the answer, or how the hub refused it.

    The hub runs with its default public-read budgets, as deployed: a query over them is answered
    400 ``too_costly`` quickly, and that answer (and its time) is the figure a client gets.
    """
    times: list[float] = []
    count: int | str = 0
    for _ in range(runs):
        started = time.perf_counter()
        async with http.get(url) as resp:
            body = await resp.json()
            if resp.status == 200:
                count = len(body["value"])
            elif resp.status in (400, 503):
                count = f"{resp.status} refused"
            else:
                raise AssertionError(f"{url}: {resp.status} {body}")
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), count


async def run_one(db: str | None, label: str, *, batches: int, per_channel: int, runs: int) -> None:
    with tempfile.TemporaryDirectory() as state:
        async with run_hub(db=db, state_dir=Path(state), admin_token=secrets.token_hex(8)) as hub:
            private = generate_keypair()
            async with aiohttp.ClientSession() as http:
                token = await hub.create_token()
                public = base64.urlsafe_b64encode(raw_public_key(private)).rstrip(b"=").decode()
                enrolment = {"token": token, "device_id": "bench-0001", "public_key": public, "software_version": "bench"}
                async with http.post(f"{hub.url}/oxp/v1/enrol", json=enrolment) as resp:
                    assert resp.status == 201, await resp.text()
                started = time.perf_counter()
                readings = await fill(hub.store, "bench-0001", key_id(private), batches=batches, per_channel=per_channel)
                print(f"{label}: stored {readings:,} readings in {batches * len(CHANNELS):,} chunks in {time.perf_counter() - started:.1f} s")
                sta = f"{hub.url}/sta/v1.1"
                async with http.get(f"{sta}/Datastreams?$filter=endswith(name, 'power')") as resp:
                    power = (await resp.json())["value"][0]["@iot.id"]
                end = T0 + batches * per_channel * 1000
                last_hour = f"phenomenonTime ge {iso_time(end - 3_600_000)} and phenomenonTime lt {iso_time(end)}"
                stream = "Datastream/name eq 'bench-0001/meter-1/power'"
                queries = {
                    "newest 100 (no filter, phenomenonTime desc)": "Observations?$orderby=phenomenonTime desc",
                    "last hour, all streams": f"Observations?$filter={last_hour}&$top=1000",
                    "last hour, Datastream/name filter": f"Observations?$filter={last_hour} and {stream}&$top=1000",
                    "last hour, result gt 250, $count": f"Observations?$filter={last_hour} and result gt 250&$count=true&$top=1000",
                    "last hour, result desc, phenomenonTime desc":
                        f"Datastreams({power})/Observations?$filter={last_hour}&$orderby=result desc,phenomenonTime desc&$top=10",
                    "newest 100 of one stream by Datastream/name": f"Observations?$filter={stream}&$orderby=phenomenonTime desc",
                    "$count=true, no filter": "Observations?$count=true&$top=1",
                    "result gt 259.9 (matches none: a full scan)": "Observations?$filter=result gt 259.9",
                }
                print(f"{'query':<50} {'ms (median)':>12} {'values':>7}")
                for name, query in queries.items():
                    ms, count = await timed(http, f"{sta}/{query}", runs)
                    print(f"{name:<50} {ms:>12.1f} {count!s:>7}")
                await fleet_filters(hub.store, sta, gateways=1000, runs=runs)


async def fleet_filters(store: Store, base: str, *, gateways: int, runs: int) -> None:
    """$filter through Datastreams/… on the small sets of a fleet of ``gateways`` gateways (4 channels each), in memory.

    These run on the hub's event loop, so their cost is time every other request waits.
    """
    real = await Catalog.load(store, base)
    device = next(iter(real.devices.values()))
    devices = [replace(device, device_id=f"pole-{n:04d}") for n in range(gateways)]
    channels = [replace(c, id=n * 10 + i, device_id=f"pole-{n:04d}") for n in range(gateways) for i, c in enumerate(real.channels)]
    fleet = Catalog(real.store, base, devices, channels)
    print(f"small sets, {gateways:,} gateways x {len(real.channels)} channels (in memory, on the event loop)")
    for entity_set, condition in [
        ("Things", "Datastreams/name eq 'pole-0123/meter-1/power'"),
        ("Sensors", "Datastreams/Thing/name eq 'pole-0007'"),
        ("ObservedProperties", "Datastreams/unitOfMeasurement/symbol eq 'W'"),
        ("Things", " or ".join(f"Datastreams/name eq 'pole-{n:04d}/meter-1/power'" for n in range(20))),
    ]:
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            chosen, _, _ = fleet.select_members(entity_set, fleet.members(entity_set), Options({"$filter": condition, "$top": "10000"}))
            times.append((time.perf_counter() - started) * 1000)
        shown = f"{entity_set}?$filter={condition}"
        print(f"{shown[:50]:<50} {statistics.median(times):>12.1f} {len(chosen):>7}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=500, help="batches stored (default 500)")
    parser.add_argument("--per-channel", type=int, default=600, help="readings per channel per batch (default 600: ten minutes)")
    parser.add_argument("--runs", type=int, default=5, help="runs per query (default 5)")
    parser.add_argument("--postgres", metavar="DSN", help="also run on this PostgreSQL (a fresh schema, dropped after)")
    args = parser.parse_args()
    asyncio.run(run_one(None, "sqlite", batches=args.batches, per_channel=args.per_channel, runs=args.runs))
    if args.postgres:
        schema = f"bench_sta_{secrets.token_hex(4)}"
        try:
            asyncio.run(run_one(f"{args.postgres}?schema={schema}", "postgresql", batches=args.batches, per_channel=args.per_channel, runs=args.runs))
        finally:
            asyncio.run(drop_schema(args.postgres, schema))



if __name__ == "__main__":
    main()

"""Two real `ocn-edge hub` processes on one PostgreSQL share ingest: no duplicates stored, nothing lost."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.database import open_store
from hub.tokens import create_token
from tests.hub.conftest import drop_schema
from tests.hub.gateways import SimGateway, enrol, post_cose

SERVING = re.compile(rb"OCN hub serving on (http://\S+)")


async def start_hub(db: str, state_dir: Path) -> tuple[asyncio.subprocess.Process, str]:
    ocn_edge = Path(sys.executable).with_name("ocn-edge")
    proc = await asyncio.create_subprocess_exec(
        str(ocn_edge), "hub", "--listen", "127.0.0.1:0", "--db", db, "--state-dir", str(state_dir), "--admin-token", "t", "--log-level", "warning",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stderr is not None
    while True:
        line = await asyncio.wait_for(proc.stderr.readline(), timeout=30)
        if not line:
            raise AssertionError(f"hub exited with {await proc.wait()} before serving")
        match = SERVING.search(line)
        if match:
            return proc, match.group(1).decode()


@pytest.fixture
async def two_hubs(postgres_url: tuple[str, str, str], tmp_path: Path) -> AsyncIterator[tuple[str, list[str]]]:
    url, dsn, schema = postgres_url
    started = await asyncio.gather(start_hub(url, tmp_path), start_hub(url, tmp_path))
    try:
        yield url, [u for _, u in started]
    finally:
        for proc, _ in started:
            proc.terminate()
        for proc, _ in started:
            assert await proc.wait() == 0
        await drop_schema(dsn, schema)


async def test_two_hub_processes_store_every_batch_exactly_once(two_hubs: tuple[str, list[str]]) -> None:
    db, (hub_a, hub_b) = two_hubs
    store = await open_store(db)
    try:
        token = await create_token(store, uses=20, approve=True)
        gateways = [SimGateway(f"pole-{i:03d}") for i in range(20)]
        async with aiohttp.ClientSession() as http:
            await asyncio.gather(*(enrol(http, hub_a if i % 2 else hub_b, gw, token) for i, gw in enumerate(gateways)))

            async def post_until_taken(url: str, data: bytes) -> tuple[int, Any, Any]:
                # 40 batches at once overfill a hub's ingest queue: 503 busy with Retry-After is an
                # answer a gateway waits out (protocol §8.2), as the uplink does.
                for _ in range(60):
                    answer = await post_cose(http, url, data)
                    if answer[0] != 503:
                        return answer
                    await asyncio.sleep(float(answer[2]["Retry-After"]))
                return answer

            async def sync(gw: SimGateway) -> list[str]:
                statuses = []
                for seq in range(10):
                    data = gw.batch(seq, n=30)
                    # Every batch reaches both hubs at once, as after a load-balancer retry.
                    answers = await asyncio.gather(post_until_taken(f"{hub_a}/oxp/v1/batches", data), post_until_taken(f"{hub_b}/oxp/v1/batches", data))
                    assert [a[0] for a in answers] == [200, 200], answers
                    statuses += [a[1]["status"] for a in answers]
                return statuses

            outcomes = [s for per_gateway in await asyncio.gather(*(sync(gw) for gw in gateways)) for s in per_gateway]
        assert outcomes.count("stored") == 200 and outcomes.count("duplicate") == 200
        devices = await store.devices()
        assert sum(d.readings_stored for d in devices) == 200 * 30
        assert sum(d.duplicates for d in devices) == 200
        assert len(await store.readings(limit=100_000)) == 200 * 30
    finally:
        await store.close()

"""The uplink proxy passes, delays, throttles, black-holes and cuts the path to a real aiohttp hub."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from aiohttp import web

from hilsim.netproxy import ProxyStep

BODY = b"x" * 20_000


@pytest.fixture
async def hub_port():
    async def batches(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=BODY)

    app = web.Application()
    app.router.add_post("/oxp/v1/batches", batches)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    yield runner.addresses[0][1]
    await runner.cleanup()


async def post(url: str, *, timeout: float = 3.0) -> bytes:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        async with session.post(url + "oxp/v1/batches", data=b"batch") as response:
            return await response.read()


async def test_pass_mode_forwards_both_ways(uplink_proxy, hub_port):
    proxy = await uplink_proxy(hub_port)
    assert await post(proxy.url) == BODY


async def test_blackhole_mode_never_answers(uplink_proxy, hub_port):
    proxy = await uplink_proxy(hub_port)
    proxy.set_mode("blackhole")
    with pytest.raises(asyncio.TimeoutError):
        await post(proxy.url, timeout=0.8)


async def test_cut_mode_refuses_the_connection(uplink_proxy, hub_port):
    proxy = await uplink_proxy(hub_port)
    proxy.set_mode("cut")
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(proxy.url)


async def test_delay_mode_holds_each_direction(uplink_proxy, hub_port):
    proxy = await uplink_proxy(hub_port)
    proxy.set_mode("delay", delay=0.3)
    started = time.monotonic()
    assert await post(proxy.url) == BODY
    assert time.monotonic() - started >= 0.6


async def test_throttle_mode_limits_the_rate(uplink_proxy, hub_port):
    proxy = await uplink_proxy(hub_port)
    proxy.set_mode("throttle", rate=20_000)
    started = time.monotonic()
    assert await post(proxy.url) == BODY
    assert time.monotonic() - started >= 0.9  # 20 kB of answer at 20 kB/s


async def test_schedule_switches_modes_over_time(uplink_proxy, hub_port):
    proxy = await uplink_proxy(hub_port, schedule=[ProxyStep(0.3, "cut"), ProxyStep(0.8, "pass")])
    assert await post(proxy.url) == BODY
    await asyncio.sleep(0.4)
    with pytest.raises(aiohttp.ClientConnectionError):
        await post(proxy.url)
    await asyncio.sleep(0.5)
    assert await post(proxy.url) == BODY

"""Read now and scan, through the running gateway's bus owners: a real gateway holds hil-sim's RS-485 pty and serial ptys.

Nothing here opens a port a second time: the gateway's bus owners hold them exclusively, so a
read or a scan that succeeds went through them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import hilsim
from drivers.buses import ModbusBus
from edge.commissioning import Commissioning
from edge.config import load_config
from edge.demo import DEMO_POLICY
from edge.localapi import create_app
from edge.localapi.access import AccessToken, create_access_token
from edge.localapi.app import Handler
from edge.runtime import Gateway
from tests.hub.test_browser import DevTools, browser_page

# A weather station (fixed temperature) and a water level on one RS-485 line, polled every second;
# a pedestrian counter (MAC addresses) and a GPS (exact positions) on their own serial ports.
SCENARIO = """
[scenario]
name = "commissioning"
seed = 3
latitude = 43.6452
longitude = -79.3957
[[buses]]
name = "rs485-1"
type = "modbus-rtu"
baudrate = 9600
[[devices]]
name = "weather-1"
kind = "hilsim-weather"
bus = "rs485-1"
unit = 10
response_delay = "5ms"
poll_interval = "1s"
[devices.values]
temperature = { value = 12.5 }
[[devices]]
name = "level-1"
kind = "hilsim-water-level"
bus = "rs485-1"
unit = 20
response_delay = "5ms"
poll_interval = "1s"
[[devices]]
name = "ped-1"
kind = "pedestrian-counter"
poll_interval = "1s"
[devices.options]
passers_per_minute = 600.0
[[devices]]
name = "gps-1"
kind = "nmea-gps"
poll_interval = "1s"
[devices.options]
latitude = 43.6452
longitude = -79.3957
"""

MAC = re.compile(r"[0-9a-fA-F]{2}([:-])(?:[0-9a-fA-F]{2}\1){4}[0-9a-fA-F]{2}")


def url_of(gateway: Gateway) -> str:
    page = gateway.local_page
    assert page is not None
    return page.rstrip("/")


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Gateway]:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO, encoding="utf-8")
    async with hilsim.run_scenario(scenario, run_dir=tmp_path / "sim") as sim:
        path = tmp_path / "gateway.toml"
        path.write_text(sim.gateway_config_toml(state_dir=tmp_path / "state", hub="", gateway_id="pole-7",
                                                policy=str(DEMO_POLICY), local_api_listen="127.0.0.1:0"), encoding="utf-8")
        gateway = Gateway(load_config(path))
        await gateway.start()
        try:
            yield gateway
        finally:
            await asyncio.wait_for(gateway.stop(), timeout=30)


def rs485(gateway: Gateway) -> ModbusBus:
    assert gateway.devices is not None
    bus = gateway.devices.buses["rs485-1"]
    assert isinstance(bus, ModbusBus)
    return bus


async def post(url: str, body: dict[str, Any] | None = None, *, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.post(url, json=body or {}, headers=headers or {}) as resp:
        return resp.status, await resp.json()


async def test_read_now_reads_a_modbus_device_through_the_running_bus_owner(running: Gateway) -> None:
    bus = rs485(running)
    await asyncio.wait_for(bus.wait_open(), 30)
    before = bus.stats()["requests"]

    status, doc = await post(f"{url_of(running)}/devices/weather-1/read")

    assert status == 200, doc
    assert doc["problems"] == [] and doc["device"] == "weather-1" and doc["bus"] == "rs485-1"
    values = {v["channel"]: v for v in doc["values"]}
    assert values["weather-1/temperature"]["value"] == 12.5
    assert values["weather-1/temperature"]["unit"] == "Cel"
    assert bus.stats()["requests"] > before  # the running owner carried it: its own counter moved
    assert bus.stats()["open"] is True


async def test_scan_finds_the_units_on_the_line_while_the_devices_polls_go_on(running: Gateway) -> None:
    bus = rs485(running)
    await asyncio.wait_for(bus.wait_open(), 30)
    polls_before = bus.stats()["units"].get(10, {}).get("replies", 0)

    # 11 silent ids at 0.1 s each, the line left to the polls as long again: longer than weather-1's 1 s poll interval.
    first, second = await asyncio.gather(
        post(f"{url_of(running)}/buses/rs485-1/scan", {"units": "9-21", "timeout": 0.1}),
        post(f"{url_of(running)}/buses/rs485-1/scan", {"units": "9-21", "timeout": 0.1}),
    )

    (status, doc), (other, refused) = sorted([first, second], key=lambda answer: answer[0])
    assert status == 200, doc
    assert (other, "being scanned already" in refused["detail"]) == (409, True)  # one scan at a time per bus
    assert [(f["unit"], f["devices"]) for f in doc["found"]] == [(10, ["weather-1"]), (20, ["level-1"])]
    assert doc["tried"] == 13 and doc["configured_silent"] == [] and doc["problems"] == []
    stats = bus.stats()
    assert stats["units"][10]["replies"] > polls_before, "no poll of weather-1 got through during the scan"
    assert stats["units"][10]["timeouts"] == 0 and stats["open"] is True
    assert set(stats["units"]) == {10, 20}  # a probe is no device's request: no health, no log for ids 9..21
    assert stats["scan_probes"] == 13


async def test_read_now_never_shows_a_personal_value(running: Gateway) -> None:
    ped_status, ped = await post(f"{url_of(running)}/devices/ped-1/read", {"wait": 20})
    gps_status, gps = await post(f"{url_of(running)}/devices/gps-1/read", {"wait": 20})

    assert (ped_status, gps_status) == (200, 200)
    assert ped["read"] > 0 and gps["read"] > 0, (ped, gps)  # frames came, decoded by the running drivers
    assert {"channel": "ped-1/mac", "why": "personal"} in ped["withheld"]
    assert {"channel": "ped-1/rssi", "why": "not released by the policy"} in ped["withheld"]
    assert {w["channel"] for w in gps["withheld"] if w["why"] == "personal"} >= {"gps-1/latitude", "gps-1/longitude"}
    shown = {v["channel"] for v in ped["values"] + gps["values"]}
    assert not shown & {"ped-1/mac", "gps-1/latitude", "gps-1/longitude"}
    text = repr((ped, gps))
    assert not MAC.search(text), "a MAC address reached the technician"
    assert "43.64" not in text and "79.39" not in text, "an exact position reached the technician"


async def test_read_now_of_a_silent_unit_gives_the_read_commands_diagnosis(running: Gateway, tmp_path: Path) -> None:
    assert running.devices is not None
    await asyncio.wait_for(rs485(running).wait_open(), 30)
    weather = next(d for d in running.devices.devices if d.config.name == "weather-1")
    weather.context.address = 11  # nobody answers there: the wrong unit id a technician meets most

    status, doc = await post(f"{url_of(running)}/devices/weather-1/read")

    assert status == 200
    assert doc["values"] == [] and doc["read"] == 0
    assert doc["problems"][0].startswith("no reply from unit 11 (holding ")
    assert "check the unit id (`ocn-edge scan`), baud rate and parity" in doc["problems"][0]


async def test_unknown_devices_and_buses_and_bad_requests_are_named(running: Gateway) -> None:
    base = url_of(running)
    status, doc = await post(f"{base}/devices/meter-9/read")
    assert (status, doc["detail"]) == (404, "no enabled device named 'meter-9' (devices: weather-1, level-1, ped-1, gps-1)")
    status, doc = await post(f"{base}/buses/serial-ped-1/scan")
    assert status == 400 and "serial line carrying one streaming device" in doc["detail"]
    status, doc = await post(f"{base}/buses/rs485-1/scan", {"units": "1-247"})
    assert status == 400 and doc["detail"].startswith("units '1-247': 247 ids; at most 64 per scan")
    status, doc = await post(f"{base}/buses/rs485-1/scan", {"units": "0-3"})
    assert (status, doc["detail"]) == (400, "units '0-3': unit ids are 1..247")


async def serve(app: Handler) -> AsyncIterator[str]:
    runner = web.ServerRunner(web.Server(app))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()  # tests bind loopback only; `required` stands for a LAN address
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


def app_for(gateway: Gateway, access: AccessToken) -> Handler:
    return create_app(notice_html="<p>notice</p>", notice_json=gateway.notice, status=gateway.status, access=access,
                      commissioning=Commissioning(lambda: gateway.devices, lambda: gateway.policy))


async def test_beyond_loopback_read_and_scan_need_the_access_token(running: Gateway, tmp_path: Path) -> None:
    token = create_access_token(tmp_path / "tokens")
    async for base in serve(app_for(running, AccessToken(tmp_path / "tokens", required=True))):
        assert (await post(f"{base}/devices/level-1/read"))[0] == 401
        assert (await post(f"{base}/buses/rs485-1/scan", {"units": "20"}))[0] == 401
        assert (await post(f"{base}/devices/level-1/read", headers={"Authorization": "Bearer guess"}))[0] == 401
        status, doc = await post(f"{base}/devices/level-1/read", headers={"Authorization": f"Bearer {token}"})
        assert status == 200 and any(v["channel"] == "level-1/level" for v in doc["values"]), doc
        status, doc = await post(f"{base}/buses/rs485-1/scan", {"units": "20"}, headers={"Authorization": f"Bearer {token}"})
        assert status == 200 and [f["unit"] for f in doc["found"]] == [20]


async def test_another_sites_page_cannot_make_the_gateway_read_or_scan(running: Gateway, tmp_path: Path) -> None:
    async for base in serve(app_for(running, AccessToken(tmp_path, required=False))):
        read = f"{base}/devices/level-1/read"
        assert (await post(read, headers={"Sec-Fetch-Site": "cross-site"}))[0] == 403
        assert (await post(read, headers={"Origin": "http://evil.example"}))[0] == 403
        assert (await post(read, headers={"Host": "evil.example"}))[0] == 403  # a name rebound to 127.0.0.1
        async with aiohttp.ClientSession() as http:
            async with http.post(read, data="units=1-5", headers={"Content-Type": "application/x-www-form-urlencoded"}) as resp:
                assert resp.status == 415  # what a plain HTML form can send
            async with http.get(read) as resp:
                assert resp.status == 405
        status, _ = await post(read, headers={"Sec-Fetch-Site": "same-origin", "Origin": base})
        assert status == 200


async def wait_for(tools: DevTools, condition: str, what: str) -> None:
    for _ in range(120):
        if await tools.evaluate(condition):
            return
        await asyncio.sleep(0.25)
    raise AssertionError(f"the page never showed {what}")


def result(kind: str, name: str) -> str:
    return f"document.querySelector('[data-{kind}=\"{name}\"]')"


async def test_the_page_reads_a_device_and_scans_a_bus_in_place(running: Gateway, tmp_path: Path) -> None:
    async with browser_page(tmp_path / "profile") as tools:
        await tools.send("Emulation.setDeviceMetricsOverride", width=412, height=1800, deviceScaleFactor=1, mobile=True)
        await tools.open(f"{url_of(running)}/technician", "/technician")
        await tools.evaluate("window.loadedOnce = true")

        await tools.evaluate("document.querySelector('button.read[data-device=\"weather-1\"]').click()")
        await wait_for(tools, f"{result('read', 'weather-1')}.dataset.state === 'done'", "weather-1's reading")
        temperature = f"{result('read', 'weather-1')}.querySelector('[data-read-channel=\"weather-1/temperature\"]').textContent"
        assert await tools.evaluate(temperature) == "12.5"

        await tools.evaluate("document.querySelector('button.read[data-device=\"ped-1\"]').click()")
        await wait_for(tools, f"{result('read', 'ped-1')}.dataset.state === 'done'", "ped-1's reading")
        shown = str(await tools.evaluate(f"{result('read', 'ped-1')}.textContent"))
        assert "ped-1/mac: withheld (personal)" in shown and not MAC.search(shown)

        await tools.evaluate("document.querySelector('.scan[data-bus=\"rs485-1\"] input').value = '19-21'")
        await tools.evaluate("document.querySelector('button.scan-bus[data-bus=\"rs485-1\"]').click()")
        await wait_for(tools, f"{result('scan', 'rs485-1')}.dataset.state === 'done'", "the scan's result")
        assert await tools.evaluate(f"Array.from({result('scan', 'rs485-1')}.querySelectorAll('li')).map(li => li.dataset.unit)") == ["20"]

        # The cards are rebuilt every 2 s: the reading stays under its device, on the same page.
        refreshed = await tools.evaluate("document.getElementById('refreshed').textContent")
        await wait_for(tools, f"document.getElementById('refreshed').textContent !== {refreshed!r}", "a refresh")
        assert await tools.evaluate(temperature) == "12.5"
        assert await tools.evaluate("window.loadedOnce") is True

"""The technician's page in a real headless Chromium, against a gateway on hil-sim with a wrong unit id and an unplugged sensor."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path

import aiohttp

from tests.hub.test_browser import ARTIFACTS, browser_page
from tests.localapi.conftest import LocalGateway

# Each value shown with the time of its reading: a new reading of an unchanged value counts as a change too.
VALUES = "Array.from(document.querySelectorAll('#devices td[data-channel]')).map(td => `${td.dataset.channel}=${td.textContent}@${td.dataset.ts}`)"


def card(device: str, part: str) -> str:
    return f"(document.querySelector('#devices [data-device=\"{device}\"] {part}') || {{}}).textContent"


async def flagged(url: str, *devices: str, timeout_s: float = 60) -> dict[str, dict[str, str]]:
    """Wait until the gateway calls each of ``devices`` something other than ok, and return their rows."""
    async with aiohttp.ClientSession() as http:
        for _ in range(int(timeout_s / 0.5)):
            async with http.get(f"{url}/technician.json") as resp:
                rows = {d["name"]: d for d in (await resp.json())["devices"]}
            if all(rows[d]["health"] != "ok" and rows[d]["diagnosis"] for d in devices):
                return rows
            await asyncio.sleep(0.5)
    raise AssertionError(f"{devices} not flagged in {timeout_s} s: { {d: rows[d] for d in devices} }")


async def test_the_page_flags_faulty_devices_and_shows_live_values_changing_without_reload(faulty_gateway: LocalGateway, tmp_path: Path) -> None:
    rows = await flagged(faulty_gateway.url, "weather-1", "pm-1")
    async with browser_page(tmp_path / "profile") as tools:
        await tools.send("Emulation.setDeviceMetricsOverride", width=412, height=1800, deviceScaleFactor=1, mobile=True)
        await tools.open(f"{faulty_gateway.url}/technician", "/technician")
        await tools.evaluate("window.loadedOnce = true")
        for device in ("weather-1", "pm-1"):
            assert await tools.evaluate(card(device, ".badge")) == rows[device]["health"]
            assert await tools.evaluate(card(device, ".diagnosis")) == rows[device]["diagnosis"]
        assert "11" in rows["weather-1"]["diagnosis"]  # the unit asked for, named
        first = await tools.evaluate(VALUES)
        assert isinstance(first, list) and any(v.startswith("meter-1/") or v.startswith("level-1/") for v in first)
        assert not any(v.startswith("ped-1/mac") or v.startswith("gps-1/") for v in first)  # never a personal value
        for _ in range(40):
            await asyncio.sleep(0.5)
            now = await tools.evaluate(VALUES)
            if now != first:
                break
        assert now != first, "no new reading showed on the page in 20 s"
        assert await tools.evaluate("window.loadedOnce") is True  # the same page: polled, not reloaded
        assert await tools.evaluate("document.getElementById('refreshed').textContent.startsWith('Updated')")
        shot = await tools.send("Page.captureScreenshot", format="png")
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "gateway-technician-page.png"
    path.write_bytes(base64.b64decode(str(shot["data"])))
    print(f"screenshot: {path}")
    assert path.stat().st_size > 10_000


SPOOL = "parseInt(document.querySelector('#overview [data-field=\"spool\"]').textContent)"
HUB = "document.querySelector('#overview [data-field=\"hub\"]').textContent"


async def test_the_backlog_on_the_page_rises_while_the_hub_is_away_and_falls_after(hub_gateway: LocalGateway, tmp_path: Path) -> None:
    proxy = hub_gateway.sim.proxy
    assert proxy is not None

    async def page_shows(condition: str, timeout_s: float) -> None:
        for _ in range(int(timeout_s / 0.5)):
            if await tools.evaluate(condition):
                return
            await asyncio.sleep(0.5)
        raise AssertionError(f"the page never showed {condition!r}: spool {await tools.evaluate(SPOOL)}, hub {await tools.evaluate(HUB)}")

    async with browser_page(tmp_path / "profile") as tools:
        await tools.open(f"{hub_gateway.url}/technician", "/technician")
        await tools.evaluate("window.loadedOnce = true")
        await page_shows(f"{HUB}.includes('reachable') && !{HUB}.includes('unreachable')", 30)
        proxy.set_mode("cut")
        await page_shows(f"{SPOOL} >= 3 && {HUB}.includes('unreachable')", 30)
        proxy.set_mode("pass")
        await page_shows(f"{SPOOL} <= 1 && !{HUB}.includes('unreachable')", 45)
        assert await tools.evaluate("window.loadedOnce") is True

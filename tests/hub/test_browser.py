"""The dashboard in a real headless Chromium: what a person sees on the fleet page and a device page."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from hub.app import RunningHub, run_hub
from tests.helpers.tools import require_tool
from tests.hub.gateways import SimGateway, enrol, post_cose
from tests.hub.test_dashboard import NOTICE

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"


async def chromium(binary: str, profile: Path, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}", "--window-size=1500,1000", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=90)
    assert proc.returncode == 0, f"chromium exited with {proc.returncode}"
    return out.decode()


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[RunningHub]:
    """Three gateways with real data: one live but reporting an error, one stale (silent for over 2 s), one pending approval."""
    async with run_hub(state_dir=tmp_path / "hub", admin_token="admin-secret", stale_after_s=2.0) as hub, aiohttp.ClientSession() as http:
        quiet, busy, waiting = SimGateway("pole-quiet"), SimGateway("pole-busy"), SimGateway("pole-waiting")
        for gw in (quiet, busy):
            await enrol(http, hub.url, gw, await hub.create_token())
        await enrol(http, hub.url, waiting, await hub.create_token(approve=False))
        await post_cose(http, f"{hub.url}/oxp/v1/batches", quiet.batch(1))
        await asyncio.sleep(2.5)
        for seq in range(1, 6):
            await post_cose(http, f"{hub.url}/oxp/v1/batches", busy.batch(seq, n=90))
        await post_cose(http, f"{hub.url}/oxp/v1/notice", busy.notice({**NOTICE, "place": {**NOTICE["place"], "gateway_id": "pole-busy"}}))

        async def keep_reporting() -> None:
            # A live gateway keeps reporting while the browser starts, so only the quiet one goes stale.
            while True:
                await post_cose(http, f"{hub.url}/oxp/v1/status", busy.status(software_version="1.4.2", spool_batches=2, errors=["pm-1: no answer for 30 s"]))
                await asyncio.sleep(0.3)

        reporter = asyncio.create_task(keep_reporting())
        try:
            yield hub
        finally:
            reporter.cancel()
            await asyncio.gather(reporter, return_exceptions=True)


async def test_the_fleet_page_shows_each_gateway_with_stale_ones_highlighted(fleet: RunningHub, tmp_path: Path) -> None:
    binary = require_tool("chromium")
    dom = await chromium(binary, tmp_path / "profile", "--dump-dom", await fleet.login_link())
    rows = {m.group(2): m.group(1) for m in re.finditer(r'<tr class="(\w+)">\s*<td data-value="([\w-]+)"', dom)}
    assert rows == {"pole-busy": "degraded", "pole-quiet": "stale", "pole-waiting": "pending"}
    assert '<span class="badge stale">stale</span>' in dom
    assert "pm-1: no answer for 30 s" in dom and "1.4.2" in dom
    assert re.search(r'<div class="value">1</div><div class="label">stale', dom)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "hub-fleet.png"
    await chromium(binary, tmp_path / "profile2", f"--screenshot={shot}", await fleet.login_link())
    assert shot.stat().st_size > 10_000


async def test_the_device_page_draws_recent_readings_as_charts(fleet: RunningHub, tmp_path: Path) -> None:
    binary = require_tool("chromium")
    dom = await chromium(binary, tmp_path / "profile", "--dump-dom", await fleet.login_link(next_path="/fleet/devices/pole-busy"))
    assert "<h1>pole-busy" in dom
    titles = re.findall(r'<svg class="chart" role="img" aria-label="([^"]+)"', dom)
    assert titles == ["meter-1/voltage_l1 (V)", "meter-1/power (W)", "pm-1/pm2_5 (ug/m3)", "door-1/open"]
    polyline = re.search(r'<polyline points="([^"]+)"', dom)
    assert polyline is not None and len(polyline.group(1).split()) == 150  # 5 batches x 30 voltage readings
    assert "150 most recent readings" in dom
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "hub-device.png"
    await chromium(binary, tmp_path / "profile2", f"--screenshot={shot}", await fleet.login_link(next_path="/fleet/devices/pole-busy"))
    assert shot.stat().st_size > 10_000


async def test_the_public_transparency_register_needs_no_sign_in(fleet: RunningHub, tmp_path: Path) -> None:
    binary = require_tool("chromium")
    dom = await chromium(binary, tmp_path / "profile", "--dump-dom", f"{fleet.url}/transparency")
    assert '<h2 id="pole-busy">Queen St &amp; Bay</h2>' in dom
    assert "Fine particles" in dom and "5-minute average" in dom and "City of Toronto" in dom
    ARTIFACTS.mkdir(exist_ok=True)
    await chromium(binary, tmp_path / "profile2", f"--screenshot={ARTIFACTS / 'hub-transparency.png'}", f"{fleet.url}/transparency")


class DevTools:
    """A minimal Chrome DevTools Protocol client over aiohttp's websocket: navigate and evaluate."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0

    async def send(self, method: str, **params: object) -> dict:
        message = await self._exchange(method, **params)
        assert "error" not in message, message
        return message["result"]

    async def _exchange(self, method: str, **params: object) -> dict:
        self.next_id += 1
        await self.ws.send_json({"id": self.next_id, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self.ws.receive_json(), timeout=30)
            if message.get("id") == self.next_id:
                return message

    async def evaluate(self, expression: str) -> object:
        """The expression's value in the page; None while the page is between documents.

        A page that navigates on by itself (a form that submits itself, a click on a button) can be between documents as
        it is asked: Chromium answers "Inspected target navigated or closed", which means "not there yet", not a failure.
        """
        answer = await self._exchange("Runtime.evaluate", expression=expression, returnByValue=True)
        error = answer.get("error")
        if error is not None:
            assert "navigated or closed" in str(error.get("message")), answer
            return None
        return answer["result"]["result"].get("value")

    async def open(self, url: str, path: str) -> None:
        await self.send("Page.navigate", url=url)
        for _ in range(300):
            if await self.evaluate(f"document.readyState === 'complete' && location.pathname === {path!r}"):
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"{path} did not load")


@contextlib.asynccontextmanager
async def browser_page(profile: Path) -> AsyncIterator[DevTools]:
    """A headless Chromium with one page, driven over the DevTools protocol."""
    proc = await asyncio.create_subprocess_exec(
        require_tool("chromium"), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", f"--user-data-dir={profile}",
        "--remote-debugging-port=0", "about:blank", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        for _ in range(300):
            if port_file.exists() and port_file.read_text().count("\n") >= 1:
                break
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/json/list") as resp:
                page = next(t for t in await resp.json() if t["type"] == "page")
            async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                yield DevTools(ws)
    finally:
        proc.terminate()
        await proc.wait()



async def test_the_fleet_table_filters_and_sorts_in_the_browser(fleet: RunningHub, tmp_path: Path) -> None:
    async with browser_page(tmp_path / "profile") as tools:
        await tools.open(await fleet.login_link(), "/fleet")
        visible = "Array.from(document.querySelectorAll('#fleet tbody tr')).filter(r => !r.hidden).map(r => r.cells[0].dataset.value)"
        assert await tools.evaluate(visible) == ["pole-busy", "pole-quiet", "pole-waiting"]
        await tools.evaluate("const f = document.getElementById('filter'); f.value = 'STALE'; f.dispatchEvent(new Event('input'))")
        assert await tools.evaluate(visible) == ["pole-quiet"]
        await tools.evaluate("const g = document.getElementById('filter'); g.value = ''; g.dispatchEvent(new Event('input'))")
        header = "Array.from(document.querySelectorAll('#fleet thead th')).find(th => th.textContent === 'Readings stored')"
        await tools.evaluate(f"{header}.click()")
        assert await tools.evaluate(visible) == ["pole-waiting", "pole-quiet", "pole-busy"]
        await tools.evaluate(f"{header}.click()")
        assert await tools.evaluate(visible) == ["pole-busy", "pole-quiet", "pole-waiting"]
        assert await tools.evaluate(f"{header}.getAttribute('aria-sort')") == "descending"

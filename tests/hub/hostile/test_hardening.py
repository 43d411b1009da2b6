"""Hardening (issue 11 item 6): private files, CSV text a spreadsheet will not run, no cross-site admin changes,
and every number a request carries read within a stated range (400 naming it, never 500)."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from edge.cli import main
from edge.protocol import BatchHeader, seal_batch
from edge.protocol.types import Channel, Reading
from hub.app import RunningHub, run_hub
from tests.hub.gateways import T0, SimGateway, enrol, post_cose
from tests.hub.test_browser import browser_page

ADMIN = {"Authorization": "Bearer admin-secret"}
FORMULA_UNIT = '=HYPERLINK("http://evil","x")'
BIG = "9" * 5000


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def lenient_umask() -> Iterator[None]:
    """The usual umask of a login shell (022): what made hub.db 0644."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


# --- files ------------------------------------------------------------------------------


async def test_the_hub_database_and_its_journal_are_0600_in_a_0700_state_directory(tmp_path: Path, lenient_umask: None) -> None:
    state = tmp_path / "srv" / "ocn-hub"
    async with run_hub(state_dir=state, admin_token="admin-secret") as hub, aiohttp.ClientSession() as http:
        gateway = SimGateway("pole-1")
        await enrol(http, hub.url, gateway, await hub.create_token())
        status, _, _ = await post_cose(http, f"{hub.url}/oxp/v1/batches", gateway.batch(1))
        assert status == 200
        files = {p.name: mode(p) for p in state.iterdir()}
        assert set(files) >= {"hub.db", "hub.db-wal", "hub.db-shm", "hub.key"}
        assert files == dict.fromkeys(files, 0o600)  # every file in it: the database, its journal, the signing key
        assert (mode(state), mode(state.parent)) == (0o700, 0o700)


async def test_a_hub_database_an_older_hub_left_readable_is_made_private(tmp_path: Path, lenient_umask: None) -> None:
    state = tmp_path / "hub"
    async with run_hub(state_dir=state, admin_token="admin-secret"):
        pass
    os.chmod(state / "hub.db", 0o644)
    async with run_hub(state_dir=state, admin_token="admin-secret"):
        assert mode(state / "hub.db") == 0o600


def test_the_first_token_created_on_the_command_line_makes_a_private_state_directory(tmp_path: Path, lenient_umask: None) -> None:
    state = tmp_path / "new" / "ocn-hub"
    assert main(["hub", "token", "create", "--state-dir", str(state)]) == 0
    assert (mode(state), mode(state.parent), mode(state / "hub.db")) == (0o700, 0o700, 0o600)


# --- CSV injection -----------------------------------------------------------------------


async def test_a_formula_unit_from_a_device_is_neutralised_in_the_csv_export_and_a_negative_value_is_not(
    running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway
) -> None:
    channel = Channel("meter-1/power", unit=FORMULA_UNIT, resolution=1.0)
    header = BatchHeader(device_id=gateway.device_id, key_id=gateway.key_id, boot_epoch=1, seq=1, policy_digest=b"\x07" * 32,
                         codec="zstd", created_ms=T0, counters={})
    batch = seal_batch(header, [channel], [Reading(channel.id, T0, -5.0, FORMULA_UNIT), Reading(channel.id, T0 + 1000, 7.0, FORMULA_UNIT)],
                       gateway.private_key)
    status, ack, _ = await post_cose(http, f"{running_hub.url}/oxp/v1/batches", batch)
    assert status == 200, ack
    async with http.get(f"{running_hub.url}/data/readings.csv") as resp:
        text = await resp.text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [(r["unit"], r["value"]) for r in rows] == [("'" + FORMULA_UNIT, "-5"), ("'" + FORMULA_UNIT, "7")]
    assert "\n=" not in text and ',=' not in text and '"=' not in text


# --- cross-site admin changes -------------------------------------------------------------


@pytest.fixture
async def browser(running_hub: RunningHub, gateway: SimGateway) -> AsyncIterator[aiohttp.ClientSession]:
    """A client holding an admin session cookie, as a browser does after signing in."""
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        async with session.post(f"{running_hub.url}/login", data={"token": "admin-secret", "next": "/fleet"}, allow_redirects=False) as resp:
            assert resp.status == 303
        yield session


async def status_of(hub: RunningHub, device_id: str = "pole-0042") -> str:
    device = await hub.store.device(device_id)
    assert device is not None, f"{device_id} is not enrolled"
    return device.status


@pytest.mark.parametrize("headers", [
    {},  # a browser too old to say where a request comes from
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
    {"Sec-Fetch-Site": "cross-site", "Origin": "http://evil.example"},
    {"Sec-Fetch-Site": "same-site"},  # a sibling host (another city service) is not this hub
    {"Sec-Fetch-Site": "cross-site", "Origin": "{hub}"},  # Sec-Fetch-Site wins: an Origin is easy to mistake
], ids=["no-headers", "foreign-origin", "null-origin", "cross-site", "same-site", "cross-site-with-own-origin"])
async def test_a_change_made_with_a_session_from_another_site_is_refused_and_changes_nothing(
    running_hub: RunningHub, browser: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    headers = {k: v.format(hub=running_hub.url) for k, v in headers.items()}
    async with browser.post(f"{running_hub.url}/fleet/devices/pole-0042/revoke", headers=headers, allow_redirects=False) as resp:
        assert resp.status == 403 and (await resp.json())["error"] == "cross_site"
    async with browser.put(f"{running_hub.url}/admin/api/desired/fleet/default", json={"config": {"batch": {"span": "1m"}}}, headers=headers) as resp:
        assert resp.status == 403
    async with browser.delete(f"{running_hub.url}/admin/api/desired/fleet/default", headers=headers) as resp:
        assert resp.status == 403
    async with browser.post(f"{running_hub.url}/admin/api/tokens", json={}, headers=headers) as resp:
        assert resp.status == 403
    assert await status_of(running_hub) == "active"
    assert await running_hub.hub.store.desired("fleet", "default") is None


@pytest.mark.parametrize("headers", [{"Sec-Fetch-Site": "same-origin"}, {"Origin": "{hub}"}], ids=["sec-fetch-site", "origin"])
async def test_a_change_made_with_a_session_from_the_hubs_own_page_is_done(
    running_hub: RunningHub, browser: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    headers = {k: v.format(hub=running_hub.url) for k, v in headers.items()}
    async with browser.post(f"{running_hub.url}/fleet/devices/pole-0042/revoke", headers=headers, allow_redirects=False) as resp:
        assert resp.status == 303
    assert await status_of(running_hub) == "revoked"


async def test_the_admin_token_in_the_authorization_header_needs_no_origin(running_hub: RunningHub, gateway: SimGateway) -> None:
    async with aiohttp.ClientSession(headers=ADMIN) as script:
        async with script.post(f"{running_hub.url}/admin/api/tokens", json={"uses": 2}) as resp:
            assert resp.status == 201
        async with script.post(f"{running_hub.url}/fleet/devices/pole-0042/revoke", headers={"Origin": "http://elsewhere"}, allow_redirects=False) as resp:
            assert resp.status == 303
    assert await status_of(running_hub) == "revoked"


async def test_reading_admin_pages_with_a_session_needs_no_origin(running_hub: RunningHub, browser: aiohttp.ClientSession) -> None:
    async with browser.get(f"{running_hub.url}/admin/api/devices") as resp:
        assert resp.status == 200


# --- numbers in requests ------------------------------------------------------------------


@pytest.mark.parametrize(("path", "name"), [
    ("/data/readings.csv?since=99999999999999999999999", "since"),
    ("/data/readings.csv?until=-99999999999999999999999", "until"),
    (f"/data/readings.senml.json?since={BIG}", "since"),
    ("/data/readings.csv?limit=①", "limit"),
    ("/data/readings.csv?limit=٣", "limit"),
    ("/data/readings.csv?limit=1_000", "limit"),
    ("/data/readings.csv?limit=100001", "limit"),
    (f"/data/readings.csv?offset={BIG}", "offset"),
    ("/data/readings.senml.cbor?offset=-1", "offset"),
    ("/sta/v1.1/Observations?$top=①", "$top"),
    (f"/sta/v1.1/Observations?$skip={BIG}", "$skip"),
    (f"/sta/v1.1/Datastreams({BIG})", "Datastreams(id)"),
    (f"/sta/v1.1/Observations({BIG})/Datastream", "Observations(id)"),
    ("/sta/v1.1/Datastreams(9223372036854775808)", "Datastreams(id)"),
    (f"/sta/v1.1/Observations?$filter=result eq {BIG[:1000]}", "digits"),  # $filter itself is at most 2,000 characters
])
async def test_a_number_out_of_range_in_a_query_is_a_400_naming_the_parameter(
    running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway, path: str, name: str
) -> None:
    async with http.get(running_hub.url + path) as resp:
        body = await resp.json()
    assert resp.status == 400, body
    assert name in (body.get("detail") or body.get("message"))


async def test_a_time_at_either_end_of_the_signed_64_bit_range_is_accepted(running_hub: RunningHub, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{running_hub.url}/data/readings.csv?since={-(2**63)}&until={2**63 - 1}") as resp:
        assert resp.status == 200


@pytest.mark.parametrize(("body", "name"), [
    ({"expires_s": "inf"}, "expires_s"),
    ({"expires_s": float("inf")}, "expires_s"),  # sent as the JSON extension Infinity, which Python's parser takes
    ({"expires_s": float("nan")}, "expires_s"),
    ({"expires_s": 0}, "expires_s"),
    ({"expires_s": 10**30}, "expires_s"),
    ({"uses": 0}, "uses"),
    ({"uses": 1.5}, "uses"),
    ({"uses": True}, "uses"),
    ({"uses": "①"}, "uses"),
    ({"uses": 10**400}, "uses"),
    ({"approve": "yes"}, "approve"),
    ({"fleet": 7}, "fleet"),
    ({"note": "n" * 201}, "note"),
    ({"note": "a\x00b"}, "note"),  # PostgreSQL refuses U+0000 in text: refused here, on every engine
    ({"fleet": "north\nsouth"}, "fleet"),
    ([1, 2], "JSON object"),
])
async def test_a_bad_field_in_a_token_request_is_a_400_naming_it_and_creates_nothing(
    running_hub: RunningHub, http: aiohttp.ClientSession, body: object, name: str
) -> None:
    before = len(await running_hub.hub.store.tokens())
    async with http.post(f"{running_hub.url}/admin/api/tokens", data=json.dumps(body), headers={**ADMIN, "Content-Type": "application/json"}) as resp:
        answer = await resp.json()
    assert resp.status == 400 and name in answer["detail"], answer
    assert len(await running_hub.hub.store.tokens()) == before


async def test_a_deeply_nested_or_oversized_admin_body_is_refused_before_parsing(running_hub: RunningHub, http: aiohttp.ClientSession) -> None:
    deep = "[" * 8000 + "]" * 8000
    for path, method in (("/admin/api/tokens", "POST"), ("/admin/api/desired/fleet/default", "PUT")):
        async with http.request(method, running_hub.url + path, data=deep, headers={**ADMIN, "Content-Type": "application/json"}) as resp:
            assert resp.status == 400 and "deeper" in (await resp.json())["detail"]
        async with http.request(method, running_hub.url + path, data=" " * 70_000, headers={**ADMIN, "Content-Type": "application/json"}) as resp:
            assert resp.status == 413


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
async def test_a_desired_document_name_with_a_control_character_is_a_400(running_hub: RunningHub, http: aiohttp.ClientSession, method: str) -> None:
    async with http.request(method, f"{running_hub.url}/admin/api/desired/fleet/down%00town", json={"config": {}}, headers=ADMIN) as resp:
        answer = await resp.json()
    assert resp.status == 400 and "name=" in answer["detail"], answer


# --- in a real browser ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def sibling_site(hub_url: str) -> AsyncIterator[str]:
    """A page on another port of the same host (same-site: the SameSite=Strict cookie goes along) that posts to the hub."""
    async def page(request: web.Request) -> web.Response:
        return web.Response(content_type="text/html", text=(
            f"<form method=post action='{hub_url}/fleet/devices/pole-waiting/approve'></form>"
            "<script>document.forms[0].submit()</script>"))

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/"
    finally:
        await runner.cleanup()


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[RunningHub]:
    """A hub with one gateway waiting for approval."""
    async with run_hub(state_dir=tmp_path / "hub", admin_token="admin-secret") as hub, aiohttp.ClientSession() as http:
        await enrol(http, hub.url, SimGateway("pole-waiting"), await hub.create_token(approve=False))
        yield hub


async def test_in_chromium_the_approve_button_works_and_a_sibling_sites_form_changes_nothing(fleet: RunningHub, tmp_path: Path) -> None:
    async with browser_page(tmp_path / "profile") as tools, sibling_site(fleet.url) as elsewhere:
        await tools.open(await fleet.login_link(), "/fleet")
        await tools.open(elsewhere, "/fleet/devices/pole-waiting/approve")  # the form submits itself, with the session cookie
        assert "cross_site" in str(await tools.evaluate("document.body.innerText"))
        assert await status_of(fleet, "pole-waiting") == "pending"
        await tools.open(f"{fleet.url}/fleet/devices/pole-waiting", "/fleet/devices/pole-waiting")
        await tools.evaluate("document.querySelector('form[action$=\"/approve\"] button').click()")
        for _ in range(300):
            if await tools.evaluate("document.readyState === 'complete' && !document.querySelector('form[action$=\"/approve\"]')"):
                break
            await asyncio.sleep(0.05)
    assert await status_of(fleet, "pole-waiting") == "active"

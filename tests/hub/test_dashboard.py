"""The dashboard over HTTP: public pages need nothing, admin pages need the token or a session."""

from __future__ import annotations

from typing import Any

import aiohttp

from hub.app import RunningHub
from tests.hub.gateways import SimGateway, post_cose

HTML = {"Accept": "text/html"}


async def test_the_fleet_page_sends_a_browser_without_a_session_to_the_login_page(running_hub: RunningHub, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{running_hub.url}/fleet", headers=HTML, allow_redirects=False) as resp:
        assert resp.status == 303 and resp.headers["Location"].startswith("/login")


async def test_the_admin_api_without_credentials_is_401(running_hub: RunningHub, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{running_hub.url}/admin/api/devices") as resp:
        assert resp.status == 401


async def test_the_admin_token_opens_the_admin_api(running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway) -> None:
    async with http.get(f"{running_hub.url}/admin/api/devices", headers={"Authorization": "Bearer admin-secret"}) as resp:
        devices = (await resp.json())["devices"]
    assert [(d["device_id"], d["health"]) for d in devices] == [("pole-0042", "silent")]


async def test_signing_in_with_the_admin_token_opens_a_session_for_the_fleet_page(running_hub: RunningHub, gateway: SimGateway) -> None:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.post(f"{running_hub.url}/login", data={"token": "admin-secret", "next": "/fleet"}) as resp:
            assert resp.status == 200 and "pole-0042" in await resp.text()


async def test_a_wrong_admin_token_is_refused_on_the_login_form(running_hub: RunningHub, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{running_hub.url}/login", data={"token": "guess"}) as resp:
        assert resp.status == 401 and "not the admin token" in await resp.text()


async def test_a_login_link_works_once(running_hub: RunningHub) -> None:
    link = await running_hub.login_link()
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.get(link) as resp:
            assert resp.status == 200 and resp.url.path == "/fleet"
    async with aiohttp.ClientSession() as other:
        async with other.get(link) as resp:
            assert resp.status == 401


async def test_the_device_page_shows_a_chart_per_channel_and_the_revoke_button(running_hub: RunningHub, gateway: SimGateway) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer admin-secret"}) as admin:
        await post_cose(admin, f"{running_hub.url}/oxp/v1/batches", gateway.batch(1))
        async with admin.get(f"{running_hub.url}/fleet/devices/pole-0042") as resp:
            page = await resp.text()
    assert page.count("<svg") == 4 and "meter-1/voltage_l1 (V)" in page and ">Revoke<" in page


async def test_revoking_from_the_device_page_stops_ingest_at_once(running_hub: RunningHub, gateway: SimGateway) -> None:
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer admin-secret"}) as admin:
        await post_cose(admin, f"{running_hub.url}/oxp/v1/batches", gateway.batch(1))
        async with admin.post(f"{running_hub.url}/fleet/devices/pole-0042/revoke") as resp:
            assert resp.status == 200
        status, body, _ = await post_cose(admin, f"{running_hub.url}/oxp/v1/batches", gateway.batch(2))
    assert (status, body["error"]) == (403, "revoked")


NOTICE: dict[str, Any] = {  # the shape edge.privacy.build_notice produces
    "schema": "ocn-notice/1",
    "place": {"gateway_id": "pole-0042", "site": "Queen St & Bay", "latitude": 43.6525, "longitude": -79.3817},
    "accountable": {"organisation": "City of Toronto", "contact": "privacy@toronto.example"},
    "purpose": "Air quality on busy streets",
    "data": [{"channel": "pm-1/pm2_5", "device": "pm-1", "what": "Fine particles", "unit": "ug/m3", "personal": False,
              "process": ["aggregated"], "leaves_as": "5-minute average", "purpose": "air quality"}],
    "withheld": ["pm-1/raw"],
    "retention": "2 years",
    "policy": {"name": "downtown", "version": "3", "digest": "ab" * 32, "signed_by": "city-privacy-office"},
}


async def test_the_transparency_register_is_public(running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway) -> None:
    await post_cose(http, f"{running_hub.url}/oxp/v1/notice", gateway.notice(NOTICE))
    async with http.get(f"{running_hub.url}/transparency") as resp:
        page = await resp.text()
    assert resp.status == 200
    for text in ("Queen St &amp; Bay", "City of Toronto", "Fine particles", "5-minute average", "pm-1/raw", "2 years", "signed by city-privacy-office"):
        assert text in page, text


async def test_a_notice_gives_the_gateway_its_public_position(running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway) -> None:
    await post_cose(http, f"{running_hub.url}/oxp/v1/notice", gateway.notice(NOTICE))
    device = await running_hub.store.device("pole-0042")
    assert device is not None and (device.site, device.latitude, device.longitude) == ("Queen St & Bay", 43.6525, -79.3817)


async def test_desired_config_set_through_the_admin_api_shows_as_drift_until_the_gateway_applies_it(
    running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway
) -> None:
    auth = {"Authorization": "Bearer admin-secret"}
    async with http.put(f"{running_hub.url}/admin/api/desired/fleet/default", json={"config": {"batch": {"span": "1m"}}}, headers=auth) as resp:
        assert resp.status == 200
    _, answer, _ = await post_cose(http, f"{running_hub.url}/oxp/v1/status", gateway.status())
    async with http.get(f"{running_hub.url}/admin/api/devices", headers=auth) as resp:
        assert (await resp.json())["devices"][0]["drift"] == ["config"]
    await post_cose(http, f"{running_hub.url}/oxp/v1/status", gateway.status(applied_etag=answer["etag"]))
    async with http.get(f"{running_hub.url}/admin/api/devices", headers=auth) as resp:
        assert (await resp.json())["devices"][0]["drift"] == []


async def test_a_desired_document_with_an_unknown_part_is_refused_naming_it(running_hub: RunningHub, http: aiohttp.ClientSession) -> None:
    async with http.put(f"{running_hub.url}/admin/api/desired/fleet/default", json={"confg": {}}, headers={"Authorization": "Bearer admin-secret"}) as resp:
        assert resp.status == 400 and "'confg'" in (await resp.json())["detail"]


async def test_a_device_whose_batches_are_refused_says_so_in_the_fleet_view(running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway) -> None:
    # Signed with the device's own key but naming another device: the device's fault, not a forger's.
    misnamed = SimGateway("another-pole", private_key=gateway.private_key).batch(1)
    await post_cose(http, f"{running_hub.url}/oxp/v1/batches", misnamed)
    async with http.get(f"{running_hub.url}/admin/api/devices", headers={"Authorization": "Bearer admin-secret"}) as resp:
        assert (await resp.json())["devices"][0]["refused"] == "malformed"

"""Beyond loopback the local API asks for its access token on everything but the public notice; on loopback it asks nothing."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from edge.localapi import create_app
from edge.localapi.access import COOKIE, TOKEN_FILE, AccessToken, create_access_token, needs_token

NOTICE = {"schema": "ocn-edge/notice/v1", "purpose": "Plan city services", "data": []}
STATUS = {"device_id": "pole-7", "software_version": "0.1.0", "uptime_s": 1.0, "devices": {}, "buses": {}}
GUARDED = ("/status", "/technician", "/technician.json", "/metrics")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost"])
def test_loopback_needs_no_token(host: str) -> None:
    assert needs_token(host) is False


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "10.0.0.5", "fe80::1", "gateway.local"])
def test_any_other_address_needs_the_token(host: str) -> None:
    assert needs_token(host) is True


def test_the_token_is_kept_only_as_its_sha256(tmp_path: Path) -> None:
    token = create_access_token(tmp_path)
    stored = (tmp_path / TOKEN_FILE).read_text().strip()
    assert stored == hashlib.sha256(token.encode()).hexdigest() and token not in stored
    assert (tmp_path / TOKEN_FILE).stat().st_mode & 0o077 == 0
    access = AccessToken(tmp_path)
    assert access.accepts(token) and not access.accepts("guess") and not access.accepts("")
    newer = create_access_token(tmp_path)
    assert access.accepts(newer) and not access.accepts(token)  # a new token replaces the old one at once


async def serve(access: AccessToken, *, public_notice: bool = True) -> AsyncIterator[str]:
    app = create_app(notice_html="<p>notice</p>", notice_json=NOTICE, status=lambda: STATUS, access=access, public_notice=public_notice)
    runner = web.ServerRunner(web.Server(app))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()  # tests bind loopback only; `required` stands for a LAN address
    try:
        host, port = runner.addresses[0][:2]
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def lan_api(tmp_path: Path) -> AsyncIterator[tuple[str, str]]:
    token = create_access_token(tmp_path)
    async for url in serve(AccessToken(tmp_path, required=True)):
        yield url, token


async def test_beyond_loopback_the_page_status_and_metrics_refuse_a_request_without_the_token(lan_api: tuple[str, str]) -> None:
    url, _ = lan_api
    async with aiohttp.ClientSession() as http:
        for path in GUARDED:
            async with http.get(url + path) as resp:
                assert resp.status == 401, path
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            async with http.get(url + path, headers={"Authorization": "Bearer wrong"}) as resp:
                assert resp.status == 401, path


async def test_beyond_loopback_the_public_notice_needs_no_token(lan_api: tuple[str, str]) -> None:
    url, _ = lan_api
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/notice", "/notice.json"):
            async with http.get(url + path) as resp:
                assert resp.status == 200, path


async def test_the_bearer_token_opens_every_route(lan_api: tuple[str, str]) -> None:
    url, token = lan_api
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http:
        for path in GUARDED:
            async with http.get(url + path) as resp:
                assert resp.status == 200, path


async def test_a_login_link_sets_a_cookie_and_drops_the_token_from_the_address(lan_api: tuple[str, str]) -> None:
    url, token = lan_api
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as http:  # unsafe: cookies for an IP address, as browsers keep them
        async with http.get(f"{url}/technician?token={token}", allow_redirects=False) as resp:
            assert resp.status == 303 and resp.headers["Location"] == "/technician"
            assert "httponly" in resp.headers["Set-Cookie"].lower() and COOKIE in resp.headers["Set-Cookie"]
        async with http.get(f"{url}/technician") as resp:
            assert resp.status == 200 and "pole-7" in await resp.text()
        async with http.get(f"{url}/technician?token=wrong", allow_redirects=False) as resp:
            assert resp.status == 200  # the cookie still holds; a wrong link grants nothing more


async def test_without_a_stored_token_the_refusal_says_how_to_make_one(tmp_path: Path) -> None:
    async for url in serve(AccessToken(tmp_path / "empty", required=True)):
        async with aiohttp.ClientSession() as http, http.get(f"{url}/technician") as resp:
            assert resp.status == 401
            assert "ocn-edge access-token create" in (await resp.json())["detail"]


async def test_the_notice_can_be_made_to_need_the_token_too(tmp_path: Path) -> None:
    create_access_token(tmp_path)
    async for url in serve(AccessToken(tmp_path, required=True), public_notice=False):
        async with aiohttp.ClientSession() as http, http.get(f"{url}/notice") as resp:
            assert resp.status == 401


async def test_on_loopback_nothing_asks_for_a_token(tmp_path: Path) -> None:
    async for url in serve(AccessToken(tmp_path, required=False)):
        async with aiohttp.ClientSession() as http:
            for path in GUARDED:
                async with http.get(url + path) as resp:
                    assert resp.status == 200, path


async def test_routes_answer_as_a_router_would_not_found_wrong_method_and_head(tmp_path: Path) -> None:
    # The local API runs on aiohttp's low-level server with its own route table (edge.localapi.app): an unknown
    # path is a 404, a known path asked with another method a 405 naming the one it takes, and a page answers HEAD.
    async for url in serve(AccessToken(tmp_path)):
        async with aiohttp.ClientSession() as http:
            for path in ("/nope", "/status/", "/devices/x/scan", "/buses/x/read", "/devices//read", "/devices/a/b/read"):
                async with http.get(url + path) as resp:
                    assert resp.status == 404, path
                async with http.post(url + path, json={}) as resp:
                    assert resp.status == 404, path
            async with http.post(url + "/status", json={}) as resp:
                assert resp.status == 405 and set(resp.headers["Allow"].split(",")) == {"GET", "HEAD"}
            async with http.get(url + "/devices/meter-1/read") as resp:
                assert resp.status == 405 and resp.headers["Allow"] == "POST"
            async with http.head(url + "/status") as resp:
                assert resp.status == 200 and await resp.read() == b""
            async with http.get(url + "/status") as resp:
                assert resp.status == 200 and (await resp.json())["device_id"] == "pole-7"
            # Not attached to a gateway: the action routes are found, and say so.
            async with http.post(url + "/devices/meter%201/read", json={}) as resp:
                assert resp.status == 503 and (await resp.json())["error"] == "unavailable"
            async with http.post(url + "/buses/rs485-1/scan", json={}) as resp:
                assert resp.status == 503


async def test_beyond_loopback_an_unknown_path_is_refused_before_it_is_looked_up(lan_api: tuple[str, str]) -> None:
    url, _ = lan_api
    async with aiohttp.ClientSession() as http:
        async with http.get(url + "/nope") as resp:
            assert resp.status == 401  # nothing about which paths exist is told without the token

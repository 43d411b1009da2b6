"""People's accounts and roles over HTTP, on both engines: who may change what, and each change once in the audit log."""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.demo import DEMO_POLICY
from hub.app import RunningHub, run_hub
from hub.audit import document_digest
from hub.auth import add_account, disable, set_roles
from tests.hub.gateways import SimGateway, enrol

POLICY = tomllib.loads(DEMO_POLICY.read_text())
CONFIG = {"batch": {"span": "1m"}}
DESIRED = "/admin/api/desired/device/pole-0042"
NAMES = {"viewer": "vic", "operator": "olga", "privacy-officer": "pat", "admin": "ada"}


@pytest.fixture
async def hub(db_url: str, tmp_path: Path) -> AsyncIterator[RunningHub]:
    """A hub on each engine with one enrolled gateway and no audit entry yet but the token that enrolled it."""
    async with run_hub(db=db_url, state_dir=tmp_path / "hub", admin_token="admin-secret") as running, aiohttp.ClientSession() as http:
        await enrol(http, running.url, SimGateway("pole-0042"), await running.create_token())
        yield running


async def people(hub: RunningHub) -> dict[str, str]:
    """An API token for a person in each role, made as city IT would (actor cli:test)."""
    return {role: await add_account(hub.store, name, role, actor="cli:test") for role, name in NAMES.items()}


async def put(hub: RunningHub, token: str, document: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, http.put(f"{hub.url}{DESIRED}", json=document) as resp:
        return resp.status, await resp.json()


async def actions(hub: RunningHub) -> list[tuple[str, str, str]]:
    """(actor, action, target) of every audit entry, oldest first."""
    return [(e.actor, e.action, e.target) for e in reversed(await hub.store.audit_log(limit=1000))]


async def test_a_policy_change_by_a_viewer_or_an_operator_is_refused_and_by_the_privacy_officer_accepted(hub: RunningHub) -> None:
    tokens = await people(hub)
    for role in ("viewer", "operator", "admin"):
        status, body = await put(hub, tokens[role], {"policy": POLICY})
        assert status == 403 and body["error"] == "forbidden", (role, body)
        assert "policy" in body["detail"] and body["needs"] == (["operator", "admin"] if role == "viewer" else ["privacy-officer"]), body
    assert await hub.store.desired("device", "pole-0042") is None
    assert await put(hub, tokens["privacy-officer"], {"policy": POLICY}) == (200, {"ok": True})
    stored = await hub.store.desired("device", "pole-0042")
    assert stored is not None and stored[0] == {"policy": POLICY}


async def test_an_operator_changes_the_config_but_not_the_policy_beside_it(hub: RunningHub) -> None:
    tokens = await people(hub)
    assert (await put(hub, tokens["privacy-officer"], {"policy": POLICY}))[0] == 200
    # The config changes, the policy stays as it is: the operator's role covers that.
    assert (await put(hub, tokens["operator"], {"config": CONFIG, "policy": POLICY}))[0] == 200
    # Leaving the policy out would clear it: refused, and nothing is written.
    status, body = await put(hub, tokens["operator"], {"config": {"batch": {"span": "2m"}}})
    assert status == 403 and "would change its policy" in body["detail"]
    # A privacy officer alone may not change the config either.
    status, body = await put(hub, tokens["privacy-officer"], {"config": {"batch": {"span": "2m"}}, "policy": POLICY})
    assert status == 403 and "would change its config" in body["detail"] and body["needs"] == ["operator", "admin"]
    stored = await hub.store.desired("device", "pole-0042")
    assert stored is not None and stored[0] == {"config": CONFIG, "policy": POLICY}


async def test_clearing_a_document_that_holds_a_policy_needs_the_privacy_officer(hub: RunningHub) -> None:
    tokens = await people(hub)
    assert (await put(hub, tokens["privacy-officer"], {"policy": POLICY}))[0] == 200
    for role, expected in (("operator", 403), ("viewer", 403), ("privacy-officer", 200)):
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {tokens[role]}"}) as http, http.delete(f"{hub.url}{DESIRED}") as resp:
            assert resp.status == expected, role


async def test_a_viewer_reads_but_may_not_approve_revoke_or_create_tokens(hub: RunningHub) -> None:
    tokens = await people(hub)
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {tokens['viewer']}"}) as http:
        async with http.get(f"{hub.url}/admin/api/devices") as resp:
            assert resp.status == 200 and [d["device_id"] for d in (await resp.json())["devices"]] == ["pole-0042"]
        async with http.post(f"{hub.url}/admin/api/tokens", json={"uses": 1}) as resp:
            body = await resp.json()
            assert resp.status == 403 and body["needs"] == ["operator", "admin"]
        async with http.post(f"{hub.url}/fleet/devices/pole-0042/revoke") as resp:
            assert resp.status == 403
        async with http.get(f"{hub.url}/fleet/devices/pole-0042", headers={"Accept": "text/html"}) as resp:
            assert resp.status == 200 and ">Revoke<" not in await resp.text()  # no button that would only be refused
    device = await hub.store.device("pole-0042")
    assert device is not None and device.status == "active"


async def test_every_change_appears_exactly_once_in_the_audit_log_under_whoever_made_it(hub: RunningHub) -> None:
    tokens = await people(hub)
    operator = {"Authorization": f"Bearer {tokens['operator']}"}
    async with aiohttp.ClientSession(headers=operator) as http:
        async with http.post(f"{hub.url}/admin/api/tokens", json={"uses": 2, "note": "King St"}) as resp:
            assert resp.status == 201
        async with http.put(f"{hub.url}/admin/api/desired/fleet/default", json={"config": CONFIG}) as resp:
            assert resp.status == 200
        async with http.post(f"{hub.url}/fleet/devices/pole-0042/revoke") as resp:
            assert resp.status == 200
        async with http.put(f"{hub.url}{DESIRED}", json={"policy": POLICY}) as resp:  # refused: not recorded
            assert resp.status == 403
    assert (await put(hub, tokens["privacy-officer"], {"policy": POLICY}))[0] == 200
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer admin-secret"}) as http, http.delete(f"{hub.url}{DESIRED}") as resp:
        assert resp.status == 200
    await set_roles(hub.store, "vic", "viewer,operator", actor="cli:test")
    await disable(hub.store, "vic", actor="cli:test")
    assert await actions(hub) == [
        ("hub", "token.create", "token:1"),  # the fixture's, through the programmatic API
        ("cli:test", "account.add", "account:vic"),
        ("cli:test", "account.add", "account:olga"),
        ("cli:test", "account.add", "account:pat"),
        ("cli:test", "account.add", "account:ada"),
        ("olga", "token.create", "token:2"),
        ("olga", "desired.set", "fleet:default"),
        ("olga", "device.revoke", "device:pole-0042"),
        ("pat", "desired.set", "device:pole-0042"),
        ("admin", "desired.clear", "device:pole-0042"),  # the admin token, break-glass
        ("cli:test", "account.roles", "account:vic"),
        ("cli:test", "account.disable", "account:vic"),
    ]
    policy_set, cleared = [e for e in reversed(await hub.store.audit_log()) if e.target == "device:pole-0042" and e.action.startswith("desired")]
    assert (policy_set.before_sha256, policy_set.after_sha256) == ("", document_digest({"policy": POLICY}))
    assert (cleared.before_sha256, cleared.after_sha256) == (document_digest({"policy": POLICY}), "")


async def test_a_disabled_account_is_refused_at_once_and_a_new_role_takes_effect_at_once(hub: RunningHub) -> None:
    tokens = await people(hub)
    assert (await put(hub, tokens["operator"], {"policy": POLICY}))[0] == 403
    await set_roles(hub.store, "olga", "operator,privacy-officer", actor="cli:test")
    assert (await put(hub, tokens["operator"], {"config": CONFIG, "policy": POLICY}))[0] == 200
    await disable(hub.store, "olga", actor="cli:test")
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {tokens['operator']}"}) as http, http.get(f"{hub.url}/admin/api/devices") as resp:
        assert resp.status == 401


async def test_a_person_signs_in_with_their_token_and_the_session_acts_as_them(hub: RunningHub) -> None:
    tokens = await people(hub)
    own_pages = {"Origin": hub.url}
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.post(f"{hub.url}/login", data={"token": tokens["operator"], "next": "/fleet"}) as resp:
            assert resp.status == 200 and "pole-0042" in await resp.text()
        async with browser.put(f"{hub.url}{DESIRED}", json={"policy": POLICY}, headers=own_pages) as resp:
            assert resp.status == 403
        async with browser.put(f"{hub.url}{DESIRED}", json={"config": CONFIG}, headers=own_pages) as resp:
            assert resp.status == 200
    assert (await actions(hub))[-1] == ("olga", "desired.set", "device:pole-0042")


async def test_a_login_link_for_a_person_opens_their_session_and_is_recorded(hub: RunningHub) -> None:
    tokens = await people(hub)
    del tokens
    link = await hub.hub.admin.login_link(hub.url, account="vic", actor="cli:test")
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
        async with browser.get(link) as resp:
            assert resp.status == 200 and resp.url.path == "/fleet"
        async with browser.get(f"{hub.url}/audit", headers={"Accept": "text/html"}) as resp:
            assert resp.status == 200 and "account.login_link" in await resp.text()
        async with browser.post(f"{hub.url}/admin/api/tokens", json={}, headers={"Origin": hub.url, "Accept": "text/html"}) as resp:
            page = await resp.text()
            assert resp.status == 403 and "Not allowed" in page and "operator or admin" in page


async def test_only_the_admin_role_manages_accounts_through_the_api(hub: RunningHub) -> None:
    tokens = await people(hub)
    for role in ("viewer", "operator", "privacy-officer"):
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {tokens[role]}"}) as http:
            async with http.post(f"{hub.url}/admin/api/accounts", json={"name": "eve", "roles": "admin"}) as resp:
                assert resp.status == 403 and (await resp.json())["needs"] == ["admin"], role
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {tokens['admin']}"}) as http:
        async with http.post(f"{hub.url}/admin/api/accounts", json={"name": "sam", "roles": "viewer"}) as resp:
            created = await resp.json()
            assert resp.status == 201 and created["account"]["roles"] == ["viewer"] and created["token"].startswith("ocnuser_")
        async with http.post(f"{hub.url}/admin/api/accounts", json={"name": "sam", "roles": "viewer"}) as resp:
            assert resp.status == 400 and "exists already" in (await resp.json())["detail"]
        async with http.post(f"{hub.url}/admin/api/accounts", json={"name": "Sam!", "roles": "superuser"}) as resp:
            assert resp.status == 400 and "account name 'Sam!'" in (await resp.json())["detail"]
        async with http.put(f"{hub.url}/admin/api/accounts/sam", json={"roles": "operator"}) as resp:
            assert resp.status == 200 and (await resp.json())["account"]["roles"] == ["operator"]
        async with http.get(f"{hub.url}/admin/api/accounts") as resp:
            listed = {a["name"]: a["roles"] for a in (await resp.json())["accounts"]}
            assert listed["sam"] == ["operator"] and "token" not in str(listed)
        async with http.delete(f"{hub.url}/admin/api/accounts/sam") as resp:
            assert resp.status == 200
        async with http.delete(f"{hub.url}/admin/api/accounts/sam") as resp:
            assert resp.status == 404
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {created['token']}"}) as http, http.get(f"{hub.url}/admin/api/devices") as resp:
        assert resp.status == 401
    assert [a for a in await actions(hub) if a[2] == "account:sam"] == [
        ("ada", "account.add", "account:sam"), ("ada", "account.roles", "account:sam"), ("ada", "account.disable", "account:sam")]


async def test_people_s_api_tokens_sessions_and_login_links_are_stored_only_as_hashes(tmp_path: Path) -> None:
    # threat model H16: a copy of the hub's database (or its journal) gives no working secret of a person's.
    from hub.auth import secret_hash

    db = tmp_path / "hub.db"
    async with run_hub(db=f"sqlite:///{db}", state_dir=tmp_path / "hub", admin_token="admin-secret") as running:
        tokens = await people(running)
        link = await running.hub.admin.login_link(running.url, account="vic", actor="cli:test")
        code = link.rsplit("/login/", 1)[1]
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser:
            async with browser.post(f"{running.url}/login", data={"token": tokens["operator"], "next": "/fleet"}) as resp:
                assert resp.status == 200
            [session] = [c.value for c in browser.cookie_jar]
        secrets = [*tokens.values(), code, session]
        on_disk = b"".join(p.read_bytes() for p in tmp_path.rglob("hub.db*"))
    assert len(secrets) == 6 and all(len(secret) >= 32 for secret in secrets)
    for secret in secrets:
        assert secret_hash(secret) in on_disk  # what is stored: its hash
        assert secret.encode() not in on_disk, "a person's secret is on the disk in the clear"

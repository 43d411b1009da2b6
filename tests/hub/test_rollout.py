"""Staged software rollouts at a real hub over HTTP: stages advance on schedule, a stage that rolls back halts the rollout by
itself, only operators change rollouts, each change is one audit entry; and the store's part on both engines."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.protocol import generate_keypair, key_id
from edge.protocol.desired import verify_document
from edge.update.bundle import ReleaseSpec, build_bundle
from edge.update.manifest import this_target
from hub.app import RunningHub, run_hub
from hub.audit import AuditEntry
from hub.auth import add_account
from hub.releases import add_release
from hub.rollout import in_stage
from hub.store import Rollout, Store
from tests.helpers.tools import require_tool
from tests.hub.gateways import SimGateway, enrol, post_cose
from tests.hub.test_browser import chromium
from tests.update.wheels import tiny_wheel

FLEET = "street"
DEVICES = [f"pole-{n:02d}" for n in range(8)]


def tiny_bundle(tmp_path: Path, key: Ed25519PrivateKey, version: str) -> Path:
    folder = tmp_path / f"wheelhouse-{version}" / this_target()
    own = tiny_wheel(folder, "ocn_edge", version, text=f"# {hashlib.shake_256(version.encode()).hexdigest(2_000)}\n")
    (folder / "constraints.txt").write_text(f"ocn-edge=={version}  # {own.name}\n")
    return build_bundle(folder.parent, tmp_path / f"ocn-edge-{version}", ReleaseSpec(version, "1.0.0"), key)


def first(n: int) -> str:
    """A stage percentage that takes exactly the ``n`` devices of DEVICES with the lowest hash (in_stage's buckets)."""
    buckets = sorted(int.from_bytes(hashlib.sha256(b"ocn-rollout:" + d.encode()).digest()[:8], "big") % 10_000 for d in DEVICES)
    return f"{(buckets[n - 1] + 1) / 100:g}%"


@pytest.fixture
def release_key() -> Ed25519PrivateKey:
    return generate_keypair()


@pytest.fixture
async def hub(tmp_path: Path, release_key: Ed25519PrivateKey) -> AsyncIterator[tuple[RunningHub, dict[str, SimGateway]]]:
    """A hub keeping release 2.0.0, advancing rollouts every 50 ms, with DEVICES enrolled in FLEET (running 0.1.0)."""
    async with run_hub(state_dir=tmp_path / "hub", admin_token="admin-secret", rollout_interval_s=0.05) as running:
        add_release(tmp_path / "hub" / "releases", tiny_bundle(tmp_path, release_key, "2.0.0"), release_key.public_key())
        gateways = {d: SimGateway(d) for d in DEVICES}
        async with aiohttp.ClientSession() as http:
            token = await running.create_token(uses=len(DEVICES), fleet=FLEET)
            for gateway in gateways.values():
                await enrol(http, running.url, gateway, token)
        yield running, gateways


async def report(http: aiohttp.ClientSession, hub: RunningHub, gateway: SimGateway, **fields: Any) -> dict[str, Any] | None:
    """One status report; the software target of the signed desired document answered (None: none)."""
    gateway.boot_epoch += 1  # a fresh report each time (OXP §7.2)
    status, body, _ = await post_cose(http, f"{hub.url}/oxp/v1/status", gateway.status(**fields))
    assert status == 200, body
    if body["desired"] is None:
        return None
    document = verify_document(body["desired"], hub.hub.signing_key.public_key())
    return document.get("software")


async def until(check: Callable[[], Any], what: str) -> Any:
    """Poll ``check`` (a coroutine function) until it returns something true; a generous bound, not a timing assertion."""
    for _ in range(400):
        found = await check()
        if found:
            return found
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {what}")


async def rollout_actions(hub: RunningHub) -> list[tuple[str, str]]:
    return [(e.action, e.actor) for e in reversed(await hub.store.audit_log(limit=1000)) if e.action.startswith("rollout.")]


async def test_a_rollout_advances_stage_by_stage_while_its_gateways_report_success(hub, release_key) -> None:
    running, gateways = hub
    admin = {"Authorization": "Bearer admin-secret"}
    async with aiohttp.ClientSession(headers=admin) as http:
        plan = {"version": "2.0.0", "fleet": FLEET, "stages": f"{first(2)},{first(5)},100%", "wait": "300ms", "max_failures": "10%",
                "pause_backlog": 500}
        async with http.post(f"{running.url}/admin/api/rollouts", json=plan) as resp:
            assert resp.status == 201, await resp.text()

        upgraded: set[str] = set()

        async def gateways_follow() -> bool:
            """Each gateway reports; one whose desired document names 2.0.0 'installs' it and says so in its next report."""
            for device_id, gateway in gateways.items():
                target = await report(http, running, gateway, software_version="2.0.0" if device_id in upgraded else "0.1.0")
                if target is not None:
                    assert target == {"version": "2.0.0", "url": "/releases/2.0.0", "key_id": key_id(release_key).hex(), "pause_backlog": 500}
                    upgraded.add(device_id)
            async with http.get(f"{running.url}/admin/api/rollouts") as resp:
                [rollout] = (await resp.json())["rollouts"]
            return rollout["state"] == "done" and len(upgraded) == len(DEVICES)

        await until(gateways_follow, "the rollout done with every gateway targeted")
        async with http.get(f"{running.url}/admin/api/devices") as resp:
            software = {d["device_id"]: d["software"] for d in (await resp.json())["devices"]}
        assert all(s["target"] == "2.0.0" for s in software.values())
        async with http.get(f"{running.url}/fleet/rollouts", headers={"Accept": "text/html"}) as resp:
            page = await resp.text()
            assert resp.status == 200 and "2.0.0" in page and "done" in page
    # Stage 1 went out with the start, then two stages on schedule, each once in the audit log.
    assert await rollout_actions(running) == [("rollout.start", "admin"), ("rollout.advance", "hub"), ("rollout.advance", "hub"), ("rollout.done", "hub")]


async def test_a_stage_that_rolls_back_halts_the_rollout_and_only_operators_change_it(hub) -> None:
    running, gateways = hub
    tokens = {role: await add_account(running.store, f"{role}-1", role, actor="cli:test") for role in ("viewer", "operator", "privacy-officer")}
    plan = {"version": "2.0.0", "fleet": FLEET, "stages": f"{first(2)},100%", "wait": "1h", "max_failures": "10%"}
    for role in ("viewer", "privacy-officer"):
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {tokens[role]}"}) as http, \
                http.post(f"{running.url}/admin/api/rollouts", json=plan) as resp:
            assert resp.status == 403 and "operator" in (await resp.json())["needs"]
    operator = {"Authorization": f"Bearer {tokens['operator']}"}
    async with aiohttp.ClientSession(headers=operator) as http:
        async with http.post(f"{running.url}/admin/api/rollouts", json={**plan, "stages": "50%,25%"}) as resp:
            assert resp.status == 400 and "each stage must reach more devices" in (await resp.json())["detail"]
        async with http.post(f"{running.url}/admin/api/rollouts", json={**plan, "pause_backlog": "lots"}) as resp:
            assert resp.status == 400 and "'pause_backlog' = 'lots'" in (await resp.json())["detail"]
        async with http.post(f"{running.url}/admin/api/rollouts", json={**plan, "version": "9.9.9"}) as resp:
            assert resp.status == 400 and "release '9.9.9' is not kept at this hub" in (await resp.json())["detail"]
        async with http.post(f"{running.url}/admin/api/rollouts", json=plan) as resp:
            assert resp.status == 201
            rollout_id = (await resp.json())["id"]
        targeted = [d for d in DEVICES if in_stage(d, float(first(2)[:-1]))]
        assert len(targeted) == 2
        first_one, second_one = (gateways[d] for d in targeted)
        assert await report(http, running, first_one) is not None
        # One of the stage's two rolls 2.0.0 back: 50 % of the stage, past 10 %.
        rolled_back = {"state": "rolled_back", "version": "2.0.0", "reason": "probation: no batch acknowledged", "running": "0.1.0"}
        await report(http, running, first_one, software_update=rolled_back)

        async def halted() -> dict[str, Any] | None:
            async with http.get(f"{running.url}/admin/api/rollouts") as resp:
                [rollout] = (await resp.json())["rollouts"]
            return rollout if rollout["state"] == "halted" else None

        rollout = await until(halted, "the rollout halted")
        assert "1 of 2 devices of the stage failed" in rollout["reason"] and "probation: no batch acknowledged" in rollout["reason"]
        # The stage's devices that do not run 2.0.0 lose the target; the rest of the fleet never had it.
        for gateway in gateways.values():
            assert await report(http, running, gateway) is None
        async with http.get(f"{running.url}/fleet/devices/{targeted[0]}", headers={"Accept": "text/html"}) as resp:
            assert "rolled back 2.0.0: probation: no batch acknowledged" in await resp.text()
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {tokens['viewer']}"}) as viewer:
            async with viewer.post(f"{running.url}/admin/api/rollouts/{rollout_id}/resume") as resp:
                assert resp.status == 403
            async with viewer.get(f"{running.url}/fleet/rollouts", headers={"Accept": "text/html"}) as resp:
                page = await resp.text()
                assert resp.status == 200 and "halted" in page and "Resume" not in page
        async with http.post(f"{running.url}/admin/api/rollouts/{rollout_id}/halt") as resp:
            assert resp.status == 409 and "not running" in (await resp.json())["detail"]
        async with http.post(f"{running.url}/admin/api/rollouts/{rollout_id}/resume") as resp:
            assert resp.status == 200 and (await resp.json())["state"] == "running"
        # The failure before the resume no longer counts (the device would refuse 2.0.0 again, and says nothing new).
        assert await report(http, running, second_one) is not None
        async with http.post(f"{running.url}/admin/api/rollouts/{rollout_id}/halt") as resp:
            assert resp.status == 200 and (await resp.json())["state"] == "halted"
        # A halted rollout does not stand in the way of the next one (a fixed release, say), which it cannot then resume over.
        async with http.post(f"{running.url}/admin/api/rollouts", json=plan) as resp:
            assert resp.status == 201
        async with http.post(f"{running.url}/admin/api/rollouts", json=plan) as resp:
            assert resp.status == 400 and "running: halt it first" in (await resp.json())["detail"]
        async with http.post(f"{running.url}/admin/api/rollouts/{rollout_id}/resume") as resp:
            assert resp.status == 409 and "cannot be resumed" in (await resp.json())["detail"]
    assert await rollout_actions(running) == [
        ("rollout.start", "operator-1"), ("rollout.halt", "hub"), ("rollout.resume", "operator-1"), ("rollout.halt", "operator-1"),
        ("rollout.start", "operator-1"),
    ]


async def test_the_store_keeps_rollouts_targets_and_update_outcomes(store: Store) -> None:
    plan = Rollout(0, "2.0.0", FLEET, (5.0, 100.0), 1000, 0.1, "/releases/2.0.0", "ab" * 8, "running", 0, 5, 5, "", 5, 5, pause_backlog=500)
    rid = await store.save_rollout(plan, AuditEntry(at_ms=5, actor="olga", action="rollout.start", target="rollout:new"))
    [kept] = await store.rollouts(fleet=FLEET)
    assert kept == replace(plan, id=rid) and await store.rollouts(fleet="elsewhere") == []
    moved = replace(kept, stage=1, updated_ms=6)
    assert await store.save_rollout(moved, AuditEntry(at_ms=6, actor="hub", action="rollout.advance", target=f"rollout:{rid}"), replaces_ms=5) == rid
    # A second process that read the rollout before the advance writes nothing, and audits nothing.
    stale = replace(kept, state="halted", updated_ms=6)
    assert await store.save_rollout(stale, AuditEntry(at_ms=6, actor="hub", action="rollout.halt", target=f"rollout:{rid}"), replaces_ms=5) == 0
    assert await store.rollouts() == [moved]
    assert [(e.action, e.target) for e in reversed(await store.audit_log())] == [("rollout.start", f"rollout:{rid}"), ("rollout.advance", f"rollout:{rid}")]

    target = {"version": "2.0.0", "url": "/releases/2.0.0", "key_id": "ab" * 8, "rollout": rid}
    await store.set_software_targets({"pole-01": target, "pole-02": target}, now_ms=7)
    await store.set_software_targets({"pole-02": None}, now_ms=8)
    documents = await store.desired_documents()
    assert documents[("software", "pole-01")] == (target, 7) and ("software", "pole-02") not in documents

    outcome = {"state": "rolled_back", "version": "2.0.0", "reason": "probation", "running": "1.0.0"}
    await store.record_software_update("pole-01", outcome, received_ms=10)
    await store.record_software_update("pole-01", outcome, received_ms=20)  # repeated in every report: not a change
    assert (await store.software_updates())["pole-01"].changed_ms == 10
    await store.record_software_update("pole-01", {**outcome, "state": "refused", "reason": "rolled_back"}, received_ms=30)
    update = (await store.software_updates())["pole-01"]
    assert (update.state, update.reason, update.running, update.changed_ms) == ("refused", "rolled_back", "1.0.0", 30)


async def test_a_halted_rollout_and_the_rolled_back_device_as_a_person_sees_them_in_chromium(hub, tmp_path: Path) -> None:
    binary = require_tool("chromium")
    running, gateways = hub
    targeted = [d for d in DEVICES if in_stage(d, float(first(2)[:-1]))]
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer admin-secret"}) as http:
        plan = {"version": "2.0.0", "fleet": FLEET, "stages": f"{first(2)},100%", "wait": "1h", "max_failures": "10%"}
        async with http.post(f"{running.url}/admin/api/rollouts", json=plan) as resp:
            assert resp.status == 201
        await report(http, running, gateways[targeted[1]])  # targeted, not yet running it
        rolled_back = {"state": "rolled_back", "version": "2.0.0", "reason": "2.0.0 failed probation: no batch acknowledged", "running": "0.1.0"}
        await report(http, running, gateways[targeted[0]], software_update=rolled_back)

        async def halted() -> bool:
            return [r.state for r in await running.store.rollouts()] == ["halted"]

        await until(halted, "the rollout halted")
    dom = await chromium(binary, tmp_path / "profile", "--dump-dom", await running.login_link(next_path="/fleet/rollouts"))
    assert "<h1>Software rollouts</h1>" in dom and '<span class="badge failing">halted</span>' in dom
    assert "1 of 2 devices of the stage failed (50%, over 10%)" in dom and ">Resume</button>" in dom
    dom = await chromium(binary, tmp_path / "profile2", "--dump-dom", await running.login_link(next_path="/fleet"))
    row = re.search(rf'<td data-value="{targeted[0]}">.*?</tr>', dom, re.S)
    assert row is not None and "rolled back 2.0.0" in row.group(0) and 'title="2.0.0 failed probation: no batch acknowledged"' in row.group(0)

"""Rollouts by named rings at a real hub over HTTP: devices carry a ring set by an operator (admin API or CLI, audited), a plan
names rings in order with waits between them, and a ring whose devices roll the release back halts the rollout by itself."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from edge.cli import main
from hub.app import RunningHub
from hub.rollout import advance
from hub.store import Store
from tests.hub.conftest import db_url, postgres_url, store
from tests.hub.gateways import SimGateway
from tests.hub.test_rollout import DEVICES, FLEET, hub, release_key, report, rollout_actions, until
from tests.hub.test_store import enrolled

__all__ = ["db_url", "hub", "postgres_url", "release_key", "store"]  # fixtures, from tests/hub

HOUR_MS = 3_600_000
ADMIN = {"Authorization": "Bearer admin-secret"}
RINGS = {"pole-00": "canary", "pole-01": "canary", "pole-02": "early", "pole-03": "early"}  # the rest: in no ring


async def put_ring(http: aiohttp.ClientSession, running: RunningHub, device_id: str, body: Any) -> tuple[int, dict[str, Any]]:
    async with http.put(f"{running.url}/admin/api/devices/{device_id}/ring", json=body) as resp:
        return resp.status, await resp.json()


async def targeted(http: aiohttp.ClientSession, running: RunningHub, gateways: dict[str, SimGateway], upgraded: set[str]) -> set[str]:
    """Each gateway reports (running 2.0.0 once its document named it); the devices whose document names 2.0.0 now."""
    found = set()
    for device_id, gateway in gateways.items():
        if await report(http, running, gateway, software_version="2.0.0" if device_id in upgraded else "0.1.0") is not None:
            found.add(device_id)
    return found


async def test_rings_are_targeted_in_order_and_every_device_last(hub) -> None:
    running, gateways = hub
    async with aiohttp.ClientSession(headers=ADMIN) as http:
        for device_id, ring in RINGS.items():
            assert await put_ring(http, running, device_id, {"ring": ring}) == (200, {"ok": True, "device_id": device_id, "ring": ring})
        assert (await put_ring(http, running, "pole-00", {"ring": "Canary!"}))[0] == 400
        assert (await put_ring(http, running, "pole-99", {"ring": "canary"}))[0] == 404
        async with http.get(f"{running.url}/admin/api/devices") as resp:
            assert {d["device_id"]: d["ring"] for d in (await resp.json())["devices"]}["pole-02"] == "early"
        plan = {"version": "2.0.0", "fleet": FLEET, "stages": "canary,early,*", "wait": "1h", "max_failures": "0%"}
        async with http.post(f"{running.url}/admin/api/rollouts", json=plan) as resp:
            assert resp.status == 201, await resp.text()
        upgraded: set[str] = set()
        first = await targeted(http, running, gateways, upgraded)
        assert first == {"pole-00", "pole-01"}  # the canary ring only; the next waits an hour
        upgraded |= first
        async with http.get(f"{running.url}/admin/api/rollouts") as resp:
            [rollout] = (await resp.json())["rollouts"]
        assert (rollout["stages"], rollout["stage"], rollout["progress"]["targeted"]) == (["canary", "early", "*"], 1, 2)
        async with http.get(f"{running.url}/fleet/rollouts", headers={"Accept": "text/html"}) as resp:
            page = await resp.text()
        assert "<strong>canary</strong>, early, *" in page
        async with http.get(f"{running.url}/fleet", headers={"Accept": "text/html"}) as resp:
            assert "ring canary" in await resp.text()
        async with http.get(f"{running.url}/fleet/devices/pole-02", headers={"Accept": "text/html"}) as resp:
            assert "<dt>Rollout ring</dt><dd>early" in await resp.text()
    # Time passing, as the hub's schedule would see it: an hour later the early ring, two hours later everyone.
    start_ms = next(r for r in await running.store.rollouts() if r.id == rollout["id"]).stage_started_ms
    async with aiohttp.ClientSession(headers=ADMIN) as http:
        await advance(running.store, now_ms=start_ms + HOUR_MS)
        upgraded |= await targeted(http, running, gateways, upgraded)
        assert upgraded == {"pole-00", "pole-01", "pole-02", "pole-03"}
        await advance(running.store, now_ms=start_ms + 2 * HOUR_MS)
        upgraded |= await targeted(http, running, gateways, upgraded)
        assert upgraded == set(DEVICES)  # "*": the devices in no ring too
    actions = [a for a, _ in await rollout_actions(running)]
    assert actions[:1] == ["rollout.start"] and actions.count("rollout.advance") == 2
    rings = [(e.target, e.detail, e.actor) for e in await running.store.audit_log(limit=1000) if e.action == "device.ring"]
    assert ("device:pole-00", "ring (none) -> canary") in [(target, detail) for target, detail, _ in rings] and len(rings) == 4


async def test_a_ring_that_rolls_back_halts_the_rollout_before_the_next_ring(hub, tmp_path) -> None:
    running, gateways = hub
    for device_id in ("pole-00", "pole-01"):
        assert await asyncio.to_thread(main, ["hub", "device", "ring", device_id, "canary", "--state-dir", str(tmp_path / "hub")]) == 0
    assert await asyncio.to_thread(main, ["hub", "rollout", "start", "2.0.0", "--fleet", FLEET, "--stages", "canary,*", "--wait", "50ms",
                                          "--max-failures", "0%", "--state-dir", str(tmp_path / "hub")]) == 0
    async with aiohttp.ClientSession(headers=ADMIN) as http:
        assert await report(http, running, gateways["pole-00"]) is not None
        rolled_back = {"state": "rolled_back", "version": "2.0.0", "reason": "2.0.0 failed probation: no batch acknowledged", "running": "0.1.0"}
        await report(http, running, gateways["pole-00"], software_update=rolled_back)

        async def halted() -> Any:
            async with http.get(f"{running.url}/admin/api/rollouts") as resp:
                [rollout] = (await resp.json())["rollouts"]
            return rollout if rollout["state"] == "halted" else None

        rollout = await until(halted, "the rollout halted by the hub")
        assert rollout["stage"] == 1 and "pole-00: rolled_back" in rollout["reason"]
        for device_id in DEVICES[2:]:  # the devices beyond the canary ring were never targeted
            assert await report(http, running, gateways[device_id]) is None
    assert ("rollout.halt", "hub") in await rollout_actions(running)


async def test_the_store_keeps_a_devices_ring_and_audits_each_change(store: Store) -> None:
    await enrolled(store, "pole-1")
    assert await store.set_device_ring("pole-1", "canary", now_ms=10, actor="olga")
    assert await store.set_device_ring("pole-1", "canary", now_ms=11, actor="olga")  # the same ring again: nothing to audit
    assert await store.set_device_ring("pole-1", "", now_ms=12, actor="olga")
    assert not await store.set_device_ring("pole-9", "canary", now_ms=13, actor="olga")
    device = await store.device("pole-1")
    assert device is not None and device.ring == ""
    await store.set_device_ring("pole-1", "early", now_ms=14, actor="olga")
    assert [d.ring for d in await store.devices()] == ["early"]
    assert [(e.detail, e.at_ms) for e in reversed(await store.audit_log()) if e.action == "device.ring"] == [
        ("ring (none) -> canary", 10), ("ring canary -> (none)", 12), ("ring (none) -> early", 14)]

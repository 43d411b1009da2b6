"""Threat model (docs/threat-model.md): replays and reuse the other tests do not already show.

- A batch replayed after retention deleted its readings is still a duplicate: the hub keeps every batch's identity,
  so a captured batch cannot put back readings the city's retention promise removed.
- A single-use enrolment token raced by 20 clients at once enrols exactly one device.
Both engines, a real hub on loopback.
"""

from __future__ import annotations

import asyncio

import aiohttp

from hub.retention import run_retention
from tests.hub.gateways import SimGateway, post_cose
from tests.hub.test_retention import Fleet, batch, start, stored_times


async def test_a_batch_replayed_after_retention_deleted_its_readings_stores_nothing_again(db_url, tmp_path) -> None:
    async for fleet in start(db_url, tmp_path / "hub", interval_s=86400):
        await _replay_after_retention(fleet)


async def _replay_after_retention(fleet: Fleet) -> None:
    run = await run_retention(fleet.hub.store, actor="cli:test")
    assert run.per_gateway == {"pole-kept": len(fleet.old)}
    assert await stored_times(fleet.hub, "pole-kept") == fleet.young
    before = await fleet.hub.counters("pole-kept")
    async with aiohttp.ClientSession() as http:
        # The same bytes the gateway sent first (seq 1: only readings now past the retention).
        status, answer, _ = await post_cose(http, f"{fleet.hub.url}/oxp/v1/batches", batch(fleet.kept, 1, fleet.old[:20]))
    assert status == 200 and answer.get("status") == "duplicate", answer
    assert await stored_times(fleet.hub, "pole-kept") == fleet.young, "the expired readings stay gone"
    after = await fleet.hub.counters("pole-kept")
    assert (after["batches_stored"], after["duplicates"]) == (before["batches_stored"], before["duplicates"] + 1)


async def test_a_single_use_token_raced_by_20_enrolments_enrols_exactly_one_device(db_url, tmp_path) -> None:
    from hub.app import run_hub

    async with run_hub(db=db_url, state_dir=tmp_path / "hub") as hub, aiohttp.ClientSession() as http:
        token = await hub.create_token(uses=1)
        gateways = [SimGateway(f"pole-{i:04d}") for i in range(20)]

        async def attempt(gateway: SimGateway) -> int:
            async with http.post(f"{hub.url}/oxp/v1/enrol", json=gateway.enrol_body(token)) as resp:
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(attempt(g) for g in gateways))
        assert sorted(statuses) == [201] + [401] * 19, statuses
        enrolled = [g for g, s in zip(gateways, statuses, strict=True) if s == 201]
        assert (await hub.store.device(enrolled[0].device_id)) is not None
        for gateway, status in zip(gateways, statuses, strict=True):
            if status != 201:
                assert await hub.store.device(gateway.device_id) is None


def test_the_hub_dates_each_document_it_signs_later_than_the_last_even_when_its_clock_goes_back(monkeypatch) -> None:
    """P7: a gateway ignores a document issued before the one in force, so the hub never dates one earlier than it dated
    the last, whatever its clock does (a step back by NTP), and dates its signed clear the same way."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    import hub.hubkey
    from edge.protocol.desired import verify_document
    from hub.hubkey import DesiredSigner

    key = Ed25519PrivateKey.generate()
    signer = DesiredSigner(None, key)
    clock = iter([1_800_000_000_000, 1_799_999_000_000, 1_800_000_000_500])  # a second back, then on again
    monkeypatch.setattr(hub.hubkey, "now_ms", lambda: next(clock))
    first = signer.sign({"device_id": "pole-1", "etag": "a"})
    clear = signer.sign_clear("pole-1")
    last = signer.sign({"device_id": "pole-1", "etag": "b"})
    issued = [verify_document(s, key.public_key())["issued_ms"] for s in (first, clear, last)]
    assert issued == [1_800_000_000_000, 1_800_000_000_001, 1_800_000_000_500]
    assert verify_document(clear, key.public_key()) == {"device_id": "pole-1", "cleared": True, "issued_ms": 1_800_000_000_001}

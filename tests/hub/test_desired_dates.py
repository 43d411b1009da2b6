"""OXP §8.4, "Freshness and a signed clear", at the hub: every document it signs is dated, never before the last date any of
its processes signed (kept in the store, so a restart with a clock behind does not go back), and a gateway that runs a
document when nothing is desired any more gets the signed clear; one that runs none gets null, as before."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

import hub.hubkey
from edge.protocol.desired import verify_document
from hub.app import RunningHub, run_hub
from hub.fleet import desired_document, desired_status
from hub.hubkey import DATES_SETTING, DesiredSigner
from hub.store import Store
from tests.hub.gateways import SimGateway, enrol, post_cose


async def test_a_gateway_running_a_document_gets_the_signed_clear_and_one_running_none_gets_null(
    running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway
) -> None:
    key = running_hub.hub.ingest.signer.key().public_key()
    url = f"{running_hub.url}/oxp/v1/status"
    status, answer, _ = await post_cose(http, url, gateway.status(report_seq=1))
    assert (status, answer["desired"], answer["etag"]) == (200, None, "")
    await running_hub.set_desired("device", gateway.device_id, {"config": {"batch": {"max_readings": 7}}})
    status, answer, _ = await post_cose(http, url, gateway.status(report_seq=2))
    document = verify_document(answer["desired"], key)
    assert document["etag"] == answer["etag"] != "" and isinstance(document["issued_ms"], int)
    await running_hub.set_desired("device", gateway.device_id, None)
    status, answer, _ = await post_cose(http, url, gateway.status(report_seq=3, applied_etag=document["etag"]))
    cleared = verify_document(answer["desired"], key)
    assert answer["etag"] == "" and cleared == {"device_id": gateway.device_id, "cleared": True, "issued_ms": cleared["issued_ms"]}
    assert cleared["issued_ms"] > document["issued_ms"]
    status, answer, _ = await post_cose(http, url, gateway.status(report_seq=4, applied_etag=""))
    assert (status, answer["desired"], answer["etag"]) == (200, None, ""), "nothing in force: nothing to clear"


async def test_a_hub_restarted_with_its_clock_behind_dates_after_the_last_date_it_signed(tmp_path: Path, monkeypatch) -> None:
    gateway = SimGateway("pole-0042")
    # No sharing every 10 s: what the first hub dated reaches the store as it stops, however long the test takes.
    monkeypatch.setattr(DesiredSigner, "keep_dates", lambda self, store: asyncio.sleep(3600))
    clock = [1_900_000_000_000]  # a clock three years ahead first (2030), then back (2027)
    monkeypatch.setattr(hub.hubkey, "now_ms", lambda: clock[0])
    async with run_hub(listen="127.0.0.1:0", state_dir=tmp_path / "hub", admin_token="a") as first, aiohttp.ClientSession() as http:
        await enrol(http, first.url, gateway, await first.create_token())
        await first.set_desired("device", gateway.device_id, {"config": {"batch": {"max_readings": 7}}})
        _, answer, _ = await post_cose(http, f"{first.url}/oxp/v1/status", gateway.status(report_seq=1))
        ahead = answer["desired"]["document"]["issued_ms"]
        assert ahead == clock[0]
        assert await first.hub.store.get_setting(DATES_SETTING) is None, "shared every 10 s, and as the hub stops"
    clock[0] = 1_800_000_000_000
    async with run_hub(listen="127.0.0.1:0", state_dir=tmp_path / "hub", admin_token="a") as again, aiohttp.ClientSession() as http:
        _, answer, _ = await post_cose(http, f"{again.url}/oxp/v1/status", gateway.status(report_seq=2))
        assert answer["desired"]["document"]["issued_ms"] > ahead, "a gateway that took the document dated ahead takes the next"
        assert await again.hub.store.get_setting(DATES_SETTING) == str(ahead)


async def test_the_latest_date_is_raised_never_lowered_by_processes_sharing_the_store(store: Store) -> None:
    assert await store.raise_setting(DATES_SETTING, 1_800_000_000_000) == 1_800_000_000_000
    assert await store.raise_setting(DATES_SETTING, 1_799_000_000_000) == 1_800_000_000_000, "a process whose clock is behind"
    assert await store.raise_setting(DATES_SETTING, 1_800_000_000_001) == 1_800_000_000_001
    assert await store.get_setting(DATES_SETTING) == "1800000000001"
    for junk in ("", "12ab", "²", "9" * 30):  # set by hand: counts as none, and is replaced
        await store.set_setting(DATES_SETTING, junk)
        assert await store.raise_setting(DATES_SETTING, 1_800_000_000_002) == 1_800_000_000_002


async def test_the_fleet_page_tells_a_document_ignored_from_one_refused_and_shows_a_clear_under_way(
    running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway
) -> None:
    url = f"{running_hub.url}/oxp/v1/status"
    store = running_hub.hub.store
    await running_hub.set_desired("device", gateway.device_id, {"config": {"batch": {"max_readings": 7}}})
    device = await store.device(gateway.device_id)
    assert device is not None
    document, etag = await desired_document(store, device)
    stale = "it was issued at 5, not after the document in force (9)"
    reports = [
        ([f"desired {etag} ignored: {stale}"], "x", ("ignored", stale)),
        ([f"desired {etag} not applied: desired config: bad"], "x", ("failed", "desired config: bad")),
        ([], etag, ("applied", "")),
    ]
    for seq, (errors, applied, expected) in enumerate(reports, start=1):
        await post_cose(http, url, gateway.status(report_seq=seq, applied_etag=applied, errors=errors))
        device = await store.device(gateway.device_id)
        assert device is not None and desired_status(device, document) == expected
    await running_hub.set_desired("device", gateway.device_id, None)
    assert desired_status(device, None) == ("pending", ""), "nothing desired, a document still in force: clearing"
    await post_cose(http, url, gateway.status(report_seq=9, applied_etag=etag, errors=["desired clear ignored: an unsigned clear"]))
    device = await store.device(gateway.device_id)
    assert device is not None and desired_status(device, None) == ("ignored", "an unsigned clear")
    async with http.get(f"{running_hub.url}/fleet/devices/{gateway.device_id}", headers={"Authorization": "Bearer admin-secret"}) as resp:
        page = await resp.text()
        assert resp.status == 200, page
    assert "clear ignored</span> — an unsigned clear" in page
    await post_cose(http, url, gateway.status(report_seq=10, applied_etag=""))
    device = await store.device(gateway.device_id)
    assert device is not None and desired_status(device, None) == ("none", "")

"""The devices each enrolment token enrolled (the dashboard's Tokens page), on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib

from hub.store import Store

NOW = 1_790_000_000_000


def key(name: str) -> bytes:
    return hashlib.sha256(name.encode()).digest()


async def test_each_token_lists_the_devices_it_enrolled_and_a_device_counts_for_its_last_token(store: Store) -> None:
    fleet_token, single_token, unused_token = key("fleet"), key("single"), key("unused")
    fleet_id = await store.create_token(fleet_token, uses=10, expires_ms=NOW + 60_000, approve=True, fleet="downtown", note="roll-out", now_ms=NOW)
    single_id = await store.create_token(single_token, uses=1, expires_ms=NOW + 60_000, approve=True, fleet="downtown", note="", now_ms=NOW)
    await store.create_token(unused_token, uses=1, expires_ms=NOW + 60_000, approve=True, fleet="downtown", note="", now_ms=NOW)
    for device in ("pole-0003", "pole-0001", "pole-0002"):
        await store.enrol(fleet_token, device_id=device, public_key=key(device), key_id=key(device)[:8], software_version="1", now_ms=NOW)
    # pole-0002's card was replaced: its old key revoked, it enrols again with its own token
    assert await store.set_device_status("pole-0002", "revoked", now_ms=NOW)
    await store.enrol(single_token, device_id="pole-0002", public_key=key("new"), key_id=key("new")[:8], software_version="1", now_ms=NOW + 1)

    assert await store.token_devices() == {fleet_id: ["pole-0001", "pole-0003"], single_id: ["pole-0002"]}

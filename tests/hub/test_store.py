"""The storage contract, run unchanged against SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from edge.protocol.types import Channel, Kind, Reading
from hub.database import open_store
from hub.models import Device, EnrolError, IncomingBatch
from hub.store import NOTICE_WINDOW_MS, Store

NOW = 1_790_000_000_000
KEY_A = hashlib.sha256(b"a").digest()
KEY_B = hashlib.sha256(b"b").digest()
TOKEN = hashlib.sha256(b"token").digest()


async def enrolled(store: Store, device_id: str = "pole-1", public_key: bytes = KEY_A, *, approve: bool = True) -> bytes:
    token = hashlib.sha256(device_id.encode() + public_key).digest()
    await store.create_token(token, uses=1, expires_ms=NOW + 60_000, approve=approve, fleet="downtown", note="", now_ms=NOW)
    await store.enrol(token, device_id=device_id, public_key=public_key, key_id=public_key[:8], software_version="1.0", now_ms=NOW)
    return public_key[:8]


async def device_of(store: Store, device_id: str = "pole-1") -> Device:
    device = await store.device(device_id)
    assert device is not None, f"{device_id} is not enrolled"
    return device


def batch(key_id: bytes, *, seq: int, boot_epoch: int = 1, device_id: str = "pole-1", n: int = 3, counters: dict | None = None) -> IncomingBatch:
    channels = (Channel("pm-1/pm2_5", unit="ug/m3", resolution=0.1), Channel("door-1/open", kind=Kind.BOOL), Channel("gps-1/fix", kind=Kind.STRING))
    readings = tuple(Reading("pm-1/pm2_5", NOW + seq * 1000 + i, 10.5 + i, "ug/m3") for i in range(n)) + (
        Reading("door-1/open", NOW + seq * 1000, True),
        Reading("gps-1/fix", NOW + seq * 1000, "3d"),
    )
    return IncomingBatch(
        device_id=device_id, key_id=key_id, boot_epoch=boot_epoch, seq=seq, created_ms=NOW + seq * 1000, received_ms=NOW + seq * 1000 + 5,
        policy_digest=b"\x01" * 32, codec="zstd", counters=counters or {}, channels=channels, readings=readings,
    )


async def test_migrations_run_once_when_several_processes_start_together(db_url: str) -> None:
    stores = await asyncio.gather(*(open_store(db_url) for _ in range(3)))
    try:
        assert await stores[0].devices() == []
    finally:
        for s in stores:
            await s.close()


async def test_a_pre_approving_token_registers_the_device_as_active(store: Store) -> None:
    key_id = await enrolled(store)
    device = await store.device("pole-1")
    assert device is not None and device.status == "active" and device.fleet == "downtown" and device.key_id == key_id
    found = await store.device_key(key_id)
    assert found is not None and found.public_key == KEY_A and found.status == "active"


async def test_a_plain_token_registers_the_device_as_pending_until_approved(store: Store) -> None:
    await enrolled(store, approve=False)
    assert (await device_of(store)).status == "pending"
    assert await store.set_device_status("pole-1", "active", now_ms=NOW)
    assert (await device_of(store)).status == "active"


async def test_an_enrolment_retry_with_the_same_key_gets_the_same_answer_without_using_the_token(store: Store) -> None:
    await store.create_token(TOKEN, uses=1, expires_ms=NOW + 1000, approve=True, fleet="f", note="", now_ms=NOW)
    first = await store.enrol(TOKEN, device_id="pole-1", public_key=KEY_A, key_id=KEY_A[:8], software_version="1", now_ms=NOW)
    again = await store.enrol(TOKEN, device_id="pole-1", public_key=KEY_A, key_id=KEY_A[:8], software_version="1", now_ms=NOW)
    assert first == again


@pytest.mark.parametrize(
    ("uses", "expires", "code"),
    [(0, NOW + 1000, "used_token"), (1, NOW, "expired_token")],
)
async def test_a_used_up_or_expired_token_is_refused(store: Store, uses: int, expires: int, code: str) -> None:
    await store.create_token(TOKEN, uses=uses, expires_ms=expires, approve=True, fleet="f", note="", now_ms=NOW - 10)
    with pytest.raises(EnrolError) as caught:
        await store.enrol(TOKEN, device_id="pole-1", public_key=KEY_A, key_id=KEY_A[:8], software_version="1", now_ms=NOW)
    assert caught.value.code == code


async def test_an_unknown_token_is_refused(store: Store) -> None:
    with pytest.raises(EnrolError) as caught:
        await store.enrol(TOKEN, device_id="pole-1", public_key=KEY_A, key_id=KEY_A[:8], software_version="1", now_ms=NOW)
    assert caught.value.code == "bad_token"


async def test_a_multi_use_token_enrols_as_many_devices_as_its_count(store: Store) -> None:
    await store.create_token(TOKEN, uses=2, expires_ms=NOW + 1000, approve=True, fleet="f", note="batch of 2", now_ms=NOW)
    for i in range(2):
        key = hashlib.sha256(bytes([i])).digest()
        await store.enrol(TOKEN, device_id=f"pole-{i}", public_key=key, key_id=key[:8], software_version="1", now_ms=NOW)
    with pytest.raises(EnrolError, match="used up"):
        await store.enrol(TOKEN, device_id="pole-9", public_key=KEY_B, key_id=KEY_B[:8], software_version="1", now_ms=NOW)
    assert [t.uses_left for t in await store.tokens()] == [0]


async def test_a_device_id_enrolled_with_another_key_is_a_conflict(store: Store) -> None:
    await enrolled(store)
    await store.create_token(TOKEN, uses=1, expires_ms=NOW + 1000, approve=True, fleet="f", note="", now_ms=NOW)
    with pytest.raises(EnrolError) as caught:
        await store.enrol(TOKEN, device_id="pole-1", public_key=KEY_B, key_id=KEY_B[:8], software_version="1", now_ms=NOW)
    assert caught.value.code == "conflict"


async def test_a_revoked_key_stays_revoked_and_the_device_can_re_enrol_with_a_new_key(store: Store) -> None:
    old = await enrolled(store)
    assert await store.set_device_status("pole-1", "revoked", now_ms=NOW)
    assert not await store.set_device_status("pole-1", "active", now_ms=NOW)
    await store.create_token(TOKEN, uses=1, expires_ms=NOW + 1000, approve=True, fleet="f", note="", now_ms=NOW)
    outcome = await store.enrol(TOKEN, device_id="pole-1", public_key=KEY_B, key_id=KEY_B[:8], software_version="2", now_ms=NOW)
    assert outcome.status == "active"
    keys = [await store.device_key(old), await store.device_key(KEY_B[:8])]
    assert [key.status if key else None for key in keys] == ["revoked", "active"]


async def test_a_batch_is_stored_once_and_a_replay_is_reported_as_duplicate(store: Store) -> None:
    key_id = await enrolled(store)
    assert await store.store_batch(batch(key_id, seq=1)) == "stored"
    assert await store.store_batch(batch(key_id, seq=1)) == "duplicate"
    device = await device_of(store)
    assert (device.readings_stored, device.batches_stored, device.duplicates) == (5, 1, 1)
    assert len(await store.readings(device_id="pole-1")) == 5


async def test_concurrent_replays_of_one_batch_store_it_exactly_once(store: Store) -> None:
    key_id = await enrolled(store)
    outcomes = await asyncio.gather(*(store.store_batch(batch(key_id, seq=7)) for _ in range(8)))
    assert sorted(outcomes) == ["duplicate"] * 7 + ["stored"]
    assert len(await store.readings(device_id="pole-1")) == 5


async def test_a_daily_notice_limit_holds_for_notices_raced_through_two_stores_and_counts_only_the_last_24_hours(db_url: str) -> None:
    # Two hub processes on one database (each its own Store): count and insert are one transaction, so the limit holds.
    first, second = await open_store(db_url), await open_store(db_url)
    try:
        await enrolled(first)
        await first.add_notice("pole-1", {"n": -1}, received_ms=NOW - NOTICE_WINDOW_MS)  # a day old: not counted
        for n in range(5):
            assert await first.add_notice("pole-1", {"n": n}, received_ms=NOW - 60_000, daily_limit=8) is not None
        ids = await asyncio.gather(*(store.add_notice("pole-1", {"n": 10 + n}, received_ms=NOW, daily_limit=8)
                                     for n, store in enumerate([first, second] * 5)))
        assert sum(nid is not None for nid in ids) == 3 and len(await second.notices(device_id="pole-1")) == 9
        assert await first.add_notice("pole-1", {"n": 99}, received_ms=NOW + NOTICE_WINDOW_MS - 60_000 + 1, daily_limit=8) is not None, \
            "the five of a minute before NOW are a day old by then"
        assert await first.add_notice("pole-2", {"n": 0}, received_ms=NOW, daily_limit=8) is not None, "each device has its own limit"
    finally:
        await first.close()
        await second.close()


async def test_readings_are_queryable_by_device_channel_and_time_range(store: Store) -> None:
    key_id = await enrolled(store)
    for seq in range(3):
        await store.store_batch(batch(key_id, seq=seq))
    pm = await store.readings(device_id="pole-1", channel="pm-1/pm2_5", since_ms=NOW + 1000, until_ms=NOW + 2000)
    assert [(r.ts_ms, r.value, r.unit) for r in pm] == [(NOW + 1000, 10.5, "ug/m3"), (NOW + 1001, 11.5, "ug/m3"), (NOW + 1002, 12.5, "ug/m3")]
    newest = await store.readings(channel="pm-1/pm2_5", descending=True, limit=1)
    assert newest[0].ts_ms == NOW + 2002


async def test_values_come_back_with_the_type_of_their_channel(store: Store) -> None:
    key_id = await enrolled(store)
    await store.store_batch(batch(key_id, seq=1, n=1))
    values = {r.channel: r.value for r in await store.readings(device_id="pole-1")}
    assert values == {"pm-1/pm2_5": 10.5, "door-1/open": True, "gps-1/fix": "3d"}
    assert {c.channel: (c.unit, c.kind, c.resolution) for c in await store.channels(device_id="pole-1")} == {
        "pm-1/pm2_5": ("ug/m3", "number", 0.1),
        "door-1/open": ("", "bool", None),
        "gps-1/fix": ("", "string", None),
    }


async def test_loss_counters_follow_the_newest_batch_even_when_batches_arrive_out_of_order(store: Store) -> None:
    key_id = await enrolled(store)
    await store.store_batch(batch(key_id, boot_epoch=2, seq=5, counters={"readings_dropped": 40, "unclean_stops": 1}))
    await store.store_batch(batch(key_id, boot_epoch=2, seq=3, counters={"readings_dropped": 10, "unclean_stops": 1}))
    await store.store_batch(batch(key_id, boot_epoch=1, seq=9, counters={"readings_dropped": 0, "unclean_stops": 0}))
    device = await device_of(store)
    assert (device.boot_epoch, device.last_seq, device.readings_dropped, device.unclean_stops) == (2, 5, 40, 1)


async def test_a_status_report_updates_the_fleet_view_of_the_device(store: Store) -> None:
    await enrolled(store)
    report = {
        "device_id": "pole-1", "ts_ms": NOW, "software_version": "1.2.3", "boot_epoch": 4, "unclean_stops": 2,
        "spool_batches": 12, "spool_bytes": 34567, "readings_dropped": 9, "policy_digest": b"\xab" * 32,
        "config_digest": b"\xcd" * 32, "errors": ["pm-1: no answer"],
    }
    await store.record_status("pole-1", report, received_ms=NOW + 5)
    d = await store.device("pole-1")
    assert d is not None
    assert (d.software_version, d.boot_epoch, d.unclean_stops, d.spool_batches, d.spool_bytes, d.readings_dropped) == ("1.2.3", 4, 2, 12, 34567, 9)
    assert (d.policy_digest, d.config_digest, d.errors, d.last_seen_ms) == ("ab" * 32, "cd" * 32, ("pm-1: no answer",), NOW + 5)


async def test_a_notice_is_kept_and_gives_the_device_its_public_position(store: Store) -> None:
    await enrolled(store)
    await store.add_notice("pole-1", {"site": "King St W", "latitude": 43.6452, "longitude": -79.3957, "sensors": []}, received_ms=NOW)
    (notice,) = await store.notices()
    assert notice.device_id == "pole-1" and notice.notice["site"] == "King St W"
    d = await device_of(store)
    assert (d.site, d.latitude, d.longitude) == ("King St W", 43.6452, -79.3957)


async def test_desired_documents_are_kept_per_scope_and_can_be_cleared(store: Store) -> None:
    await store.set_desired("fleet", "downtown", {"config": {"batch": {"span": "1m"}}}, now_ms=NOW)
    await store.set_desired("fleet", "downtown", {"config": {"batch": {"span": "2m"}}}, now_ms=NOW + 1)
    assert await store.desired("fleet", "downtown") == ({"config": {"batch": {"span": "2m"}}}, NOW + 1)
    await store.set_desired("fleet", "downtown", None, now_ms=NOW + 2)
    assert await store.desired("fleet", "downtown") is None


async def test_a_one_time_secret_works_once_and_not_after_it_expires(store: Store) -> None:
    await store.add_secret("login", b"x" * 32, expires_ms=NOW + 100)
    await store.add_secret("login", b"y" * 32, expires_ms=NOW + 100)
    assert await store.use_secret("login", b"x" * 32, now_ms=NOW, consume=True)
    assert not await store.use_secret("login", b"x" * 32, now_ms=NOW, consume=True)
    assert not await store.use_secret("login", b"y" * 32, now_ms=NOW + 100, consume=True)


async def test_a_setting_written_only_if_absent_keeps_the_first_value(store: Store) -> None:
    assert await store.set_setting("admin_token_sha256", "first", only_if_absent=True)
    assert not await store.set_setting("admin_token_sha256", "second", only_if_absent=True)
    assert await store.get_setting("admin_token_sha256") == "first"


async def test_readings_from_overlapping_batches_come_back_in_time_order_page_by_page(store: Store) -> None:
    key_id = await enrolled(store)
    # Batches arrive out of order and overlap in time, as after a gateway's spool catches up.
    for seq in (5, 1, 3, 2, 4):
        await store.store_batch(batch(key_id, seq=seq, n=600))
    everything = await store.readings(channel="pm-1/pm2_5", limit=10_000)
    assert [r.ts_ms for r in everything] == sorted(r.ts_ms for r in everything) and len(everything) == 3000
    pages = [await store.readings(channel="pm-1/pm2_5", limit=700, offset=start) for start in range(0, 3000, 700)]
    assert [r.id for page in pages for r in page] == [r.id for r in everything]
    newest = await store.readings(channel="pm-1/pm2_5", descending=True, limit=5)
    assert [r.ts_ms for r in newest] == sorted((r.ts_ms for r in everything), reverse=True)[:5]


async def test_a_reading_is_found_again_by_its_id(store: Store) -> None:
    key_id = await enrolled(store)
    await store.store_batch(batch(key_id, seq=1, n=4))
    some = (await store.readings(channel="pm-1/pm2_5"))[2]
    assert await store.readings(reading_id=some.id) == [some]


async def test_readings_can_be_filtered_and_ordered_by_value(store: Store) -> None:
    key_id = await enrolled(store)
    await store.store_batch(batch(key_id, seq=1, n=10))
    top = await store.readings(channel="pm-1/pm2_5", match=lambda r: float(r.value) < 15, order="value", descending=True, limit=2)
    assert [r.value for r in top] == [14.5, 13.5]


async def test_a_store_migrated_to_an_older_version_is_brought_up_to_date(db_url: str) -> None:
    from hub import schema

    latest = schema.MIGRATIONS
    schema.MIGRATIONS = latest[:1]
    try:
        old = await open_store(db_url)
        assert await old.schema_version() == 1
        await old.close()
    finally:
        schema.MIGRATIONS = latest
    current = await open_store(db_url)
    try:
        assert await current.schema_version() == latest[-1][0]
        key_id = await enrolled(current)
        assert await current.store_batch(batch(key_id, seq=1)) == "stored"
    finally:
        await current.close()

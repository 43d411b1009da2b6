"""Every stored value can be served: the ingest side (OXP §8.5), on SQLite and PostgreSQL.

A reading whose time no honest clock gives (legal as an OXP integer: far before 2000, far in the
future) used to be stored with 200 and then make /data/readings.csv and /sta/v1.1/Observations
answer 500 for every caller.  Now such a reading is quarantined with its reason, the rest of its
batch is stored, the ack and the device page say so, and every read path answers 200.  Batch
identities and counters over their whole range (up to 2^64 - 1) are stored exactly, and a
database written by the previous schema is upgraded: its out-of-bound readings quarantined.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import cbor2
import pytest

from edge.protocol import BatchHeader, seal_batch
from edge.protocol.types import Quality, Reading
from hub.app import RunningHub, run_hub
from hub.bounds import FLOOR_MS, MAX_SKEW_MS, MAX_SPAN_MS, split_readings
from hub.chunks import encode_chunks
from hub.database import open_store
from hub.models import IncomingBatch
from hub.store import Store
from tests.hub.gateways import CHANNELS, T0, SimGateway, enrol, post_cose
from tests.hub.test_personal import run_sql

DEVICE = "pole-9"
UINT64_MAX = 2**64 - 1
PM = CHANNELS[2]
# Times an OXP batch can carry (§2: signed 64-bit milliseconds) that no read path can turn into a date.
FAR_PAST, FAR_FUTURE = -(2**62), 2**62
# Every public read path over the readings, and the admin pages that show them.
READ_PATHS = (
    "/data/readings.csv", "/data/readings.senml.json", "/data/readings.senml.cbor", f"/data/readings.csv?device={DEVICE}&since=0",
    "/sta/v1.1/Observations", "/sta/v1.1/Observations?$orderby=phenomenonTime desc", "/sta/v1.1/Observations?$orderby=result desc",
    "/sta/v1.1/Datastreams?$expand=Observations", "/sta/v1.1/Things?$expand=Datastreams($expand=Observations)",
    f"/fleet/devices/{DEVICE}", "/fleet", "/admin/api/devices",
)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Scene:
    hub: RunningHub
    gateway: SimGateway
    admin: aiohttp.ClientSession


@pytest.fixture
async def scene(db_url: str, tmp_path: Path) -> AsyncIterator[Scene]:
    """A hub on the engine under test with one enrolled, active gateway; the session is city IT's."""
    async with run_hub(db=db_url, state_dir=tmp_path / "hub", admin_token="admin-secret") as running:
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer admin-secret"}) as admin:
            gateway = SimGateway(DEVICE)
            await enrol(admin, running.url, gateway, await running.create_token())
            yield Scene(running, gateway, admin)


def sealed(gateway: SimGateway, readings: Sequence[Reading], *, seq: int = 1, boot_epoch: int = 1, created_ms: int = T0,
           counters: dict[str, int] | None = None) -> bytes:
    header = BatchHeader(device_id=gateway.device_id, key_id=gateway.key_id, boot_epoch=boot_epoch, seq=seq, policy_digest=b"\x07" * 32,
                         codec="zstd", created_ms=created_ms, counters=counters or {})
    return seal_batch(header, CHANNELS, readings, gateway.private_key)


async def send(scene: Scene, batch: bytes) -> dict[str, object]:
    status, ack, _ = await post_cose(scene.admin, f"{scene.hub.url}/oxp/v1/batches", batch)
    assert status == 200, ack
    return ack


async def every_read_path_answers_200(scene: Scene) -> None:
    for path in READ_PATHS:
        async with scene.admin.get(scene.hub.url + path, allow_redirects=False) as resp:
            assert resp.status == 200, (path, resp.status, (await resp.read())[:300])


def with_bad_times(gateway: SimGateway) -> list[Reading]:
    """Thirty ordinary readings at T0 with four no read path can date, two before the floor and two in the future."""
    bad = [Reading(PM.id, ts, 7.5, PM.unit) for ts in (FAR_PAST, 1, FAR_FUTURE, now_ms() + 86_400_000)]
    return gateway.readings(1, 30)[:15] + bad + gateway.readings(1, 30)[15:]


# --- the bounds (pure) ----------------------------------------------------------------


def test_the_bounds_keep_a_spool_held_for_weeks_and_refuse_times_no_clock_gives() -> None:
    now = now_ms()
    weeks_ago = now - 6 * 7 * 86_400_000  # sealed six weeks ago, held in the spool through an outage
    readings = [Reading(PM.id, ts, 1.0) for ts in (weeks_ago - MAX_SPAN_MS, weeks_ago - 3_600_000, weeks_ago + MAX_SKEW_MS,
                                                    FLOOR_MS - 1, weeks_ago + MAX_SKEW_MS + 1, weeks_ago - MAX_SPAN_MS - 1, now + MAX_SKEW_MS + 1)]
    kept, refused = split_readings(readings, created_ms=weeks_ago, now_ms=now)
    assert kept == readings[:3]
    assert [(q.reading, q.reason) for q in refused] == [
        (readings[3], "before_floor"), (readings[4], "after_created"), (readings[5], "long_before_created"), (readings[6], "after_hub_clock"),
    ]


@pytest.mark.parametrize("created_ms", [0, FLOOR_MS - 1, UINT64_MAX])
def test_a_sealing_time_from_an_unset_or_future_clock_bounds_nothing_but_the_hub_clock_and_the_floor_still_do(created_ms: int) -> None:
    now = now_ms()
    readings = [Reading(PM.id, ts, 1.0) for ts in (T0, now, FLOOR_MS, FLOOR_MS - 1, now + MAX_SKEW_MS + 1)]
    kept, refused = split_readings(readings, created_ms=created_ms, now_ms=now)
    assert kept == readings[:3] and [q.reason for q in refused] == ["before_floor", "after_hub_clock"]


# --- ingest over HTTP, both engines ---------------------------------------------------


async def test_a_reading_far_in_the_past_or_future_is_quarantined_and_the_rest_of_its_batch_stored(scene: Scene) -> None:
    readings = with_bad_times(scene.gateway)
    ack = await send(scene, sealed(scene.gateway, readings))
    assert ack["status"] == "stored" and ack["quarantined"] == {"after_hub_clock": 2, "before_floor": 2}
    store = scene.hub.store
    stored = await store.readings(device_id=DEVICE, limit=100)
    assert sorted((r.channel, r.ts_ms, r.value) for r in stored) == sorted((r.channel, r.ts_ms, r.value) for r in readings[:15] + readings[19:])
    assert await store.quarantined(DEVICE) == {"after_hub_clock": 2, "before_floor": 2}
    device = await store.device(DEVICE)
    assert device is not None and device.readings_stored == 30
    await every_read_path_answers_200(scene)


async def test_the_device_page_says_how_many_readings_were_quarantined_and_why(scene: Scene) -> None:
    await send(scene, sealed(scene.gateway, with_bad_times(scene.gateway)))
    async with scene.admin.get(f"{scene.hub.url}/fleet/devices/{DEVICE}") as resp:
        page = await resp.text()
    assert resp.status == 200
    assert "Readings quarantined" in page and "4 kept apart" in page
    assert "2 <code>after_hub_clock</code>" in page and "2 <code>before_floor</code>" in page


async def test_a_batch_whose_every_reading_is_out_of_bounds_is_still_stored_and_acked(scene: Scene) -> None:
    ack = await send(scene, sealed(scene.gateway, [Reading(PM.id, FAR_FUTURE + i, 1.0, PM.unit) for i in range(3)]))
    assert (ack["status"], ack["quarantined"]) == ("stored", {"after_hub_clock": 3})
    assert await scene.hub.store.readings(device_id=DEVICE) == []
    await every_read_path_answers_200(scene)


async def test_a_batch_within_the_bounds_gets_the_ack_it_always_got(scene: Scene) -> None:
    ack = await send(scene, sealed(scene.gateway, scene.gateway.readings(1, 30)))
    assert ack == {"device_id": DEVICE, "key_id": scene.gateway.key_id.hex(), "boot_epoch": 1, "seq": 1, "status": "stored"}
    assert await scene.hub.store.quarantined(DEVICE) == {}


async def test_a_resent_batch_with_quarantined_readings_is_a_duplicate_stored_once_and_quarantined_once(scene: Scene) -> None:
    batch = sealed(scene.gateway, with_bad_times(scene.gateway))
    first = await send(scene, batch)
    again = [await send(scene, batch) for _ in range(3)]
    assert first["status"] == "stored" and [a["status"] for a in again] == ["duplicate"] * 3
    assert all("quarantined" not in a for a in again)
    store = scene.hub.store
    assert len(await store.readings(device_id=DEVICE, limit=1000)) == 30
    assert await store.quarantined(DEVICE) == {"after_hub_clock": 2, "before_floor": 2}
    device = await store.device(DEVICE)
    assert device is not None and (device.batches_stored, device.duplicates, device.readings_stored) == (1, 3, 30)


async def test_identities_and_counters_at_2_64_minus_1_are_stored_acked_deduplicated_and_shown_exactly(scene: Scene) -> None:
    counters = {"readings_dropped": UINT64_MAX, "unclean_stops": UINT64_MAX, "batches_dropped": UINT64_MAX, "made_up": UINT64_MAX}
    batch = sealed(scene.gateway, scene.gateway.readings(1, 30), boot_epoch=UINT64_MAX, seq=UINT64_MAX, created_ms=UINT64_MAX,
                   counters=counters)
    ack = await send(scene, batch)
    assert (ack["boot_epoch"], ack["seq"], ack["status"]) == (UINT64_MAX, UINT64_MAX, "stored")
    assert (await send(scene, batch))["status"] == "duplicate"
    device = await scene.hub.store.device(DEVICE)
    assert device is not None
    assert (device.boot_epoch, device.last_seq, device.unclean_stops, device.readings_dropped) == (UINT64_MAX,) * 4
    assert device.counters["batches_dropped"] == device.counters["made_up"] == UINT64_MAX
    assert (device.batches_stored, device.duplicates, device.readings_stored) == (1, 1, 30)
    async with scene.admin.get(f"{scene.hub.url}/fleet/devices/{DEVICE}") as resp:
        page = await resp.text()
    assert resp.status == 200 and f"{UINT64_MAX} / {UINT64_MAX}" in page and f"{UINT64_MAX:,}" in page
    async with scene.admin.get(f"{scene.hub.url}/admin/api/devices") as resp:
        [listed] = (await resp.json())["devices"]
    assert (listed["boot_epoch"], listed["last_seq"], listed["readings_dropped"]) == (UINT64_MAX,) * 3
    await every_read_path_answers_200(scene)


async def test_the_newest_batch_is_found_across_2_63_whatever_the_order_of_arrival(scene: Scene) -> None:
    newest, older = (2**63, 2**63), (2**63 - 1, UINT64_MAX)
    for i, (epoch, seq) in enumerate((newest, older, (2**63, 2**63 - 1))):
        ack = await send(scene, sealed(scene.gateway, scene.gateway.readings(i, 3), boot_epoch=epoch, seq=seq))
        assert (ack["boot_epoch"], ack["seq"], ack["status"]) == (epoch, seq, "stored")
    device = await scene.hub.store.device(DEVICE)
    assert device is not None and (device.boot_epoch, device.last_seq, device.batches_stored) == (*newest, 3)


async def test_a_status_report_with_counts_at_2_64_minus_1_is_recorded_exactly_and_one_out_of_range_is_ignored(store: Store) -> None:
    pub = bytes(range(32))
    await store.create_token(b"t" * 32, uses=1, expires_ms=T0 * 2, approve=True, fleet="default", note="", now_ms=T0)
    await store.enrol(b"t" * 32, device_id=DEVICE, public_key=pub, key_id=pub[:8], software_version="1", now_ms=T0)
    fresh = await store.device(DEVICE)
    assert fresh is not None and (fresh.unclean_stops, fresh.readings_dropped, fresh.boot_epoch) == (0, 0, None)
    report = {"boot_epoch": UINT64_MAX, "unclean_stops": UINT64_MAX, "spool_batches": UINT64_MAX, "spool_bytes": UINT64_MAX,
              "readings_dropped": UINT64_MAX}
    await store.record_status(DEVICE, report, received_ms=T0)
    await store.record_status(DEVICE, {"spool_batches": 2**64, "spool_bytes": -1, "unclean_stops": 2**70}, received_ms=T0 + 1)
    device = await store.device(DEVICE)
    assert device is not None
    assert (device.boot_epoch, device.unclean_stops, device.readings_dropped) == (UINT64_MAX,) * 3
    assert (device.spool_batches, device.spool_bytes) == (None, None)


# --- the migration from schema 3 ------------------------------------------------------


async def test_a_version_3_database_is_upgraded_its_counters_kept_and_its_out_of_bound_readings_quarantined(db_url: str, tmp_path: Path) -> None:
    from hub import schema

    latest = schema.MIGRATIONS
    schema.MIGRATIONS = tuple(m for m in latest if m[0] <= 3)
    try:
        old = await open_store(db_url)
        assert await old.schema_version() == 3
        await old.close()
    finally:
        schema.MIGRATIONS = latest
    # What the previous hub wrote: plain BIGINT counters, and chunks holding times no read path can date.
    kid, pub = b"\x09" * 8, bytes(32)
    mixed = [Reading(PM.id, T0 + i * 1000, 5.0 + i, PM.unit) for i in range(5)] + [
        Reading(PM.id, FAR_PAST, 1.5, PM.unit), Reading(PM.id, FAR_FUTURE, 2.5, PM.unit, Quality.BAD)]
    [(m_first, m_last, m_count, m_data)] = encode_chunks(mixed)[PM.id]
    [(b_first, b_last, b_count, b_data)] = encode_chunks([Reading(PM.id, 1, 0.5, PM.unit), Reading(PM.id, 2, 0.25, PM.unit)])[PM.id]
    [(g_first, g_last, g_count, g_data)] = encode_chunks([Reading(PM.id, T0 + 60_000, 9.0, PM.unit)])[PM.id]
    chunk = "INSERT INTO chunks (channel_id, first_ms, last_ms, count, data) SELECT id, {}, {}, {}, {} FROM channels"
    await run_sql(db_url, [
        ("INSERT INTO devices (device_id, key_id, public_key, status, fleet, enrolled_ms, boot_epoch, last_seq, unclean_stops,"
         " readings_dropped, spool_bytes) VALUES ({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {})",
         (DEVICE, kid, pub, "active", "default", T0, 7, 41, 3, 5, 1000)),
        ("INSERT INTO batches (key_id, boot_epoch, seq, device_id, created_ms, received_ms, readings, size, policy_digest, codec, counters)"
         " VALUES ({}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {})", (kid, 7, 41, DEVICE, T0, T0, 10, 100, "", "zstd", "{}")),
        ("INSERT INTO channels (device_id, name, unit, kind, resolution, description) VALUES ({}, {}, {}, {}, {}, {})",
         (DEVICE, PM.id, PM.unit, "number", 0.1, "")),
        (chunk, (m_first, m_last, m_count, m_data)),
        (chunk, (b_first, b_last, b_count, b_data)),
        (chunk, (g_first, g_last, g_count, g_data)),
    ])
    current = await open_store(db_url)
    try:
        assert await current.schema_version() >= 4
        assert [(r.ts_ms, r.value) for r in await current.readings(limit=100)] == [(T0 + i * 1000, 5.0 + i) for i in range(5)] + [(T0 + 60_000, 9.0)]
        assert await current.count_readings() == 6
        assert await current.quarantined(DEVICE) == {"after_hub_clock": 1, "before_floor": 3}
        device = await current.device(DEVICE)
        assert device is not None
        assert (device.boot_epoch, device.last_seq, device.unclean_stops, device.readings_dropped, device.spool_bytes,
                device.spool_batches) == (7, 41, 3, 5, 1000, None)

        def incoming(seq: int) -> IncomingBatch:
            return IncomingBatch(device_id=DEVICE, key_id=kid, boot_epoch=7, seq=seq, created_ms=T0, received_ms=T0,
                                 policy_digest=b"\x01" * 32, codec="zstd", counters={}, channels=(PM,),
                                 readings=(Reading(PM.id, T0 + seq, 1.0, PM.unit),))

        # The batch the old hub stored is still known by its identity; the newest batch still wins.
        assert [await current.store_batch(incoming(seq)) for seq in (41, 42, 40)] == ["duplicate", "stored", "stored"]
        device = await current.device(DEVICE)
        assert device is not None and (device.boot_epoch, device.last_seq) == (7, 42)
    finally:
        await current.close()
    stored_quarantine = await quarantine_readings(db_url)
    expected: list[list[Any]] = [[FAR_PAST, 1.5, None], [FAR_FUTURE, 2.5, 2], [1, 0.5, None], [2, 0.25, None]]
    assert sorted(stored_quarantine) == sorted(expected)
    # The hub on the upgraded database serves every read path.
    async with run_hub(db=db_url, state_dir=tmp_path / "hub", admin_token="admin-secret") as running:
        async with aiohttp.ClientSession(headers={"Authorization": "Bearer admin-secret"}) as admin:
            await every_read_path_answers_200(Scene(running, SimGateway(DEVICE), admin))


async def quarantine_readings(db_url: str) -> list[list[Any]]:
    """The quarantined readings as [ts_ms, value, quality], read from the database directly."""
    if db_url.startswith("sqlite:"):
        import sqlite3

        from hub.database import sqlite_path

        conn = sqlite3.connect(sqlite_path(db_url))
        try:
            return [cbor2.loads(row[0]) for row in conn.execute("SELECT reading FROM quarantine")]
        finally:
            conn.close()
    import asyncpg

    from hub.database import postgres_schema

    dsn, search_path = postgres_schema(db_url)
    conn = await asyncpg.connect(dsn, server_settings={"search_path": search_path or "public"})
    try:
        return [cbor2.loads(row[0]) for row in await conn.fetch("SELECT reading FROM quarantine")]
    finally:
        await conn.close()

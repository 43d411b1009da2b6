"""Personal channels (OXP kind + 4): the hub keeps them, marks them for good, and never publishes them.

Every public route of a real hub on loopback is read after a gateway sent a batch holding two
personal channels beside ordinary ones; no response may name a personal channel (beyond
repeating what the request itself said) or carry any of its values, while the ordinary
channels are published as before.  Run on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import aiohttp
import pytest

from edge.protocol import BatchHeader, seal_batch
from edge.protocol.types import Channel, Kind, Reading
from hub.app import RunningHub, build_app, run_hub
from hub.database import open_store, postgres_schema, sqlite_path
from hub.models import IncomingBatch
from hub.store import Store
from tests.hub.gateways import CHANNELS, T0, SimGateway, enrol, post_cose

DEVICE = "pole-7"
PLATE = Channel("anpr-1/licence_plate", kind=Kind.STRING, personal=True)
POSITION = Channel("gnss-1/lat_exact", unit="lat", personal=True)
# What a response must not contain: the personal channels' ids and the parts SensorThings makes of them.
PERSONAL_NAMES = ("anpr-1", "licence_plate", "gnss-1", "lat_exact")
PER_CHANNEL = 10  # personal readings per channel per batch
ORDINARY = 30  # ordinary readings per batch (10 on each of three channels)
NOTICE: dict[str, Any] = {  # the shape edge.privacy.build_notice gives a channel kept under a legal basis
    "schema": "ocn-edge/notice/v1",
    "place": {"gateway_id": DEVICE, "site": "Bridge St", "latitude": 43.6452, "longitude": -79.3957},
    "accountable": {"organisation": "City of Example", "contact": "privacy@example.org"},
    "purpose": "Traffic study",
    "data": [
        {"channel": PLATE.id, "device": "anpr-1", "what": "licence plate", "unit": "", "personal": True, "process": ["keep"],
         "leaves_as": "as measured. This is personal data, released under: Court order 2026-123 (traffic study)", "purpose": "Traffic study"},
    ],
}


def plate(seq: int, i: int) -> str:
    return f"PERSONAL-VALUE-{seq}-{i:03d}"


def position(seq: int, i: int) -> float:
    return round(47.3769012 + seq * 0.0010003 + i * 0.0000101, 7)


def personal_readings(seq: int) -> list[Reading]:
    # Half a second after the ordinary readings: a leaked row would also show as an extra timestamp.
    base = T0 + seq * 60_000 + 500
    return [Reading(PLATE.id, base + i * 1000, plate(seq, i)) for i in range(PER_CHANNEL)] + [
        Reading(POSITION.id, base + i * 1000, position(seq, i), "lat") for i in range(PER_CHANNEL)
    ]


def value_marks(seqs: Sequence[int]) -> list[bytes]:
    """Every personal value as it could appear in a body: text (CSV, JSON, HTML) and CBOR's binary64."""
    marks = [plate(s, i).encode() for s in seqs for i in range(PER_CHANNEL)]
    for s in seqs:
        for i in range(PER_CHANNEL):
            marks += [repr(position(s, i)).encode(), struct.pack(">d", position(s, i))]
    return marks


def sealed(gateway: SimGateway, seq: int, channels: Sequence[Channel], readings: Sequence[Reading]) -> bytes:
    header = BatchHeader(device_id=gateway.device_id, key_id=gateway.key_id, boot_epoch=gateway.boot_epoch, seq=seq,
                         policy_digest=b"\x07" * 32, codec="zstd", created_ms=T0 + seq * 60_000, counters={})
    return seal_batch(header, channels, readings, gateway.private_key)


def with_personal(gateway: SimGateway, seq: int) -> bytes:
    """The ordinary batch of ``seq`` plus both personal channels and their readings."""
    return sealed(gateway, seq, (*CHANNELS, PLATE, POSITION), gateway.readings(seq, ORDINARY) + personal_readings(seq))


@dataclass
class Scene:
    hub: RunningHub
    gateway: SimGateway
    http: aiohttp.ClientSession


@pytest.fixture
async def scene(db_url: str, tmp_path: Path) -> AsyncIterator[Scene]:
    """A hub on the engine under test with one enrolled, active gateway."""
    async with run_hub(db=db_url, state_dir=tmp_path / "hub", admin_token="admin-secret") as running:
        async with aiohttp.ClientSession() as http:
            gateway = SimGateway(DEVICE)
            await enrol(http, running.url, gateway, await running.create_token())
            yield Scene(running, gateway, http)


async def send(scene: Scene, batch: bytes) -> None:
    status, body, _ = await post_cose(scene.http, f"{scene.hub.url}/oxp/v1/batches", batch)
    assert status == 200 and body["status"] == "stored", body


async def get(http: aiohttp.ClientSession, url: str, **kwargs: Any) -> tuple[int, bytes]:
    async with http.get(url, allow_redirects=False, **kwargs) as resp:
        return resp.status, await resp.read()


def public_urls(personal_stream: int, personal_reading: int) -> dict[str, list[str]]:
    """Requests to make on each public GET route, by the route's canonical path."""
    sta = "/sta/v1.1"
    pick = quote(f"'{DEVICE}/{PLATE.id}'")
    return {
        "/": ["/"],
        "/transparency": ["/transparency"],
        "/transparency.json": ["/transparency.json"],
        "/login": ["/login"],
        "/login/{code}": ["/login/not-a-login-code"],
        "/oxp/v1/hub-key": ["/oxp/v1/hub-key"],
        "/oxp/v1/desired/{device_id}": [f"/oxp/v1/desired/{DEVICE}"],
        "/healthz": ["/healthz"],
        "/readyz": ["/readyz"],
        "/metrics": ["/metrics"],
        # release bundles gateways fetch (hub/releases.py): none kept here, and no way out of the folder to the database
        "/releases/{version}/{path}": ["/releases/1.0.0/manifest.cbor", "/releases/1.0.0/..%2F..%2Fhub.db", "/releases/..%2F/hub.db"],
        "/data": ["/data"],
        **{
            f"/data/readings.{fmt}": [
                f"/data/readings.{fmt}",
                f"/data/readings.{fmt}?device={DEVICE}",
                f"/data/readings.{fmt}?channel={PLATE.id}",
                f"/data/readings.{fmt}?device={DEVICE}&channel={POSITION.id}&since={T0}",
            ]
            for fmt in ("csv", "senml.json", "senml.cbor")
        },
        sta: [sta],
        sta + "/": [sta + "/"],
        sta + "/{path}": [
            f"{sta}/Things?$count=true&$expand=Datastreams($count=true;$expand=Observations($top=10000;$count=true),Sensor,ObservedProperty),Locations",
            f"{sta}/Things('{DEVICE}')/Datastreams?$count=true",
            f"{sta}/Things?$filter=Datastreams/name eq {pick}&$count=true",
            f"{sta}/Datastreams?$count=true&$expand=Observations($top=10000;$count=true),Thing,Sensor,ObservedProperty",
            f"{sta}/Datastreams?$filter=substringof('anpr', name)&$count=true",
            f"{sta}/Datastreams({personal_stream})",
            f"{sta}/Datastreams({personal_stream})/Observations?$count=true",
            f"{sta}/Observations?$top=10000&$count=true&$expand=Datastream($expand=Sensor,ObservedProperty)",
            f"{sta}/Observations?$top=10000&$orderby=result desc",
            f"{sta}/Observations?$filter=Datastream/name eq {pick}&$count=true",
            f"{sta}/Observations?$filter=Datastream/@iot.id eq {personal_stream}&$count=true",
            f"{sta}/Observations?$filter=result eq '{plate(1, 0)}'&$count=true",
            f"{sta}/Observations({personal_reading})",
            f"{sta}/Observations({personal_reading})/Datastream",
            f"{sta}/Sensors?$count=true&$expand=Datastreams($expand=Observations($top=10000))",
            f"{sta}/Sensors('{DEVICE}:anpr-1')",
            f"{sta}/ObservedProperties?$count=true&$expand=Datastreams",
            f"{sta}/ObservedProperties('licence_plate')/Datastreams",
            f"{sta}/Locations?$expand=Things($expand=Datastreams($expand=Observations($top=10000)))",
        ],
    }


ADMIN_ROUTES = {"/fleet", "/fleet/devices/{device_id}", "/fleet/tokens", "/admin/api/devices", "/audit", "/admin/api/audit", "/admin/api/accounts",
                "/fleet/rollouts", "/admin/api/rollouts"}


def leaks(url: str, body: bytes, marks: Sequence[bytes]) -> list[bytes]:
    """The marks a body holds that its request did not itself contain (a 404 may repeat the id asked for)."""
    asked = unquote(url).encode()
    return [m for m in marks if m in body and m not in asked]


async def stored_ids(store: Store) -> tuple[int, int]:
    """The numeric id of the personal Datastream and of one of its Observations (found with include_personal)."""
    channels = {c.channel: c for c in await store.channels(device_id=DEVICE, include_personal=True)}
    readings = await store.readings(channel=PLATE.id, include_personal=True, limit=1)
    return channels[PLATE.id].id, readings[0].id


async def test_no_public_route_names_a_personal_channel_or_shows_its_values(scene: Scene) -> None:
    await send(scene, with_personal(scene.gateway, 1))
    status, _, _ = await post_cose(scene.http, f"{scene.hub.url}/oxp/v1/notice", scene.gateway.notice(NOTICE))
    assert status == 200
    stream, reading = await stored_ids(scene.hub.store)
    urls = public_urls(stream, reading)

    # Every GET route is either read here or refuses a request without the admin token.
    app = build_app(scene.hub.hub)
    gets = {r.canonical for r in app.router.resources() if any(route.method == "GET" for route in r)}
    assert gets == set(urls) | ADMIN_ROUTES, "a GET route is neither checked for personal data nor known to need the admin token"
    for path in ADMIN_ROUTES:
        status, _ = await get(scene.http, scene.hub.url + path.replace("{device_id}", DEVICE))
        assert status == 401, path

    names = [n.encode() for n in PERSONAL_NAMES]
    values = value_marks([1])
    for route, route_urls in urls.items():
        for url in route_urls:
            status, body = await get(scene.http, scene.hub.url + url)
            assert status in (200, 401, 404), (url, status, body[:300])
            assert leaks(url, body, values) == [], url
            # The transparency register names the channel on purpose: the public must learn that personal
            # data is kept here and under which legal basis.  Values never reach a notice.
            if route not in ("/transparency", "/transparency.json"):
                assert leaks(url, body, names) == [], url


async def test_asking_for_a_personal_channel_by_name_id_or_value_finds_nothing(scene: Scene) -> None:
    await send(scene, with_personal(scene.gateway, 1))
    stream, reading = await stored_ids(scene.hub.store)
    sta, pick = f"{scene.hub.url}/sta/v1.1", quote(f"'{DEVICE}/{PLATE.id}'")
    for url in (f"{sta}/Datastreams({stream})", f"{sta}/Datastreams({stream})/Observations", f"{sta}/Observations({reading})",
                f"{sta}/Sensors('{DEVICE}:anpr-1')", f"{sta}/ObservedProperties('licence_plate')"):
        assert (await get(scene.http, url))[0] == 404, url
    # Empty answers, not errors: a filter must not tell whether the channel exists either.
    for query in (f"Things?$filter=Datastreams/name eq {pick}", f"Datastreams?$filter=name eq {pick}",
                  f"Observations?$filter=Datastream/name eq {pick}", f"Observations?$filter=Datastream/@iot.id eq {stream}",
                  f"Observations?$filter=result eq '{plate(1, 0)}'", "Observations?$filter=result gt 47.37 and result lt 47.39"):
        async with scene.http.get(f"{sta}/{query}&$count=true") as resp:
            page = await resp.json()
        assert resp.status == 200 and page["@iot.count"] == 0 and page["value"] == [], query
    for channel in (PLATE.id, POSITION.id):
        status, body = await get(scene.http, f"{scene.hub.url}/data/readings.csv?channel={channel}")
        assert status == 200 and body.decode().splitlines() == ["device_id,channel,time,ts_ms,value,unit,quality"]


async def test_the_ordinary_channels_of_the_same_batch_are_published_as_before(scene: Scene) -> None:
    await send(scene, with_personal(scene.gateway, 1))
    base = scene.hub.url
    status, body = await get(scene.http, f"{base}/data/readings.csv?device={DEVICE}")
    rows = body.decode().splitlines()[1:]
    assert status == 200 and len(rows) == ORDINARY
    assert {row.split(",")[1] for row in rows} == {c.id for c in CHANNELS[:3]}
    async with scene.http.get(f"{base}/sta/v1.1/Datastreams") as resp:
        names = sorted(d["name"] for d in (await resp.json())["value"])
    assert names == sorted(f"{DEVICE}/{c.id}" for c in CHANNELS)
    async with scene.http.get(f"{base}/sta/v1.1/Observations?$count=true&$top=1") as resp:
        assert (await resp.json())["@iot.count"] == ORDINARY
    # Kept, not lost: every reading the hub acknowledged is in the store.
    assert len(await scene.hub.store.readings(device_id=DEVICE, include_personal=True, limit=10_000)) == ORDINARY + 2 * PER_CHANNEL
    assert (await scene.hub.counters(DEVICE))["readings_stored"] == ORDINARY + 2 * PER_CHANNEL


async def test_the_device_page_shows_that_a_personal_channel_is_kept_and_how_much_but_not_its_values(scene: Scene) -> None:
    await send(scene, with_personal(scene.gateway, 1))
    await send(scene, with_personal(scene.gateway, 2))
    admin = {"Authorization": "Bearer admin-secret"}
    status, page = await get(scene.http, f"{scene.hub.url}/fleet/devices/{DEVICE}", headers=admin)
    text = page.decode()
    assert status == 200 and "Personal channels" in text
    assert PLATE.id in text and POSITION.id in text and f"<td>{2 * PER_CHANNEL}</td>" in text
    assert text.count("<svg") == 4  # the ordinary channels keep their charts; the personal ones get none
    assert leaks("", page, value_marks([1, 2])) == []
    status, body = await get(scene.http, f"{scene.hub.url}/admin/api/devices", headers=admin)
    assert status == 200 and leaks("", body, value_marks([1, 2])) == []


async def test_a_channel_once_flagged_personal_stays_personal_whatever_later_batches_say(scene: Scene) -> None:
    base, store = scene.hub.url, scene.hub.store
    ordinary_plate = Channel(PLATE.id, kind=Kind.STRING)
    # 1: the channel arrives unflagged and is published (this hub process now knows it as ordinary).
    await send(scene, sealed(scene.gateway, 1, (*CHANNELS, ordinary_plate), scene.gateway.readings(1, ORDINARY) + personal_readings(1)[:PER_CHANNEL]))
    _, body = await get(scene.http, f"{base}/data/readings.csv?channel={PLATE.id}")
    assert plate(1, 0).encode() in body
    # 2: a batch flags it personal: from then on neither it nor any of its readings is published.
    await send(scene, sealed(scene.gateway, 2, (*CHANNELS, PLATE), scene.gateway.readings(2, ORDINARY) + personal_readings(2)[:PER_CHANNEL]))
    # 3: a later batch declares it ordinary again: it stays personal.
    await send(scene, sealed(scene.gateway, 3, (*CHANNELS, ordinary_plate), scene.gateway.readings(3, ORDINARY) + personal_readings(3)[:PER_CHANNEL]))
    flags = {c.channel: c.personal for c in await store.channels(device_id=DEVICE, include_personal=True)}
    assert flags[PLATE.id] is True and not any(flag for name, flag in flags.items() if name != PLATE.id)
    assert PLATE.id not in {c.channel for c in await store.channels(device_id=DEVICE)}
    plates = [plate(s, i).encode() for s in (1, 2, 3) for i in range(PER_CHANNEL)]
    for url in (f"/data/readings.csv?channel={PLATE.id}", "/data/readings.senml.json", "/sta/v1.1/Observations?$top=10000",
                "/sta/v1.1/Datastreams?$expand=Observations($top=10000)", "/data"):
        _, body = await get(scene.http, base + url)
        assert leaks(url, body, plates) == [] and (PLATE.id.encode() not in body or PLATE.id in url), url
    assert len(await store.readings(channel=PLATE.id, include_personal=True, limit=1000)) == 3 * PER_CHANNEL


async def test_a_database_made_by_the_previous_schema_is_upgraded_and_keeps_its_channels_public(db_url: str) -> None:
    from hub import schema

    latest = schema.MIGRATIONS
    previous = [m for m in latest if m[0] < 3]
    schema.MIGRATIONS = tuple(previous)
    try:
        old = await open_store(db_url)
        assert await old.schema_version() == 2
        await old.close()
    finally:
        schema.MIGRATIONS = latest
    # A channel and a chunk as the previous hub wrote them (its store code knew no personal column).
    from hub.chunks import encode_chunks

    (first, last, count, data), = encode_chunks([Reading("pm-1/pm2_5", T0, 12.5, "ug/m3")])["pm-1/pm2_5"]
    await run_sql(db_url, [
        ("INSERT INTO channels (device_id, name, unit, kind, resolution, description) VALUES ({}, {}, {}, {}, {}, {})",
         (DEVICE, "pm-1/pm2_5", "ug/m3", "number", 0.1, "")),
        ("INSERT INTO chunks (channel_id, first_ms, last_ms, count, data) SELECT id, {}, {}, {}, {} FROM channels", (first, last, count, data)),
    ])
    current = await open_store(db_url)
    try:
        assert await current.schema_version() == latest[-1][0]
        [channel] = await current.channels()
        assert (channel.channel, channel.personal) == ("pm-1/pm2_5", False)
        assert [r.value for r in await current.readings()] == [12.5]
        # The upgraded store marks a channel a new batch flags, and hides it with its old readings.
        flagged = IncomingBatch(device_id=DEVICE, key_id=b"\x01" * 8, boot_epoch=1, seq=1, created_ms=T0, received_ms=T0,
                                policy_digest=b"\x01" * 32, codec="zstd", counters={},
                                channels=(Channel("pm-1/pm2_5", unit="ug/m3", resolution=0.1, personal=True),),
                                readings=(Reading("pm-1/pm2_5", T0 + 1000, 13.5, "ug/m3"),))
        assert await current.store_batch(flagged) == "stored"
        assert await current.channels() == [] and await current.readings() == [] and await current.count_readings() == 0
        assert [r.value for r in await current.readings(include_personal=True)] == [12.5, 13.5]
    finally:
        await current.close()


async def run_sql(db_url: str, statements: list[tuple[str, tuple[object, ...]]]) -> None:
    """Run statements on the database directly, as another program (an older hub) would."""
    if db_url.startswith("sqlite:"):
        conn = sqlite3.connect(sqlite_path(db_url))
        with conn:
            for sql, params in statements:
                conn.execute(sql.format(*["?"] * len(params)), params)
        conn.close()
        return
    import asyncpg

    dsn, search_path = postgres_schema(db_url)
    conn = await asyncpg.connect(dsn, server_settings={"search_path": search_path or "public"})
    try:
        for sql, params in statements:
            await conn.execute(sql.format(*[f"${i}" for i in range(1, len(params) + 1)]), *params)
    finally:
        await conn.close()

"""SensorThings query options ($select, $filter, $orderby, $count, paging) over real HTTP to a hub on each engine."""

from __future__ import annotations

import functools
import random
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from yarl import URL

from edge.protocol.types import Reading
from hub.app import RunningHub, run_hub
from hub.render import iso_time as iso
from hub.sensorthings import Catalog, Options
from hub.sta_filter import FilterError, compile_predicate, compile_value, parse_filter, parse_orderby
from tests.hub.gateways import T0, SimGateway, enrol, post_cose

STA = "/sta/v1.1"
# pole-0042 sends batches 1 and 2, pole-0043 batch 3: distinct times, and the same values in batches 1 and 2 (ties to order).
BATCHES = {"pole-0042": (1, 2), "pole-0043": (3,)}


def expected_readings() -> list[dict[str, Any]]:
    """Every reading the fixture's gateways send, as the hub should serve them."""
    out = []
    for device_id, seqs in BATCHES.items():
        for seq in seqs:
            for r in SimGateway(device_id).readings(seq, 30):
                out.append({"device": device_id, "name": f"{device_id}/{r.channel}", "ts": r.ts_ms, "value": r.value})
    return out


@pytest.fixture
async def sta(db_url: str, tmp_path: Path, http: aiohttp.ClientSession) -> AsyncIterator[RunningHub]:
    """A hub on each engine holding two gateways' batches; pole-0042 published its position."""
    async with run_hub(db=db_url, state_dir=tmp_path / "hub", admin_token="admin-secret") as running:
        for device_id, seqs in BATCHES.items():
            gateway = SimGateway(device_id)
            await enrol(http, running.url, gateway, await running.create_token())
            for seq in seqs:
                status, body, _ = await post_cose(http, f"{running.url}/oxp/v1/batches", gateway.batch(seq, n=30))
                assert status == 200, body
            if device_id == "pole-0042":
                await post_cose(http, f"{running.url}/oxp/v1/notice", gateway.notice({"site": "King St W", "latitude": 43.6452, "longitude": -79.3957}))
        yield running


async def get(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 200, body
        return body


async def error(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as resp:
        body = await resp.json(content_type=None)
        return resp.status, body["message"]


async def every_page(http: aiohttp.ClientSession, url: str) -> tuple[list[dict[str, Any]], int]:
    """Follow @iot.nextLink to the end: (all values, pages fetched)."""
    values, pages = [], 0
    next_url: str | None = url
    while next_url:
        page = await get(http, next_url)
        values += page["value"]
        pages += 1
        next_url = page.get("@iot.nextLink")
    return values, pages


async def stream_ids(http: aiohttp.ClientSession, hub: RunningHub) -> dict[str, int]:
    streams = await get(http, f"{hub.url}{STA}/Datastreams")
    return {d["name"]: d["@iot.id"] for d in streams["value"]}


# --- $select ------------------------------------------------------------------------


async def test_select_returns_only_the_named_properties_and_navigation_links(sta: RunningHub, http: aiohttp.ClientSession) -> None:
    things = await get(http, f"{sta.url}{STA}/Things?$select=@iot.id,name,Datastreams")
    assert sorted(t["name"] for t in things["value"]) == ["pole-0042", "pole-0043"]
    for thing in things["value"]:
        assert set(thing) == {"@iot.id", "name", "Datastreams@iot.navigationLink"}
        assert thing["Datastreams@iot.navigationLink"].endswith(f"/Things('{thing['name']}')/Datastreams")
    named = await get(http, f"{sta.url}{STA}/Things?$select=name")
    assert all(set(t) == {"name"} for t in named["value"])
    linked = await get(http, f"{sta.url}{STA}/Things('pole-0042')?$select=id,selfLink")
    assert linked == {"@iot.id": "pole-0042", "@iot.selfLink": f"{sta.url}{STA}/Things('pole-0042')"}


async def test_select_inside_expand_shapes_each_level(sta: RunningHub, http: aiohttp.ClientSession) -> None:
    thing = await get(http, f"{sta.url}{STA}/Things('pole-0042')?$select=name&$expand=Datastreams($select=name,unitOfMeasurement;$orderby=name)")
    assert set(thing) == {"name", "Datastreams"}
    names = sorted({r["name"] for r in expected_readings() if r["device"] == "pole-0042"} | {"pole-0042/door-1/open"})
    assert [d["name"] for d in thing["Datastreams"]] == names
    assert all(set(d) == {"name", "unitOfMeasurement"} for d in thing["Datastreams"])
    assert {d["name"]: d["unitOfMeasurement"]["symbol"] for d in thing["Datastreams"]}["pole-0042/pm-1/pm2_5"] == "ug/m3"
    nested = await get(http, f"{sta.url}{STA}/Datastreams?$top=1&$select=name&$expand=Observations($select=result;$top=2),Thing($select=name)")
    (stream,) = nested["value"]
    assert set(stream) == {"name", "Observations", "Observations@iot.nextLink", "Thing"}
    assert stream["Thing"] == {"name": stream["name"].split("/")[0]}
    assert len(stream["Observations"]) == 2 and all(set(o) == {"result"} for o in stream["Observations"])


async def test_select_reaches_into_complex_properties(sta: RunningHub, http: aiohttp.ClientSession) -> None:
    thing = await get(http, f"{sta.url}{STA}/Things('pole-0042')?$select=properties/fleet")
    assert thing == {"properties": {"fleet": "default"}}
    streams = await get(http, f"{sta.url}{STA}/Datastreams?$select=unitOfMeasurement/symbol&$filter=endswith(name, 'pm2_5')")
    assert streams["value"] == [{"unitOfMeasurement": {"symbol": "ug/m3"}}, {"unitOfMeasurement": {"symbol": "ug/m3"}}]


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("Things?$select=name,colour", "'colour'"),
        ("Observations?$select=result,value", "'value'"),
        ("Things?$expand=Datastreams($select=unit)", "'unit'"),
        ("Datastreams?$select=name/first", "name has no sub-properties"),
        ("Things?$select=Datastreams/name", "$expand=Datastreams($select=name)"),
    ],
)
async def test_select_of_an_unknown_property_is_a_400_naming_it(sta: RunningHub, http: aiohttp.ClientSession, query: str, named: str) -> None:
    status, message = await error(http, f"{sta.url}{STA}/{query}")
    assert status == 400 and named in message


# --- $filter on every entity set ---------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Things?$filter=name eq 'pole-0043'", ["pole-0043"]),
        ("Things?$filter=name ne 'pole-0043' and properties/fleet eq 'default'", ["pole-0042"]),
        ("Things?$filter=startswith(description, 'King')", ["pole-0042"]),
        ("Things?$filter=Locations/location/type eq 'Point'", ["pole-0042"]),
        ("Locations?$filter=Things/name eq 'pole-0042'", ["King St W"]),
        ("Datastreams?$filter=Thing/name eq 'pole-0043' and unitOfMeasurement/symbol eq 'V'", ["pole-0043/meter-1/voltage_l1"]),
        ("Datastreams?$filter=endswith(name, 'open') and not (Thing/@iot.id eq 'pole-0043')", ["pole-0042/door-1/open"]),
        ("Sensors?$filter=substringof('meter', name) and Datastreams/unitOfMeasurement/symbol eq 'W'", ["meter-1", "meter-1"]),
        ("ObservedProperties?$filter=length(name) eq 5 or toupper(name) eq 'OPEN'", ["open", "power", "pm2_5"]),
        ("ObservedProperties?$filter=indexof(name, '_') ge 0 and substring(name, 0, 2) eq 'pm'", ["pm2_5"]),
        ("ObservedProperties?$filter=concat(name, '!') eq 'power!' or trim(' open ') eq name", ["open", "power"]),
        ("Things?$filter=name eq 'o''brien' or contains(name, '43')", ["pole-0043"]),
        ("Things?$filter=st_within(Locations/location, geography'POLYGON ((-80 43, -79 43, -79 44, -80 44, -80 43))')", ["pole-0042"]),
        ("Things?$filter=geo.intersects(Locations/location, geography'POLYGON ((0 0, 1 0, 1 1, 0 1, 0 0))')", []),
        ("Locations?$filter=geo.distance(location, geography'POINT (-79.3957 43.6452)') lt 0.001", ["King St W"]),
        ("Locations?$filter=st_equals(location, geography'POINT(-79.3957 43.6452)') and st_disjoint(location, geography'POINT(0 0)')", ["King St W"]),
        ("Locations?$filter=st_contains(geography'POLYGON((-80 43,-79 43,-79 44,-80 44,-80 43),"
         "(-79.5 43.6,-79.3 43.6,-79.3 43.7,-79.5 43.7,-79.5 43.6))', location)", []),
        ("Locations?$filter=geo.length(geography'LINESTRING (0 0, 3 4)') eq 5", ["King St W"]),
        ("Things?$filter=startswith(concat(Datastreams/name, Datastreams/name), 'pole-0043/')", ["pole-0043"]),
        ("Locations?$filter=endswith(concat(Things/Datastreams/name, Things/name), 'openpole-0042')", ["King St W"]),
        ("Locations?$filter=Things/Datastreams/name eq 'pole-0042/door-1/open'", ["King St W"]),
    ],
)
async def test_filter_works_on_every_entity_set(sta: RunningHub, http: aiohttp.ClientSession, query: str, expected: list[str]) -> None:
    page = await get(http, f"{sta.url}{STA}/{query}")
    assert sorted(v["name"] for v in page["value"]) == sorted(expected)


async def test_combining_to_many_paths_is_bounded(sta: RunningHub, http: aiohttp.ClientSession) -> None:
    # Each Thing has 4 Datastreams or more: every `add` of another Datastreams/… path multiplies the values
    # to compute by 4 (4**20 for 20 terms), so past MAX_COMBINATIONS pairs the filter is refused, not run.
    resolution = "Datastreams/properties/resolution"
    few = await get(http, f"{sta.url}{STA}/Things?$filter={' add '.join([resolution] * 2)} gt 0")
    assert sorted(t["name"] for t in few["value"]) == ["pole-0042", "pole-0043"]
    for terms in (6, 20):
        status, message = await error(http, f"{sta.url}{STA}/Things?$filter={' add '.join([resolution] * terms)} gt 0")
        assert status == 400 and "more than 1000 pairs" in message
    status, message = await error(http, f"{sta.url}{STA}/Things?$filter=concat(concat(concat(concat(concat(Datastreams/name, "
                                        "Datastreams/name), Datastreams/name), Datastreams/name), Datastreams/name), Datastreams/name) eq 'x'")
    assert status == 400 and "more than 1000 pairs" in message


async def test_filter_on_observations_through_navigation_and_functions(sta: RunningHub, http: aiohttp.ClientSession) -> None:
    readings = expected_readings()
    cases = {
        "Datastream/name eq 'pole-0042/pm-1/pm2_5' and result gt 5.5":
            lambda r: r["name"] == "pole-0042/pm-1/pm2_5" and r["value"] > 5.5,
        "Datastream/Thing/name eq 'pole-0043' and Datastream/unitOfMeasurement/symbol eq 'W' and result mod 2 eq 0":
            lambda r: r["name"] == "pole-0043/meter-1/power" and r["value"] % 2 == 0,
        "Datastream/ObservedProperty/name eq 'power' and (result sub 1000) div 10 ge 1":
            lambda r: r["name"].endswith("/power") and (r["value"] - 1000) / 10 >= 1,
        f"minute(phenomenonTime) eq {(T0 + 120_000) // 60_000 % 60} and second(resultTime) lt 23":
            lambda r: r["ts"] // 60_000 % 60 == (T0 + 120_000) // 60_000 % 60 and r["ts"] // 1000 % 60 < 23,
        f"phenomenonTime ge '{iso(T0 + 120_000)}' and phenomenonTime lt {iso(T0 + 125_000)} and round(result) eq 230":
            lambda r: T0 + 120_000 <= r["ts"] < T0 + 125_000 and round(r["value"]) == 230,
        "resultQuality eq null and floor(result) eq 5 and ceiling(result) eq 6":
            lambda r: r["name"].endswith("pm2_5") and 5 < r["value"] < 6,
        f"year(phenomenonTime) eq 2026 and before(phenomenonTime, {iso(T0 + 62_000)}) and result ge -1 mul 0":
            lambda r: r["ts"] < T0 + 62_000,
        f"date(phenomenonTime) eq {iso(T0)[:10]} and after(phenomenonTime, now()) eq false and Datastream/@iot.id ne 0":
            lambda r: True,
    }
    for condition, keep in cases.items():
        values, _ = await every_page(http, f"{sta.url}{STA}/Observations?$filter={condition}&$orderby=@iot.id&$top=7")
        got = sorted((v["phenomenonTime"], v["result"]) for v in values)
        want = sorted((iso(r["ts"]), r["value"]) for r in readings if keep(r))
        assert got == want, condition
        assert want, f"{condition} should match something"


async def test_a_navigation_only_filter_is_decided_per_channel_and_the_time_range_reaches_the_store(sta: RunningHub, http: aiohttp.ClientSession) -> None:
    ids = await stream_ids(http, sta)
    catalog = await Catalog.load(sta.store, f"{sta.url}{STA}")
    condition = f"Datastream/name eq 'pole-0042/pm-1/pm2_5' and phenomenonTime ge {iso(T0 + 120_000)} and phenomenonTime lt {iso(T0 + 125_000)}"
    query = catalog.observation_query(Options({"$filter": condition}), None)
    assert query == {"channel_id": ids["pole-0042/pm-1/pm2_5"], "since_ms": T0 + 120_000, "until_ms": T0 + 125_000, "match": None}
    nothing = catalog.observation_query(Options({"$filter": "Datastream/name eq 'no such stream' and result gt 1"}), None)
    assert nothing is None
    several = catalog.observation_query(Options({"$filter": "Datastream/Thing/name eq 'pole-0043' and result gt 1"}), None)
    assert several is not None and several["channel_id"] is None and several["since_ms"] is None
    page = await get(http, f"{sta.url}{STA}/Observations?$filter={condition}&$count=true")
    assert page["@iot.count"] == len(page["value"]) == 5
    quoted = await get(http, f"{sta.url}{STA}/Observations?$filter=Datastream/id eq '{ids['pole-0042/pm-1/pm2_5']}'&$count=true&$top=1")
    assert quoted["@iot.count"] == sum(1 for r in expected_readings() if r["name"] == "pole-0042/pm-1/pm2_5")


@pytest.mark.parametrize(
    ("condition", "named"),
    [
        ("colour eq 'red'", "no property 'colour'"),
        ("Datastream/colour eq 'red'", "no property 'colour'"),
        ("FeatureOfInterest/name eq 'x'", "no property 'FeatureOfInterest'"),
        ("geo.intersects(Datastream/name, 'x')", "geo.intersects(): argument 1 must be a geo, got a str"),
        ("st_relate(result, geography'POINT(1 2)', 'T********')", "st_relate() is not supported"),
        ("st_within(result, geography'CIRCLE(1 2)')", "expected WKT POINT (x y)"),
        ("st_within(result, geography'POLYGON((0 0, 1 0, 1 1))')", "each POLYGON ring closes"),
        ("during(phenomenonTime, 2026-01-01T00:00:00Z/2026-02-01T00:00:00Z)", "time intervals are not supported"),
        ("frobnicate(result) eq 1", "unknown function frobnicate()"),
        ("result Eq 5", "operators are lower case"),
        ("result eq", "ends too early"),
        ("result eq 5)", "unexpected ')'"),
        ("phenomenonTime add 5 gt 1", "needs durations"),
        ("phenomenonTime gt 'yesterday'", "'yesterday' is not a valid ISO 8601 time"),
        ("length(result, 2) eq 1", "length() takes 1 argument"),
        ("phenomenonTime", "a condition is needed here, not a time"),
        ("Datastream eq 1", "navigation property"),
        ("Datastream/unitOfMeasurement eq 'V'", "compare a property inside an object"),
        ("Datastream/name eq 5", "cannot compare a str with a num"),
        ("result eq duration'P1D'", "duration'…' literals are not supported"),
        ("result in (1, 2)", "operator 'in' is not supported"),
    ],
)
async def test_an_unsupported_or_wrong_filter_is_a_400_naming_the_construct(sta: RunningHub, http: aiohttp.ClientSession, condition: str, named: str) -> None:
    status, message = await error(http, f"{sta.url}{STA}/Observations?{URL.build(query={'$filter': condition}).query_string}")
    assert status == 400 and named in message, message


async def test_a_time_beyond_64_bits_is_an_empty_or_whole_range_not_an_error(sta: RunningHub, http: aiohttp.ClientSession) -> None:
    # Whole numbers compare with times as milliseconds; the time range they imply reaches SQL as 64-bit integers.
    total = len(expected_readings())
    for condition, want in {
        "phenomenonTime gt 99999999999999999999999": 0,
        "phenomenonTime le 9223372036854775807": total,
        "resultTime lt -99999999999999999999999": 0,
        "phenomenonTime ge -9223372036854775809 and phenomenonTime ne 0": total,
        "phenomenonTime eq 92233720368547758070": 0,
    }.items():
        page = await get(http, f"{sta.url}{STA}/Observations?$filter={condition}&$count=true&$top=1")
        assert page["@iot.count"] == want and len(page["value"]) == min(want, 1), condition


async def test_readings_of_a_channel_newer_than_the_requests_catalog_do_not_break_it(sta: RunningHub, http: aiohttp.ClientSession) -> None:
    # A request loads devices and channels once, then reads the store: a gateway may add channels in between.
    catalog = await Catalog.load(sta.store, f"{sta.url}{STA}")
    newcomer = SimGateway("pole-0044")
    await enrol(http, sta.url, newcomer, await sta.create_token())
    status, body, _ = await post_cose(http, f"{sta.url}/oxp/v1/batches", newcomer.batch(1, n=30))
    assert status == 200, body
    options = Options({"$filter": "Datastream/Thing/name eq 'pole-0044' or result lt 0", "$top": "1000", "$expand": "Datastream"})
    page, more, _ = await catalog.observations(options, channel_id=None)
    assert page == [] and not more  # pole-0044 is not in this request's view of the Things
    everything, _, _ = await catalog.observations(Options({"$top": "1000"}), channel_id=None)
    newer = [obj for _, obj in everything if obj.channel_id not in catalog.channel_by_id]
    assert len(newer) == 30
    for reading in newer:
        assert (await catalog.expanded("Observations", reading.id, reading, Options({"$expand": "Datastream"})))["Datastream"] is None


async def test_filter_and_order_inside_an_expansion_of_observations(sta: RunningHub, http: aiohttp.ClientSession) -> None:
    ids = await stream_ids(http, sta)
    expand = "Observations($filter=result ge 6;$orderby=result desc;$count=true;$top=2)"
    stream = await get(http, f"{sta.url}{STA}/Datastreams({ids['pole-0043/pm-1/pm2_5']})?$expand={expand}")
    want = sorted((r["value"] for r in expected_readings() if r["name"] == "pole-0043/pm-1/pm2_5" and r["value"] >= 6), reverse=True)
    assert [o["result"] for o in stream["Observations"]] == want[:2] and stream["Observations@iot.count"] == len(want)
    rest, _ = await every_page(http, stream["Observations@iot.nextLink"])
    assert [o["result"] for o in rest] == want[2:]


async def test_filter_paths_into_observations_from_other_sets_are_refused(sta: RunningHub, http: aiohttp.ClientSession) -> None:
    status, message = await error(http, f"{sta.url}{STA}/Things?$filter=Datastreams/Observations/result gt 1")
    assert status == 400 and "paths into Observations are not supported" in message


async def test_a_response_holds_a_bounded_number_of_entities_however_expansions_nest(
    sta: RunningHub, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each nested $expand multiplies by its $top: Observations → Datastream → Observations … is 10,000**3 at the page size.
    import hub.sensorthings

    monkeypatch.setattr(hub.sensorthings, "MAX_ENTITIES", 200)
    small = await get(http, f"{sta.url}{STA}/Datastreams?$expand=Observations($top=2;$expand=Datastream)")
    assert sum(1 + 2 * len(d["Observations"]) for d in small["value"]) <= 200
    status, message = await error(http, f"{sta.url}{STA}/Datastreams?$expand=Observations($expand=Datastream($expand=Observations))")
    assert status == 400 and "more than 200 entities" in message and "$top inside $expand" in message


async def test_expansions_that_come_back_to_a_datastream_read_its_observations_once(
    sta: RunningHub, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each inner Observations($count=true;$filter=…) may decode a million readings: asked for every outer Observation,
    # a $top of 10,000 would multiply that by 10,000.
    ids = await stream_ids(http, sta)
    pm = ids["pole-0042/pm-1/pm2_5"]
    calls = {"readings": 0, "count_readings": 0}

    def counting(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            calls[name] += 1
            return real(*args, **kwargs)
        return counted

    for name in calls:
        monkeypatch.setattr(sta.store, name, counting(name, getattr(sta.store, name)))
    inner = "$top=1;$count=true;$filter=result gt 5"
    stream = await get(http, f"{sta.url}{STA}/Datastreams({pm})?$expand=Observations($top=8;$expand=Datastream($expand=Observations({inner})))")
    want = sum(1 for r in expected_readings() if r["name"] == "pole-0042/pm-1/pm2_5" and r["value"] > 5)
    assert len(stream["Observations"]) == 8
    assert all(o["Datastream"]["Observations@iot.count"] == want for o in stream["Observations"])
    assert calls == {"readings": 2, "count_readings": 1}  # the outer page, and the inner page and count once


async def test_a_filter_through_datastreams_looks_up_each_entitys_datastreams_not_every_channel(
    sta: RunningHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fleet of 600 gateways with 4 channels each: following Datastreams/… from each Thing, Sensor or
    # ObservedProperty by scanning every channel would be 600 × 2,400 steps per path, on the hub's event loop.
    import hub.sensorthings

    real = await Catalog.load(sta.store, f"{sta.url}{STA}")
    device = next(iter(real.devices.values()))
    devices = [replace(device, device_id=f"pole-{n:04d}") for n in range(600)]
    channels = [replace(c, id=n * 10 + i, device_id=f"pole-{n:04d}") for n in range(600) for i, c in enumerate(real.channels[:4])]
    fleet = Catalog(sta.store, real.base, devices, channels)
    members = {name: fleet.members(name) for name in ("Things", "Sensors", "ObservedProperties")}
    looked_at = {"channels": 0}
    real_parts = hub.sensorthings.sensor_parts

    def counted(channel: Any) -> tuple[str, str]:
        looked_at["channels"] += 1
        return real_parts(channel)

    monkeypatch.setattr(hub.sensorthings, "sensor_parts", counted)
    for entity_set, condition, want in [
        ("Things", "Datastreams/name eq 'pole-0123/meter-1/power'", 1),
        ("Sensors", "Datastreams/Thing/name eq 'pole-0007'", len({c.channel.split('/')[0] for c in channels if c.device_id == "pole-0007"})),
        ("ObservedProperties", "Datastreams/Thing/name eq 'pole-0599' and Datastreams/unitOfMeasurement/symbol eq 'W'", 1),
    ]:
        chosen, _, total = fleet.select_members(entity_set, members[entity_set], Options({"$filter": condition, "$top": "1000"}))
        assert total == len(chosen) == want, condition
    assert looked_at["channels"] <= 4 * len(channels)  # a few lookups per Datastream, not one per pair


async def test_an_expansions_options_are_parsed_and_compiled_once_per_request(
    sta: RunningHub, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    # They apply to every entity the expansion hangs from: 10,000 of them would parse a 2,000-character $filter 10,000 times.
    import hub.sensorthings

    calls = {"parse_filter": 0, "compile_predicate": 0}

    def counting(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any) -> Any:
            calls[name] += 1
            return real(*args)
        return counted

    for name in calls:
        monkeypatch.setattr(hub.sensorthings, name, counting(name, getattr(hub.sensorthings, name)))
    streams = await get(http, f"{sta.url}{STA}/Datastreams?$expand=Thing($expand=Datastreams($filter=endswith(name, 'power');$select=name))")
    assert len(streams["value"]) == 8
    assert all([d["name"] for d in s["Thing"]["Datastreams"]] == [f"{s['Thing']['name']}/meter-1/power"] for s in streams["value"])
    assert calls == {"parse_filter": 1, "compile_predicate": 1}


# --- $orderby, $count, paging --------------------------------------------------------


async def test_orderby_with_several_keys_on_a_small_set(sta: RunningHub, http: aiohttp.ClientSession) -> None:
    everything = (await get(http, f"{sta.url}{STA}/Datastreams"))["value"]
    want = sorted(everything, key=lambda d: d["@iot.id"])
    want.sort(key=lambda d: d["unitOfMeasurement"]["symbol"], reverse=True)
    got, pages = await every_page(http, f"{sta.url}{STA}/Datastreams?$orderby=unitOfMeasurement/symbol desc, @iot.id asc&$top=3")
    assert [d["@iot.id"] for d in got] == [d["@iot.id"] for d in want] and pages == 3
    by_thing = (await get(http, f"{sta.url}{STA}/Datastreams?$orderby=Thing/name desc,name"))["value"]
    assert [d["name"] for d in by_thing] == sorted((d["name"] for d in everything), key=lambda n: (n.split("/")[0] == "pole-0042", n))


@pytest.mark.parametrize("top", [1, 3, 7])
async def test_orderby_with_several_keys_on_observations_pages_through_ties(sta: RunningHub, http: aiohttp.ClientSession, top: int) -> None:
    # Power values repeat across batches 1 and 2: ordering by result leaves ties the second key must order.
    ids = await stream_ids(http, sta)
    power = ids["pole-0042/meter-1/power"]
    readings = [r for r in expected_readings() if r["name"] == "pole-0042/meter-1/power"]
    want = sorted(readings, key=lambda r: r["ts"], reverse=True)
    want.sort(key=lambda r: r["value"], reverse=True)
    url = f"{sta.url}{STA}/Datastreams({power})/Observations?$orderby=result desc,phenomenonTime desc&$top={top}&$count=true"
    got, pages = await every_page(http, url)
    assert [(o["result"], o["phenomenonTime"]) for o in got] == [(r["value"], iso(r["ts"])) for r in want]
    assert pages == -(-len(want) // top)
    first = await get(http, url)
    assert first["@iot.count"] == len(want)
    query = f"$filter=Datastream/@iot.id eq {power}&$orderby=result asc,phenomenonTime desc,@iot.id&$top={top}"
    ascending, _ = await every_page(http, f"{sta.url}{STA}/Observations?{query}")
    want.sort(key=lambda r: r["ts"], reverse=True)
    want.sort(key=lambda r: r["value"])
    assert [(o["result"], o["phenomenonTime"]) for o in ascending] == [(r["value"], iso(r["ts"])) for r in want]


class ZeroOneGateway(SimGateway):
    """Sends 0 and 1 on a number channel and False and True on a bool channel: equal under ==, apart in the order."""

    def readings(self, seq: int, n: int) -> list[Reading]:
        values = [("meter-1/power", 1.0, "W"), ("door-1/open", True, ""), ("meter-1/power", 0.0, "W"), ("door-1/open", False, "")]
        return [Reading(channel, T0 + seq * 60_000 + i * 1000, value, unit) for i, (channel, value, unit) in enumerate(values * 3)]


@pytest.mark.parametrize("top", [1, 2, 5])
async def test_orderby_result_then_time_pages_numbers_and_bools_apart(db_url: str, tmp_path: Path, http: aiohttp.ClientSession, top: int) -> None:
    gateway = ZeroOneGateway("pole-0045")
    async with run_hub(db=db_url, state_dir=tmp_path / "hub", admin_token="admin-secret") as running:
        await enrol(http, running.url, gateway, await running.create_token())
        status, body, _ = await post_cose(http, f"{running.url}/oxp/v1/batches", gateway.batch(1))
        assert status == 200, body
        got, _ = await every_page(http, f"{running.url}{STA}/Observations?$orderby=result,phenomenonTime desc&$top={top}")
    sent = gateway.readings(1, 0)
    # Numbers before booleans (the store's order of result); within equal results the latest first.
    want = sorted(sent, key=lambda r: -r.ts_ms)
    want.sort(key=lambda r: (isinstance(r.value, bool), r.value))
    assert [(o["result"], o["phenomenonTime"]) for o in got] == [(r.value, iso(r.ts_ms)) for r in want]


async def test_count_agrees_with_the_filter_on_every_set(sta: RunningHub, http: aiohttp.ClientSession) -> None:
    readings = expected_readings()
    assert (await get(http, f"{sta.url}{STA}/Things?$count=true&$top=1"))["@iot.count"] == 2
    assert (await get(http, f"{sta.url}{STA}/Datastreams?$count=true&$filter=Thing/name eq 'pole-0043'&$top=1"))["@iot.count"] == 4
    for condition, keep in {
        "": lambda r: True,
        "result gt 100": lambda r: r["value"] > 100,
        f"phenomenonTime gt {iso(T0 + 125_000)}": lambda r: r["ts"] > T0 + 125_000,
        "Datastream/Thing/name eq 'pole-0043' and result lt 231": lambda r: r["device"] == "pole-0043" and r["value"] < 231,
    }.items():
        query = f"$filter={condition}&" if condition else ""
        page = await get(http, f"{sta.url}{STA}/Observations?{query}$count=true&$top=4")
        want = sum(1 for r in readings if keep(r))
        assert page["@iot.count"] == want, condition
        values, _ = await every_page(http, f"{sta.url}{STA}/Observations?{query}$top=25")
        assert len(values) == want and len({v["@iot.id"] for v in values}) == want
    assert await sta.store.count_readings(since_ms=T0 + 125_000) == sum(1 for r in readings if r["ts"] >= T0 + 125_000)
    assert await sta.store.count_readings(match=lambda r: True, cap=len(readings) - 1) is None  # would decode too much: no count
    thing = await get(http, f"{sta.url}{STA}/Things('pole-0043')?$expand=Datastreams($count=true;$top=1;$filter=unitOfMeasurement/symbol ne 'V')")
    assert thing["Datastreams@iot.count"] == 3 and len(thing["Datastreams"]) == 1
    link = URL(thing["Datastreams@iot.nextLink"])
    assert link.path.endswith("/Things('pole-0043')/Datastreams") and link.query["$filter"] == "unitOfMeasurement/symbol ne 'V'"
    rest, _ = await every_page(http, thing["Datastreams@iot.nextLink"])
    assert len(rest) == 2 and all(d["unitOfMeasurement"]["symbol"] != "V" for d in rest)


async def test_next_link_keeps_filter_order_and_select(sta: RunningHub, http: aiohttp.ClientSession) -> None:
    url = f"{sta.url}{STA}/Observations?$filter=result lt 10&$orderby=phenomenonTime desc&$select=result,phenomenonTime&$top=4"
    page = await get(http, url)
    query = URL(page["@iot.nextLink"]).query
    assert query["$filter"] == "result lt 10" and query["$select"] == "result,phenomenonTime" and query["$skip"] == "4" and query["$top"] == "4"
    values, _ = await every_page(http, url)
    want = sorted((r for r in expected_readings() if r["value"] < 10), key=lambda r: r["ts"], reverse=True)
    assert [v["phenomenonTime"] for v in values] == [iso(r["ts"]) for r in want]
    assert all(set(v) == {"result", "phenomenonTime"} for v in values)


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("Things?$count=yes", "$count='yes'"),
        ("Things?$top=-1", "$top='-1'"),
        ("Things?$resultFormat=dataArray", "$resultFormat: not supported"),
        ("Things?$expand=Datastreams($frob=1)", "$frob: not supported"),
        ("Things?$expand=Sensors", "Things can expand Datastreams, Locations"),
        ("Observations?$orderby=Datastream/name", "$orderby on Observations takes"),
        ("Things?$orderby=name sideways", "directions are asc or desc"),
        ("Things?$orderby=colour", "no property 'colour'"),
    ],
)
async def test_bad_query_options_are_a_400_naming_them(sta: RunningHub, http: aiohttp.ClientSession, query: str, named: str) -> None:
    status, message = await error(http, f"{sta.url}{STA}/{query}")
    assert status == 400 and named in message, message


async def test_a_top_above_the_page_size_is_served_at_the_page_size(sta: RunningHub, http: aiohttp.ClientSession) -> None:
    page = await get(http, f"{sta.url}{STA}/Observations?$top=999999&$count=true")
    assert len(page["value"]) == page["@iot.count"] == len(expected_readings())


async def test_the_documented_example_queries_answer(sta: RunningHub, http: aiohttp.ClientSession) -> None:
    fleet_md = (Path(__file__).parents[2] / "docs" / "fleet.md").read_text(encoding="utf-8")
    section = fleet_md[fleet_md.index("### SensorThings API v1.1") : fleet_md.index("## Scale out on PostgreSQL")]
    examples = re.findall(r"^(/sta/v1\.1/\S.*)$", section, flags=re.MULTILINE)
    assert len(examples) >= 5
    pm = (await stream_ids(http, sta))["pole-0042/pm-1/pm2_5"]
    for query in examples:
        page = await get(http, sta.url + query.replace("Datastreams(7)", f"Datastreams({pm})"))
        assert "value" in page


async def test_any_query_answers_200_400_or_404_and_never_fails(sta: RunningHub, http: aiohttp.ClientSession) -> None:
    rng = random.Random(18088)
    paths = ["Things", "Locations", "Datastreams", "Sensors", "ObservedProperties", "Observations", "Things('pole-0042')", "Datastreams(1)/Observations"]
    options = {
        "$filter": lambda: " ".join(rng.choice(FILTER_WORDS) for _ in range(rng.randrange(1, 9))),
        "$select": lambda: ",".join(rng.choice(SELECT_WORDS) for _ in range(rng.randrange(1, 4))),
        "$orderby": lambda: ",".join(rng.choice(ORDERBY_WORDS) for _ in range(rng.randrange(1, 3))),
        "$expand": lambda: rng.choice(EXPANSIONS),
        "$top": lambda: rng.choice(["0", "1", "5", "x", "-1", "99999999999999999999"]),
        "$skip": lambda: rng.choice(["0", "3", "1000001"]),
        "$count": lambda: rng.choice(["true", "false", "TRUE"]),
    }
    statuses: dict[int, int] = {}
    for _ in range(150):
        chosen = {name: make() for name, make in options.items() if rng.random() < 0.4}
        url = URL(f"{sta.url}{STA}/{rng.choice(paths)}", encoded=True).update_query(chosen)
        async with http.get(url) as resp:
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
            assert resp.status in (200, 400, 404), (str(url), await resp.text())
    assert statuses.get(200) and statuses.get(400)
    deep = "Datastreams(" + "$expand=Thing($expand=Datastreams(" * 4 + ")" * 8 + ")"
    status, message = await error(http, f"{sta.url}{STA}/Things?$expand={deep}")
    assert status == 400 and "nested deeper than" in message


# --- the parser takes anything -------------------------------------------------------

FILTER_WORDS = [
    "result", "phenomenonTime", "name", "Datastream/name", "Datastream/Thing/name", "Thing/name", "Datastreams/name", "properties/fleet",
    "unitOfMeasurement/symbol", "@iot.id", "eq", "ne", "gt", "ge", "lt", "le", "and", "or", "not", "add", "sub", "mul", "div", "mod",
    "(", ")", ",", "-", "'x'", "''''", "'", "0", "1.5", "1e308", "99999999999999999999999", "2026-09-21T14:15:00Z", "2026-02-30",
    "true", "false", "null", "substringof(", "length(", "year(", "round(", "concat(", "substring(", "now()", "geo.distance(", "desc", "asc",
    "st_within(", "location", "Locations/location", "geography'POINT(1 2)'", "geography'POLYGON((0 0, 1 0, 1 1, 0 0))'", "geography'POINT(",
    "geography'LINESTRING(0 0)'",
]
SELECT_WORDS = ["name", "@iot.id", "result", "Datastreams", "properties/fleet", "x", "*", ""]
ORDERBY_WORDS = ["name", "result desc", "phenomenonTime", "@iot.id asc", "Thing/name", "length(name)", "("]
EXPANSIONS = [
    "Datastreams", "Datastreams/Observations($top=1)", "Thing($select=name)", "Datastream", "Locations(", "Observations($filter=result gt 5;$count=true)",
]
filter_texts = st.one_of(st.text(max_size=60), st.lists(st.sampled_from(FILTER_WORDS), max_size=14).map(" ".join))

# Leaves of each type for the grammar below: properties of some entity set (unknown on the others), literals, calls.
LEAVES = {
    "num": ["result", "@iot.id", "0", "1.5", "-3", "1e308", "99999999999999999999999", "length('')"],
    "str": ["name", "description", "Datastream/name", "Thing/name", "Datastreams/name", "properties/fleet",
            "unitOfMeasurement/symbol", "resultQuality", "'x'", "''''", "''", "'2026-09-21T14:15:00Z'"],
    "time": ["phenomenonTime", "resultTime", "2026-09-21T14:15:00Z", "2026-02-28", "now()", "mindatetime()", "maxdatetime()"],
    "geo": ["location", "Locations/location", "geography'POINT(1 2)'", "geography'POLYGON((0 0, 1 0, 1 1, 0 0))'"],
    "bool": ["true", "false", "name eq null", "result gt 5", "1 eq 1"],
}


@functools.cache
def expressions(kind: str, depth: int) -> st.SearchStrategy[str]:
    """Well-typed expressions of ``kind`` nested up to ``depth``: every text parses as a $filter and as an $orderby key."""
    leaf = st.sampled_from(LEAVES[kind])
    if depth == 0:
        return leaf
    num, text, time, geo, cond = (expressions(k, depth - 1) for k in ("num", "str", "time", "geo", "bool"))

    def form(pattern: str, *parts: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
        return st.tuples(*parts).map(lambda values: pattern.format(*values))

    ops = st.sampled_from
    compound = {
        "num": [form("({} {} {})", num, ops(["add", "sub", "mul", "div", "mod"]), num), form("-({})", num), form("length({})", text),
                form("{}({})", ops(["year", "month", "second", "fractionalseconds"]), time), form("{}({})", ops(["round", "floor", "ceiling"]), num),
                form("indexof({}, {})", text, text), form("geo.distance({}, {})", geo, geo)],
        "str": [form("concat({}, {})", text, text), form("{}({})", ops(["tolower", "toupper", "trim"]), text),
                form("substring({}, {}, {})", text, num, num), form("time({})", time)],
        "time": [form("date({})", time)],
        "geo": [],
        "bool": [*(form("{} {} {}", side, ops(["eq", "ne", "gt", "ge", "lt", "le"]), side) for side in (num, text, time)),
                 form("{} eq {}", time, num), form("({}) {} ({})", cond, ops(["and", "or"]), cond), form("not ({})", cond),
                 form("{}({}, {})", ops(["substringof", "contains", "startswith", "endswith"]), text, text),
                 form("{}({}, {})", ops(["before", "after", "meets"]), time, time),
                 form("{}({}, {})", ops(["st_within", "st_intersects", "geo.intersects", "st_disjoint"]), geo, geo)],
    }[kind]
    return st.one_of(leaf, *compound)


@settings(max_examples=400, deadline=None)
@given(filter_texts)
def test_the_filter_parser_raises_only_filter_error(text: str) -> None:
    try:
        parse_filter(text)
    except FilterError:
        pass
    try:
        parse_orderby(text)
    except FilterError:
        pass


async def test_any_filter_compiles_and_evaluates_without_raising_on_every_set(sta: RunningHub) -> None:
    catalog = await Catalog.load(sta.store, f"{sta.url}{STA}")
    sets = {name: [obj for _, obj in catalog.members(name)] for name in ("Things", "Locations", "Datastreams", "Sensors", "ObservedProperties")}
    sets["Observations"] = await sta.store.readings(limit=60)
    evaluated = {"rows": 0}

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(expressions("bool", 3))
    @example("result gt 5 and Datastream/name ne 'x'")
    def run(text: str) -> None:
        for entity_set, objects in sets.items():
            try:
                keep = compile_predicate(parse_filter(text), catalog.resolver(entity_set))
                value = compile_value(parse_orderby(text)[0][0], catalog.resolver(entity_set))[0]
            except FilterError:
                continue
            for obj in objects:
                try:
                    kept = keep(obj)
                    value(obj)
                except FilterError as exc:  # the one refusal at run time, answered 400 like a parse error
                    assert "to-many paths" in str(exc)
                    continue
                assert kept in (True, False)
                evaluated["rows"] += 1

    run()
    assert evaluated["rows"] > 0


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2004-07-02T11:16:25.972Z", 1_088_766_985_972),  # through a float: ...971
        ("2038-11-01T17:53:46.792Z", 2_172_246_826_792),  # through a float: ...791
        ("1969-12-31T23:59:59.9995Z", -1),  # a float truncated toward zero: 0
        ("1960-01-01T00:00:00.001Z", -315_619_199_999),
        ("2026-11-27T03:00:00.001Z", 1_795_748_400_001),
        ("2026-11-27T04:00:00.001+01:00", 1_795_748_400_001),
        ("2262-04-11T23:47:16.854Z", 9_223_372_036_854),
    ],
)
def test_times_in_filters_and_export_ranges_are_exact_milliseconds(text: str, ms: int) -> None:
    from hub.opendata import parse_time as export_time
    from hub.sta_filter import parse_time

    assert parse_time(text) == ms
    assert export_time("since", text) == ms

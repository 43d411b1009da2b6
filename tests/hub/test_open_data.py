"""Open data: CSV and SenML exports, and the read-only SensorThings API v1.1."""

from __future__ import annotations

import csv
import io

import aiohttp
import cbor2
import pytest

from hub.app import RunningHub
from tests.hub.gateways import T0, SimGateway, post_cose

STA = "/sta/v1.1"


@pytest.fixture
async def with_data(running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway) -> RunningHub:
    """pole-0042 with 2 batches of 30 readings (10 per channel each) and a notice giving its position."""
    for seq in (1, 2):
        status, _, _ = await post_cose(http, f"{running_hub.url}/oxp/v1/batches", gateway.batch(seq, n=30))
        assert status == 200
    await post_cose(http, f"{running_hub.url}/oxp/v1/notice", gateway.notice({"site": "King St W", "latitude": 43.6452, "longitude": -79.3957}))
    return running_hub


async def get_json(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json(content_type=None)


async def test_csv_export_filters_by_device_channel_and_time(with_data: RunningHub, http: aiohttp.ClientSession) -> None:
    url = f"{with_data.url}/data/readings.csv?device=pole-0042&channel=meter-1/voltage_l1&since=2026-09-21T14:14:20Z&until={T0 + 120_000}"
    async with http.get(url) as resp:
        assert resp.content_type == "text/csv"
        rows = list(csv.DictReader(io.StringIO(await resp.text())))
    assert len(rows) == 10
    assert rows[0] == {
        "device_id": "pole-0042", "channel": "meter-1/voltage_l1", "time": "2026-09-21T14:14:20.000Z", "ts_ms": str(T0 + 60_000), "value": "230.0", "unit": "V",
        "quality": "",
    }


async def test_a_full_export_page_links_to_the_next_page(with_data: RunningHub, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{with_data.url}/data/readings.csv?limit=50") as resp:
        assert "offset=50" in resp.headers["Link"]
    async with http.get(f"{with_data.url}/data/readings.csv?limit=50&offset=50") as resp:
        assert "Link" not in resp.headers and (await resp.text()).count("\n") == 11


async def test_a_bad_time_parameter_is_a_400_naming_it(with_data: RunningHub, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{with_data.url}/data/readings.csv?since=yesterday") as resp:
        assert resp.status == 400 and "since='yesterday'" in (await resp.json())["detail"]


async def test_senml_json_and_cbor_carry_the_same_records(with_data: RunningHub, http: aiohttp.ClientSession) -> None:
    records = await get_json(http, f"{with_data.url}/data/readings.senml.json?channel=pm-1/pm2_5")
    assert records[0]["bn"] == "urn:dev:ocn:pole-0042:" and records[0]["n"] == "pm-1/pm2_5" and records[0]["u"] == "ug/m3"
    assert records[0]["bt"] * 1000 == T0 + 60_000 and records[1]["t"] == 1.0
    async with http.get(f"{with_data.url}/data/readings.senml.cbor?channel=pm-1/pm2_5") as resp:
        assert resp.content_type == "application/senml+cbor"
        cbor_records = cbor2.loads(await resp.read())
    assert cbor_records[0][-2] == records[0]["bn"] and cbor_records[0][2] == records[0]["v"] and len(cbor_records) == len(records)


async def test_sensorthings_lists_the_gateway_as_a_thing_with_its_location(with_data: RunningHub, http: aiohttp.ClientSession) -> None:
    things = await get_json(http, f"{with_data.url}{STA}/Things?$expand=Locations,Datastreams")
    (thing,) = things["value"]
    assert thing["@iot.id"] == "pole-0042" and thing["@iot.selfLink"].endswith("/Things('pole-0042')")
    assert thing["Locations"][0]["location"] == {"type": "Point", "coordinates": [-79.3957, 43.6452]}
    names = sorted(d["name"] for d in thing["Datastreams"])
    assert names == ["pole-0042/door-1/open", "pole-0042/meter-1/power", "pole-0042/meter-1/voltage_l1", "pole-0042/pm-1/pm2_5"]


async def test_sensorthings_observations_filter_order_and_page(with_data: RunningHub, http: aiohttp.ClientSession) -> None:
    streams = await get_json(http, f"{with_data.url}{STA}/Datastreams?$orderby=@iot.id asc")
    pm = next(d for d in streams["value"] if d["name"].endswith("pm2_5"))
    assert pm["unitOfMeasurement"]["symbol"] == "ug/m3"
    url = f"{pm['Observations@iot.navigationLink']}?$filter=result ge 6.0 and phenomenonTime lt 2026-09-21T14:15:00Z&$orderby=result desc&$top=3"
    page = await get_json(http, url)
    assert [o["result"] for o in page["value"]] == [7.0, 6.7, 6.4]
    assert "@iot.nextLink" in page
    rest = await get_json(http, page["@iot.nextLink"])
    assert [o["result"] for o in rest["value"]] == [6.1]
    assert "@iot.nextLink" not in rest


async def test_sensorthings_expands_datastreams_and_their_observations(with_data: RunningHub, http: aiohttp.ClientSession) -> None:
    thing = await get_json(http, f"{with_data.url}{STA}/Things('pole-0042')?$expand=Datastreams/Observations($top=2;$orderby=phenomenonTime desc)")
    for stream in (s for s in thing["Datastreams"] if s["name"] != "pole-0042/door-1/open"):
        assert len(stream["Observations"]) == 2 and "Observations@iot.nextLink" in stream
        assert stream["Observations"][0]["phenomenonTime"] > stream["Observations"][1]["phenomenonTime"]


async def test_sensorthings_navigates_sensors_and_observed_properties(with_data: RunningHub, http: aiohttp.ClientSession) -> None:
    sensors = await get_json(http, f"{with_data.url}{STA}/Sensors")
    assert sorted(s["@iot.id"] for s in sensors["value"]) == ["pole-0042:door-1", "pole-0042:meter-1", "pole-0042:pm-1"]
    props = await get_json(http, f"{with_data.url}{STA}/ObservedProperties('pm2_5')/Datastreams")
    assert [d["name"] for d in props["value"]] == ["pole-0042/pm-1/pm2_5"]
    observation = (await get_json(http, f"{with_data.url}{STA}/Observations?$top=1"))["value"][0]
    stream = await get_json(http, f"{with_data.url}{STA}/Observations({observation['@iot.id']})/Datastream")
    assert stream["name"].startswith("pole-0042/") and stream["Observations@iot.navigationLink"].endswith(f"Datastreams({stream['@iot.id']})/Observations")


async def test_sensorthings_answers_an_unsupported_filter_with_400_saying_what_works(with_data: RunningHub, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{with_data.url}{STA}/Things?$filter=st_touches(Locations/location, geography'POINT(1 2)')") as resp:
        assert resp.status == 400 and "st_touches() is not supported" in (await resp.json())["message"]


async def test_sensorthings_answers_an_unknown_entity_with_404(with_data: RunningHub, http: aiohttp.ClientSession) -> None:
    async with http.get(f"{with_data.url}{STA}/Things('nope')") as resp:
        assert resp.status == 404

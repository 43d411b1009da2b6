"""Every stored value can be served: the read side, on SQLite and PostgreSQL.

Readings are put straight into the store (bypassing ingest and its bounds, as an older hub
stored them) with the extremes the spec allows — times over the whole signed 64-bit range,
integers beyond 2^64, NaN, infinities, subnormals, empty, long, unicode and control-character
text, booleans, every quality flag, boot_epoch and seq at 2^64 - 1 — and every export and
read path must answer 200 with a document its format can parse (docs/fleet.md "Hardening").
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import math
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import aiohttp
import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.protocol.types import Channel, Kind, Quality, Reading
from hub.app import RunningHub, run_hub
from hub.models import IncomingBatch
from hub.render import civil, clock, csv_text, iso_time

DEVICE = "pole-7"
UINT64_MAX = 2**64 - 1
T0 = 1_790_000_000_000
NUMBER = Channel("meter-1/power", unit='=HYPERLINK("http://evil","x")')
FLAG = Channel("door-1/open", kind=Kind.BOOL, unit="+1")
TEXT = Channel("plate-1/text", kind=Kind.STRING, unit="@SUM(1+1)")
# Every time a signed 64-bit millisecond count can hold that datetime cannot: year 0 and before, past 9999, the very ends.
TIMES = (-(2**63), -62_135_596_800_001, -1, 0, 253_402_300_800_000, 2**62, 2**63 - 1)
NUMBERS = (2**64 - 1, -(2**63), 10**40, -(10**40), math.nan, math.inf, -math.inf, 5e-324, -0.0, 1.7976931348623157e308,
           -1.7976931348623157e308, 0, -5)
TEXTS = ("", "x" * 10_000, "ünïcødé 😀 漢字", "\x00\x01\r\n\t", '=HYPERLINK("http://evil","x")', "-2+3", "@x", "\tz", "\rz", "'quoted'")
READ_PATHS = (
    "/data", "/data/readings.csv?limit=100000", "/data/readings.senml.json?limit=100000", "/data/readings.senml.cbor?limit=100000",
    "/data/readings.csv?since=-9223372036854775808&until=9223372036854775807",
    "/sta/v1.1/Observations?$top=10000", "/sta/v1.1/Observations?$orderby=phenomenonTime desc&$top=10000",
    "/sta/v1.1/Observations?$orderby=result desc,phenomenonTime&$top=10000",
    "/sta/v1.1/Observations?$orderby=result,@iot.id desc&$top=3", "/sta/v1.1/Observations?$orderby=phenomenonTime&$top=2",
    # several keys: the readings tied with a page's last time (here the very first or last there is) are fetched apart
    "/sta/v1.1/Observations?$orderby=phenomenonTime desc,result&$top=1", "/sta/v1.1/Observations?$orderby=phenomenonTime,result desc&$top=1",
    "/sta/v1.1/Observations?$orderby=result,phenomenonTime&$top=1", "/sta/v1.1/Observations?$orderby=result desc,phenomenonTime&$top=1",
    "/sta/v1.1/Observations?$filter=result gt 0&$count=true", "/sta/v1.1/Observations?$filter=phenomenonTime lt 1970-01-01T00:00:00Z",
    "/sta/v1.1/Observations?$filter=phenomenonTime ge 9999-12-31T00:00:00Z", "/sta/v1.1/Observations?$filter=substringof('z', result)",
    "/sta/v1.1/Observations?$filter=year(phenomenonTime) gt 0 or hour(phenomenonTime) eq 7 or time(phenomenonTime) eq '07:12:55.807'",
    "/sta/v1.1/Observations?$filter=round(result) eq 1 or floor(result) ge 0 or result mul 2 gt 0 or result div 0 eq 1 or length(result) gt 0",
    "/sta/v1.1/Observations?$filter=date(phenomenonTime) eq 1970-01-01&$orderby=result desc,@iot.id",
    "/sta/v1.1/Datastreams?$expand=Observations($top=1000)", "/sta/v1.1/Things?$expand=Datastreams($expand=Observations($top=1000))",
    "/sta/v1.1/Things", "/sta/v1.1/Sensors", "/sta/v1.1/ObservedProperties", "/sta/v1.1/Locations",
    f"/fleet/devices/{DEVICE}", "/fleet", "/admin/api/devices", "/transparency", "/transparency.json", "/",
)


def strict_json(text: str) -> Any:
    """JSON as RFC 8259 has it: NaN and Infinity literals are no part of it."""
    def refuse(name: str) -> object:
        raise AssertionError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def readings() -> list[Reading]:
    out = [Reading(NUMBER.id, ts, float(i), NUMBER.unit, quality=Quality(i % 3)) for i, ts in enumerate(TIMES)]
    out += [Reading(NUMBER.id, T0 + i, value, NUMBER.unit, quality=(None, *Quality)[i % 4]) for i, value in enumerate(NUMBERS)]
    out += [Reading(FLAG.id, T0 + i, value, FLAG.unit, quality=Quality(i + 1)) for i, value in enumerate((True, False))]
    out.append(Reading(NUMBER.id, T0 + 99, 1.0, NUMBER.unit, quality=cast(Quality, 7)))  # a flag the spec does not define, as an older hub kept it
    out += [Reading(TEXT.id, ts, text, TEXT.unit) for ts, text in zip((*TIMES, *TIMES), TEXTS, strict=False)]
    return out


@pytest.fixture
async def hub(db_url: str, tmp_path: Path) -> AsyncIterator[RunningHub]:
    """A hub on the engine under test holding every extreme reading, stored without ingest's bounds."""
    async with run_hub(db=db_url, state_dir=tmp_path / "hub", admin_token="admin-secret") as running:
        store = running.store
        public = bytes(range(32))
        await store.create_token(b"t" * 32, uses=1, expires_ms=UINT64_MAX >> 1, approve=True, fleet="default", note="", now_ms=T0)
        await store.enrol(b"t" * 32, device_id=DEVICE, public_key=public, key_id=public[:8], software_version="1", now_ms=T0)
        batch = IncomingBatch(device_id=DEVICE, key_id=public[:8], boot_epoch=UINT64_MAX, seq=UINT64_MAX, created_ms=UINT64_MAX,
                              received_ms=T0, policy_digest=b"\x01" * 32, codec="zstd", counters={"readings_dropped": UINT64_MAX},
                              channels=(NUMBER, FLAG, TEXT), readings=readings())
        assert await store.store_batch(batch) == "stored"
        yield running


async def get(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer admin-secret"}) as session, session.get(url) as resp:
        return resp.status, await resp.read()


# --- the formatting rules (pure) ------------------------------------------------------


def test_civil_time_agrees_with_datetime_wherever_datetime_reaches() -> None:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    for ts in (-62_135_596_800_000, -1, 0, 1, 951_782_400_000, 951_868_799_999, 4_107_542_400_000, 253_402_300_799_999,
               *range(-10**12, 10**13, 987_654_321_013)):
        moment = epoch + timedelta(milliseconds=ts)
        assert civil(ts) == (moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second, moment.microsecond // 1000)
        assert iso_time(ts) == moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_times_beyond_datetime_are_iso_8601_expanded_years() -> None:
    assert iso_time(2**63 - 1) == "+292278994-08-17T07:12:55.807Z"
    assert iso_time(-(2**63)) == "-292275055-05-16T16:47:04.192Z"
    assert iso_time(-62_135_596_800_001) == "0000-12-31T23:59:59.999Z"
    assert iso_time(253_402_300_800_000) == "+010000-01-01T00:00:00.000Z"
    assert clock(2**63 - 1) == "+292278994-08-17 07:12:55 UTC"


@pytest.mark.parametrize("text", ["=1+2", "+1", "-1", "@SUM(A1)", "\tx", "\rx"])
def test_a_text_cell_a_spreadsheet_would_run_starts_with_a_quote(text: str) -> None:
    assert csv_text(text) == "'" + text


@pytest.mark.parametrize("text", ["", "pole-7", "µg/m³", "a=b", "'quoted'", " =x"])
def test_other_text_cells_are_left_as_they_are(text: str) -> None:
    assert csv_text(text) == text


# --- every read path over HTTP, both engines --------------------------------------------


async def test_every_read_path_serves_every_stored_value(hub: RunningHub) -> None:
    for path in READ_PATHS:
        status, body = await get(hub.url + path)
        assert status == 200, (path, body[:300])
        if b"{" in body[:1]:
            strict_json(body.decode())


async def test_the_csv_export_writes_every_time_and_neutralises_device_text_but_never_a_number(hub: RunningHub) -> None:
    status, body = await get(f"{hub.url}/data/readings.csv?limit=100000")
    assert status == 200
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert len(rows) == len(readings())
    numbers = [r for r in rows if r["channel"] == NUMBER.id]
    assert {r["unit"] for r in numbers} == {"'" + NUMBER.unit}
    assert {r["time"] for r in numbers} >= {iso_time(ts) for ts in TIMES} and "+292278994-08-17T07:12:55.807Z" in {r["time"] for r in numbers}
    assert {int(r["ts_ms"]) for r in numbers} >= set(TIMES)
    assert {r["value"] for r in numbers} >= {"-5", "-inf", "inf", "nan", str(-(2**63)), str(-(10**40)), "5e-324", "-0.0"}
    texts = {r["value"] for r in rows if r["channel"] == TEXT.id}
    assert {"'" + '=HYPERLINK("http://evil","x")', "'-2+3", "'@x", "'\tz", "'\rz", "'quoted'", "", "x" * 10_000} <= texts
    assert {r["unit"] for r in rows if r["channel"] == FLAG.id} == {"'+1"} and {r["value"] for r in rows if r["channel"] == FLAG.id} == {"true", "false"}
    assert '"\'=HYPERLINK(""http://evil"",""x"")"' in body.decode()  # quoted, as OWASP asks, with its quotes doubled


async def test_senml_json_spells_non_finite_numbers_as_strings_and_cbor_keeps_them(hub: RunningHub) -> None:
    _, body = await get(f"{hub.url}/data/readings.senml.json?limit=100000")
    records = strict_json(body.decode())
    assert isinstance(records, list)
    assert {"NaN", "Infinity", "-Infinity"} <= {r.get("vs") for r in records}
    assert {2**64 - 1, 10**40, 5e-324} <= {r.get("v") for r in records}
    _, body = await get(f"{hub.url}/data/readings.senml.cbor?limit=100000")
    values = [r.get(2) for r in cbor2.loads(body)]
    assert any(isinstance(v, float) and math.isnan(v) for v in values) and math.inf in values and -math.inf in values


async def test_sensorthings_writes_far_times_as_expanded_years_and_non_finite_results_as_strings(hub: RunningHub) -> None:
    _, body = await get(f"{hub.url}/sta/v1.1/Observations?$top=10000&$orderby=phenomenonTime")
    observations = strict_json(body.decode())["value"]
    times = [o["phenomenonTime"] for o in observations]
    assert times[0] == "-292275055-05-16T16:47:04.192Z" and times[-1] == "+292278994-08-17T07:12:55.807Z"
    assert {"NaN", "Infinity", "-Infinity"} <= {o["result"] for o in observations if isinstance(o["result"], str)}
    assert {o.get("resultQuality") for o in observations} >= {None}


async def test_the_device_page_charts_what_a_line_can_show_and_names_the_counters_exactly(hub: RunningHub) -> None:
    status, body = await get(f"{hub.url}/fleet/devices/{DEVICE}")
    page = body.decode()
    assert status == 200 and f"{UINT64_MAX} / {UINT64_MAX}" in page
    assert "+292278994-08-17 07:12 UTC" in page  # the chart's last time label


# --- any values at all (a property, SQLite: the engines' agreement is shown above) ----------

TIME = st.integers(-(2**63), 2**63 - 1)
QUALITY = st.sampled_from([None, 0, 1, 2])
ANY_READING = st.one_of(
    st.builds(Reading, st.just(NUMBER.id), TIME, st.one_of(st.integers(-(10**70), 10**70), st.floats()), st.just(NUMBER.unit), QUALITY),
    st.builds(Reading, st.just(FLAG.id), TIME, st.booleans(), st.just(FLAG.unit), QUALITY),
    st.builds(Reading, st.just(TEXT.id), TIME, st.text(max_size=300), st.just(TEXT.unit), QUALITY),
)


async def serve_each_read_path(stored: list[Reading], state: Path) -> None:
    async with run_hub(state_dir=state, admin_token="admin-secret") as running:
        public = bytes(range(32))
        await running.store.create_token(b"t" * 32, uses=1, expires_ms=2**62, approve=True, fleet="default", note="", now_ms=T0)
        await running.store.enrol(b"t" * 32, device_id=DEVICE, public_key=public, key_id=public[:8], software_version="1", now_ms=T0)
        await running.store.store_batch(IncomingBatch(
            device_id=DEVICE, key_id=public[:8], boot_epoch=1, seq=1, created_ms=T0, received_ms=T0, policy_digest=b"\x01" * 32,
            codec="zstd", counters={}, channels=(NUMBER, FLAG, TEXT), readings=stored))
        for path in READ_PATHS:
            status, body = await get(running.url + path)
            assert status == 200, (path, body[:300])
            if body[:1] == b"{":
                strict_json(body.decode())


@settings(max_examples=15, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(stored=st.lists(ANY_READING, min_size=1, max_size=12))
def test_any_readings_a_store_can_hold_are_served_by_every_read_path(stored: list[Reading]) -> None:
    with tempfile.TemporaryDirectory() as state:
        asyncio.run(serve_each_read_path(stored, Path(state)))

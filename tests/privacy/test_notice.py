"""The transparency notice (DTPR JSON and HTML) and the local API that serves it on loopback."""

from __future__ import annotations

import html.parser
import json
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web

from edge.localapi import create_app
from edge.localapi.app import Handler
from edge.privacy import PrivacyStage, build_notice, parse_policy, render_notice_html
from edge.protocol.types import Channel

from .support import GPS_CHANNELS, PED_CHANNELS

POLICY = """
[policy]
name = "Street policy"
version = "7"
organisation = "City of Testing"
contact = "privacy@testing.example"
purpose = "Testing the privacy stage"
retention = "Two years on the hub."

[privacy_budget]
epsilon = 4.0

[channels."ped-1/mac"]
rule = "count_distinct"
window = "15m"
k = 5
epsilon = 0.5
purpose = "How busy the street is"

[channels."ped-1/*"]
rule = "drop"

[channels."gps-1/*"]
rule = "generalize_location"
grid = "250m"

[channels."pm-1/pm2_5"]
rule = "keep"
"""
PM = Channel("pm-1/pm2_5", unit="ug/m3", resolution=0.1, description="PM2.5 mass concentration")
CHANNELS = [*PED_CHANNELS, *GPS_CHANNELS, PM]
CONFIG = SimpleNamespace(
    gateway=SimpleNamespace(id="pole-0042", site="King St W & Spadina Ave", latitude=43.6452, longitude=-79.3957),
    devices=[
        SimpleNamespace(name="ped-1", driver="pedestrian-counter"),
        SimpleNamespace(name="gps-1", driver="nmea-gps"),
        SimpleNamespace(name="pm-1", driver="sds011"),
    ],
)


@pytest.fixture
def notice() -> dict:
    return build_notice(parse_policy(POLICY), CONFIG, channels=CHANNELS, generated_ms=0)


def test_the_notice_names_place_accountable_organisation_purpose_and_retention(notice) -> None:
    assert notice["place"] == {"gateway_id": "pole-0042", "site": "King St W & Spadina Ave", "latitude": 43.6452, "longitude": -79.3957}
    assert notice["accountable"] == {"organisation": "City of Testing", "contact": "privacy@testing.example"}
    assert notice["purpose"] == "Testing the privacy stage"
    assert notice["retention"] == "Two years on the hub."
    assert notice["storage"].startswith("Only what this policy releases is stored")
    assert notice["access"] == "Not stated in the policy."
    assert [t["type"] for t in notice["technology"]][0].startswith("Wi-Fi / Bluetooth device counter")


def test_the_notice_says_per_channel_what_leaves_and_how_it_is_processed(notice) -> None:
    data = {d["channel"]: d for d in notice["data"]}
    assert set(data) == {"ped-1/mac", "gps-1/latitude", "gps-1/longitude", "pm-1/pm2_5"}
    assert data["ped-1/mac"]["process"] == ["de-identified", "aggregated", "k-anonymity", "differential privacy"]
    assert data["ped-1/mac"]["purpose"] == "How busy the street is"
    assert "a count below 5 is never published" in data["ped-1/mac"]["leaves_as"]
    assert data["gps-1/latitude"]["process"] == ["de-identified", "generalized"]
    assert notice["withheld"] == ["ped-1/rssi", "ped-1/radio"]
    assert notice["process"] == sorted({"aggregated", "de-identified", "differential privacy", "generalized", "identifiable", "k-anonymity"})


def test_the_notice_carries_the_policy_digest_the_batches_carry(notice) -> None:
    policy = parse_policy(POLICY)
    assert notice["policy"]["digest"] == policy.digest.hex()
    assert json.loads(json.dumps(notice)) == notice  # plain JSON all the way down


class _Page(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.lang = ""

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append(tag)
        if tag == "html":
            self.lang = dict(attrs).get("lang", "")

    def handle_data(self, data) -> None:
        self.text.append(data)


def test_the_html_page_is_plain_language_without_scripts_or_outside_resources(notice) -> None:
    page = _Page()
    page.feed(render_notice_html(notice))
    text = " ".join(" ".join(page.text).split())
    assert page.lang == "en" and "script" not in page.tags and "img" not in page.tags and "link" not in page.tags
    assert "Run by: City of Testing" in text
    assert "Only the number of different values seen in each 15 minutes leaves" in text
    assert "Measured but never sent or stored : ped-1/rssi, ped-1/radio" in text.replace("stored:", "stored :")


def test_the_html_escapes_what_the_policy_says(notice) -> None:
    notice = dict(notice, purpose="<script>alert(1)</script>")
    assert "<script>alert" not in render_notice_html(notice)


def test_a_stage_built_from_the_same_policy_releases_what_the_notice_lists(notice) -> None:
    stage = PrivacyStage(parse_policy(POLICY), CHANNELS)
    released_sources = {c.id.split(".")[0] for c in stage.output_channels() if "privacy." not in c.id}
    assert released_sources == {d["channel"] for d in notice["data"]}


async def serve(app: Handler) -> tuple[web.ServerRunner, str]:
    runner = web.ServerRunner(web.Server(app))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_the_local_api_serves_the_notice_page_json_and_a_fresh_status(notice) -> None:
    calls = []

    def status() -> dict:
        calls.append(1)
        return {"device_id": "pole-0042", "policy_digest": b"\x01\x02", "privacy": {"in": len(calls)}}

    runner, base = await serve(create_app(notice_html=render_notice_html(notice), notice_json=notice, status=status))
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/", "/notice"):
                async with http.get(base + path) as r:
                    assert r.status == 200 and r.content_type == "text/html"
                    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
                    assert "King St W &amp; Spadina Ave" in await r.text()
            async with http.get(base + "/notice.json") as r:
                assert r.content_type == "application/json" and await r.json() == notice
            async with http.get(base + "/status") as r:
                assert r.headers["Cache-Control"] == "no-store"
                assert await r.json() == {"device_id": "pole-0042", "policy_digest": "0102", "privacy": {"in": 1}}
            async with http.get(base + "/status") as r:
                assert (await r.json())["privacy"] == {"in": 2}
            async with http.post(base + "/status") as r:
                assert r.status == 405
            async with http.get(base + "/admin") as r:
                assert r.status == 404
    finally:
        await runner.cleanup()


async def test_the_local_api_shows_a_reloaded_notice_when_given_callables(notice) -> None:
    current = {"n": dict(notice, purpose="first")}
    app = create_app(
        notice_html=lambda language: render_notice_html(current["n"], language), notice_json=lambda: current["n"], status=dict
    )
    runner, base = await serve(app)
    try:
        async with aiohttp.ClientSession() as http:
            current["n"] = dict(notice, purpose="second")
            async with http.get(base + "/notice.json") as r:
                assert (await r.json())["purpose"] == "second"
    finally:
        await runner.cleanup()

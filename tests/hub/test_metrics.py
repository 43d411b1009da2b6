"""The hub's /metrics, /healthz and /readyz: Prometheus text a scraper parses, with the series docs/fleet.md lists."""

from __future__ import annotations

from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from hub.app import run_hub
from tests.hub.gateways import SimGateway, enrol, post_cose


async def scrape(http: aiohttp.ClientSession, url: str) -> dict[str, list[Sample]]:
    async with http.get(f"{url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(samples: list[Sample], name: str, **labels: str) -> float:
    (match,) = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return match


async def test_metrics_count_ingest_by_result_readings_gateways_by_health_and_latency_by_route(tmp_path: Path) -> None:
    async with run_hub(state_dir=tmp_path / "hub", admin_token="x") as hub, aiohttp.ClientSession() as http:
        gw = SimGateway("pole-1")
        await enrol(http, hub.url, gw, await hub.create_token())
        for seq in (1, 2):
            assert (await post_cose(http, f"{hub.url}/oxp/v1/batches", gw.batch(seq, n=30)))[0] == 200
        await post_cose(http, f"{hub.url}/oxp/v1/batches", gw.batch(2, n=30))  # a duplicate
        await post_cose(http, f"{hub.url}/oxp/v1/batches", b"\x00not cose")
        await post_cose(http, f"{hub.url}/oxp/v1/status", gw.status(errors=["weather-1 failing: unit 11 on rs485-1 (weather-1) has never answered: "
                                                                            "check the unit id with ocn-edge scan"]))
        series = await scrape(http, hub.url)

    ingest = series["ocn_hub_ingest"]
    assert value(ingest, "ocn_hub_ingest_total", kind="batches", result="stored") == 2
    assert value(ingest, "ocn_hub_ingest_total", kind="batches", result="duplicate") == 1
    assert value(ingest, "ocn_hub_ingest_total", kind="batches", result="malformed") == 1
    assert value(ingest, "ocn_hub_ingest_total", kind="status", result="taken") == 1
    assert value(series["ocn_hub_batches_stored"], "ocn_hub_batches_stored_total") == 2
    assert value(series["ocn_hub_readings_stored"], "ocn_hub_readings_stored_total") == 60
    assert value(series["ocn_hub_gateways"], "ocn_hub_gateways", health="degraded") == 1  # a failing sensor makes the gateway degraded
    assert value(series["ocn_hub_gateways"], "ocn_hub_gateways", health="ok") == 0
    assert value(series["ocn_hub_sensors"], "ocn_hub_sensors", health="failing") == 1
    latency = series["ocn_hub_request_duration_seconds"]
    assert value(latency, "ocn_hub_request_duration_seconds_count", route="/oxp/v1/batches", method="POST") == 4
    assert "ocn_hub_ingest_jobs" in series and "ocn_hub_ingest_capacity" in series and "ocn_hub_database_up" in series
    assert "process_resident_memory_bytes" in series and "process_cpu_seconds" in series


async def test_two_hubs_in_one_process_keep_their_own_counts(tmp_path: Path) -> None:
    async with run_hub(state_dir=tmp_path / "a", admin_token="x") as a, run_hub(state_dir=tmp_path / "b", admin_token="x") as b, \
            aiohttp.ClientSession() as http:
        gw = SimGateway("pole-1")
        await enrol(http, a.url, gw, await a.create_token())
        await post_cose(http, f"{a.url}/oxp/v1/batches", gw.batch(1))
        assert value((await scrape(http, a.url))["ocn_hub_batches_stored"], "ocn_hub_batches_stored_total") == 1
        assert value((await scrape(http, b.url))["ocn_hub_batches_stored"], "ocn_hub_batches_stored_total") == 0


async def test_healthz_answers_while_the_process_runs_and_readyz_while_the_store_answers(tmp_path: Path) -> None:
    async with run_hub(state_dir=tmp_path / "hub", admin_token="x") as hub, aiohttp.ClientSession() as http:
        async with http.get(f"{hub.url}/healthz") as resp:
            assert resp.status == 200 and (await resp.json())["ok"] is True
        async with http.get(f"{hub.url}/readyz") as resp:
            assert resp.status == 200 and (await resp.json())["ok"] is True
        await hub.store.close()
        async with http.get(f"{hub.url}/readyz") as resp:
            assert resp.status == 503 and (await resp.json())["ok"] is False
        async with http.get(f"{hub.url}/healthz") as resp:
            assert resp.status == 200

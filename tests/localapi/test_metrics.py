"""The gateway's /metrics: Prometheus text a scraper parses, with the series docs/field-guide.md lists."""

from __future__ import annotations

import asyncio

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.localapi.conftest import LocalGateway

SERIES = {
    "ocn_edge_info", "ocn_edge_uptime_seconds", "ocn_edge_boot_epoch", "ocn_edge_queue_readings",
    "ocn_edge_readings_read", "ocn_edge_readings_released", "ocn_edge_readings_dropped", "ocn_edge_readings_lost",
    "ocn_edge_device_restarts", "ocn_edge_device_health", "ocn_edge_errors",
    "ocn_edge_bus_open", "ocn_edge_bus_utilisation", "ocn_edge_bus_bytes", "ocn_edge_bus_transactions", "ocn_edge_bus_timeouts",
    "ocn_edge_bus_crc_errors", "ocn_edge_bus_exceptions",
    "ocn_edge_spool_batches", "ocn_edge_spool_bytes", "ocn_edge_spool_oldest_age_seconds",
    "process_resident_memory_bytes", "process_cpu_seconds",
}


async def test_metrics_carry_readings_per_device_health_buses_spool_and_the_process(local_gateway: LocalGateway) -> None:
    await asyncio.sleep(3)  # a few polls of every device
    async with aiohttp.ClientSession() as http, http.get(f"{local_gateway.url}/metrics") as resp:
        assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
    assert SERIES <= families.keys(), sorted(SERIES - families.keys())
    read = {s.labels["device"]: s.value for s in families["ocn_edge_readings_read"].samples if s.name.endswith("_total")}
    assert set(read) == {"pm-1", "pm-2", "gps-1", "ped-1", "meter-1", "weather-1", "level-1", "meter-2"}
    assert read["meter-1"] > 0 and read["weather-1"] > 0
    released = {s.labels["device"]: s.value for s in families["ocn_edge_readings_released"].samples if s.name.endswith("_total")}
    assert released["weather-1"] > 0  # the demo policy keeps the weather station's readings
    health = {(s.labels["device"], s.labels["state"]): s.value for s in families["ocn_edge_device_health"].samples}
    assert sum(v for (device, _), v in health.items() if device == "meter-1") == 1  # one state at a time
    transactions = {s.labels["bus"]: s.value for s in families["ocn_edge_bus_transactions"].samples if s.name.endswith("_total")}
    assert transactions["rs485-1"] > 0
    (rss,) = families["process_resident_memory_bytes"].samples
    assert rss.value > 10_000_000

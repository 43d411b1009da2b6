"""The gateway's /metrics: Prometheus text a scraper parses, with the series docs/field-guide.md lists."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from edge.metrics import GatewayMetrics
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


def test_every_series_the_grafana_dashboard_draws_is_one_the_gateway_or_the_hub_exports() -> None:
    from hub.metrics import HubMetrics

    status = {
        "device_id": "pole-7", "software_version": "0.1.0", "uptime_s": 1.0, "boot_epoch": 1, "queues": {"readings": 0},
        "devices": {"pm-1": {"driver": "sds011", "readings": 1, "health": "ok"}},
        "buses": {"rs485-1": {"type": "modbus-rtu", "open": True, "requests": 1, "timeouts": 0, "crc_errors": 0, "exceptions": 0,
                              "bytes_in": 1, "bytes_out": 1, "utilisation": 0.1}},
        "spool": {"batches": 0, "bytes": 0, "oldest_age_s": None},
        "uplink": {"reachable": True, "retries": 0, "bytes_sent": 0, "overhead_bytes": 0, "last_latency_s": 0.1},
    }
    exported = {f.name for f in text_string_to_metric_families(GatewayMetrics(lambda: status).render().decode())}
    exported |= {f.name for f in text_string_to_metric_families(HubMetrics().render().decode())}
    dashboard = json.loads((Path(__file__).resolve().parents[2] / "docs" / "grafana-dashboard.json").read_text())
    drawn = {re.sub(r"_(total|bucket|count|sum)$", "", name)
             for panel in dashboard["panels"] for target in panel.get("targets", ()) for name in re.findall(r"\b(?:ocn|process)_\w+", target["expr"])}
    assert drawn and drawn <= exported, sorted(drawn - exported)

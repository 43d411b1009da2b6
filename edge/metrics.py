"""The gateway's Prometheus metrics, read from its status snapshot at scrape time.

The pipeline already counts what a technician and city IT need (``Gateway.status()``): a
collector turns one snapshot into metric families when ``/metrics`` is scraped, so no stage
carries a second set of counters and nothing is counted while nobody looks.  Each gateway has
its own registry (never prometheus_client's global one), so several gateways in one process
(tests, the bench) do not collide.  Series are documented in docs/field-guide.md, "Metrics".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from edge.statusreport import readings_lost

__all__ = ["CONTENT_TYPE", "HEALTH_STATES", "GatewayMetrics", "readings_lost"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HEALTH_STATES = ("ok", "degraded", "failing")

# Bus statistics by the name the bus owners give them, as (metric, help); absent counters are left out.
_BUS_COUNTERS = (
    ("requests", "ocn_edge_bus_transactions", "Modbus transactions sent on the bus"),
    ("timeouts", "ocn_edge_bus_timeouts", "Modbus transactions that got no reply in time"),
    ("crc_errors", "ocn_edge_bus_crc_errors", "Replies with a bad checksum"),
    ("exceptions", "ocn_edge_bus_exceptions", "Modbus exception replies"),
    ("losses", "ocn_edge_bus_losses", "Times a serial port was lost and reopened"),
    ("dropped_bytes", "ocn_edge_bus_dropped_bytes", "Bytes a serial bus dropped as unframed"),
)


class GatewayMetrics:
    """The metrics of one gateway: ``render()`` gives the text exposition of a fresh snapshot."""

    def __init__(self, status: Callable[[], Mapping[str, Any]]) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_StatusCollector(status))
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, process_cpu_seconds_total, ...

    content_type = CONTENT_TYPE

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _StatusCollector:
    def __init__(self, status: Callable[[], Mapping[str, Any]]) -> None:
        self._status = status

    def collect(self) -> Iterator[Metric]:
        status = self._status()
        yield from _gateway(status)
        yield from _devices(status)
        yield from _buses(status.get("buses") or {})
        yield from _spool(status.get("spool"))
        yield from _uplink(status.get("uplink"))


def _gateway(status: Mapping[str, Any]) -> Iterator[Metric]:
    info = GaugeMetricFamily("ocn_edge_info", "The gateway's identity and software version", labels=["gateway", "version"])
    info.add_metric([str(status.get("device_id", "")), str(status.get("software_version", ""))], 1)
    yield info
    yield GaugeMetricFamily("ocn_edge_uptime_seconds", "Seconds since the pipeline started", value=float(status.get("uptime_s", 0)))
    if status.get("boot_epoch") is not None:
        yield GaugeMetricFamily("ocn_edge_boot_epoch", "The spool's boot epoch (one more after each start)", value=int(status["boot_epoch"]))
    queued = GaugeMetricFamily("ocn_edge_queue_readings", "Readings waiting in a queue inside the gateway", labels=["queue"])
    for name, depth in (status.get("queues") or {}).items():
        queued.add_metric([name], depth)
    yield queued
    dropped = CounterMetricFamily("ocn_edge_readings_dropped", "Readings the privacy policy did not release, by reason", labels=["reason"])
    for reason, count in ((status.get("privacy") or {}).get("dropped") or {}).items():
        dropped.add_metric([reason], count)
    yield dropped
    yield CounterMetricFamily("ocn_edge_readings_lost", "Readings that will never reach the hub (spool quota, batcher or privacy stage refused them)",
                              value=readings_lost(status))


def _devices(status: Mapping[str, Any]) -> Iterator[Metric]:
    read = CounterMetricFamily("ocn_edge_readings_read", "Readings the device's driver produced", labels=["device"])
    released = CounterMetricFamily("ocn_edge_readings_released", "Readings the privacy stage released, by the device they came from", labels=["device"])
    restarts = CounterMetricFamily("ocn_edge_device_restarts", "Times the device's driver was restarted after a failure", labels=["device"])
    health = GaugeMetricFamily("ocn_edge_device_health", "1 for the device's health state now, 0 for the others", labels=["device", "state"])
    by_device = status.get("released_by_device") or {}
    for name, device in (status.get("devices") or {}).items():
        read.add_metric([name], device.get("readings", 0))
        released.add_metric([name], by_device.get(name, 0))
        restarts.add_metric([name], device.get("restarts", 0))
        word = device.get("health") or ("failing" if device.get("failing") else "ok")
        for state in HEALTH_STATES:
            health.add_metric([name, state], 1 if word == state else 0)
    yield from (read, released, restarts, health)
    errors = CounterMetricFamily("ocn_edge_errors", "Errors by kind, summed over buses and devices", labels=["kind"])
    buses = (status.get("buses") or {}).values()
    for kind, key in (("bus_timeout", "timeouts"), ("crc_error", "crc_errors"), ("modbus_exception", "exceptions"), ("serial_loss", "losses")):
        errors.add_metric([kind], sum(int(b.get(key, 0)) for b in buses))
    errors.add_metric(["driver_restart"], sum(int(d.get("restarts", 0)) for d in (status.get("devices") or {}).values()))
    errors.add_metric(["privacy_failure"], int(status.get("readings_failed", 0)))
    errors.add_metric(["uplink_failure"], int((status.get("uplink") or {}).get("retries", 0)))
    yield errors


def _buses(buses: Mapping[str, Mapping[str, Any]]) -> Iterator[Metric]:
    opened = GaugeMetricFamily("ocn_edge_bus_open", "1 while the bus owner holds its port or connection open", labels=["bus", "type"])
    utilisation = GaugeMetricFamily("ocn_edge_bus_utilisation", "Share of time the wire carried our bytes", labels=["bus"])
    traffic = CounterMetricFamily("ocn_edge_bus_bytes", "Bytes on the bus, by direction", labels=["bus", "direction"])
    counters = {key: CounterMetricFamily(name, text, labels=["bus"]) for key, name, text in _BUS_COUNTERS}
    for name, bus in buses.items():
        opened.add_metric([name, str(bus.get("type", ""))], 1 if bus.get("open") else 0)
        if "wire_utilisation" in bus or "utilisation" in bus:
            utilisation.add_metric([name], float(bus.get("wire_utilisation", bus.get("utilisation", 0.0))))
        for direction in ("in", "out"):
            if f"bytes_{direction}" in bus:
                traffic.add_metric([name, direction], bus[f"bytes_{direction}"])
        for key, family in counters.items():
            if key in bus:
                family.add_metric([name], bus[key])
    yield from (opened, utilisation, traffic, *counters.values())


def _spool(spool: Mapping[str, Any] | None) -> Iterator[Metric]:
    if not spool:
        return
    yield GaugeMetricFamily("ocn_edge_spool_batches", "Sealed batches waiting in the spool for the hub's ack", value=spool.get("batches", 0))
    yield GaugeMetricFamily("ocn_edge_spool_bytes", "Bytes of those batches", value=spool.get("bytes", 0))
    yield GaugeMetricFamily("ocn_edge_spool_oldest_age_seconds", "Age of the oldest batch waiting (0 when none waits)", value=spool.get("oldest_age_s") or 0)
    yield CounterMetricFamily("ocn_edge_spool_batches_dropped", "Batches the spool's quota dropped", value=spool.get("batches_dropped", 0))
    yield CounterMetricFamily("ocn_edge_spool_batches_quarantined", "Batches the hub refused for good, kept apart", value=spool.get("batches_quarantined", 0))


def _uplink(uplink: Mapping[str, Any] | None) -> Iterator[Metric]:
    if not uplink:
        return
    yield GaugeMetricFamily("ocn_edge_uplink_reachable", "1 while the hub acks, 0 from a failed delivery until the next ack",
                            value=1 if uplink.get("reachable") else 0)
    yield CounterMetricFamily("ocn_edge_uplink_batches_sent", "Batch sends, retries included", value=uplink.get("batches_sent", 0))
    yield CounterMetricFamily("ocn_edge_uplink_batches_acked", "Batches the hub acked", value=uplink.get("batches_acked", 0))
    yield CounterMetricFamily("ocn_edge_uplink_readings_acked", "Readings in batches the hub acked", value=uplink.get("readings_acked", 0))
    yield CounterMetricFamily("ocn_edge_uplink_failures", "Deliveries that failed and will be retried", value=uplink.get("retries", 0))
    sent = CounterMetricFamily("ocn_edge_uplink_bytes", "Bytes carried to and from the hub: batches, and all else (reports, notices, framing, answers)",
                               labels=["kind"])
    sent.add_metric(["batch"], uplink.get("bytes_sent", 0))
    sent.add_metric(["overhead"], uplink.get("overhead_bytes", 0))
    yield sent
    if uplink.get("last_ack_ms"):
        yield GaugeMetricFamily("ocn_edge_uplink_last_ack_timestamp_seconds", "When the hub last acked a batch", value=uplink["last_ack_ms"] / 1000)
    if "last_latency_s" in uplink:
        yield GaugeMetricFamily("ocn_edge_uplink_latency_seconds", "From sending a batch to the hub's answer, last delivery", value=uplink["last_latency_s"])

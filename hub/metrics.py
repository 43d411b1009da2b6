"""The hub's Prometheus metrics (``/metrics``) and its probes (``/healthz``, ``/readyz``).

Counters move where things happen: ingest outcomes in hub/oxp.py (`HubMetrics.ingested`),
request latency in a middleware; gauges that only the store knows (gateways by health) are
read when ``/metrics`` is scraped.  Each hub application has its own registry, never
prometheus_client's global one, so several hubs in one process (tests, the bench) do not
collide.  Series are listed in docs/fleet.md, "Metrics".
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

from hub.dashboard import device_health, sensor_health
from hub.ingest import Acked, Refused
from hub.retention import last_run
from hub.state import HUB, Hub

__all__ = ["METRICS", "HubMetrics", "routes", "timed"]

log = logging.getLogger("ocn.hub")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
HEALTH_WORDS = ("ok", "degraded", "stale", "silent", "pending", "revoked")



class HubMetrics:
    """The series of one hub application, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.ingest = Counter("ocn_hub_ingest", "Signed messages from gateways by kind (batch, status, notice), result and reason",
                              ["kind", "result", "reason"], registry=r)
        self.batches = Counter("ocn_hub_batches_stored", "Batches stored (duplicates not counted)", registry=r)
        self.readings = Counter("ocn_hub_readings_stored", "Readings stored", registry=r)
        self.quarantined = Counter("ocn_hub_readings_quarantined", "Readings kept apart on arrival, by reason", ["reason"], registry=r)
        self.requests = Histogram("ocn_hub_request_duration_seconds", "Time to answer a request, by route and method", ["route", "method"],
                                  registry=r, buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0))
        self.gateways = Gauge("ocn_hub_gateways", "Gateways by health (as the fleet page shows them)", ["health"], registry=r)
        self.sensors = Gauge("ocn_hub_sensors", "Sensors the gateways' last status reports call failing or degraded", ["health"], registry=r)
        self.ingest_jobs = Gauge("ocn_hub_ingest_jobs", "Ingest jobs running or waiting for a worker", registry=r)
        self.ingest_capacity = Gauge("ocn_hub_ingest_capacity", "Ingest jobs the hub takes at once (workers plus queue); beyond it answers 503", registry=r)
        self.database_up = Gauge("ocn_hub_database_up", "1 while the database answers, 0 during an outage", registry=r)
        self.retention_time = Gauge("ocn_hub_retention_last_run_timestamp_seconds",
                                    "When the last retention run (by any hub process or command) finished, Unix time; 0 if none has", registry=r)
        self.retention_deleted = Gauge("ocn_hub_retention_last_run_deleted", "Readings the last retention run deleted, by where they were kept",
                                       ["store"], registry=r)
        self.exported = Counter("ocn_hub_export_messages", "Messages the city's broker acknowledged (northbound export), by format",
                                ["format"], registry=r)
        self.export_up = Gauge("ocn_hub_export_broker_up", "1 while connected to the city's broker for the export, 0 during an outage", registry=r)
        self.malformed = Counter("ocn_hub_http_malformed", "Requests answered 400 before any route because they were not "
                                 "well-formed HTTP, by what was wrong", ["reason"], registry=r)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, ...

    def ingested(self, kind: str, outcome: object) -> None:
        """Count one signed message's outcome: what the ingest core made of it, or the answer it got before reaching it."""
        if isinstance(outcome, Acked):
            self.ingest.labels(kind, outcome.status, "").inc()
            if outcome.status == "stored":
                self.batches.inc()
                self.readings.inc(outcome.readings)
                for reason, count in outcome.quarantined.items():
                    self.quarantined.labels(reason).inc(count)
        elif isinstance(outcome, Refused):
            self.ingest.labels(kind, str(outcome.answer), str(outcome.reason or "")).inc()
        elif isinstance(outcome, web.Response):
            self.ingest.labels(kind, f"http_{outcome.status}", "").inc()
        else:
            self.ingest.labels(kind, "taken", "").inc()

    async def refresh(self, hub: Hub) -> None:
        """The gauges only the store and the workers know, read now."""
        self.ingest_jobs.set(hub.workers.admitted)
        self.ingest_capacity.set(hub.workers.workers + hub.workers.queue)
        self.database_up.set(0 if hub.database_down else 1)
        counts = dict.fromkeys(HEALTH_WORDS, 0)
        sensors = {"failing": 0, "degraded": 0}
        now = int(time.time() * 1000)
        for device in await hub.store.devices():
            word = device_health(device, now=now, stale_after_ms=hub.stale_after_ms)
            counts[word] = counts.get(word, 0) + 1
            for state, count in sensor_health(device).items():
                sensors[state] = sensors.get(state, 0) + count
        for word, count in counts.items():
            self.gateways.labels(word).set(count)
        run = await last_run(hub.store)
        self.retention_time.set(0 if run is None else run.finished_ms / 1000)
        self.retention_deleted.labels("readings").set(0 if run is None else run.readings_deleted)
        self.retention_deleted.labels("quarantine").set(0 if run is None else run.quarantined_deleted)
        for state, count in sensors.items():
            self.sensors.labels(state).set(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", HubMetrics)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def timed(metrics: HubMetrics) -> Middleware:
    """Request latency by route (the route's pattern, not the path, so /fleet/devices/{id} is one series)."""

    @web.middleware
    async def timer(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        try:
            return await handler(request)
        finally:
            route = request.match_info.route.resource
            name = route.canonical if route is not None else "unmatched"
            metrics.requests.labels(name, request.method).observe(time.perf_counter() - started)

    return timer


routes = web.RouteTableDef()


@routes.get("/metrics")
async def get_metrics(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    await metrics.refresh(request.app[HUB])
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE, "Cache-Control": "no-store"})


@routes.get("/healthz")
async def get_healthz(request: web.Request) -> web.Response:
    """The process answers: its event loop runs."""
    return web.json_response({"ok": True}, headers={"Cache-Control": "no-store"})


@routes.get("/readyz")
async def get_readyz(request: web.Request) -> web.Response:
    """Ready to take gateways: the store answers a query (503 while it does not)."""
    try:
        version = await request.app[HUB].store.schema_version()
    except Exception as exc:  # whatever the database driver raises, the answer is "not ready"
        return web.json_response({"ok": False, "detail": f"the store does not answer: {type(exc).__name__}"}, status=503,
                                 headers={"Cache-Control": "no-store", "Retry-After": "5"})
    return web.json_response({"ok": True, "schema_version": version}, headers={"Cache-Control": "no-store"})

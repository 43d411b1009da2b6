"""Assemble and run one hub process: the aiohttp application, its store and its background duties."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from edge.notify import Notifier, watchdog_loop
from edge.private import private_directory
from edge.protocol import MAX_READINGS, Answer
from edge.util.clock import now_ms
from hub.auth import Admin
from hub.brokerauth import BROKER_PASSWORDS
from hub.database import UNAVAILABLE, open_store
from hub.dbwords import database_problem
from hub.export import EXPORTER, Exporter, ExportSettings
from hub.faults import DeviceFaults
from hub.fleet import check_desired, load_or_create_signing_key
from hub.hubkey import DesiredSigner
from hub.ingest import Ingest
from hub.keycache import KeyCache
from hub.looplag import start_probe
from hub.mqtt import MQTT_INGEST, MqttIngest, MqttSettings
from hub.oxp import client_of
from hub.publicprocess import PUBLIC_PROCESS, PublicProcess, PublicProcessSettings, forward_routes
from hub.publicreads import PUBLIC_CLIENT, PUBLIC_READS, READ_STORE, PublicReads, PublicReadSettings
from hub.ratelimit import RateLimiter, ReadingsBudget, parse_networks
from hub.releases import RELEASES
from hub.retention import RETENTION_FIRST_S
from hub.retention import schedule as retention_schedule
from hub.rollout import INTERVAL_S as ROLLOUT_INTERVAL_S
from hub.rollout import schedule as rollout_schedule
from hub.server import ConnectionSettings, HubRunner, body_deadline, open_connections, short_server_header
from hub.state import HUB, Hub
from hub.store import Store
from hub.tokens import create_token
from hub.workers import Workers

__all__ = ["IngestSettings", "RunningHub", "build_app", "parse_listen", "run_hub"]

log = logging.getLogger("ocn.hub")

MAX_REQUEST_BYTES = 1024 * 1024 + 4096


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8443`` for IPv6) as (host, port); the message names what would be accepted."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {listen!r}: expected HOST:PORT, e.g. 127.0.0.1:8443 (port 0 picks a free one)")
    return host.strip("[]") or "127.0.0.1", int(port)




@dataclass(frozen=True)
class IngestSettings:
    """What bounds the work one hub process does for ingest (docs/fleet.md, "Limits under load")."""

    workers: int = 2
    """Threads verifying and decoding batches, status reports and notices."""
    queue: int = 16
    """Jobs that may wait for a worker; beyond them a request is answered 503 ``busy`` at once."""
    readings_rate: float = 1000.0
    """Readings per second each device may send (up to 4 times more if it has shown a higher rate over a day)."""
    readings_burst: int = 100_000
    """Readings a device may send at once before its rate applies."""
    address_rate: float = 5.0
    """Refused unauthenticated requests (enrolments, messages refused before or at their signature) per second per client address."""
    address_burst: int = 300
    """Such requests a client address may make at once."""
    trusted_proxies: tuple[str, ...] = ()
    """Networks of the proxies whose X-Forwarded-For names the client (e.g. ``127.0.0.1/32``)."""

    def __post_init__(self) -> None:
        for option, value, least in (("--ingest-workers", self.workers, 1), ("--ingest-queue", self.queue, 0),
                                     ("--readings-burst", self.readings_burst, 1), ("--address-burst", self.address_burst, 1)):
            if type(value) is not int or value < least:
                raise ValueError(f"{option} {value!r}: expected a whole number of at least {least}")
        for option, rate in (("--readings-rate", self.readings_rate), ("--address-rate", self.address_rate)):
            if not 0 <= rate < float("inf"):
                raise ValueError(f"{option} {rate!r}: expected a number of 0 (no limit) or more")
        parse_networks(self.trusted_proxies)


# The settings run_hub uses unless told otherwise (frozen: one instance serves every call).
DEFAULT_INGEST = IngestSettings()
DEFAULT_PUBLIC_READS = PublicReadSettings()
DEFAULT_CONNECTIONS = ConnectionSettings()


@web.middleware
async def database_down(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """A database outage answers 503 with Retry-After, logged once when it starts and once when it ends."""
    hub = request.app[HUB]
    try:
        response = await handler(request)
    except UNAVAILABLE as exc:
        if isinstance(exc, ConnectionError) and request.transport is None:
            raise  # the client left while its body was read ("Connection lost"): nothing to do with the database
        if not hub.database_down:
            log.error("database unavailable; answering 503", extra={"error": database_problem(exc)})
            hub.database_down = True
        return web.json_response({"error": str(Answer.UNAVAILABLE), "detail": "the hub's database is unavailable; retry later"},
                                 status=Answer.UNAVAILABLE.status, headers={"Retry-After": "10"})
    if hub.database_down:
        hub.database_down = False
        log.info("database available again")
    return response


def build_app(hub: Hub, *, public_reads: PublicReadSettings = DEFAULT_PUBLIC_READS, public_process: PublicProcess | None = None) -> web.Application:
    """The aiohttp application for one hub process; with ``public_process``, its open-data and SensorThings routes are answered there."""
    from hub import dashboard, metrics, opendata, oxp, releases, sensorthings

    counted = metrics.HubMetrics()  # a registry per application: several hubs in one process keep their own series
    app = web.Application(client_max_size=MAX_REQUEST_BYTES, middlewares=[metrics.timed(counted), body_deadline, database_down])
    app[HUB] = hub
    app[metrics.METRICS] = counted
    app[PUBLIC_READS] = PublicReads(public_reads, lane=hub.store.public_lane)
    app[READ_STORE] = hub.store
    app[PUBLIC_CLIENT] = client_of
    app.on_response_prepare.append(short_server_header)
    app.add_routes(oxp.routes)
    app.add_routes(dashboard.routes)
    if public_process is None:
        app.add_routes(opendata.routes)
        app.add_routes(sensorthings.routes)
    else:
        app[PUBLIC_PROCESS] = public_process
        app.add_routes(forward_routes([opendata.routes, sensorthings.routes]))
    app.add_routes(metrics.routes)
    app.add_routes(releases.routes)
    return app


@dataclass
class RunningHub:
    """A hub running in this process (tests, the demo, the bench)."""

    url: str
    hub: Hub
    admin_token: str | None
    app: web.Application | None = None

    @property
    def store(self) -> Store:
        return self.hub.store

    async def create_token(self, *, uses: int = 1, expires_s: float = 86400, approve: bool = True, fleet: str = "default", note: str = "") -> str:
        """An enrolment token (pre-approving by default here, unlike the CLI)."""
        return await create_token(self.hub.store, uses=uses, expires_s=expires_s, approve=approve, fleet=fleet, note=note)

    async def counters(self, device_id: str) -> dict[str, int]:
        """readings_stored, batches_stored and duplicates for one device (zeros if unknown)."""
        device = await self.hub.store.device(device_id)
        if device is None:
            return {"readings_stored": 0, "batches_stored": 0, "duplicates": 0}
        return {"readings_stored": device.readings_stored, "batches_stored": device.batches_stored, "duplicates": device.duplicates}

    async def totals(self) -> dict[str, int]:
        """The same counters summed over every device."""
        totals = {"devices": 0, "readings_stored": 0, "batches_stored": 0, "duplicates": 0}
        for device in await self.hub.store.devices():
            totals["devices"] += 1
            totals["readings_stored"] += device.readings_stored
            totals["batches_stored"] += device.batches_stored
            totals["duplicates"] += device.duplicates
        return totals

    async def set_desired(self, scope: str, name: str, document: Mapping[str, Any] | None) -> None:
        """Set (or clear, with None) the desired document of a fleet (scope "fleet") or a device (scope "device")."""
        if scope not in ("fleet", "device"):
            raise ValueError(f"scope {scope!r}: expected 'fleet' or 'device'")
        await self.hub.store.set_desired(scope, name, None if document is None else check_desired(document), now_ms=now_ms())

    async def set_device_status(self, device_id: str, status: str) -> bool:
        """Approve ("active") a pending device or revoke ("revoked") one; False if nothing changed."""
        changed = await self.hub.store.set_device_status(device_id, status, now_ms=now_ms())
        self.hub.keys.forget()
        return changed

    async def login_link(self, *, next_path: str = "/fleet") -> str:
        """A one-time link that opens an admin session in a browser (valid 10 minutes), then shows ``next_path``."""
        return await self.hub.admin.login_link(self.url, next_path=next_path)


@asynccontextmanager
async def run_hub(
    *,
    listen: str = "127.0.0.1:0",
    db: str | None = None,
    state_dir: str | Path | None = None,
    admin_token: str | None = None,
    rate: float = 50.0,
    burst: int = 200,
    stale_after_s: float = 900.0,
    key_cache_s: float = 5.0,
    ingest: IngestSettings = DEFAULT_INGEST,
    public_reads: PublicReadSettings = DEFAULT_PUBLIC_READS,
    public_process: PublicProcessSettings | None = None,
    connections: ConnectionSettings = DEFAULT_CONNECTIONS,
    retention_interval_s: float = 86400.0,
    rollout_interval_s: float = ROLLOUT_INTERVAL_S,
    mqtt: MqttSettings | None = None,
    export: ExportSettings | None = None,
) -> AsyncIterator[RunningHub]:
    """Run a hub until the block exits.  ``db`` defaults to SQLite in ``state_dir`` (which holds the signing key).

    Retention runs (hub.retention) start ``min(60 s, retention_interval_s)`` after the hub listens, then every ``retention_interval_s``.
    With ``public_process`` enabled, public reads run in a process of their own (hub.publicprocess); by default in this one."""
    if state_dir is None:
        raise ValueError("run_hub: state_dir is required (it holds the hub's signing key and, by default, its database)")
    state = private_directory(state_dir)  # the signing key and, by default, the database
    host, port = parse_listen(listen)
    store = await open_store(db or f"sqlite:///{state / 'hub.db'}")
    runner: web.AppRunner | None = None
    public: PublicProcess | None = None
    notifier = Notifier()
    watchdog: asyncio.Task[None] | None = None
    retention: asyncio.Task[None] | None = None
    rollouts: asyncio.Task[None] | None = None
    dates: asyncio.Task[None] | None = None
    broker: tuple[MqttIngest, asyncio.Task[None]] | None = None
    exporting: tuple[Exporter, asyncio.Task[None]] | None = None
    try:
        admin = Admin(store)
        signing_key = load_or_create_signing_key(state / "hub.key")
        keys = KeyCache(store, ttl_s=key_cache_s)
        limiter = RateLimiter(rate=rate, burst=burst)
        readings = ReadingsBudget(rate=ingest.readings_rate, burst=ingest.readings_burst, ceiling=MAX_READINGS)
        workers = Workers(workers=ingest.workers, queue=ingest.queue)
        faults = DeviceFaults()
        hub = Hub(
            store=store,
            admin=admin,
            signing_key=signing_key,
            limiter=limiter,
            keys=keys,
            readings=readings,
            addresses=RateLimiter(rate=ingest.address_rate, burst=ingest.address_burst),
            workers=workers,
            ingest=Ingest(store=store, keys=keys, limiter=limiter, readings=readings, workers=workers, faults=faults, signing_key=signing_key,
                          signer=DesiredSigner(state, signing_key)),
            faults=faults,
            trusted_proxies=parse_networks(ingest.trusted_proxies),
            stale_after_ms=int(stale_after_s * 1000),
        )
        if public_process is not None and public_process.enabled:
            # A socket path must fit in 108 bytes, which a state directory may not: a private temporary directory (0700).
            public = PublicProcess(db=store.url, socket=Path(tempfile.mkdtemp(prefix="ocn-hub-")) / "public.sock", reads=public_reads,
                                   settings=public_process, log_level=logging.getLevelName(logging.getLogger("ocn").getEffectiveLevel()).lower())
            await public.start()
        await hub.ingest.signer.sync_dates(store)  # never date a document before the last one this hub (any process) signed
        app = build_app(hub, public_reads=public_reads, public_process=public)
        app[RELEASES] = state / "releases"  # release bundles `ocn-edge hub release add` keeps (hub/releases.py)
        from hub.metrics import METRICS  # where build_app imports it: the metrics module reads the dashboard

        counted = app[METRICS]
        if mqtt is not None:
            app[BROKER_PASSWORDS] = mqtt.manage_access
            app[MQTT_INGEST] = MqttIngest(hub, mqtt, unavailable=UNAVAILABLE, counted=counted.ingested)
        if export is not None:
            app[EXPORTER] = Exporter(store, export, unavailable=UNAVAILABLE, metrics=counted)
        limits = open_connections(connections)
        limits.bad_requests.counted = lambda reason: counted.malformed.labels(reason).inc()
        # lingering_time=0: a body answered before it was read whole is not read and discarded afterwards (hub.server.body_deadline).
        runner = HubRunner(app, connections=limits, access_log=None, handle_signals=False, lingering_time=0)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        # Only a hub that listens creates the shown-once token: a start that fails (port in use) must not use it up.
        generated = await admin.setup(admin_token)
        bound = runner.addresses[0]
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        url = f"http://{shown}:{bound[1]}"
        log.info("hub listening", extra={"url": url, "db": store.url.split("@")[-1]})
        # Under systemd (ocn-hub.service, Type=notify) say when the hub listens and ping the
        # watchdog from this loop; without $NOTIFY_SOCKET both do nothing.
        notifier.ready(f"serving on {url}")
        watchdog = asyncio.create_task(watchdog_loop(notifier), name="hub-watchdog")
        start_probe()  # the benchmark's loop-lag probe: nothing unless $OCN_HUB_LOOP_LAG_FILE is set
        retention = asyncio.create_task(retention_schedule(store, interval_s=retention_interval_s,
                                                           first_after_s=min(RETENTION_FIRST_S, retention_interval_s)), name="hub-retention")
        rollouts = asyncio.create_task(rollout_schedule(store, interval_s=rollout_interval_s), name="hub-rollouts")
        dates = asyncio.create_task(hub.ingest.signer.keep_dates(store), name="hub-desired-dates")
        if mqtt is not None:
            taker = app[MQTT_INGEST]
            broker = (taker, asyncio.create_task(taker.run(), name="hub-mqtt"))
        if export is not None:
            exporter = app[EXPORTER]
            exporting = (exporter, asyncio.create_task(exporter.run(public_url=url), name="hub-export"))
        yield RunningHub(url=url, hub=hub, admin_token=admin_token or generated, app=app)
    finally:
        for scheduled in (retention, rollouts, dates):
            if scheduled is not None:
                scheduled.cancel()
                await asyncio.gather(scheduled, return_exceptions=True)
        if exporting is not None:
            exporting[1].cancel()
            await asyncio.gather(exporting[1], return_exceptions=True)
            await exporting[0].aclose()
        if broker is not None:
            broker[1].cancel()
            await asyncio.gather(broker[1], return_exceptions=True)
            await broker[0].aclose()
        if watchdog is not None:
            notifier.stopping()
            notifier.close()
            watchdog.cancel()
        if runner is not None:
            runner.app[HUB].ingest.stop_watches()  # long polls answer now instead of holding the shutdown for their minute
            await runner.cleanup()
            runner.app[HUB].workers.close()
            if isinstance(runner, HubRunner):
                runner.connections.bad_requests.close()  # what it refused or failed in its last minute, said
        if public is not None:
            await public.stop()
            with contextlib.suppress(OSError):
                public.socket.parent.rmdir()
        if runner is not None and dates is not None:  # the dates signed since the last round, for the next start (OXP §8.4)
            await runner.app[HUB].ingest.signer.share_dates_at_stop(store)
        await store.close()

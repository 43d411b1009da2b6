"""The public reads process: open data and SensorThings answered apart from ingest and the dashboard.

A hub started by ``ocn-edge hub`` runs its public reads here, in a process of its own at a lower
CPU priority (hub.publicprocess starts it and forwards the routes to it over a Unix socket in the
hub's private state directory).  Rendering a large CSV or SensorThings page is Python work that
holds the interpreter lock: in the hub's own process it took event-loop and CPU time from every
device and operator however it was paced, here the kernel gives it only what they leave.

The hub's process has already resolved who the client is (X-Forwarded-For only from a trusted
proxy) and passes it, with the request's scheme and host, in ``X-OCN-Client`` and
``X-OCN-Scheme``; the socket is reachable by the hub's user alone, so the headers are trusted.
The budgets of hub.publicreads apply here as they would in the hub's process, except the loop
share: this loop serves public reads only.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from dataclasses import replace

from aiohttp import web

from hub.database import UNAVAILABLE, open_store
from hub.publicreads import PUBLIC_CLIENT, PUBLIC_READS, READ_STORE, PublicReads, PublicReadSettings
from hub.server import short_server_header
from hub.store import Store

__all__ = ["CLIENT_HEADER", "DB_ENV", "READY_PATH", "SCHEME_HEADER", "build_worker_app", "main"]

log = logging.getLogger("ocn.hub")

CLIENT_HEADER = "X-OCN-Client"
SCHEME_HEADER = "X-OCN-Scheme"
READY_PATH = "/.ocn-ready"
DB_ENV = "OCN_HUB_PUBLIC_DB"  # the store URL travels in the environment: a PostgreSQL password must not show in `ps`


def _client(request: web.Request) -> str:
    return request.headers.get(CLIENT_HEADER, "") or (request.remote or "")


@web.middleware
async def as_forwarded(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """The request as the client made it: its scheme (links in answers use it) and, for a store outage, the hub's 503."""
    scheme = request.headers.get(SCHEME_HEADER)
    if scheme in ("http", "https"):
        request = request.clone(scheme=scheme)
    try:
        return await handler(request)
    except UNAVAILABLE:
        return web.json_response({"error": "unavailable", "detail": "the hub's database is unavailable; retry later"},
                                 status=503, headers={"Retry-After": "10"})


def build_worker_app(store: Store, settings: PublicReadSettings) -> web.Application:
    """The public routes of hub.opendata and hub.sensorthings over ``store``, as the hub's process would serve them."""
    from hub import opendata, sensorthings
    app = web.Application(middlewares=[as_forwarded])
    app[READ_STORE] = store
    app[PUBLIC_CLIENT] = _client
    # This loop renders public answers only: the share that protects ingest in the hub's process has nothing to protect here.
    app[PUBLIC_READS] = PublicReads(replace(settings, loop_share=1.0), lane=store.public_lane)
    app.on_response_prepare.append(short_server_header)

    async def ready(request: web.Request) -> web.Response:
        return web.Response(status=204)

    app.router.add_get(READY_PATH, ready)
    app.add_routes(opendata.routes)
    app.add_routes(sensorthings.routes)
    return app


def _settings(args: argparse.Namespace) -> PublicReadSettings:
    return PublicReadSettings(per_client=args.per_client, queue=args.queue, seconds=args.seconds, max_examined=args.max_examined,
                              cpu_seconds=args.cpu_seconds, cpu_share=args.cpu_share, readings_in_flight=args.readings_in_flight)


async def serve(args: argparse.Namespace) -> int:
    from hub.models import StoreError

    try:
        store = await open_store(os.environ.get(DB_ENV, ""))
    except (StoreError, OSError) as exc:
        log.error("public reads process cannot open the store", extra={"error": str(exc)})
        return 2
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(build_worker_app(store, _settings(args)), access_log=None, handle_signals=False)
    try:
        await runner.setup()
        old = os.umask(0o077)  # the socket reachable by the hub's user alone
        try:
            await web.UnixSite(runner, args.socket).start()
        finally:
            os.umask(old)
        await stop.wait()
    finally:
        await runner.cleanup()
        await store.close()
    return 0


def _die_with_the_hub(hub_pid: int) -> None:
    """Be sent SIGTERM when the hub's process ends, however it ends (``kill -9`` included): an orphan would keep the
    hub's log stream open and its store busy.  Linux's PR_SET_PDEATHSIG; a hub already gone by now means exit at once."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != hub_pid:
        raise SystemExit(0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ocn-hub public reads", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--socket", required=True)
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--per-client", type=int, default=PublicReadSettings.per_client)
    parser.add_argument("--queue", type=int, default=PublicReadSettings.queue)
    parser.add_argument("--seconds", type=float, default=PublicReadSettings.seconds)
    parser.add_argument("--max-examined", type=int, default=PublicReadSettings.max_examined)
    parser.add_argument("--cpu-seconds", type=float, default=PublicReadSettings.cpu_seconds)
    parser.add_argument("--cpu-share", type=float, default=PublicReadSettings.cpu_share)
    parser.add_argument("--readings-in-flight", type=int, default=PublicReadSettings.readings_in_flight)
    parser.add_argument("--hub-pid", type=int, required=True)
    args = parser.parse_args(argv)
    _die_with_the_hub(args.hub_pid)
    from edge.logs import setup_logging

    setup_logging(args.log_level)
    if args.nice:
        os.nice(args.nice)
    # As the hub's process does (hub.cli): readings never form cycles, so the cyclic collector need not chase them.
    import gc

    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    return asyncio.run(serve(args))


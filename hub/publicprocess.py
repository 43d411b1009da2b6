"""Public reads in a process of their own: start it, keep it running, and forward the open-data and SensorThings routes to it.

Measured under the combined attack of ``python -m bench.hostile`` (py-spy on the hub): with public
reads in the hub's process, rendering heavy CSV and SensorThings answers took a quarter of the
event loop's time (its loop share) and contended for the interpreter lock with ingest's threads,
so a device's batch waited behind them.  In a process of their own at a lower CPU priority
(``nice`` 10 by default) they take what devices and operators leave; what stays here per public
request is reading its headers and copying the answer's bytes.

The process (hub.publicworker) listens on a Unix socket in a private temporary directory (0700;
a state directory's path may be too long for a socket's 108 bytes).
If it dies it is started again, with a pause that grows to a minute while it keeps dying; until
it answers, public routes are answered 503 ``busy`` with Retry-After, and devices and the
dashboard are not affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from hub.oxp import client_of
from hub.publicreads import PublicReadSettings
from hub.publicworker import CLIENT_HEADER, DB_ENV, READY_PATH, SCHEME_HEADER

__all__ = ["PUBLIC_PROCESS", "PublicProcess", "PublicProcessSettings", "forward_routes"]

log = logging.getLogger("ocn.hub")

# What a client says about the answer it wants; the rest of its headers (cookies, authorisation) stay here.
REQUEST_HEADERS = ("Accept", "Accept-Encoding", "Accept-Language", "If-None-Match", "If-Modified-Since", "Range", "If-Range")
# Connection-level headers of the answer, which the hub's own connection sets for itself.
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "server", "date"}
WORKER_MAIN = "import sys; from hub.publicworker import main; sys.exit(main(sys.argv[1:]))"
READY_WAIT_S = 30.0
RESTART_PAUSES_S = (0.5, 2.0, 10.0, 60.0)
STOP_WAIT_S = 5.0


@dataclass(frozen=True)
class PublicProcessSettings:
    """Where public reads run (docs/fleet.md, "Public reads and slow clients")."""

    enabled: bool = True
    """Answer open data and SensorThings in a process of their own (False: in the hub's process, paced by the loop share)."""
    nice: int = 10
    """How much lower that process's CPU priority is than the hub's (0–19)."""

    def __post_init__(self) -> None:
        if type(self.nice) is not int or not 0 <= self.nice <= 19:
            raise ValueError(f"--public-nice {self.nice!r}: expected a whole number from 0 to 19")


class PublicProcess:
    """The public reads process of one hub: started by :meth:`start`, restarted when it dies, stopped by :meth:`stop`."""

    def __init__(self, *, db: str, socket: Path, reads: PublicReadSettings, settings: PublicProcessSettings, log_level: str) -> None:
        self.db = db
        self.socket = socket
        self.reads = reads
        self.settings = settings
        self.log_level = log_level
        self.session: aiohttp.ClientSession | None = None
        self.ready = False
        self.process: asyncio.subprocess.Process | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._stopping = False

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def _command(self) -> list[str]:
        r = self.reads
        # -c, not -m: the hub package imports hub.publicworker before runpy would run it as __main__.
        return [sys.executable, "-c", WORKER_MAIN, "--socket", str(self.socket), "--nice", str(self.settings.nice),
                "--log-level", self.log_level, "--per-client", str(r.per_client), "--queue", str(r.queue), "--seconds", repr(r.seconds),
                "--max-examined", str(r.max_examined), "--cpu-seconds", repr(r.cpu_seconds), "--cpu-share", repr(r.cpu_share),
                "--readings-in-flight", str(r.readings_in_flight), "--hub-pid", str(os.getpid())]

    async def start(self) -> None:
        """Start the process and wait until it answers; raise RuntimeError if it does not within 30 s."""
        self.session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.socket), limit=0),
                                             auto_decompress=False, timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        await self._spawn()
        if not await self._wait_ready():
            raise RuntimeError(f"the public reads process did not answer on {self.socket} within {READY_WAIT_S:.0f} s")
        self._keeper = asyncio.create_task(self._keep(), name="hub-public-process")

    async def _spawn(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()  # a socket a dead process left behind
        env = dict(os.environ)
        env[DB_ENV] = self.db
        self.process = await asyncio.create_subprocess_exec(*self._command(), env=env, stdin=asyncio.subprocess.DEVNULL)

    async def _wait_ready(self) -> bool:
        assert self.session is not None and self.process is not None
        deadline = time.monotonic() + READY_WAIT_S
        while time.monotonic() < deadline and self.process.returncode is None:
            try:
                async with self.session.get(f"http://public{READY_PATH}") as answer:
                    if answer.status == 204:
                        self.ready = True
                        return True
            except (aiohttp.ClientError, OSError):
                pass
            await asyncio.sleep(0.05)
        return False

    async def _keep(self) -> None:
        """Start the process again whenever it exits, pausing longer while it keeps dying."""
        failures = 0
        while not self._stopping:
            assert self.process is not None
            code = await self.process.wait()
            self.ready = False
            if self._stopping:
                return
            pause = RESTART_PAUSES_S[min(failures, len(RESTART_PAUSES_S) - 1)]
            log.error("public reads process exited; public routes answer 503 until it is back",
                      extra={"exit_code": code, "restart_in_s": pause})
            await asyncio.sleep(pause)
            await self._spawn()
            if await self._wait_ready():
                failures = 0
                log.info("public reads process running again", extra={"pid": self.process.pid})
            else:
                failures += 1

    async def stop(self) -> None:
        self._stopping = True
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), STOP_WAIT_S)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self.session is not None:
            await self.session.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    async def forward(self, request: web.Request) -> web.StreamResponse:
        """Answer ``request`` with what the public reads process answers, streamed as it comes."""
        if not self.ready or self.session is None:
            return _busy("the hub's public reads are restarting; retry in a few seconds")
        headers = {name: request.headers[name] for name in REQUEST_HEADERS if name in request.headers}
        headers["Host"] = request.host
        headers[CLIENT_HEADER] = client_of(request)
        headers[SCHEME_HEADER] = request.scheme
        response: web.StreamResponse | None = None
        try:
            async with self.session.request(request.method, f"http://public{request.rel_url}", headers=headers, allow_redirects=False) as answer:
                response = web.StreamResponse(status=answer.status, reason=answer.reason)
                for name, value in answer.headers.items():
                    if name.lower() not in HOP_BY_HOP:
                        response.headers.add(name, value)
                await response.prepare(request)
                async for chunk in answer.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
                return response
        except (aiohttp.ClientError, OSError):
            if response is None or not response.prepared:
                return _busy("the hub's public reads did not answer; retry in a few seconds")
            # Half an answer was sent: closing the connection is how HTTP says it is incomplete.
            if request.transport is not None:
                request.transport.close()
            return response


def _busy(detail: str) -> web.Response:
    return web.json_response({"error": "busy", "detail": detail}, status=503, headers={"Retry-After": "5"})


PUBLIC_PROCESS = web.AppKey("public_process", PublicProcess)


def forward_routes(tables: Iterable[web.RouteTableDef]) -> list[web.RouteDef]:
    """A route for every GET path of ``tables`` that forwards it to the app's public reads process."""

    async def forward(request: web.Request) -> web.StreamResponse:
        return await request.app[PUBLIC_PROCESS].forward(request)

    return [web.get(route.path, forward) for table in tables for route in table if isinstance(route, web.RouteDef) and route.method == "GET"]

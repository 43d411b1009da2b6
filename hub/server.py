"""The hub's HTTP connections: a deadline for each request's headers and body, a cap on open connections, and the file descriptors they need.

aiohttp's server has no deadline for a request's headers or body: its keep-alive timer closes a
connection still waiting for its first request after ``keepalive_timeout`` (75 s by default),
and nothing at all bounds a body sent a byte at a time.  So the connection is aiohttp's
``RequestHandler`` with a timer armed when the connection opens (or a later request's first byte
arrives) and disarmed when its headers are complete, and the body deadline is a middleware that
fails the request's body stream when it is late, answered 408.  The connection reads two of the
handler's private counters (``_request_count``, ``_request_in_progress``): an aiohttp upgrade is
checked by tests/hub/hostile/test_slow_clients.py.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import resource
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web

from edge.util.httpwords import BadRequests, OurWordsHandler

__all__ = ["BodyTimeout", "ConnectionSettings", "Connections", "HubRunner", "body_deadline", "file_limit", "open_connections", "short_server_header"]

log = logging.getLogger("ocn.hub")

# File descriptors the hub needs besides its connections: the listening socket, the database
# files and their -wal/-shm, PostgreSQL connections, logs and the odd file a request opens.
RESERVED_FILES = 128


@dataclass(frozen=True)
class ConnectionSettings:
    """What bounds the connections of one hub process (docs/fleet.md, "Public reads and slow clients")."""

    header_timeout_s: float = 10.0
    """A request's headers must be complete within this many seconds of the connection opening or of the request's first byte."""
    body_timeout_s: float = 30.0
    """A request's body must have arrived within this many seconds of the request reaching the hub."""
    max_connections: int = 4096
    """Open connections at most; one more is answered 503 and closed at once."""

    def __post_init__(self) -> None:
        for option, seconds in (("--header-timeout", self.header_timeout_s), ("--body-timeout", self.body_timeout_s)):
            if not 0 < seconds < math.inf:
                raise ValueError(f"{option} {seconds!r}: expected a number of seconds above 0")
        if type(self.max_connections) is not int or self.max_connections < 1:
            raise ValueError(f"--max-connections {self.max_connections!r}: expected a whole number of at least 1")


class BodyTimeout(TimeoutError):
    """A request's body did not arrive within the body deadline.

    A TimeoutError, so aiohttp's lingering read of an unread body ends quietly on it too.
    """


class Connections:
    """The open connections of one hub process, counted against ``cap``; a full hub is logged once, not per connection."""

    def __init__(self, settings: ConnectionSettings, *, cap: int) -> None:
        self.settings = settings
        self.cap = cap
        self.open = 0
        self._full = False
        self.bad_requests = BadRequests(log)  # malformed requests, said in our words (edge.util.httpwords)

    def admit(self) -> bool:
        if self.open >= self.cap:
            if not self._full:
                self._full = True
                log.warning("connection cap reached; new connections are answered 503 until some close", extra={"cap": self.cap})
            return False
        if self._full:
            self._full = False
            log.info("connections below the cap again", extra={"cap": self.cap, "open": self.open})
        self.open += 1
        return True

    def release(self) -> None:
        self.open -= 1

    def refusal(self) -> bytes:
        """The whole answer to a connection over the cap: no request has been read, so aiohttp has none to answer."""
        body = json.dumps({"error": "busy", "detail": f"the hub has {self.cap} connections open, the most it takes; retry later"}).encode()
        head = ("HTTP/1.1 503 Service Unavailable\r\nServer: ocn-hub\r\nContent-Type: application/json\r\nRetry-After: 5\r\n"
                f"Connection: close\r\nContent-Length: {len(body)}\r\n\r\n")
        return head.encode() + body


class HubConnection(OurWordsHandler):
    """aiohttp's connection with the header deadline and the connection cap, logging in our words."""

    def __init__(self, manager: web.Server, *, connections: Connections, **kwargs: Any) -> None:
        super().__init__(manager, bad_requests=connections.bad_requests, **kwargs)
        self.connections = connections
        self._counted = False
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self.connections.admit():
            cast(asyncio.Transport, transport).write(self.connections.refusal())
            self.force_close()
            return
        self._counted = True
        self._arm_header_deadline()

    def data_received(self, data: bytes) -> None:
        requests = self._request_count
        super().data_received(data)
        if self._request_count != requests:
            self._disarm_header_deadline()
        elif data and self._header_timer is None and not self._request_in_progress:
            self._arm_header_deadline()  # the first bytes of a later request on this connection

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_header_deadline()
        if self._counted:
            self._counted = False
            self.connections.release()
        super().connection_lost(exc)

    def _arm_header_deadline(self) -> None:
        self._header_timer = asyncio.get_running_loop().call_later(
            self.connections.settings.header_timeout_s, self._headers_late, self._request_count
        )

    def _disarm_header_deadline(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self, requests: int) -> None:
        self._header_timer = None
        if self._request_count == requests and not self._request_in_progress:
            self.force_close()


class HubServer(web.Server):
    """aiohttp's server making :class:`HubConnection` connections."""

    def __init__(self, handler: Any, *, connections: Connections, loop: asyncio.AbstractEventLoop, request_factory: Any,
                 handler_cancellation: bool, **handler_kwargs: Any) -> None:
        super().__init__(handler, request_factory=request_factory, handler_cancellation=handler_cancellation, loop=loop, **handler_kwargs)
        self.counted = connections  # Server.connections is aiohttp's list of open connections
        self.loop = loop
        self.handler_kwargs = handler_kwargs

    def __call__(self) -> HubConnection:
        return HubConnection(self, connections=self.counted, loop=self.loop, **self.handler_kwargs)


class HubRunner(web.AppRunner):
    """An AppRunner whose server is a :class:`HubServer`."""

    def __init__(self, app: web.Application, *, connections: Connections, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.connections = connections

    async def _make_server(self) -> web.Server:
        # AppRunner starts the app and builds its Server with the handler arguments it gathered;
        # the same Server is made again here as a HubServer with those arguments.
        plain = await super()._make_server()
        return HubServer(plain.request_handler, request_factory=plain.request_factory, handler_cancellation=plain.handler_cancellation,
                         connections=self.connections, loop=asyncio.get_running_loop(), **plain._kwargs)


@web.middleware
async def body_deadline(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """A body that has not arrived within the body deadline fails the handler's read and is answered 408; the connection is closed."""
    protocol = request.protocol
    content = request.content
    if not isinstance(protocol, HubConnection) or not request.body_exists or content.is_eof():
        return await handler(request)
    seconds = protocol.connections.settings.body_timeout_s

    def late() -> None:
        if not content.is_eof():
            content.set_exception(BodyTimeout(f"the request body did not arrive within {seconds:g} s"))

    timer = asyncio.get_running_loop().call_later(seconds, late)
    try:
        response = await handler(request)
        if not content.is_eof():
            # Answered without reading the whole body (429 before reading, 413): close the connection
            # rather than let aiohttp read and discard the rest, which a sender of 1 MiB bodies
            # refused at once would otherwise make the hub do for every one of them.  Not keeping
            # the connection alive is not enough: aiohttp still reads the rest for its lingering
            # time unless that is 0, which run_hub sets (tests/hub/hostile/test_slow_clients.py).
            response.force_close()
        return response
    except BodyTimeout as exc:
        response = web.json_response({"error": "body_timeout", "detail": str(exc)}, status=408)
        response.force_close()
        return response
    finally:
        timer.cancel()


def file_limit(needed: int) -> tuple[int, int]:
    """The process's (soft, hard) limit on open files, the soft one first raised toward ``needed`` as far as the hard one allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        raised = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        if raised > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (raised, hard))
            soft = raised
    return soft, hard


def open_connections(settings: ConnectionSettings) -> Connections:
    """The connection count of a hub about to listen, its open-file limit raised for the cap (the cap lowered if the
    hard limit is too low for it); the limits are logged, so an operator sees what the service was given."""
    needed = settings.max_connections + RESERVED_FILES
    soft, hard = file_limit(needed)
    cap = settings.max_connections
    if soft != resource.RLIM_INFINITY and soft < needed:
        cap = max(1, soft - RESERVED_FILES)
        log.warning("the open-file limit is too low for the connection cap; the cap is lowered (raise LimitNOFILE)",
                    extra={"max_connections": settings.max_connections, "cap": cap, "open_files_needed": needed, "open_files_hard": hard})

    def shown(limit: int) -> int | str:
        return "unlimited" if limit == resource.RLIM_INFINITY else limit

    log.info("connection limits", extra={"max_connections": cap, "open_files_soft": shown(soft), "open_files_hard": shown(hard),
                                         "open_files_needed": needed, "header_timeout_s": settings.header_timeout_s,
                                         "body_timeout_s": settings.body_timeout_s})
    return Connections(settings, cap=cap)


async def short_server_header(request: web.Request, response: web.StreamResponse) -> None:
    """``Server: ocn-hub`` instead of aiohttp's "Python/3.x aiohttp/3.x" on every answer the
    application makes (404s and middleware answers included): a gateway on a metered link reads
    it once per batch. Not a hiding place for versions: the 400 aiohttp's HTTP parser sends for
    bytes that are not HTTP never reaches the application and still names them."""
    response.headers["Server"] = "ocn-hub"

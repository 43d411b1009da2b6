"""Fair public reads: open-data and SensorThings requests, a few at a time per client, their queries a few at a time per hub, each within a budget.

A request is counted against its client address's share; its store queries of readings then
take turns on the store's public lane (threads and connections ingest and the dashboard never
use) within one :class:`hub.budget.QueryBudget`, pacing themselves so that the lane uses at most
its share of the process's CPU.  Requests that read no readings (Things, Datastreams, the /data
index) never wait for the lane.  Refusals say why and what to do: 429 when one client already
has its share, 503 ``busy`` with Retry-After when the lane and its queue are full or a request
waits and runs past its time, 400 ``too_costly`` when a query would examine more readings, or
need more CPU work, than one may (narrow it).
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from hub.budget import LoopShare, OverBudget, QueryBudget
from hub.store import Store

__all__ = ["PUBLIC_CLIENT", "PUBLIC_READS", "READ_STORE", "REQUEST_BUDGET", "PublicReadSettings", "PublicReads", "Refused", "public_read"]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
BudgetedHandler = Callable[[web.Request, QueryBudget], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class PublicReadSettings:
    """What bounds the public reads of one hub process (docs/fleet.md, "Public reads and slow clients")."""

    per_client: int = 2
    """Public requests one client address may have running at once; one more is answered 429."""
    queue: int = 8
    """Store queries that may wait for the public lane; beyond them a request is answered 503 ``busy`` at once."""
    seconds: float = 30.0
    """Time one public request's store queries may take, waiting for the lane included; past it the answer is 503 ``busy``."""
    max_examined: int = 1_000_000
    """Readings one public request may examine; a query that needs more is answered 400 ``too_costly``."""
    cpu_seconds: float = 5.0
    """CPU seconds of work one public request's store queries may use; a query that needs more is answered 400 ``too_costly``."""
    cpu_share: float = 0.5
    """Part of one CPU the public lane as a whole may use; its queries pause to stay within it."""
    readings_in_flight: int = 100_000
    """Readings the public requests holding the lane may hold together (each counts the page it asked for); others wait."""
    loop_share: float = 0.25
    """Part of the event loop's time rendering public answers may take, all together; renderers pause to stay within it."""

    def __post_init__(self) -> None:
        for option, value, least in (("--public-per-client", self.per_client, 1), ("--public-queue", self.queue, 0),
                                     ("--public-max-examined", self.max_examined, 1),
                                     ("--public-readings-in-flight", self.readings_in_flight, 1)):
            if type(value) is not int or value < least:
                raise ValueError(f"{option} {value!r}: expected a whole number of at least {least}")
        if not 0 < self.seconds < math.inf:
            raise ValueError(f"--public-time-budget {self.seconds!r}: expected a number of seconds above 0")
        if not 0 < self.cpu_seconds < math.inf:
            raise ValueError(f"--public-cpu-budget {self.cpu_seconds!r}: expected a number of seconds above 0")
        for option, share in (("--public-cpu-share", self.cpu_share), ("--public-loop-share", self.loop_share)):
            if not 0 < share <= 1:
                raise ValueError(f"{option} {share!r}: expected a number above 0 and at most 1")


class Refused(Exception):
    """A public request refused before or while it ran: HTTP ``status``, a ``code``, a sentence and, for retryable ones, ``retry_after`` seconds."""

    def __init__(self, status: int, code: str, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {} if self.retry_after is None else {"Retry-After": str(self.retry_after)}

    def json_response(self) -> web.Response:
        """The refusal as ``{"error", "detail"}`` JSON (the open data and the transparency register answer so)."""
        return web.json_response({"error": self.code, "detail": self.detail}, status=self.status, headers=self.headers)

    @classmethod
    def over_budget(cls, exc: OverBudget, *, narrow: str) -> Refused:
        """The answer to a query that went past its budget; ``narrow`` says how to ask for less on this route."""
        if exc.kind in ("readings", "work"):
            return cls(400, "too_costly", f"{exc.detail}; {narrow}")
        return cls(503, "busy", f"{exc.detail}; retry later, or {narrow}", retry_after=5)


class PublicReads:
    """Turns for public requests: ``per_client`` requests per client address, and ``lane`` store queries at once
    hub-wide (the store's public lane) with at most ``queue`` more waiting."""

    def __init__(self, settings: PublicReadSettings, *, lane: int) -> None:
        self.settings = settings
        self.lane = lane
        self._running = 0  # requests holding a place on the lane
        self._in_flight = 0  # readings those requests may hold (the limits they asked for)
        self._changed = asyncio.Condition()
        self._waiting = 0
        self._by_client: dict[str, int] = {}
        self.loop_share = LoopShare(settings.loop_share)

    @property
    def by_client(self) -> dict[str, int]:
        """Public requests running now, by client address."""
        return dict(self._by_client)

    @asynccontextmanager
    async def turn(self, client: str) -> AsyncIterator[QueryBudget]:
        """Count a request of ``client`` for the block, which spends the budget given; raise :class:`Refused` (429) over its share."""
        settings = self.settings
        held = self._by_client.get(client, 0)
        if held >= settings.per_client:
            raise Refused(429, "too_many_requests", f"this client address already has {held} public requests running, "
                                                    "the most one may; wait for them to finish", retry_after=1)
        self._by_client[client] = held + 1
        budget = QueryBudget(max_examined=settings.max_examined, seconds=settings.seconds, cpu_seconds=settings.cpu_seconds,
                             share=settings.cpu_share / self.lane, lane=self.on_lane, loop_share=self.loop_share)
        budget.keep_lane = True
        ended = False

        async def end() -> None:
            nonlocal ended
            if ended:
                return
            ended = True
            if budget.holds_lane:
                await self._leave(budget)
            left = self._by_client[client] - 1
            if left:
                self._by_client[client] = left
            else:
                del self._by_client[client]

        budget.end_turn = end
        try:
            yield budget
        finally:
            await end()

    def _fits(self, readings: int) -> bool:
        """A place on the lane is free, and ``readings`` more fit beside those held (one request alone always fits)."""
        return self._running < self.lane and (self._in_flight == 0 or self._in_flight + readings <= self.settings.readings_in_flight)

    async def _leave(self, budget: QueryBudget) -> None:
        async with self._changed:
            self._running -= 1
            self._in_flight -= budget.lane_readings
            budget.holds_lane, budget.lane_readings = False, 0
            self._changed.notify_all()

    @asynccontextmanager
    async def on_lane(self, budget: QueryBudget, readings: int = 0) -> AsyncIterator[None]:
        """Take one of the lane's places for the request's store queries, which may hold up to ``readings`` readings,
        waiting at most the budget's time; raise OverBudget "busy" when the queue is full.

        A request in a :meth:`turn` keeps its place until its answer is sent, not just while its
        query runs: the readings it holds and the answer it renders are memory and loop time too.
        So at most ``lane`` requests hold either at once, and together at most
        ``readings_in_flight`` readings (a hundred thousand are about 20 MiB until sent).
        """
        if budget.holds_lane:  # a further query of a request that has its place (an expansion)
            self._in_flight += readings
            budget.lane_readings += readings
            yield
            return
        if not self._fits(readings) and self._waiting >= self.settings.queue:
            raise OverBudget("busy", f"{self._running} public queries running and {self._waiting} waiting, the most this hub takes")
        self._waiting += 1
        try:
            async with asyncio.timeout(budget.remaining_s()), self._changed:
                await self._changed.wait_for(lambda: self._fits(readings))
                self._running += 1
                self._in_flight += readings
        except TimeoutError:
            raise budget.out_of_time() from None
        finally:
            self._waiting -= 1
        budget.holds_lane, budget.lane_readings = True, readings
        if budget.keep_lane:
            yield  # the place is left at the end of the request's turn
            return
        try:
            yield
        finally:
            await self._leave(budget)


PUBLIC_READS = web.AppKey("public_reads", PublicReads)
# The store public routes read (the hub's own in its process, one of its own in the public reads process: hub.publicworker).
READ_STORE = web.AppKey("read_store", Store)
# Who a public request is counted against: the client address (hub.oxp.client_of), or what the hub's process said it was.
PUBLIC_CLIENT: web.AppKey[Callable[[web.Request], str]] = web.AppKey("public_client")
# The budget of the public request being answered, for the slices that render it (hub.streamed).
REQUEST_BUDGET = web.RequestKey("ocn_public_budget", QueryBudget)


def public_read(answer: Callable[[Refused], web.StreamResponse], *, narrow: str) -> Callable[[BudgetedHandler], Handler]:
    """Run a public route's ``handler(request, budget)`` in a turn of the app's :class:`PublicReads`; its store queries pass ``budget``.

    ``answer`` turns a refusal into the route's error format; ``narrow`` tells the client how to ask for less there.
    """

    def wrap(handler: BudgetedHandler) -> Handler:
        @functools.wraps(handler)
        async def run(request: web.Request) -> web.StreamResponse:
            try:
                async with request.app[PUBLIC_READS].turn(request.app[PUBLIC_CLIENT](request)) as budget:
                    request[REQUEST_BUDGET] = budget
                    try:
                        return await handler(request, budget)
                    except OverBudget as exc:
                        raise Refused.over_budget(exc, narrow=narrow) from None
            except Refused as exc:
                return answer(exc)

        return run

    return wrap

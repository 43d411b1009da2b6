"""What one public query may spend: readings examined, CPU work and time, checked while it runs in its worker thread.

The hub is one Python process: a public query that runs flat out in its thread takes the
interpreter lock from the event loop and the ingest workers as surely as if it ran on the loop
(measured with bench.hostile: four back-to-back result-ordered queries over 300,000 readings
took legitimate ingest p50 from 4 ms to 176 ms, with the loop's own lag under 50 ms).  So a
query also *paces* itself: after each slice of CPU it sleeps long enough that the public lane
as a whole uses at most its share of the process (``--public-cpu-share``), and its work is
counted in CPU seconds of its own thread, which is what it costs whatever else is running:
past ``--public-cpu-budget`` the query is too costly (400), not the hub too busy.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

__all__ = ["LoopShare", "Meter", "OverBudget", "QueryBudget"]

# The clock is read once per this many readings: often enough to stop within milliseconds, rarely enough to cost nothing.
CLOCK_EVERY = 4096
# CPU a query thread uses before it pauses for its share: short enough that a paused query hands
# the interpreter to ingest within milliseconds, long enough that pausing costs nothing.
PACE_SLICE_S = 0.005


class OverBudget(Exception):
    """A public query went past its budget.

    ``kind`` is "readings" when it would examine more readings than one query may, "work" when
    it needs more CPU than one query may (both: the query is too costly, narrow it), "time" when
    it ran out of time or "busy" when the public lane and its queue are full (both: the hub is
    busy, retry later).
    """

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class LoopShare:
    """The part of the event loop's time public answers may take, hub-wide.

    Rendering a public answer (10,000 SensorThings entities, 100,000 CSV lines) is Python that
    must run on the loop, a slice at a time.  Handing the loop back after each slice is not
    enough when several such answers take turns with each other: a device's request then waits
    behind all of them.  So after each slice a renderer waits long enough that all public
    rendering together stays within ``share`` of the loop's time; renderers queue behind each
    other for it, and everything else runs in between.
    """

    def __init__(self, share: float) -> None:
        self.share = share
        self._next = 0.0  # loop time before which no more public rendering should start

    async def pause(self, used_s: float) -> None:
        """Wait after a slice of public rendering that took ``used_s`` seconds of the loop."""
        now = asyncio.get_running_loop().time()
        self._next = max(self._next, now - used_s) + used_s / self.share
        await asyncio.sleep(max(0.0, self._next - now - used_s))


class QueryBudget:
    """``max_examined`` readings and ``seconds`` of time for one public request, however many store queries it makes.

    One request's store queries run one after another, so the counter is never touched by two threads at once.
    ``lane`` gives each store query its turn on the public lane (hub.publicreads); none: no waiting.
    """

    def __init__(self, *, max_examined: int, seconds: float, cpu_seconds: float = math.inf, share: float = 1.0,
                 lane: Callable[[QueryBudget, int], AbstractAsyncContextManager[Any]] | None = None,
                 loop_share: LoopShare | None = None) -> None:
        """``share``: the part of one CPU this request's query thread may use (1.0: no pacing);
        ``loop_share``: the hub's budget of loop time for rendering public answers (None: take turns only)."""
        self.max_examined = max_examined
        self.seconds = seconds
        self.cpu_seconds = cpu_seconds
        self.share = share
        self.examined = 0
        self.cpu_used = 0.0
        self.deadline = time.monotonic() + seconds
        self._lane = lane
        self.keep_lane = False  # a request's budget: its place on the lane is kept until the request ends (hub.publicreads)
        self.holds_lane = False  # ... and it has one
        self.lane_readings = 0  # readings it may hold, counted against the lane's room
        self._loop_share = loop_share
        self._mark: tuple[int, float] | None = None  # (thread, its CPU clock) when last paced
        # Ends the request's turn (hub.publicreads) once its answer is made, before its last bytes are sent:
        # a client that asks again as soon as it has them finds its turn free.
        self.end_turn: Callable[[], Awaitable[None]] | None = None

    def on_lane(self, readings: int = 0) -> AbstractAsyncContextManager[Any]:
        """Hold a turn on the public lane for one store query that may hold up to ``readings`` readings
        (may raise OverBudget "busy" or "time")."""
        return nullcontext() if self._lane is None else self._lane(self, readings)

    async def pause_rendering(self, used_s: float) -> None:
        """Hand the loop back after ``used_s`` seconds of rendering this request's answer (see :class:`LoopShare`)."""
        if self._loop_share is None:
            await asyncio.sleep(0)
        else:
            await self._loop_share.pause(used_s)

    def remaining_s(self) -> float:
        """Seconds left (0.0 once the deadline has passed)."""
        return max(0.0, self.deadline - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.deadline

    def out_of_time(self) -> OverBudget:
        return OverBudget("time", f"the query ran past its time budget of {self.seconds:g} s")

    def check_time(self) -> None:
        """Raise :class:`OverBudget` ("time") once the deadline has passed."""
        if self.expired():
            raise self.out_of_time()

    def refuse_beyond(self, readings: int) -> None:
        """Raise :class:`OverBudget` ("readings") now if a query must examine ``readings`` more than this budget has left."""
        if self.examined + readings > self.max_examined:
            raise OverBudget("readings", f"the query would examine more than {self.max_examined} readings, the most one query may")

    def charge(self, n: int) -> None:
        """Count ``n`` more readings examined, and pace; raise :class:`OverBudget` past what one query may, or past the deadline."""
        self.examined += n
        if self.examined > self.max_examined:
            raise OverBudget("readings", f"the query would examine more than {self.max_examined} readings, the most one query may")
        if n > 1 or self.examined % CLOCK_EVERY == 0:
            self.pace()
            self.check_time()

    def pace(self) -> None:
        """Count the CPU this thread used since the last call, and sleep so that it used at most ``share`` of the time.

        Called from the query's worker thread (never the event loop) between chunks of work; the
        sleep releases the interpreter lock, so the loop and ingest run meanwhile.
        """
        thread, now = threading.get_ident(), time.thread_time()
        mark, self._mark = self._mark, (thread, now)
        if mark is None or mark[0] != thread:
            return  # the first slice on this thread: its CPU clock starts here
        used = now - mark[1]
        self.cpu_used += used
        if self.cpu_used > self.cpu_seconds:
            raise OverBudget("work", f"the query needs more than {self.cpu_seconds:g} s of work, the most one query may")
        if used < PACE_SLICE_S or self.share >= 1.0:
            self._mark = mark  # keep counting the slice
            self.cpu_used -= used
            return
        time.sleep(used * (1.0 - self.share) / self.share)
        self._mark = (thread, time.thread_time())

    def meter(self, match: Callable[[Any], bool] | None) -> Meter:
        """``match`` (None: every reading matches) that first charges each reading it is asked about to this budget."""
        return Meter(self, match)


class Meter:
    """A reading predicate that charges this budget for every reading it is asked about.

    Called per reading it charges one at a time; a reader that walks whole chunks (hub.chunks)
    charges a chunk's readings at once with :meth:`charge` and asks :attr:`match` only about
    the readings that can still enter the answer, which is what makes a result-ordered query
    over a million readings cost a fraction of a second instead of seconds.
    """

    __slots__ = ("budget", "match")

    def __init__(self, budget: QueryBudget, match: Callable[[Any], bool] | None) -> None:
        self.budget = budget
        self.match = match

    def charge(self, n: int) -> None:
        self.budget.charge(n)

    def __call__(self, reading: Any) -> bool:
        self.budget.charge(1)
        return self.match is None or self.match(reading)

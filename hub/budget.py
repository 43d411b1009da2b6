"""What one public query may spend: readings examined and time, checked while it runs in its worker thread."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from typing import Any

__all__ = ["OverBudget", "QueryBudget"]

# The clock is read once per this many readings: often enough to stop within milliseconds, rarely enough to cost nothing.
CLOCK_EVERY = 4096


class OverBudget(Exception):
    """A public query went past its budget.

    ``kind`` is "readings" when it would examine more readings than one query may (the query is
    too costly: narrow it), "time" when it ran out of time or "busy" when the public lane and
    its queue are full (both: the hub is busy, retry later).
    """

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


class QueryBudget:
    """``max_examined`` readings and ``seconds`` of time for one public request, however many store queries it makes.

    One request's store queries run one after another, so the counter is never touched by two threads at once.
    ``lane`` gives each store query its turn on the public lane (hub.publicreads); none: no waiting.
    """

    def __init__(self, *, max_examined: int, seconds: float,
                 lane: Callable[[QueryBudget], AbstractAsyncContextManager[Any]] | None = None) -> None:
        self.max_examined = max_examined
        self.seconds = seconds
        self.examined = 0
        self.deadline = time.monotonic() + seconds
        self._lane = lane

    def on_lane(self) -> AbstractAsyncContextManager[Any]:
        """Hold a turn on the public lane for one store query (may raise OverBudget "busy" or "time")."""
        return nullcontext() if self._lane is None else self._lane(self)

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

    def meter(self, match: Callable[[Any], bool] | None) -> Callable[[Any], bool]:
        """``match`` (None: every reading matches) that first charges each reading it is asked about to this budget."""

        def metered(reading: Any) -> bool:
            self.examined += 1
            if self.examined > self.max_examined:
                raise OverBudget("readings", f"the query would examine more than {self.max_examined} readings, the most one query may")
            if self.examined % CLOCK_EVERY == 0:
                self.check_time()
            return match is None or match(reading)

        return metered

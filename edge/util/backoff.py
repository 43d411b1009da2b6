"""Capped exponential backoff with optional jitter: how long to wait before the next try.

One place for the arithmetic every retry loop needs (reopening a port, skipping a silent Modbus
unit, restarting a driver, reaching the hub, enrolling), so they agree on what "doubling, capped"
means and cannot overflow after a long outage.  Jitter spreads a fleet that failed together so it
does not come back in step; a loop that talks to one local device needs none.
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays ``initial * factor**n`` capped at ``maximum``, each scaled down at random by up to ``jitter``.

    ``jitter`` is the fraction of the delay that is random: 0 gives exact delays, 0.5 a delay in
    [50 %, 100 %] of the step, 1.0 "full jitter" (uniform between 0 and the step), which spreads
    clients best when many retry against one server.
    """

    def __init__(self, initial: float, maximum: float, factor: float = 2.0, jitter: float = 0.1, *,
                 rng: random.Random | None = None) -> None:
        if initial < 0 or maximum < 0 or factor < 1 or not 0 <= jitter <= 1:
            raise ValueError(f"Backoff({initial}, {maximum}, factor={factor}, jitter={jitter}): "
                             "expected initial and maximum >= 0, factor >= 1, 0 <= jitter <= 1")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        # Injected so a test (or a caller that also jitters something else) can make the sequence repeatable.
        self._rng = rng or random.Random()
        self._attempts = 0

    @property
    def attempts(self) -> int:
        """How many delays were handed out since the last reset: the failures in a row."""
        return self._attempts

    def delay(self, attempt: int) -> float:
        """The delay before retry number ``attempt`` (0-based), without counting it."""
        try:
            step = min(self.maximum, self.initial * float(self.factor) ** attempt)
        except OverflowError:  # a very long outage: the step passed the cap long ago
            step = self.maximum
        if not self.jitter:
            return step
        return step * (1.0 - self.jitter + self.jitter * self._rng.random())

    def next(self) -> float:
        """Seconds to wait before the next try; each call counts one more failure."""
        delay = self.delay(self._attempts)
        self._attempts += 1
        return delay

    def reset(self) -> None:
        """The thing works again: the next failure starts from ``initial``."""
        self._attempts = 0

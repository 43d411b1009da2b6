"""Keeps one device's driver running: restarts it with capped exponential backoff, logs once per outage."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Sequence

from drivers.sdk import Driver, Emit, Emitter, emit_all_of
from edge.protocol.types import Reading
from edge.util.backoff import Backoff
from edge.util.logonce import LogOnce

__all__ = ["DeviceRunner"]

log = logging.getLogger("ocn.runtime")


class DeviceRunner:
    """Runs a device's driver until cancelled, isolating its failures from every other device.

    A fresh driver instance is made for each attempt, so a driver never has to
    clean up after its own crash.  The first failure of an outage is logged as a
    warning; retries during the same outage only at debug level.  The device counts
    as recovered (logged once, backoff reset) only once a restarted driver has kept
    running for ``stable_after`` seconds while delivering readings, so a driver that
    crashes after every reading backs off further instead of flooding the log.

    For a device with personal channels only the exception's type is kept: a
    driver's message could carry the raw value, and this text reaches logs, the
    local API and the hub.
    """

    def __init__(
        self,
        device_id: str,
        make_driver: Callable[[], Driver],
        emit: Emit,
        *,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        stable_after: float = 10.0,
        personal: bool = False,
        rng: random.Random | None = None,
    ) -> None:
        self.device_id = device_id
        self._make_driver = make_driver
        self._emit_all = emit_all_of(emit)
        self._emitter = Emitter(self._emit_all_and_watch)  # what each driver instance is given
        self._stable_after = stable_after
        self._personal = personal
        # Jitter in [50 %, 100 %]: devices that share a failed bus do not all restart in the same instant.
        self._backoff = Backoff(backoff_initial, backoff_max, jitter=0.5, rng=rng)
        self._outage = LogOnce(log)
        self.failures = 0
        self.restarts = 0
        self.readings = 0
        self.last_error = ""
        self._started = time.monotonic()
        self.began = self._started  # when the first driver started (a device that never sent is silent since then)
        self.last_reading_at: float | None = None  # monotonic time of the last reading
        self._down = False  # a failure was logged and the device has not yet run steadily since
        self.driver: Driver | None = None  # the instance running now, for its own health opinion
        self._stopping = False  # request_stop was called: a driver that returns now has done what it was asked
        self._in_run = False  # the driver's run() is being awaited (not made yet, or the runner is backing off)

    def silent_s(self, now: float | None = None) -> float:
        """Seconds since the last reading, or since the device started if it never sent one."""
        since = self.last_reading_at if self.last_reading_at is not None else self.began
        return (time.monotonic() if now is None else now) - since

    @property
    def failing(self) -> bool:
        """Failed and not yet recovered (a restarted driver has not run ``stable_after`` seconds with readings)."""
        return self._outage.failing(self.device_id)

    @property
    def attempts(self) -> int:
        """Restarts since the device last counted as recovered."""
        return self._backoff.attempts

    async def _emit_all_and_watch(self, readings: Sequence[Reading]) -> None:
        now = time.monotonic()
        # Every reading passes here: a plain flag, not the LogOnce lookup, until a failure sets it.
        if self._down and now - self._started >= self._stable_after:
            self._down = False
            if self.failing:
                self._backoff.reset()
                self._outage.recovered(self.device_id, "device recovered", extra={"device": self.device_id, "restarts": self.restarts})
        self.readings += len(readings)
        self.last_reading_at = now
        await self._emit_all(readings)

    def backoff(self, attempt: int) -> float:
        """Delay before restart number `attempt` (0-based): doubling, capped, with jitter in [50%, 100%]."""
        return self._backoff.delay(attempt)

    def _describe(self, exc: BaseException) -> str:
        if self._personal:
            return type(exc).__name__
        return f"{type(exc).__name__}: {exc}"[:300]

    def request_stop(self) -> bool:
        """Ask the running driver to finish the poll under way, emit it and return (the gateway is stopping).

        True when there is something to wait for: a driver with ``stops_when_asked`` is running and
        was asked.  False: cancel the task now (no driver running, or one that only stops when cancelled).
        """
        self._stopping = True
        driver = self.driver
        if driver is None or not self._in_run or not driver.stops_when_asked:
            return False
        driver.ctx.stopping.set()
        return True

    async def run(self) -> None:
        """Run the device's driver until cancelled, or until it returns after :meth:`request_stop`."""
        while not self._stopping:
            self._started = time.monotonic()
            try:
                driver = self.driver = self._make_driver()
                self._in_run = True
                try:
                    await driver.run(self._emitter)
                finally:
                    self._in_run = False
                if self._stopping:
                    return
                raise RuntimeError("driver returned; drivers must run until cancelled")
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                exc: BaseException = RuntimeError("the driver raised CancelledError without being cancelled")
            except Exception as error:  # any driver failure is isolated here
                exc = error
            self.failures += 1
            self.last_error = self._describe(exc)
            if self._stopping:
                return  # the gateway is stopping: no restart (the error stays in last_error)
            delay = self._backoff.next()
            fields = {"device": self.device_id, "error": self.last_error, "retry_in_s": round(delay, 2)}
            self._down = True
            if not self._outage.failure(self.device_id, "device failed; restarting with backoff", extra=fields):
                log.debug("device still failing", extra=fields)
            await asyncio.sleep(delay)
            self.restarts += 1

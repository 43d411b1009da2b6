"""Keeps one device's driver running: restarts it with capped exponential backoff, logs once per outage."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from drivers.sdk import Driver, Emit
from edge.protocol.types import Reading

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
        self._emit = emit
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._stable_after = stable_after
        self._personal = personal
        self._rng = rng or random.Random()
        self.failing = False
        self.failures = 0
        self.restarts = 0
        self.readings = 0
        self.last_error = ""
        self._attempt = 0
        self._started = time.monotonic()

    async def _emit_and_watch(self, reading: Reading) -> None:
        if self.failing and time.monotonic() - self._started >= self._stable_after:
            self.failing = False
            self._attempt = 0
            log.info("device recovered", extra={"device": self.device_id, "restarts": self.restarts})
        self.readings += 1
        await self._emit(reading)

    def backoff(self, attempt: int) -> float:
        """Delay before restart number `attempt` (0-based): doubling, capped, with jitter in [50%, 100%]."""
        ceiling = min(self._backoff_max, self._backoff_initial * (2 ** min(attempt, 30)))
        return ceiling * (0.5 + 0.5 * self._rng.random())

    def _describe(self, exc: BaseException) -> str:
        if self._personal:
            return type(exc).__name__
        return f"{type(exc).__name__}: {exc}"[:300]

    async def run(self) -> None:
        while True:
            self._started = time.monotonic()
            try:
                driver = self._make_driver()
                await driver.run(self._emit_and_watch)
                raise RuntimeError("driver returned; drivers must run until cancelled")
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                exc: BaseException = RuntimeError("the driver raised CancelledError without being cancelled")
            except Exception as error:  # noqa: BLE001 - any driver failure is isolated here
                exc = error
            self.failures += 1
            self.last_error = self._describe(exc)
            delay = self.backoff(self._attempt)
            fields = {"device": self.device_id, "error": self.last_error, "retry_in_s": round(delay, 2)}
            if not self.failing:
                self.failing = True
                log.warning("device failed; restarting with backoff", extra=fields)
            else:
                log.debug("device still failing", extra=fields)
            self._attempt += 1
            await asyncio.sleep(delay)
            self.restarts += 1

"""Keeps one device's driver running: restarts it with capped exponential backoff, logs once per outage."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable

from drivers.sdk import Driver, Emit
from edge.types import Reading

__all__ = ["DeviceRunner"]

log = logging.getLogger("ocn.runtime")


class DeviceRunner:
    """Runs a device's driver until cancelled, isolating its failures from every other device.

    A fresh driver instance is made for each attempt, so a driver never has to
    clean up after its own crash.  The first failure of an outage is logged as a
    warning; retries during the same outage only at debug level; the first reading
    after an outage logs the recovery.  The backoff resets once a reading arrives.
    """

    def __init__(
        self,
        device_id: str,
        make_driver: Callable[[], Driver],
        emit: Emit,
        *,
        backoff_initial: float = 1.0,
        backoff_max: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self.device_id = device_id
        self._make_driver = make_driver
        self._emit = emit
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._rng = rng or random.Random()
        self.failing = False
        self.failures = 0
        self.restarts = 0
        self.readings = 0
        self.last_error = ""
        self._attempt = 0

    async def _emit_and_watch(self, reading: Reading) -> None:
        if self.failing:
            self.failing = False
            self._attempt = 0
            log.info("device recovered", extra={"device": self.device_id, "restarts": self.restarts})
        self.readings += 1
        await self._emit(reading)

    def backoff(self, attempt: int) -> float:
        """Delay before restart number `attempt` (0-based): doubling, capped, with jitter in [50%, 100%]."""
        ceiling = min(self._backoff_max, self._backoff_initial * (2 ** min(attempt, 30)))
        return ceiling * (0.5 + 0.5 * self._rng.random())

    async def run(self) -> None:
        while True:
            try:
                driver = self._make_driver()
                await driver.run(self._emit_and_watch)
                raise RuntimeError("driver returned; drivers must run until cancelled")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any driver failure is isolated here
                self.failures += 1
                self.last_error = f"{type(exc).__name__}: {exc}"[:300]
                delay = self.backoff(self._attempt)
                if not self.failing:
                    self.failing = True
                    log.warning(
                        "device failed; restarting with backoff",
                        extra={"device": self.device_id, "error": self.last_error, "retry_in_s": round(delay, 2)},
                    )
                else:
                    log.debug(
                        "device still failing",
                        extra={"device": self.device_id, "error": self.last_error, "retry_in_s": round(delay, 2)},
                    )
                self._attempt += 1
                await asyncio.sleep(delay)
                self.restarts += 1

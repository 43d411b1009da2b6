"""A crashing driver is restarted with capped backoff and never takes down the other devices."""

import asyncio
import logging

from drivers.sdk import DeviceContext, Driver, Manifest
from edge.protocol.types import Channel, Kind, Reading
from edge.supervise import DeviceRunner


class Ticker(Driver):
    manifest = Manifest(name="ticker", version="1", summary="emits a counter every 10 ms")

    def channels(self):
        return [Channel(self.ctx.channel_id("n"))]

    async def run(self, emit):
        n = 0
        while True:
            await emit(Reading(self.ctx.channel_id("n"), n, n))
            n += 1
            await asyncio.sleep(0.01)


class Flaky(Driver):
    """Fails on its first three starts (like a sensor whose port is not there yet), then works."""

    manifest = Manifest(name="flaky", version="1", summary="fails three times then works")
    starts = 0

    def channels(self):
        return [Channel(self.ctx.channel_id("v"))]

    async def run(self, emit):
        type(self).starts += 1
        if type(self).starts <= 3:
            raise OSError(2, "No such file or directory: '/dev/ttyUSB9'")
        while True:
            await emit(Reading(self.ctx.channel_id("v"), 0, 1.0))
            await asyncio.sleep(0.01)


async def test_crashing_driver_is_restarted_and_isolated(caplog):
    caplog.set_level(logging.DEBUG, logger="ocn.runtime")
    Flaky.starts = 0
    got: dict[str, list[Reading]] = {"good": [], "flaky": []}

    def sink(name):
        async def emit(r):
            got[name].append(r)

        return emit

    good = DeviceRunner("good", lambda: Ticker(DeviceContext("good", {})), sink("good"))
    flaky = DeviceRunner(
        "flaky",
        lambda: Flaky(DeviceContext("flaky", {})),
        sink("flaky"),
        backoff_initial=0.02,
        backoff_max=0.05,
        stable_after=0.1,
    )
    tasks = [asyncio.create_task(good.run()), asyncio.create_task(flaky.run())]
    await asyncio.sleep(0.6)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)

    assert flaky.restarts == 3 and flaky.failures == 3
    assert not flaky.failing and got["flaky"], "the flaky device recovered and emits again"
    assert len(got["good"]) >= 30, "the healthy device kept its pace while the other one crashed"
    assert [r.value for r in got["good"]] == list(range(len(got["good"])))

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    recovered = [r for r in caplog.records if r.getMessage() == "device recovered"]
    assert len(warnings) == 1, "one warning per outage, not one per retry"
    assert warnings[0].device == "flaky" and "ttyUSB9" in warnings[0].error
    assert len(recovered) == 1 and recovered[0].restarts == 3


def test_backoff_doubles_and_is_capped():
    async def ignore(reading: Reading) -> None:
        pass

    runner = DeviceRunner("d", lambda: Ticker(DeviceContext("d", {})), ignore, backoff_initial=1.0, backoff_max=60.0)
    ceilings = [1, 2, 4, 8, 16, 32, 60, 60, 60]
    for attempt, ceiling in enumerate(ceilings):
        delays = [runner.backoff(attempt) for _ in range(50)]
        assert all(ceiling * 0.5 <= d <= ceiling for d in delays)
    assert runner.backoff(10_000) <= 60.0


class CrashAfterEachReading(Driver):
    """Delivers one reading per start, then crashes: it must back off further, not flood the log."""

    manifest = Manifest(name="flapping", version="1", summary="one reading, then a crash")

    def channels(self):
        return [Channel(self.ctx.channel_id("v"))]

    async def run(self, emit):
        await emit(Reading(self.ctx.channel_id("v"), 0, 1.0))
        raise OSError(5, "Input/output error")


async def test_a_driver_that_crashes_after_every_reading_is_logged_once_and_backs_off(caplog):
    caplog.set_level(logging.DEBUG, logger="ocn.runtime")

    async def emit(r):
        pass

    runner = DeviceRunner(
        "flap", lambda: CrashAfterEachReading(DeviceContext("flap", {})), emit,
        backoff_initial=0.01, backoff_max=10.0, stable_after=5.0,
    )
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0.5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert runner.failures >= 4
    assert runner.failing, "a few readings between crashes are no recovery"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO] == [
        "device failed; restarting with backoff"
    ]
    assert runner.backoff(runner.attempts) > 0.01 * 2 ** 3 * 0.5, "the backoff kept growing"


class LeakyDriver(Driver):
    manifest = Manifest(name="leaky", version="1", summary="puts a MAC address in its exception")

    def channels(self):
        return [Channel(self.ctx.channel_id("mac"), kind=Kind.STRING, personal=True)]

    async def run(self, emit):
        raise ValueError("bad frame from 3c:22:fb:12:34:56")


async def test_an_error_of_a_device_with_personal_channels_keeps_only_its_type(caplog):
    caplog.set_level(logging.DEBUG, logger="ocn.runtime")

    async def emit(r):
        pass

    runner = DeviceRunner("ped-1", lambda: LeakyDriver(DeviceContext("ped-1", {})), emit, backoff_initial=0.01, personal=True)
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0.1)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert runner.last_error == "ValueError"
    assert "3c:22" not in caplog.text

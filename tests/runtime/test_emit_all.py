"""A driver may hand a poll's readings over at once (emit_all_of); they arrive as if emitted one by one."""

import asyncio

from drivers.sdk import DeviceContext, Driver, Emitter, Manifest, emit_all_of
from edge.protocol.types import Channel, Reading
from edge.supervise import DeviceRunner


def _poll(device: str, n: int) -> list[Reading]:
    return [Reading(f"{device}/v{i}", 1_000 + n, float(10 * n + i)) for i in range(3)]


class Poller(Driver):
    """Three readings a poll, handed over together; stops after two polls when asked."""

    manifest = Manifest(name="poller", version="1", summary="three values a poll")
    stops_when_asked = True

    def channels(self):
        return [Channel(self.ctx.channel_id(f"v{i}")) for i in range(3)]

    async def run(self, emit):
        emit_all = emit_all_of(emit)
        n = 0
        while not self.ctx.stopping.is_set():
            await emit_all(_poll(self.ctx.device_id, n))
            n += 1
            await asyncio.sleep(0.005)


async def test_a_plain_emit_is_called_once_a_reading_in_order():
    got: list[Reading] = []

    async def emit(reading: Reading) -> None:
        got.append(reading)

    readings = _poll("m", 0) + _poll("m", 1)
    await emit_all_of(emit)(readings)
    assert got == readings


async def test_an_emitter_takes_a_poll_at_once_and_one_reading_as_a_poll_of_one():
    calls: list[list[Reading]] = []

    async def emit_all(readings):
        calls.append(list(readings))

    emitter = Emitter(emit_all)
    assert emit_all_of(emitter) is emit_all
    await emitter.all(_poll("m", 0))
    await emitter(_poll("m", 1)[0])
    assert calls == [_poll("m", 0), [_poll("m", 1)[0]]]


async def test_the_supervisor_passes_a_poll_on_whole_counts_every_reading_and_keeps_the_order():
    polls: list[list[Reading]] = []

    async def emit_all(readings):
        polls.append(list(readings))

    runner = DeviceRunner("m", lambda: Poller(DeviceContext("m", {})), Emitter(emit_all))
    task = asyncio.create_task(runner.run())
    while len(polls) < 4:
        await asyncio.sleep(0.005)
    assert runner.request_stop()
    await asyncio.wait_for(task, 2)
    assert polls == [_poll("m", n) for n in range(len(polls))]  # one hand-over a poll, in order
    assert runner.readings == 3 * len(polls)
    assert runner.last_reading_at is not None


async def test_the_supervisor_hands_a_poll_to_a_plain_emit_one_reading_at_a_time():
    got: list[Reading] = []

    async def emit(reading: Reading) -> None:
        got.append(reading)

    runner = DeviceRunner("m", lambda: Poller(DeviceContext("m", {})), emit)
    task = asyncio.create_task(runner.run())
    while len(got) < 6:
        await asyncio.sleep(0.005)
    assert runner.request_stop()
    await asyncio.wait_for(task, 2)
    assert got == [r for n in range(len(got) // 3) for r in _poll("m", n)]
    assert runner.readings == len(got)

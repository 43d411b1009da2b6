"""Exception 6 (server device busy): asked again a few times after a short backoff, then reported as before."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest
from pymodbus.constants import ExcCodes

from drivers.buses import ExceptionReply
from drivers.modbus.bus import BUSY_RETRIES
from tests.drivers.loopback import RegisterStore


@dataclass
class BusyStore(RegisterStore):
    """A register store whose units answer "busy" to their next ``busy[unit]`` reads."""

    busy: dict[int, int] = field(default_factory=dict)
    answered_busy: asyncio.Event = field(default_factory=asyncio.Event)

    async def async_getValues(self, device_id: int, func_code: int, address: int,
                              count: int = 1) -> list[int] | list[bool] | ExcCodes:
        if self.busy.get(device_id, 0) > 0:
            self.busy[device_id] -= 1
            self.requests.append((device_id, "busy", address, count))
            self.answered_busy.set()
            return ExcCodes.DEVICE_BUSY
        return await super().async_getValues(device_id, func_code, address, count)


@pytest.fixture
def store():
    return BusyStore()


async def test_a_unit_busy_for_fewer_tries_than_the_limit_is_read_without_a_failure(store, tcp_bus):
    store.set_words(1, "holding", 0, [7, 8])
    store.busy[1] = BUSY_RETRIES
    assert await tcp_bus.read(1, "holding", 0, 2) == [7, 8]
    assert len(store.requests) == BUSY_RETRIES + 1
    stats = tcp_bus.stats()
    assert stats["busy_retries"] == BUSY_RETRIES
    assert stats["units"][1]["state"] == "ok"


async def test_a_unit_still_busy_after_the_last_retry_is_reported_busy_as_before(store, tcp_bus):
    store.set_words(1, "holding", 0, [7, 8])
    store.busy[1] = BUSY_RETRIES + 5
    with pytest.raises(ExceptionReply) as caught:
        await tcp_bus.read(1, "holding", 0, 2)
    assert caught.value.code == 6 and "busy" in str(caught.value)
    assert len(store.requests) == BUSY_RETRIES + 1
    # the next poll gets its own tries; the unit answers once it is free
    store.busy[1] = 1
    assert await tcp_bus.read(1, "holding", 0, 2) == [7, 8]


async def test_other_exceptions_are_not_retried(store, tcp_bus):
    store.set_words(1, "holding", 0, [7])
    store.readable[1] = {"holding": range(0, 1)}
    with pytest.raises(ExceptionReply) as caught:
        await tcp_bus.read(1, "holding", 5, 1)
    assert caught.value.code == 2
    assert len(store.requests) == 1


async def test_the_line_serves_other_units_between_a_busy_units_tries(store, tcp_bus):
    store.set_words(1, "holding", 0, [1])
    store.set_words(2, "holding", 0, [2])
    store.busy[1] = 2
    first = asyncio.create_task(tcp_bus.read(1, "holding", 0, 1))
    await store.answered_busy.wait()  # unit 2 now asks before unit 1's backoff ends
    assert await tcp_bus.read(2, "holding", 0, 1) == [2]
    assert await first == [1]
    assert [unit for unit, *_ in store.requests] == [1, 2, 1, 1]

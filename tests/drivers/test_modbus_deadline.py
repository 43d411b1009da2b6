"""Each request on a Modbus link fails at its own deadline, and an answered one leaves nothing to wake the loop.

Against a real Modbus TCP server on loopback.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from drivers.modbus.adapter import ModbusLink, NoReply
from tests.drivers.loopback import RegisterStore, modbus_tcp_server

SILENT = 9  # a unit the server has no registers for: it never answers


@pytest.fixture
async def link() -> AsyncIterator[ModbusLink]:
    store = RegisterStore()
    store.set_words(1, "holding", 0, [7, 8])
    server, port = await modbus_tcp_server(store)
    link = ModbusLink("tcp", tcp_port=port, timeout=2.0)
    await link.open()
    try:
        yield link
    finally:
        link.close()
        await server.shutdown()


async def _silent_for(link: ModbusLink, timeout: float) -> float:
    """Seconds until a read of the silent unit with ``timeout`` failed with NoReply."""
    began = time.monotonic()
    with pytest.raises(NoReply):
        await link.read("holding", SILENT, 0, 1, timeout=timeout)
    return time.monotonic() - began


async def test_a_silent_read_after_reads_with_a_longer_timeout_fails_at_its_own_deadline(link: ModbusLink) -> None:
    for _ in range(20):
        assert await link.read("holding", 1, 0, 2, timeout=2.0) == [7, 8]
    assert 0.25 <= await _silent_for(link, 0.3) < 1.0


async def test_a_silent_read_after_reads_with_a_shorter_timeout_is_not_cut_short(link: ModbusLink) -> None:
    for _ in range(20):
        assert await link.read("holding", 1, 0, 2, timeout=0.2) == [7, 8]
    assert 0.5 <= await _silent_for(link, 0.5) < 1.5
    # And the link goes on answering, its next silence timed again.
    assert await link.read("holding", 1, 0, 2, timeout=0.2) == [7, 8]
    assert 0.3 <= await _silent_for(link, 0.3) < 1.0


async def _sleeps_of_the_loop(seconds: float) -> int:
    """How many times the loop went to sleep (a select with a timeout) while this task slept ``seconds``."""
    loop: Any = asyncio.get_running_loop()
    selector = loop._selector
    select = selector.select
    sleeps = 0

    def counting(timeout: float | None = None) -> Any:
        nonlocal sleeps
        sleeps += timeout is None or timeout > 0
        return select(timeout)

    selector.select = counting
    try:
        await asyncio.sleep(seconds)
    finally:
        del selector.select
    return sleeps


async def test_an_idle_link_leaves_nothing_to_wake_the_loop(link: ModbusLink) -> None:
    # A meter polled at its timeout, and a device polled less often than its timeout: between polls the loop sleeps
    # once, until the next poll, and is not woken for the answered read's deadline (a timer per link, kept after the
    # reply, woke it at every such poll: 4a65298).
    assert await _sleeps_of_the_loop(0.05) == 1  # the loop alone
    for pause in (0.3, 0.6):
        for _ in range(2):
            assert await link.read("holding", 1, 0, 2, timeout=0.3) == [7, 8]
            assert await _sleeps_of_the_loop(pause) == 1


async def test_a_silent_read_cancelled_leaves_the_next_ones_their_own_deadlines(link: ModbusLink) -> None:
    waiting = asyncio.create_task(link.read("holding", SILENT, 0, 1, timeout=5.0))
    await asyncio.sleep(0.05)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert 0.3 <= await _silent_for(link, 0.3) < 1.0  # due before the cancelled read's deadline, at its own
    assert await link.read("holding", 1, 0, 2, timeout=0.5) == [7, 8]


async def test_two_reads_waiting_on_one_link_at_once_each_fail_at_their_own_deadline(link: ModbusLink) -> None:
    # The bus owner's lock never lets this happen; a link used without it still leaves no read without a deadline.
    began = time.monotonic()
    first = asyncio.create_task(link.read("holding", SILENT, 0, 1, timeout=0.3))
    await asyncio.sleep(0)  # the first is sent and waiting
    second = asyncio.create_task(link.read("holding", SILENT, 0, 1, timeout=0.6))
    for task, due in ((first, 0.3), (second, 0.6)):
        with pytest.raises(NoReply):
            await asyncio.wait_for(task, 5.0)
        assert due <= time.monotonic() - began < due + 1.0

"""bench.gateway_load's window is half a poll interval away from the gateway's polls."""

from __future__ import annotations

import asyncio
import time

import pytest

from bench.gateway_load import between_polls


@pytest.mark.parametrize("poll_s", [1.0, 0.2])
@pytest.mark.parametrize("after", [0.0, 1234.5, 1234.5000001, 1234.9, 1235.0, 98765.4321])
def test_the_window_starts_at_the_first_midpoint_between_two_of_the_gateway_s_slots(after: float, poll_s: float) -> None:
    # The Modbus driver polls at whole multiples of its interval on the loop's clock (tests/drivers/test_modbus.py).
    start = between_polls(after, poll_s)
    assert after <= start < after + poll_s
    assert (start / poll_s) % 1 == pytest.approx(0.5)


async def test_the_gateway_s_loop_clock_is_the_clock_the_benchmark_reads() -> None:
    # CLOCK_MONOTONIC in both: the harness, another process, can compute the gateway's slots.
    before = time.monotonic()
    now = asyncio.get_running_loop().time()
    assert before <= now <= time.monotonic()

"""The clock helper gives integer milliseconds: wall time for stamps, monotonic time for intervals."""

import time

from edge.util.clock import monotonic_ms, now_ms


def test_now_ms_is_integer_wall_clock_milliseconds():
    before = time.time_ns() // 1_000_000
    got = now_ms()
    after = time.time_ns() // 1_000_000
    assert isinstance(got, int) and before <= got <= after


def test_monotonic_ms_never_goes_back():
    first = monotonic_ms()
    assert isinstance(first, int) and monotonic_ms() >= first

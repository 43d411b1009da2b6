"""bench.wakeups charges each wake-up of an idle loop the CPU the scheduler counted for it, for every period it reports."""

from __future__ import annotations

import pytest

from bench import wakeups


def test_every_period_is_measured_and_the_scheduler_and_the_process_clock_agree(capsys: pytest.CaptureFixture[str]) -> None:
    figures = wakeups.measure(0.02)  # five wake-ups a period: about 5 s, most of it the 1 s sleeps
    assert sorted(figures) == sorted(wakeups.PERIODS_S)
    for ran_us, cpu_us in figures.values():
        # A wake-up costs something, and far less than the shortest period (1 ms); schedstat (ns) and
        # process_time (this process, one thread here) count the same running time.
        assert 0 < ran_us < 1000 and 0 < cpu_us < 1000
        assert abs(ran_us - cpu_us) < max(50.0, 0.5 * ran_us)

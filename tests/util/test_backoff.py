"""Backoff doubles from its first delay up to its cap, with as much jitter as asked and no more."""

import random

import pytest

from edge.util.backoff import Backoff


def test_without_jitter_the_delays_double_up_to_the_cap():
    backoff = Backoff(0.1, 1.0, jitter=0)
    assert [backoff.next() for _ in range(6)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert backoff.attempts == 6


def test_reset_starts_again_from_the_first_delay():
    backoff = Backoff(1.0, 60.0, jitter=0)
    backoff.next()
    backoff.next()
    backoff.reset()
    assert backoff.attempts == 0 and backoff.next() == 1.0


def test_jitter_only_shortens_a_delay_by_at_most_its_fraction():
    backoff = Backoff(1.0, 60.0, jitter=0.5, rng=random.Random(1))
    for attempt in range(10):
        step = min(60.0, 2.0**attempt)
        assert [0.5 * step <= backoff.delay(attempt) <= step for _ in range(50)] == [True] * 50


def test_full_jitter_is_uniform_between_zero_and_the_step():
    # The same draws as random.uniform(0, step): a seeded sequence is what it was before Backoff existed.
    ours, theirs = random.Random(7), random.Random(7)
    backoff = Backoff(1.0, 300.0, jitter=1.0, rng=ours)
    for attempt in range(12):
        assert backoff.next() == theirs.uniform(0.0, min(300.0, 2.0**attempt))


def test_a_factor_other_than_two():
    backoff = Backoff(1.0, 100.0, factor=3.0, jitter=0)
    assert [backoff.next() for _ in range(5)] == [1.0, 3.0, 9.0, 27.0, 81.0]


def test_a_very_long_outage_stays_at_the_cap_without_overflow():
    assert Backoff(1.0, 60.0, jitter=0).delay(100_000) == 60.0


@pytest.mark.parametrize("args", [(-1.0, 1.0), (1.0, -1.0), (1.0, 1.0, 0.5), (1.0, 1.0, 2.0, 1.5)])
def test_nonsense_parameters_are_refused(args):
    with pytest.raises(ValueError, match="Backoff"):
        Backoff(*args)

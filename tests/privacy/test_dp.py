"""The discrete Laplace mechanism, checked empirically against its definition and its variance."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from edge.privacy.dp import Accountant, bernoulli_exp, discrete_laplace, noise_scale, variance

DRAWS = 40_000


def draws(epsilon: float, true_count: int, seed: int) -> Counter[int]:
    accountant = Accountant(epsilon=1e6, period_ms=86_400_000, rng=random.Random(seed))
    return Counter(accountant.noisy(true_count, epsilon) for _ in range(DRAWS))


def test_neighbouring_counts_give_output_distributions_within_e_to_the_epsilon() -> None:
    epsilon, c = 0.5, 20
    a, b = draws(epsilon, c, seed=1), draws(epsilon, c + 1, seed=2)
    checked = 0
    for value in set(a) | set(b):
        if min(a[value], b[value]) < 400:  # too few draws to estimate a ratio
            continue
        ratio = a[value] / b[value]
        # Sampling tolerance: with >= 400 draws each side, 4 standard errors is about 0.28 in log ratio.
        assert abs(math.log(ratio)) <= epsilon + 0.28, (value, ratio)
        checked += 1
    assert checked >= 8


def test_the_ratio_is_actually_close_to_e_to_the_epsilon_away_from_the_true_count() -> None:
    epsilon, c = 0.5, 20
    a, b = draws(epsilon, c, seed=3), draws(epsilon, c + 1, seed=4)
    below = sum(a[v] for v in range(c - 3, c + 1)) / sum(b[v] for v in range(c - 3, c + 1))
    assert below == pytest.approx(math.exp(epsilon), rel=0.06)


@pytest.mark.parametrize("epsilon", [1.0, 0.5, 0.3])
def test_the_variance_matches_the_discrete_laplace_formula(epsilon: float) -> None:
    t, s = noise_scale(epsilon)
    rng = random.Random(int(epsilon * 1000))
    xs = [discrete_laplace(rng, t, s) for _ in range(DRAWS)]
    mean = sum(xs) / len(xs)
    sample_var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    b = 1 / epsilon
    assert variance(epsilon) == pytest.approx(2 * math.exp(-1 / b) / (1 - math.exp(-1 / b)) ** 2)
    assert sample_var == pytest.approx(variance(epsilon), rel=0.05)
    assert abs(mean) < 4 * math.sqrt(variance(epsilon) / len(xs))


def test_bernoulli_exp_hits_its_probability() -> None:
    rng = random.Random(5)
    hits = sum(bernoulli_exp(rng, 3, 2) for _ in range(DRAWS))
    assert hits / DRAWS == pytest.approx(math.exp(-1.5), abs=0.01)


def test_epsilon_is_read_exactly_as_written() -> None:
    assert noise_scale(0.3) == (10, 3)
    assert noise_scale(2.0, sensitivity=1) == (1, 2)


def test_the_accountant_spends_exact_fractions_so_ten_tenths_make_one() -> None:
    accountant = Accountant(epsilon=1.0, period_ms=86_400_000)
    assert all(accountant.charge("r", 0.1, 0) for _ in range(10))
    assert not accountant.charge("r", 0.1, 0)
    assert accountant.state(0)["left"] == 0.0

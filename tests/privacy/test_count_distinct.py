"""count_distinct: one count per window, k-threshold suppression, the epsilon budget and contribution bounding."""

from __future__ import annotations

import os
import random
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from edge.privacy import PrivacyStage
from edge.protocol.types import Reading

from .support import MIDNIGHT_MS, PED_CHANNELS, Clock, budget, make_policy

WINDOW = 900_000  # 15 minutes
DAY = 86_400_000


def counting_stage(extra: str = "", *, k: int = 5, budget: str = "", clock: Clock | None = None, seed: int = 7):
    body = budget + f'[channels."ped-1/mac"]\nrule = "count_distinct"\nwindow = "15m"\nk = {k}\n' + extra
    return PrivacyStage(make_policy(body), PED_CHANNELS, clock_ms=clock or Clock(), rng=random.Random(seed))


def mac(i: int) -> str:
    return f"02:00:00:00:{i >> 8 & 0xff:02x}:{i & 0xff:02x}"


def test_each_device_counts_once_per_window_and_the_count_carries_the_window_start() -> None:
    s = counting_stage(k=2)
    for repeat in range(3):
        for i in range(7):
            assert s.process(Reading("ped-1/mac", MIDNIGHT_MS + repeat * 1000 + i, mac(i))) == []
    (out,) = s.tick(MIDNIGHT_MS + WINDOW)
    assert (out.channel, out.ts_ms, out.value) == ("ped-1/mac.distinct_15m", MIDNIGHT_MS, 7)


def test_a_count_below_k_is_never_released() -> None:
    s = counting_stage(k=5)
    for i in range(4):
        s.process(Reading("ped-1/mac", MIDNIGHT_MS + i, mac(i)))
    assert s.tick(MIDNIGHT_MS + WINDOW) == []
    assert s.stats()["suppressed_by_k"] == 1


def test_quiet_windows_release_nothing_but_are_still_closed() -> None:
    clock = Clock()
    s = counting_stage(k=1, clock=clock)
    s.process(Reading("ped-1/mac", MIDNIGHT_MS, mac(1)))
    out = s.tick(MIDNIGHT_MS + 4 * WINDOW)
    assert [(r.ts_ms - MIDNIGHT_MS, r.value) for r in out] == [(0, 1)]
    assert s.stats()["suppressed_by_k"] == 3  # the three empty windows after it


@settings(max_examples=60, deadline=None)
@given(
    k=st.integers(min_value=2, max_value=8),
    sightings=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 12)), max_size=120),
    noisy=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_no_released_count_is_ever_between_1_and_k_minus_1(k, sightings, noisy, seed) -> None:
    budget = '[privacy_budget]\nepsilon = 100.0\n' if noisy else ""
    s = counting_stage('epsilon = 0.5\n' if noisy else "", k=k, budget=budget, seed=seed)
    out = []
    for window, device in sorted(sightings):
        out += s.process(Reading("ped-1/mac", MIDNIGHT_MS + window * WINDOW + device, mac(device)))
    out += s.flush(MIDNIGHT_MS + 6 * WINDOW)
    counts = [r.value for r in out if r.channel == "ped-1/mac.distinct_15m"]
    assert all(c >= k for c in counts)
    if not noisy:  # without noise, every window at or above k is released exactly
        truth: dict[int, set[int]] = {}
        for window, device in sightings:
            truth.setdefault(window, set()).add(device)
        assert sorted(counts) == sorted(len(v) for v in truth.values() if len(v) >= k)


BUDGET = '[privacy_budget]\nepsilon = 1.0\nperiod = "1d"\n'


def test_releases_stop_when_the_budget_is_spent_and_the_batch_says_so() -> None:
    clock = Clock()
    s = counting_stage("epsilon = 0.25\n", k=1, budget=BUDGET, clock=clock)
    out = []
    for w in range(6):
        for i in range(30):
            s.process(Reading("ped-1/mac", MIDNIGHT_MS + w * WINDOW + i, mac(i)))
        out += s.tick(clock.advance(WINDOW))
    assert [r.channel for r in out] == ["ped-1/mac.distinct_15m"] * 4 + ["ped-1/privacy.budget_exhausted"] * 2
    assert [r.ts_ms - MIDNIGHT_MS for r in out[4:]] == [4 * WINDOW, 5 * WINDOW]
    figures = budget(s)
    assert (figures["spent"], figures["left"], figures["exhausted"], figures["refused"]) == (1.0, 0.0, True, 2)


def test_a_spent_budget_is_logged_once_and_its_renewal_once(caplog) -> None:
    clock = Clock()
    s = counting_stage("epsilon = 0.5\n", k=1, budget=BUDGET, clock=clock)
    with caplog.at_level("INFO", logger="ocn.privacy"):
        for _ in range(6):
            s.tick(clock.advance(WINDOW))
        clock.now_ms = MIDNIGHT_MS + DAY
        s.tick(clock.advance(WINDOW))
    assert [r.getMessage() for r in caplog.records] == [
        "privacy budget of the period spent: counts withheld until the next period",
        "privacy budget renewed: counts published again",
    ]


def test_a_new_budget_period_starts_at_utc_midnight() -> None:
    clock = Clock()
    s = counting_stage("epsilon = 0.5\n", k=1, budget=BUDGET, clock=clock)
    for w in range(3):
        s.process(Reading("ped-1/mac", MIDNIGHT_MS + w * WINDOW, mac(1)))
        s.tick(clock.advance(WINDOW))
    assert s.stats()["budget"]["exhausted"]
    clock.now_ms = MIDNIGHT_MS + DAY
    s.process(Reading("ped-1/mac", clock.now_ms, mac(1)))
    released = s.tick(clock.advance(WINDOW))
    assert [r.channel for r in released][-1] == "ped-1/mac.distinct_15m"
    assert s.stats()["budget"]["spent"] == 0.5


def test_each_device_counts_in_at_most_max_windows_windows_per_period() -> None:
    clock = Clock()
    s = counting_stage("epsilon = 1.0\nmax_windows = 2\n", k=1, budget='[privacy_budget]\nepsilon = 100.0\n', clock=clock)
    for w in range(4):
        s.process(Reading("ped-1/mac", MIDNIGHT_MS + w * WINDOW, mac(1)))
        s.tick(clock.advance(WINDOW))
    assert s.stats()["dropped"] == {"contribution_bound": 2}


def test_with_max_windows_releases_beyond_the_bound_cost_no_budget() -> None:
    clock = Clock()
    s = counting_stage("epsilon = 1.0\nmax_windows = 2\n", k=1, budget='[privacy_budget]\nepsilon = 2.0\n', clock=clock)
    out = []
    for w in range(5):
        s.process(Reading("ped-1/mac", MIDNIGHT_MS + w * WINDOW, mac(w)))
        out += s.tick(clock.advance(WINDOW))
    assert "ped-1/privacy.budget_exhausted" not in {r.channel for r in out}
    assert s.stats()["budget"]["spent"] == 2.0


def test_the_window_key_is_destroyed_when_the_window_closes() -> None:
    s = counting_stage(k=1)
    s.process(Reading("ped-1/mac", MIDNIGHT_MS, mac(1)))
    plan = s._plans["ped-1/mac"]
    window = plan.windows[MIDNIGHT_MS]
    s.tick(MIDNIGHT_MS + WINDOW)
    assert window.key.destroyed and not window.seen and not any(window.key._key)


def test_the_epsilon_spent_survives_a_restart_when_given_a_state_file(tmp_path) -> None:
    state = tmp_path / "privacy-budget.json"
    policy = make_policy(BUDGET + '[channels."ped-1/mac"]\nrule = "count_distinct"\nwindow = "15m"\nk = 1\nepsilon = 0.25\n')
    clock = Clock()
    first = PrivacyStage(policy, PED_CHANNELS, clock_ms=clock, budget_state=state)
    for _ in range(3):
        first.tick(clock.advance(WINDOW))
    second = PrivacyStage(policy, PED_CHANNELS, clock_ms=clock, budget_state=state)
    out = []
    for _ in range(2):
        out += second.tick(clock.advance(WINDOW))
    # three windows spent 0.75 before the restart; the fourth spends the rest, the fifth is refused
    assert (out[-1].channel, out[-1].ts_ms - MIDNIGHT_MS) == ("ped-1/privacy.budget_exhausted", 4 * WINDOW)
    assert budget(second)["spent"] == 1.0


def test_an_unreadable_budget_state_counts_as_spent_until_the_next_period(tmp_path, caplog) -> None:
    state = tmp_path / "privacy-budget.json"
    state.write_text("{not json")
    policy = make_policy(BUDGET + '[channels."ped-1/mac"]\nrule = "count_distinct"\nwindow = "15m"\nk = 1\nepsilon = 0.25\n')
    now = time.time_ns() // 1_000_000
    os.utime(state, (now / 1000, now / 1000))
    clock = Clock(now - now % WINDOW)
    stage = PrivacyStage(policy, PED_CHANNELS, clock_ms=clock, budget_state=state)
    assert stage.budget_exhausted()
    assert "privacy budget state unreadable" in caplog.text

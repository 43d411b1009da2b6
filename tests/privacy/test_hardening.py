"""Found in review: values of an undeclared kind, float overflow in windows, an unwritable or misshapen budget file."""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import pytest

from edge.privacy import PolicyError, PrivacyStage
from edge.protocol.types import Channel, Kind, Reading

from .support import GPS_CHANNELS, MIDNIGHT_MS, PED_CHANNELS, Clock, budget, make_policy

WINDOW = 900_000
TEMP = Channel("weather-1/temperature", unit="Cel", resolution=0.1)
DOOR = Channel("door-1/open", kind=Kind.BOOL)
NAME = Channel("door-1/label", kind=Kind.STRING)
BUDGET = '[privacy_budget]\nepsilon = 1.0\nperiod = "1d"\n'
COUNTING = BUDGET + '[channels."ped-1/mac"]\nrule = "count_distinct"\nwindow = "15m"\nk = 1\nepsilon = 0.25\n'


@pytest.mark.parametrize(
    ("channel", "wrong", "right"),
    [
        (TEMP, "02:00:00:00:00:01", 21.5),  # a MAC on a number channel
        (TEMP, True, 21),
        (DOOR, 1, False),
        (NAME, 42, "front"),
    ],
)
@pytest.mark.parametrize("rule", ['rule = "keep"', 'rule = "round_time"\nstep = "1m"'])
def test_a_value_of_another_kind_than_declared_never_leaves(channel, wrong, right, rule) -> None:
    # Released as is, it would make the batcher refuse the whole batch and log the value.
    stage = PrivacyStage(make_policy(f'[channels."{channel.id}"]\n{rule}\n'), [channel], clock_ms=Clock())
    assert stage.process(Reading(channel.id, MIDNIGHT_MS, wrong)) == []
    assert stage.stats()["dropped"] == {"bad_value": 1}
    assert [r.value for r in stage.process(Reading(channel.id, MIDNIGHT_MS, right))] == [right]


def test_an_aggregate_of_last_values_keeps_out_values_of_another_kind() -> None:
    clock = Clock()
    stage = PrivacyStage(
        make_policy('[channels."weather-1/temperature"]\nrule = "aggregate"\nwindow = "15m"\nfunctions = ["last", "count"]\n'),
        [TEMP],
        clock_ms=clock,
    )
    stage.process(Reading(TEMP.id, MIDNIGHT_MS + 1, 20.5))
    stage.process(Reading(TEMP.id, MIDNIGHT_MS + 2, "02:00:00:00:00:01"))
    out = {r.channel: r.value for r in stage.tick(clock.advance(WINDOW))}
    assert out == {f"{TEMP.id}.last_15m": 20.5, f"{TEMP.id}.count_15m": 1}


def test_a_window_whose_sum_overflows_releases_its_other_summaries_and_the_stage_goes_on() -> None:
    # Two readings of 1e308 made the mean infinite and its rounding raise OverflowError in tick():
    # the runtime's window task died and the gateway stopped.
    clock = Clock()
    stage = PrivacyStage(
        make_policy(
            '[channels."weather-1/temperature"]\nrule = "aggregate"\nwindow = "15m"\n'
            'functions = ["mean", "min", "max", "count"]\n'
        ),
        [TEMP],
        clock_ms=clock,
    )
    for i in range(2):
        stage.process(Reading(TEMP.id, MIDNIGHT_MS + i, 1e308))
    out = {r.channel: r.value for r in stage.tick(clock.advance(WINDOW))}
    assert out == {f"{TEMP.id}.min_15m": 1e308, f"{TEMP.id}.max_15m": 1e308, f"{TEMP.id}.count_15m": 2}
    assert stage.stats()["dropped"] == {"bad_value": 1}
    stage.process(Reading(TEMP.id, clock.now_ms + 1, 20.0))
    assert [r.value for r in stage.tick(clock.advance(WINDOW)) if r.channel.endswith("mean_15m")] == [20.0]


def test_a_summary_beyond_the_float_range_at_its_step_is_left_out_and_the_others_released() -> None:
    clock = Clock()
    stage = PrivacyStage(
        make_policy('[channels."weather-1/temperature"]\nrule = "aggregate"\nwindow = "15m"\nfunctions = ["sum", "count"]\nstep = 1e-10\n'),
        [TEMP],
        clock_ms=clock,
    )
    stage.process(Reading(TEMP.id, MIDNIGHT_MS, 1e300))
    assert [(r.channel, r.value) for r in stage.tick(clock.advance(WINDOW))] == [(f"{TEMP.id}.count_15m", 1)]
    assert stage.stats()["dropped"] == {"bad_value": 1}


def test_an_unwritable_budget_file_withholds_counts_says_so_once_and_the_stage_goes_on(tmp_path, caplog) -> None:
    # The state directory cannot take the file (here: its parent is a regular file, which no
    # permission, root's included, lets one write under). The release was made and then the
    # save raised inside tick(): the gateway stopped, or, had it gone on, a restart would have
    # forgotten the release and granted its epsilon again.
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    state = blocker / "privacy-budget.json"
    clock = Clock()
    stage = PrivacyStage(make_policy(COUNTING), PED_CHANNELS, clock_ms=clock, budget_state=state)
    caplog.set_level(logging.INFO, logger="ocn.privacy")
    out = []
    for _ in range(3):
        out += stage.tick(clock.advance(WINDOW))
    assert [r.channel for r in out] == ["ped-1/privacy.budget_exhausted"] * 3
    assert budget(stage)["spent"] == 0.0
    assert caplog.text.count("privacy budget state cannot be written") == 1
    blocker.unlink()
    blocker.mkdir()
    out = stage.tick(clock.advance(WINDOW))
    assert [r.channel for r in out] == ["ped-1/mac.distinct_15m"] or out == []  # k = 1: a noisy 0 may be withheld
    assert json.loads(state.read_text())["periods"][str(MIDNIGHT_MS // 86_400_000)]["spent"] == "1/4"
    assert "privacy budget state written again" in caplog.text


@pytest.mark.parametrize(
    "content",
    [
        "[]",
        '{"period_ms": 86400000, "periods": []}',
        '{"period_ms": 86400000, "periods": {"20784": ["0"]}}',
        '{"period_ms": 86400000, "periods": {"20784": {"spent": "-100", "refused": 0}}}',
    ],
)
def test_a_misshapen_budget_file_counts_as_spent_not_as_a_crash_or_a_bonus(tmp_path, caplog, content) -> None:
    state = tmp_path / "privacy-budget.json"
    state.write_text(content)
    clock = Clock(MIDNIGHT_MS + 10 * WINDOW)
    assert MIDNIGHT_MS // 86_400_000 == 20784
    os.utime(state, ((MIDNIGHT_MS + WINDOW) / 1000, (MIDNIGHT_MS + WINDOW) / 1000))
    stage = PrivacyStage(make_policy(COUNTING), PED_CHANNELS, clock_ms=clock, budget_state=state)
    assert stage.budget_exhausted()
    assert "privacy budget state unreadable" in caplog.text


@pytest.mark.parametrize("cell", ['grid = "1m"', 'grid = "99m"', "geohash = 8", "geohash = 12"])
def test_a_personal_position_in_cells_too_small_to_hide_it_is_refused(cell) -> None:
    # geohash = 12 is a 2 cm cell: the "generalised" position equalled the exact one to 7 decimals,
    # without the allow_personal and legal_basis that keep needs for the same release.
    policy = make_policy(f'[channels."gps-1/*"]\nrule = "generalize_location"\n{cell}\n')
    with pytest.raises(PolicyError) as err:
        PrivacyStage(policy, GPS_CHANNELS, clock_ms=Clock())
    assert len(err.value.problems) == 2  # latitude and longitude, each named
    assert all("too small to hide the exact position" in p and "gps-1/" in p for p in err.value.problems)
    # the same cells on a position that is not personal (a fixed asset) are fine
    assert policy.check_channels([Channel("buoy-1/latitude", unit="lat")]) == []


@pytest.mark.parametrize("cell", ['grid = "100m"', 'grid = "1.5km"', "geohash = 7", "geohash = 1"])
def test_a_personal_position_in_cells_of_at_least_100_m_is_accepted(cell) -> None:
    stage = PrivacyStage(make_policy(f'[channels."gps-1/*"]\nrule = "generalize_location"\n{cell}\n'), GPS_CHANNELS, clock_ms=Clock())
    released = stage.process(Reading("gps-1/latitude", MIDNIGHT_MS, 43.6452123))
    assert len(released) == 1 and released[0].value != 43.6452123


def test_contribution_bounding_counts_a_reading_in_the_period_of_its_window_not_of_the_clock() -> None:
    # The accountant charges a window's release to the period its window starts in, and charges
    # only max_windows releases per period. Bounding by the clock's period let a device seen at
    # 23:59:59.9, handled just after midnight, count in a third window of yesterday (its counter
    # was already reset for today): a person in more windows than were charged.
    day = 86_400_000
    clock = Clock(MIDNIGHT_MS + day - 4 * WINDOW)  # 23:00
    body = BUDGET.replace("1.0", "100.0") + (
        '[channels."ped-1/mac"]\nrule = "count_distinct"\nwindow = "15m"\nk = 1\nepsilon = 1.0\nmax_windows = 2\n'
    )
    stage = PrivacyStage(make_policy(body), PED_CHANNELS, clock_ms=clock)
    for _ in range(2):  # 23:00 and 23:15: the device's two windows of the day
        stage.process(Reading("ped-1/mac", clock.now_ms + 1, "02:00:00:00:00:01"))
        stage.tick(clock.advance(WINDOW))
    stage.tick(clock.advance(WINDOW))  # 23:45
    clock.advance(WINDOW + 500)  # 00:00:00.5, before the next tick closes the 23:45 window
    stage.process(Reading("ped-1/mac", MIDNIGHT_MS + day - 100, "02:00:00:00:00:01"))
    assert stage.stats()["dropped"] == {"contribution_bound": 1}
    stage.tick(clock.now_ms)
    # today is a new period: the device counts again, under a new key
    stage.process(Reading("ped-1/mac", clock.now_ms, "02:00:00:00:00:01"))
    assert stage.stats()["dropped"] == {"contribution_bound": 1}


TEN_YEARS = 10 * 365 * 86_400_000


def test_after_the_clock_jumped_ahead_and_back_windows_are_released_again(caplog) -> None:
    # A clock that jumped ten years ahead for one tick (a bad RTC, then NTP) left every window
    # "released" up to 2036: each later reading was dropped as late and no count was published
    # until then. Now the windows start again from the corrected time.
    body = (
        '[channels."ped-1/mac"]\nrule = "count_distinct"\nwindow = "15m"\nk = 1\n'
        '[channels."weather-1/temperature"]\nrule = "aggregate"\nwindow = "15m"\n'
    )
    clock = Clock(MIDNIGHT_MS + 60_000)
    stage = PrivacyStage(make_policy(body), [*PED_CHANNELS, TEMP], clock_ms=clock)
    stage.tick(clock.advance(WINDOW))
    clock.now_ms += TEN_YEARS
    stage.tick(clock.now_ms)
    clock.now_ms -= TEN_YEARS
    stage.tick(clock.advance(1000))
    assert caplog.text.count("clock stepped back") == 1
    released = []
    for w in range(2):
        for i in range(3):
            stage.process(Reading("ped-1/mac", clock.now_ms, f"02:00:00:00:00:0{i}"))
        stage.process(Reading(TEMP.id, clock.now_ms, 20.0 + w))
        released += stage.tick(clock.advance(WINDOW))
    assert [(r.channel, r.value, r.quality) for r in released] == [
        ("ped-1/mac.distinct_15m", 3, 1),  # its window was closed early and restarted: not seen whole
        (f"{TEMP.id}.mean_15m", 20.0, None),  # nothing of it was released in the jump: nothing to restart
        ("ped-1/mac.distinct_15m", 3, None),
        (f"{TEMP.id}.mean_15m", 21.0, None),
    ]
    figures: dict[str, Any] = stage.stats()
    assert "late" not in figures["dropped"]
    assert caplog.text.count("clock stepped back") == 1


def test_a_release_charged_to_a_far_future_period_does_not_close_todays_budget(tmp_path) -> None:
    # The accountant forgot every period more than 3 below the highest it had seen, and refused
    # them: one window charged to 2036 withheld every count until 2036, across restarts too.
    state = tmp_path / "privacy-budget.json"
    clock = Clock(MIDNIGHT_MS + 60_000)
    stage = PrivacyStage(make_policy(COUNTING), PED_CHANNELS, clock_ms=clock, budget_state=state)
    stage.tick(clock.advance(WINDOW))  # 0.25 of today's 1.0 spent
    clock.now_ms += TEN_YEARS
    stage.tick(clock.now_ms)
    clock.now_ms -= TEN_YEARS
    stage.tick(clock.advance(1000))
    restarted = PrivacyStage(make_policy(COUNTING), PED_CHANNELS, clock_ms=clock, budget_state=state)
    assert not restarted.budget_exhausted()
    out = []
    for _ in range(4):
        out += restarted.tick(clock.advance(WINDOW))
    # today had 0.25 + 0.25 (the window closed early when the clock came back) spent: two more
    # releases fit, then the budget is spent: today's record was kept, not forgotten
    assert [r.channel.endswith("budget_exhausted") for r in out if r.channel.endswith(("exhausted", "15m"))][-2:] == [True, True]
    assert budget(restarted)["spent"] == 1.0


def test_the_accountant_forgets_only_its_lowest_periods_and_refuses_them_afterwards(tmp_path) -> None:
    from edge.privacy.dp import Accountant

    day = 86_400_000
    state = tmp_path / "budget.json"
    accountant = Accountant(epsilon=1.0, period_ms=day, state_path=state)
    first = MIDNIGHT_MS
    for d in range(Accountant.MAX_PERIODS + 1):
        assert accountant.charge("a", 0.5, first + d * day)
    assert not accountant.charge("a", 0.5, first)  # forgotten: closed, refused
    assert accountant.charge("a", 0.5, first + 100 * day)  # never charged: a fresh period
    again = Accountant(epsilon=1.0, period_ms=day, state_path=state)
    assert not again.charge("a", 0.5, first)  # the floor survives a restart
    assert again.charge("a", 0.5, first + Accountant.MAX_PERIODS * day)  # 0.5 + 0.5: still fits
    assert not again.charge("a", 0.5, first + Accountant.MAX_PERIODS * day)


def test_the_floor_is_kept_as_written_and_derived_for_files_written_before_it(tmp_path) -> None:
    from edge.privacy.dp import Accountant

    day = 86_400_000
    p = MIDNIGHT_MS // day
    state = tmp_path / "budget.json"
    Accountant(epsilon=1.0, period_ms=day, state_path=state).charge("a", 0.5, MIDNIGHT_MS)
    assert json.loads(state.read_text())["floor"] is None  # nothing forgotten yet
    assert Accountant(epsilon=1.0, period_ms=day, state_path=state).charge("a", 0.5, MIDNIGHT_MS - day)
    state.write_text(json.dumps({"period_ms": day, "periods": {str(p): {"spent": "1/2", "refused": 0}}}))
    older = Accountant(epsilon=1.0, period_ms=day, state_path=state)
    assert not older.charge("a", 0.5, MIDNIGHT_MS - day)  # an old file may have forgotten what lay below
    assert older.charge("a", 0.5, MIDNIGHT_MS) and not older.charge("a", 0.5, MIDNIGHT_MS)

"""The soak's reconciliation on small cases whose answer is known: every cause, a duplicate, a leak, a wrong counter."""

from __future__ import annotations

from bench.soak.evidence import update_problems
from bench.soak.reconcile import Channelled, Events, reconcile, table
from edge.privacy.policy import parse_policy
from edge.protocol.types import Channel, Reading

T0 = 1_790_000_000_000
POLICY_TEXT = """
[policy]
name = "test"
version = "1"
organisation = "Test"
contact = "t@test.example"
purpose = "test the reconciliation"
retention = "none"
access = "none"

[channels."m-1/volts"]
rule = "keep"
purpose = "energy"

[channels."gps-1/latitude"]
rule = "generalize_location"
grid = "250m"
"""
POLICY = parse_policy(POLICY_TEXT)
VOLTS = Channel("m-1/volts", unit="V", resolution=0.1)
SECRET = Channel("m-1/secret", unit="", resolution=1.0)
LATITUDE = Channel("gps-1/latitude", unit="lat", resolution=1e-7, personal=True)
CHANNELS = [VOLTS, SECRET, LATITUDE]


def served(n: int = 40, *, faulted: tuple[int, ...] = ()) -> list[Channelled]:
    """A meter read once a second (230.0, 230.1, ...) and a secret channel the policy denies."""
    out = []
    for i in range(n):
        faults = ("bad_checksum",) if i in faulted else ()
        out.append(Channelled(Reading(VOLTS.id, T0 + i * 1000, round(230 + i / 10, 1), "V"), faults))
        out.append(Channelled(Reading(SECRET.id, T0 + i * 1000, i, ""), faults))
    return out


def stored_volts(indices: list[int], *, late_ms: int = 40) -> dict[str, list[tuple[int, object]]]:
    """What the hub stored: the gateway stamps a reading a little after hil-sim served it."""
    return {VOLTS.id: [(T0 + i * 1000 + late_ms, round(230 + i / 10, 1)) for i in indices]}


def events() -> Events:
    """A gateway running from 0 s, killed at 20.5 s, running again from 24 s to the end; the quota refused 30-33 s."""
    return Events(runs=[(T0, T0 + 20_500), (T0 + 24_000, None)], kills=[T0 + 20_500], quota=[(T0 + 32_000, T0 + 33_000)],
                  unplugged={"m-1": [(T0 + 12_000, T0 + 14_000)]}, flush_ms=2_000, slack_ms=1_000, reopen_ms=1_500)


def test_every_missing_reading_is_given_its_cause_and_the_soak_passes():
    lost = {
        5: "fault",          # its frame was corrupted
        13: "unplugged",     # served just before the port went (12 s) ...
        15: "unplugged",     # ... and just after it came back (14 s), within the reopen bound
        18: "at_risk",       # within the flush interval (+ slack) before the kill at 20.5 s
        22: "not_running",   # between the kill and the restart
        24: "not_running",   # the restarted gateway was opening its ports
        29: "quota",         # the first refused batch's readings (flush interval + slack before 32 s)
        32: "quota",
    }
    outcome = reconcile(policy=POLICY, channels=CHANNELS, served=served(faulted=(5,)),
                        stored=stored_volts([i for i in range(40) if i not in lost]), events=events(), counted_quota_drops=2)
    volts = next(row for row in outcome.rows if row.channel == VOLTS.id)
    assert (volts.served, volts.released, volts.matched, volts.duplicates, volts.extra) == (40, 40, 32, 0, 0)
    assert dict(volts.missing) == {"fault": 1, "unplugged": 2, "at_risk": 1, "not_running": 2, "quota": 2}
    assert outcome.ok, table(outcome)


def test_a_channel_the_policy_denies_releases_nothing_and_anything_of_it_at_the_hub_is_extra():
    stored = stored_volts(list(range(40))) | {SECRET.id: [(T0 + 1040, 1)]}
    outcome = reconcile(policy=POLICY, channels=CHANNELS, served=served(), stored=stored, events=events(), counted_quota_drops=0)
    secret = next(row for row in outcome.rows if row.channel == SECRET.id)
    assert (secret.served, secret.released, secret.stored, secret.extra) == (40, 0, 1, 1)
    assert not outcome.ok
    assert "FAIL" in table(outcome)


def test_a_reading_stored_twice_is_a_duplicate():
    outcome = reconcile(policy=POLICY, channels=CHANNELS, served=served(), stored=stored_volts([*range(40), 7]),
                        events=events(), counted_quota_drops=0)
    volts = next(row for row in outcome.rows if row.channel == VOLTS.id)
    assert (volts.matched, volts.duplicates, volts.extra) == (40, 1, 0)
    assert not outcome.ok


def test_a_poll_under_way_when_sigterm_came_is_not_running_and_nothing_earlier_is():
    ev = events()
    ev.runs[-1] = (T0 + 24_000, T0 + 38_500)
    ev.stops = [T0 + 38_500]
    outcome = reconcile(policy=POLICY, channels=CHANNELS, served=served(), stored=stored_volts([i for i in range(40) if i not in (35, 38, 39)]),
                        events=ev, counted_quota_drops=0)
    volts = next(row for row in outcome.rows if row.channel == VOLTS.id)
    assert dict(volts.missing) == {"unexplained": 1, "not_running": 2}  # 38 s (within 2 s of the SIGTERM) and 39 s (after it)
    assert [r.ts_ms for r in volts.unexplained] == [T0 + 35_000]


def test_a_reading_lost_outside_every_window_is_unexplained():
    outcome = reconcile(policy=POLICY, channels=CHANNELS, served=served(), stored=stored_volts([i for i in range(40) if i != 9]),
                        events=events(), counted_quota_drops=0)
    volts = next(row for row in outcome.rows if row.channel == VOLTS.id)
    assert volts.missing["unexplained"] == 1
    assert [r.ts_ms for r in volts.unexplained] == [T0 + 9_000]
    assert not outcome.ok
    # The table says when it was served (UTC, as the logs stamp their lines), so the logs can be read around it.
    assert table(outcome).splitlines()[-1] == "UNEXPLAINED: served 2026-09-21T14:13:29.000Z: m-1/volts"


def test_a_quota_counter_outside_what_the_windows_allow_is_a_problem():
    stored = stored_volts([i for i in range(40) if i != 32])
    for counted in (0, 2):  # one reading is missing in the quota window: the spool must have counted exactly it
        outcome = reconcile(policy=POLICY, channels=CHANNELS, served=served(), stored=stored, events=events(), counted_quota_drops=counted)
        assert not outcome.ok and "quota" in outcome.problems[0]
    assert reconcile(policy=POLICY, channels=CHANNELS, served=served(), stored=stored, events=events(), counted_quota_drops=1).ok


def test_a_reading_in_the_spool_after_the_last_stop_is_not_lost():
    outcome = reconcile(policy=POLICY, channels=CHANNELS, served=served(), stored=stored_volts(list(range(39))), events=events(),
                        counted_quota_drops=0, spooled={VOLTS.id: [(T0 + 39_040, 233.9)]})
    volts = next(row for row in outcome.rows if row.channel == VOLTS.id)
    assert (volts.stored, volts.spooled, volts.matched) == (39, 1, 40)
    assert outcome.ok


def test_the_policy_is_replayed_so_a_coarsened_position_matches_and_a_constant_matches_its_own_moment():
    fixes = [Channelled(Reading(LATITUDE.id, T0 + i * 1000, 43.645177 + i * 1e-6, "lat"), ()) for i in range(10)]
    cell = 43.6451222  # the 250 m cell every one of these fixes falls in
    # The gateway lost the fix of 2 s (a kill) and the hub holds the others, all with the same coarse value.
    stored = {LATITUDE.id: [(T0 + i * 1000 + 30, cell) for i in range(10) if i != 2]}
    ev = Events(runs=[(T0 - 5_000, T0 + 2_500), (T0 + 2_600, None)], kills=[T0 + 2_500], flush_ms=500, slack_ms=0)
    outcome = reconcile(policy=POLICY, channels=CHANNELS, served=fixes, stored=stored, events=ev, counted_quota_drops=0)
    row = next(row for row in outcome.rows if row.channel == LATITUDE.id)
    assert (row.released, row.matched, row.extra) == (10, 9, 0)
    assert dict(row.missing) == {"at_risk": 1}  # matched by nearest time, the one missing is the one at 2 s
    assert outcome.ok, table(outcome)


def test_an_installer_restart_explains_only_what_came_after_its_sigterm_until_the_new_slot_reads():
    ev = events()
    ev.runs[-1] = (T0 + 24_000, T0 + 34_500)  # the installer's SIGTERM at 34.5 s (an update), the new slot running at 36.2 s
    ev.runs.append((T0 + 36_200, None))
    ev.restarts = [(T0 + 34_500, T0 + 36_200)]
    lost = [34, 35, 36, 37]  # 34 s: read before the SIGTERM, which a clean stop keeps; the others are in the window (+ 1 s slack)
    outcome = reconcile(policy=POLICY, channels=CHANNELS, served=served(), stored=stored_volts([i for i in range(40) if i not in lost]),
                        events=ev, counted_quota_drops=0)
    volts = next(row for row in outcome.rows if row.channel == VOLTS.id)
    assert dict(volts.missing) == {"unexplained": 1, "update": 3}
    assert [r.ts_ms for r in volts.unexplained] == [T0 + 34_000]
    assert not outcome.ok


def test_the_update_steps_must_install_then_roll_back_and_halt():
    good = {"version": "2.0.0", "labels": ["update"], "restarts": [[1, 2]], "outcome": {"state": "installed"}, "rollout": "done"}
    bad = {"version": "3.0.0", "labels": ["update", "rollback"], "restarts": [[3, 4], [5, 6]], "outcome": {"state": "rolled_back"},
           "rollout": "halted"}
    assert update_problems([good, bad]) == []
    assert update_problems(None) == []  # a kept run from before the timeline had updates
    [problem] = update_problems([good, {**bad, "outcome": {"state": "installed"}, "rollout": "done"}])
    assert "3.0.0: installer installed" in problem and "expected rolled_back, halted" in problem
    assert "rolled out 1 releases" in update_problems([good])[0]


def test_a_window_a_clean_stop_split_is_two_partial_counts_and_the_same_count_twice_otherwise_a_duplicate():
    budget = '\n[privacy_budget]\nepsilon = 1000.0\nperiod = "1d"\n'
    policy = parse_policy(POLICY_TEXT + budget + '\n[channels."ped-1/mac"]\nrule = "count_distinct"\nwindow = "1m"\nk = 2\nepsilon = 1.0\npurpose = "busy"\n')
    mac = Channel("ped-1/mac", unit="", resolution=None, personal=True)
    counts = "ped-1/mac.distinct_1m"
    minute = T0 - T0 % 60_000
    stored = {counts: [(minute, 3), (minute, 3)]}  # the same count for one window, twice
    split = Events(runs=[(T0 - 60_000, T0 + 10_000), (T0 + 12_000, None)], restarts=[(T0 + 10_000, T0 + 12_000)])
    row = next(r for r in reconcile(policy=policy, channels=[*CHANNELS, mac], served=[], stored=stored, events=split,
                                    counted_quota_drops=0).rows if r.channel == counts)
    assert (row.windowed, row.split, row.duplicates, row.ok) == (True, 1, 0, True)  # an update's restart split that window
    unsplit = Events(runs=[(T0 - 60_000, None)])
    row = next(r for r in reconcile(policy=policy, channels=[*CHANNELS, mac], served=[], stored=stored, events=unsplit,
                                    counted_quota_drops=0).rows if r.channel == counts)
    assert (row.split, row.duplicates, row.ok) == (0, 1, False)


def test_a_reply_marked_overrun_explains_its_missing_reading_and_is_counted_when_it_arrived_all_the_same():
    # hil-sim answered requests 7 and 9 past the gateway's deadline (ledger fault "overrun"): 7 never arrived, a fault
    # like any other; 9 did (a gateway whose loop was late took it), which the soak reports rather than hides.
    readings = served()
    marked = [Channelled(c.reading, ("overrun",)) if c.reading.ts_ms in (T0 + 7_000, T0 + 9_000) else c for c in readings]
    outcome = reconcile(policy=POLICY, channels=CHANNELS, served=marked,
                        stored=stored_volts([i for i in range(40) if i != 7]), events=Events(runs=[(T0, None)]),
                        counted_quota_drops=0)
    volts = next(row for row in outcome.rows if row.channel == VOLTS.id)
    assert volts.missing["fault"] == 1 and volts.missing["unexplained"] == 0
    assert outcome.overrun_taken == 1 and outcome.ok

"""What each rule lets out of the privacy stage, and default deny."""

from __future__ import annotations

from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.privacy import PrivacyStage
from edge.privacy.location import geohash_cell_deg, snap
from edge.protocol.types import Channel, Kind, Quality, Reading

from .support import GPS_CHANNELS, MIDNIGHT_MS, PED_CHANNELS, Clock, make_policy

PM = Channel("pm-1/pm2_5", unit="ug/m3", resolution=0.1)
TEMP = Channel("weather-1/temperature", unit="Cel", resolution=0.1)


def stage(body: str, channels, clock: Clock | None = None) -> PrivacyStage:
    return PrivacyStage(make_policy(body), channels, clock_ms=clock or Clock())


def test_a_channel_the_policy_does_not_name_never_leaves() -> None:
    s = stage('[channels."pm-1/pm2_5"]\nrule = "keep"\n', [PM, TEMP])
    assert s.process(Reading("weather-1/temperature", MIDNIGHT_MS, 21.5)) == []
    assert [c.id for c in s.output_channels()] == ["pm-1/pm2_5"]
    assert s.stats()["dropped"] == {"default_deny": 1}


def test_an_undeclared_channel_never_leaves_even_if_a_glob_would_keep_it() -> None:
    s = stage('[channels."*"]\nrule = "keep"\n', [PM])
    assert s.process(Reading("rogue/value", MIDNIGHT_MS, 1)) == []


def test_drop_releases_nothing_and_is_counted_by_reason() -> None:
    s = stage('[channels."ped-1/*"]\nrule = "drop"\n', PED_CHANNELS)
    assert s.process(Reading("ped-1/rssi", MIDNIGHT_MS, -70)) == []
    assert s.stats()["dropped"] == {"drop": 1}


def test_keep_releases_the_reading_unchanged() -> None:
    s = stage('[channels."pm-1/pm2_5"]\nrule = "keep"\n', [PM])
    r = Reading("pm-1/pm2_5", MIDNIGHT_MS + 5, 12.3, "ug/m3", Quality.SUSPECT)
    assert s.process(r) == [r]


def test_quantize_rounds_to_the_step_and_declares_it_as_resolution() -> None:
    s = stage('[channels."weather-1/temperature"]\nrule = "quantize"\nstep = 0.5\n', [TEMP])
    assert [r.value for r in s.process(Reading(TEMP.id, MIDNIGHT_MS, 21.26))] == [21.5]
    assert [r.value for r in s.process(Reading(TEMP.id, MIDNIGHT_MS, 21.24))] == [21.0]
    assert s.output_channels()[0].resolution == 0.5


def test_quantize_drops_a_value_that_is_not_a_number() -> None:
    s = stage('[channels."weather-1/temperature"]\nrule = "quantize"\nstep = 0.5\n', [TEMP])
    assert s.process(Reading(TEMP.id, MIDNIGHT_MS, float("nan"))) == []
    assert s.stats()["dropped"] == {"bad_value": 1}


def test_round_time_floors_the_timestamp_to_the_step() -> None:
    s = stage('[channels."pm-1/pm2_5"]\nrule = "round_time"\nstep = "1m"\n', [PM])
    (out,) = s.process(Reading(PM.id, MIDNIGHT_MS + 119_999, 5.0))
    assert out.ts_ms == MIDNIGHT_MS + 60_000


def test_aggregate_releases_only_window_summaries_at_the_window_start_when_the_window_closes() -> None:
    clock = Clock()
    s = stage('[channels."weather-1/*"]\nrule = "aggregate"\nwindow = "5m"\nfunctions = ["mean", "min", "max", "count", "sum", "last"]\n', [TEMP], clock)
    for i, v in enumerate([20.0, 22.0, 21.0]):
        assert s.process(Reading(TEMP.id, MIDNIGHT_MS + i * 60_000, v)) == []
    assert s.tick(MIDNIGHT_MS + 299_999) == []
    out = {r.channel: r.value for r in s.tick(MIDNIGHT_MS + 300_000)}
    assert out == {
        "weather-1/temperature.mean_5m": 21.0,
        "weather-1/temperature.min_5m": 20.0,
        "weather-1/temperature.max_5m": 22.0,
        "weather-1/temperature.count_5m": 3,
        "weather-1/temperature.sum_5m": 63.0,
        "weather-1/temperature.last_5m": 21.0,
    }
    assert {r.ts_ms for r in s.tick(MIDNIGHT_MS + 300_000)} == set()
    assert [c.id for c in s.output_channels()] == list(out)


def test_aggregate_windows_align_to_utc_boundaries_not_to_the_first_reading() -> None:
    s = stage('[channels."weather-1/*"]\nrule = "aggregate"\nwindow = "1h"\n', [TEMP])
    s.process(Reading(TEMP.id, MIDNIGHT_MS + 59 * 60_000, 1.0))
    s.process(Reading(TEMP.id, MIDNIGHT_MS + 61 * 60_000, 3.0))
    out = s.tick(MIDNIGHT_MS + 2 * 3_600_000)
    assert [(r.ts_ms - MIDNIGHT_MS, r.value) for r in out] == [(0, 1.0), (3_600_000, 3.0)]


def test_a_reading_for_an_already_released_window_is_dropped_as_late() -> None:
    s = stage('[channels."weather-1/*"]\nrule = "aggregate"\nwindow = "5m"\n', [TEMP])
    s.process(Reading(TEMP.id, MIDNIGHT_MS, 1.0))
    s.tick(MIDNIGHT_MS + 300_000)
    assert s.process(Reading(TEMP.id, MIDNIGHT_MS + 1000, 9.0)) == []
    assert s.stats()["dropped"] == {"late": 1}


def test_aggregate_leaves_out_readings_the_device_marked_bad() -> None:
    s = stage('[channels."weather-1/*"]\nrule = "aggregate"\nwindow = "5m"\n', [TEMP])
    s.process(Reading(TEMP.id, MIDNIGHT_MS, 1.0))
    s.process(Reading(TEMP.id, MIDNIGHT_MS, 999.0, quality=Quality.BAD))
    assert [r.value for r in s.flush(MIDNIGHT_MS + 1000)] == [1.0]


def test_flush_releases_partial_windows_at_shutdown() -> None:
    s = stage('[channels."weather-1/*"]\nrule = "aggregate"\nwindow = "1h"\n', [TEMP])
    s.process(Reading(TEMP.id, MIDNIGHT_MS + 10, 4.0))
    assert [(r.channel, r.ts_ms, r.value) for r in s.flush(MIDNIGHT_MS + 60_000)] == [
        ("weather-1/temperature.mean_1h", MIDNIGHT_MS, 4.0)
    ]


GRID = """
[channels."gps-1/*"]
rule = "generalize_location"
grid = "250m"
"""


def test_generalize_location_releases_the_centre_of_the_grid_cell() -> None:
    s = stage(GRID, GPS_CHANNELS)
    (lat,) = s.process(Reading("gps-1/latitude", MIDNIGHT_MS, 43.6452123))
    (lon,) = s.process(Reading("gps-1/longitude", MIDNIGHT_MS, -79.3957123))
    cell_lat = 250 / 111_320
    assert isinstance(lat.value, float) and isinstance(lon.value, float)
    assert abs(lat.value - 43.6452123) <= cell_lat / 2 + 1e-7
    assert lat.value != 43.6452123 and lon.value != -79.3957123
    # a nearby position in the same cell gives the same output
    (lat2,) = s.process(Reading("gps-1/latitude", MIDNIGHT_MS, lat.value + cell_lat / 4))
    assert lat2.value == lat.value
    assert not any(c.personal for c in s.output_channels())


def test_grid_cells_are_about_as_wide_as_asked_on_the_ground() -> None:
    import math

    s = stage(GRID, GPS_CHANNELS)
    s.process(Reading("gps-1/latitude", MIDNIGHT_MS, 43.6452))
    lons = {float(s.process(Reading("gps-1/longitude", MIDNIGHT_MS, -79.4 + i * 1e-5))[0].value) for i in range(2000)}
    steps = sorted(b - a for a, b in pairwise(sorted(lons)))
    metres = steps[0] * 111_320 * math.cos(math.radians(43.6452))
    assert 240 < metres < 260


def test_generalize_location_by_geohash_uses_the_geohash_cell_of_each_axis() -> None:
    s = stage('[channels."gps-1/*"]\nrule = "generalize_location"\ngeohash = 5\n', GPS_CHANNELS)
    (lat,) = s.process(Reading("gps-1/latitude", MIDNIGHT_MS, 43.6452))
    (lon,) = s.process(Reading("gps-1/longitude", MIDNIGHT_MS, -79.3957))
    # geohash "dpz83": 12 latitude bits and 13 longitude bits
    assert lat.value == pytest.approx(-90 + (int((43.6452 + 90) / (180 / 4096)) + 0.5) * 180 / 4096, abs=1e-7)
    assert lon.value == pytest.approx(-180 + (int((-79.3957 + 180) / (360 / 8192)) + 0.5) * 360 / 8192, abs=1e-7)


def test_generalize_location_needs_to_know_the_axis() -> None:
    from edge.privacy import PolicyError

    odd = [Channel("gps-1/northing", unit="m", personal=True)]
    with pytest.raises(PolicyError, match='set axis = "latitude" or axis = "longitude"'):
        stage('[channels."gps-1/*"]\nrule = "generalize_location"\ngrid = "1km"\n', odd)


def test_pseudonymize_releases_a_hex_pseudonym_of_the_configured_bits_on_a_string_channel_still_marked_personal() -> None:
    s = stage('[channels."ped-1/mac"]\nrule = "pseudonymize"\nbits = 64\n', PED_CHANNELS)
    (a,) = s.process(Reading("ped-1/mac", MIDNIGHT_MS, "aa:bb:cc:dd:ee:01"))
    (b,) = s.process(Reading("ped-1/mac", MIDNIGHT_MS + 1, "aa:bb:cc:dd:ee:01"))
    (c,) = s.process(Reading("ped-1/mac", MIDNIGHT_MS + 2, "aa:bb:cc:dd:ee:02"))
    assert isinstance(a.value, str) and len(a.value) == 16 and int(a.value, 16) >= 0
    assert a.value == b.value != c.value
    (out,) = s.output_channels()
    # A pseudonym singles out one phone for a key period: personal data, which the hub never publishes.
    assert (out.id, out.kind, out.personal) == ("ped-1/mac", Kind.STRING, True)


def test_budget_channel_is_declared_for_each_device_with_a_noisy_count() -> None:
    s = stage(
        '[privacy_budget]\nepsilon = 1.0\n[channels."ped-1/mac"]\nrule = "count_distinct"\nwindow = "15m"\nepsilon = 0.5\n',
        PED_CHANNELS,
    )
    assert [(c.id, c.kind) for c in s.output_channels()] == [
        ("ped-1/mac.distinct_15m", Kind.NUMBER),
        ("ped-1/privacy.budget_exhausted", Kind.BOOL),
    ]


@settings(max_examples=200, deadline=None)
@given(
    value=st.floats(min_value=-89.999, max_value=89.999, allow_nan=False),
    precision=st.integers(min_value=1, max_value=12),
    axis=st.sampled_from(["latitude", "longitude"]),
)
def test_a_geohash_cell_centre_is_within_half_a_cell_and_stable(value: float, precision: int, axis: str) -> None:
    cell = geohash_cell_deg(precision, axis)
    centre = snap(value, cell, axis)
    assert abs(centre - value) <= cell / 2 + 1e-7
    assert snap(centre, cell, axis) == centre  # generalising twice changes nothing


def test_a_mean_is_kept_to_a_tenth_of_the_declared_resolution() -> None:
    clock = Clock()
    s = stage('[channels."weather-1/*"]\nrule = "aggregate"\nwindow = "5m"\nfunctions = ["mean"]\n', [TEMP], clock)
    [mean_channel] = s.output_channels()
    assert TEMP.resolution is not None
    assert mean_channel.resolution == pytest.approx(TEMP.resolution / 10)
    for i, value in enumerate((20.1, 20.2, 20.2)):
        s.process(Reading(TEMP.id, MIDNIGHT_MS + i * 60_000, value))
    [mean] = s.tick(MIDNIGHT_MS + 300_000)
    assert mean.value == 20.17  # 20.1666… to a hundredth, not a float's 16 digits


def test_a_window_the_stage_did_not_see_whole_is_released_flagged_suspect() -> None:
    clock = Clock(MIDNIGHT_MS + 60_000)  # the gateway starts one minute into a 5-minute window
    s = stage('[channels."weather-1/*"]\nrule = "aggregate"\nwindow = "5m"\nfunctions = ["mean"]\n', [TEMP], clock)
    for t in (90_000, 390_000, 690_000):
        s.process(Reading(TEMP.id, MIDNIGHT_MS + t, 20.0))
    [first] = s.tick(MIDNIGHT_MS + 300_000)
    [full] = s.tick(MIDNIGHT_MS + 600_000)
    [last] = s.flush(MIDNIGHT_MS + 700_000)  # stopped inside the third window
    assert (first.quality, full.quality, last.quality) == (Quality.SUSPECT, None, Quality.SUSPECT)


MIXED = """
[channels."pm-1/pm2_5"]
rule = "keep"
[channels."weather-1/temperature"]
rule = "quantize"
step = 0.5
[channels."ped-1/rssi"]
rule = "aggregate"
window = "1m"
functions = ["mean", "max"]
[channels."ped-1/radio"]
rule = "drop"
"""


def _mixed_poll(start_ms: int) -> list[Reading]:
    return [
        Reading("pm-1/pm2_5", start_ms, 12.5),  # kept, the unit filled in from the channel
        Reading("pm-1/pm2_5", start_ms + 1, "twelve"),  # kept channel, not a number: dropped as bad_value
        Reading("weather-1/temperature", start_ms + 2, 21.3),
        Reading("ped-1/rssi", start_ms + 3, -70),
        Reading("ped-1/radio", start_ms + 4, "ble"),
        Reading("rogue/value", start_ms + 5, 1),
        Reading("pm-1/pm2_5", start_ms + 6, 13, "ug/m3"),
    ]


def test_a_polls_readings_at_once_take_each_readings_rule_in_order() -> None:
    s = stage(MIXED, [PM, TEMP, *PED_CHANNELS], Clock())
    for minute in range(3):
        start = MIDNIGHT_MS + minute * 60_000
        out = s.process_all(_mixed_poll(start))
        assert [(r.channel, r.ts_ms - start, r.value, r.unit) for r in out] == [
            ("pm-1/pm2_5", 0, 12.5, "ug/m3"),  # kept; the unit filled in from the declared channel
            ("weather-1/temperature", 2, 21.5, "Cel"),  # quantized to the 0.5 step
            ("pm-1/pm2_5", 6, 13, "ug/m3"),
        ]
    assert s.stats()["dropped"] == {"bad_value": 3, "drop": 3, "default_deny": 3}
    summaries = s.tick(MIDNIGHT_MS + 3 * 60_000)  # the rssi readings went into their windows
    assert sorted((r.channel, r.ts_ms - MIDNIGHT_MS, r.value) for r in summaries) == [
        (f"ped-1/rssi.{f}_1m", minute * 60_000, -70) for f in ("max", "mean") for minute in range(3)]


def test_a_reading_whose_rule_raises_is_handed_back_and_the_rest_of_the_poll_goes_on() -> None:
    s = stage('[channels."pm-1/pm2_5"]\nrule = "quantize"\nstep = 0.001\n', [PM])
    poll = [Reading("pm-1/pm2_5", MIDNIGHT_MS, 1.0), Reading("pm-1/pm2_5", MIDNIGHT_MS + 1, 1e308),  # overflows
            Reading("pm-1/pm2_5", MIDNIGHT_MS + 2, 2.0)]
    failed: list[tuple[Reading, Exception]] = []
    out = s.process_all(poll, lambda reading, exc: failed.append((reading, exc)))
    assert [r.value for r in out] == [1.0, 2.0]
    assert [r.value for r, _ in failed] == [1e308] and isinstance(failed[0][1], OverflowError)
    with pytest.raises(OverflowError):  # without a callback the exception is the caller's, as with process
        s.process_all(poll)

"""CSV input for `ocn-edge oxp encode`: times, kinds and resolutions as a technician writes them."""

from __future__ import annotations

import pytest

from edge.protocol.csvinput import CsvError, parse_time, read_csv
from edge.protocol.types import Kind


def test_times_in_iso_8601_and_epoch_seconds_agree():
    assert parse_time("2026-01-01T00:00:00Z") == parse_time("1767225600") == 1_767_225_600_000
    assert parse_time("2026-01-01T01:00:00+01:00") == 1_767_225_600_000
    assert parse_time("2026-01-01 00:00:00.250") == 1_767_225_600_250  # no zone means UTC
    assert parse_time("1767225600.125") == 1_767_225_600_125


def test_epoch_finer_than_a_millisecond_is_refused():
    with pytest.raises(CsvError, match=r"x.csv:1: column time: value '1767225600.1234'"):
        read_csv(["1767225600.1234,a/b,1"], filename="x.csv")


def test_channel_kind_follows_its_values():
    table = read_csv(["1,a/n,1.5", "2,a/n,2", "1,a/b,true", "2,a/b,FALSE", "1,a/s,3", "2,a/s,high"], filename="x.csv")
    kinds = {c.id: c.kind for c in table.channels}
    assert kinds == {"a/n": Kind.NUMBER, "a/b": Kind.BOOL, "a/s": Kind.STRING}
    assert [r.value for r in table.readings if r.channel == "a/s"] == ["3", "high"]


def test_resolution_is_the_finest_decimal_written():
    table = read_csv(["1,t/c,21.5", "2,t/c,21.25", "3,t/c,22"], filename="x.csv")
    assert table.channels[0].resolution == 0.01


def test_integer_channel_has_no_resolution():
    assert read_csv(["1,m/wh,100", "2,m/wh,101"], filename="x.csv").channels[0].resolution is None


def test_two_units_for_one_channel_are_refused():
    with pytest.raises(CsvError, match="'kW' differs from 'W'"):
        read_csv(["1,m/p,5,W", "2,m/p,6,kW"], filename="x.csv")


def test_a_bad_channel_id_names_line_and_value():
    with pytest.raises(CsvError, match=r"x.csv:2: column channel: value 'pm 2.5'"):
        read_csv(["time,channel,value", "1,pm 2.5,3"], filename="x.csv")


def test_declared_resolution_for_an_absent_channel_is_refused():
    with pytest.raises(CsvError, match="no channel 'a/z'"):
        read_csv(["1,a/b,1"], filename="x.csv", resolutions={"a/z": 0.1})

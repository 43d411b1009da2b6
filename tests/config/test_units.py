"""Durations, sizes and TOML text: what a technician writes, what is refused, and what the gateway prints back."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.schema import dumps_toml, format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("10s", 10.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1d", 86400.0),
        ("1m30s", 90.0),
        ("1h5m", 3900.0),
        ("1.5s", 1.5),
        ("2s250ms", 2.25),
        ("0", 0.0),
        ("0s", 0.0),
    ],
)
def test_duration_strings_convert_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["fast", "10", "10 s", "s", "-5s", "1.s", "10sec", "30s1m", "1m1m", "", "5 m"])
def test_strings_that_are_not_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("512B", 512),
        ("64KB", 64_000),
        ("200MB", 200_000_000),
        ("1GB", 1_000_000_000),
        ("64KiB", 65_536),
        ("1MiB", 1_048_576),
        ("1GiB", 1_073_741_824),
        ("1.5GB", 1_500_000_000),
        ("200mb", 200_000_000),
        ("200 MB", 200_000_000),
        ("0", 0),
    ],
)
def test_size_strings_convert_to_bytes(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["big", "200", "200M", "MB", "-1MB", "1.5B", "200MBs", ""])
def test_strings_that_are_not_sizes_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    "seconds", [0.0, 0.005, 0.5, 1.0, 10.0, 90.0, 300.0, 3600.0, 86400.0, 93784.005, 0.0015, 1e-06]
)
def test_a_printed_duration_reads_back_as_the_same_number(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_durations_print_in_the_largest_units_that_fit() -> None:
    assert [format_duration(s) for s in (0.5, 90.0, 300.0, 86400.0 + 3600.0)] == ["500ms", "1m30s", "5m", "1d1h"]


@pytest.mark.parametrize("size", [0, 1, 512, 64_000, 65_536, 200_000_000, 1_073_741_824, 123_456_789])
def test_a_printed_size_reads_back_as_the_same_number(size: int) -> None:
    assert parse_size(format_size(size)) == size


def test_sizes_print_in_decimal_units_when_they_fit() -> None:
    assert [format_size(n) for n in (200_000_000, 1_048_576, 1001)] == ["200MB", "1MiB", "1001B"]


@given(st.floats(min_value=0, max_value=1e12, allow_nan=False))
def test_any_duration_prints_and_reads_back_exactly(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(min_value=0, max_value=10**16))
def test_any_size_prints_and_reads_back_exactly(size: int) -> None:
    assert parse_size(format_size(size)) == size


@given(st.text(), st.text(min_size=1))
def test_any_text_value_and_key_survive_the_toml_writer(value: str, key: str) -> None:
    document = {"gateway": {"site": value}, "devices": [{"options": {key: [value, 1, 2.5, True]}}]}
    assert tomllib.loads(dumps_toml(document)) == document

"""Readings and inferred channel declarations from CSV text with columns time,channel,value[,unit]."""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from edge.protocol.types import CHANNEL_ID_RE, Channel, Kind, Reading

__all__ = ["CsvError", "CsvReadings", "parse_time", "parse_value", "read_csv"]

_EPOCH_RE = re.compile(r"^-?\d+(\.\d+)?$")
_NUMBER_RE = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
MAX_PROBLEMS = 20
# Batch times are unsigned (OXP §5), and every reader of a reading turns its time into a calendar
# date, whose years end at 9999: a time outside these is a typo, never a measurement.
LATEST_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
TIME_EXPECTED = ("expected ISO-8601 (2026-01-01T00:00:00Z) or epoch seconds with at most 3 decimals,"
                 " from 1970-01-01T00:00:00Z to 9999-12-31T23:59:59.999Z")
INT64 = range(-(2**63), 2**63)  # the codec carries integers as signed 64-bit (OXP §6.4)


class CsvError(ValueError):
    """The CSV has problems; ``problems`` lists each as "FILE:LINE: column ...: value ...: expected ..."."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class CsvReadings:
    """What a CSV file holds: channels (in order of first appearance), readings, rows skipped for empty values."""

    channels: tuple[Channel, ...]
    readings: tuple[Reading, ...]
    empty_values: int


def parse_time(text: str) -> int:
    """UTC milliseconds from epoch seconds ("1767225600", "1767225600.25") or ISO-8601 (no zone means UTC).

    Raises ValueError for a time finer than a millisecond or outside 1970-01-01 .. 9999-12-31.
    """
    text = text.strip()
    if _EPOCH_RE.match(text):
        ms = Decimal(text) * 1000
        if ms != ms.to_integral_value():
            raise ValueError("finer than a millisecond")
        result = int(ms)
    else:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
        result = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    if not 0 <= result <= LATEST_MS:
        raise ValueError("outside 1970-01-01 .. 9999-12-31")
    return result


def parse_value(text: str) -> tuple[int | float | str | bool, int | None]:
    """The value a cell holds and, for a decimal number, how many decimals it was written with.

    Raises ValueError, saying what is accepted, for a number the codec cannot carry as written.
    """
    lowered = text.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true", None
    stripped = text.strip()
    if _NUMBER_RE.match(stripped):
        exponent = Decimal(stripped).as_tuple().exponent
        if "." not in stripped and "e" not in lowered:
            if int(stripped) not in INT64:
                raise ValueError("expected a whole number from -2**63 to 2**63-1 (or write it with a decimal point)")
            return int(stripped), None
        number = float(stripped)
        if math.isinf(number):
            raise ValueError("expected a number within about ±1.8e308 (the largest binary64)")
        return number, max(0, -int(exponent))
    return text, None


def read_csv(
    lines: Iterable[str],
    *,
    filename: str,
    resolutions: Mapping[str, float] | None = None,
) -> CsvReadings:
    """Parse readings; a channel's kind comes from its values and its resolution from the decimals written.

    ``resolutions`` overrides the inferred resolution per channel id.  A channel whose
    values mix numbers and text is a string channel (values kept as written).
    """
    resolutions = dict(resolutions or {})
    problems: list[str] = []
    rows: list[tuple[int, str, str, str, tuple[int | float | str | bool, int | None]]] = []
    empty = 0
    for line_no, row in enumerate(csv.reader(lines), start=1):
        if not row or all(not cell.strip() for cell in row):
            continue
        if line_no == 1 and [c.strip().lower() for c in row[:3]] == ["time", "channel", "value"]:
            continue
        where = f"{filename}:{line_no}"
        if len(row) not in (3, 4):
            problems.append(f"{where}: {len(row)} columns; expected time,channel,value[,unit]")
        else:
            time_text, channel, value_text = (c.strip() for c in row[:3])
            unit = row[3].strip() if len(row) == 4 else ""
            try:
                ts_ms = parse_time(time_text)
            except ValueError:
                problems.append(f"{where}: column time: value {time_text!r}: {TIME_EXPECTED}")
                ts_ms = 0
            if not CHANNEL_ID_RE.match(channel):
                problems.append(
                    f"{where}: column channel: value {channel!r}: expected letters, digits, '_', '.', ':', '-'"
                    " with '/' separators (e.g. pm-1/pm2_5)"
                )
            if value_text == "":
                empty += 1
            else:
                try:
                    rows.append((ts_ms, channel, value_text, unit, parse_value(value_text)))
                except ValueError as exc:
                    problems.append(f"{where}: column value: value {value_text!r}: {exc}")
        if len(problems) >= MAX_PROBLEMS:
            problems.append(f"{filename}: stopped after {MAX_PROBLEMS} problems")
            break
    for channel_id in resolutions:
        if channel_id not in {r[1] for r in rows}:
            problems.append(f"--resolution {channel_id}=...: no channel {channel_id!r} in {filename}")
    if problems:
        raise CsvError(problems)

    by_channel: dict[str, list[tuple[int, str, tuple[int | float | str | bool, int | None]]]] = {}
    units: dict[str, str] = {}
    for ts_ms, channel, text, unit, parsed_value in rows:
        by_channel.setdefault(channel, []).append((ts_ms, text, parsed_value))
        if unit and units.setdefault(channel, unit) != unit:
            problems.append(f"{filename}: channel {channel!r}: unit {unit!r} differs from {units[channel]!r}; one unit per channel")
    if problems:
        raise CsvError(problems[:MAX_PROBLEMS])

    channels: list[Channel] = []
    readings: list[Reading] = []
    for channel_id, entries in by_channel.items():
        parsed = [value for _, _, value in entries]
        values = [value for value, _ in parsed]
        unit = units.get(channel_id, "")
        resolution = None
        if all(type(v) is bool for v in values):
            kind = Kind.BOOL
        elif all(type(v) in (int, float) for v in values):
            kind = Kind.NUMBER
            decimals = max((d for _, d in parsed if d is not None), default=None)
            if channel_id in resolutions:
                resolution = resolutions[channel_id]
            elif decimals is not None:
                # The decimals written are the resolution the source measured at: 12.30 means 0.01.
                resolution = float(Decimal(1).scaleb(-decimals))
        else:
            kind = Kind.STRING
            values = [text for _, text, _ in entries]  # mixed cells stay exactly as written
        if kind is not Kind.NUMBER and channel_id in resolutions:
            raise CsvError([f"--resolution {channel_id}=...: channel {channel_id!r} holds {kind.value} values, not numbers"])
        channels.append(Channel(channel_id, unit, kind, resolution))
        readings.extend(Reading(channel_id, ts, v, unit) for (ts, _, _), v in zip(entries, values, strict=True))
    return CsvReadings(tuple(channels), tuple(readings), empty)

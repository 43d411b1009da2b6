"""Stored values written out as text, for every value a store can hold: times, numbers JSON cannot spell, spreadsheet cells.

A read path must never fail on a stored value (issue 11): a reading time is any signed 64-bit
millisecond count (OXP §2), far beyond the years ``datetime`` and ``time.gmtime`` can hold, a
number may be NaN or infinite, and a text a gateway sends may be a spreadsheet formula.
Each function here is total over that domain; the rules are stated in docs/fleet.md ("Hardening").
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

__all__ = ["civil", "iso_time", "clock", "json_number", "csv_text", "csv_row", "NON_FINITE"]

MS_PER_DAY = 86_400_000
NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}
# OWASP "CSV injection": a cell starting with one of these is read as a formula by spreadsheets.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NEEDS_QUOTES = re.compile(r'[",\r\n]')


def civil(ts_ms: int) -> tuple[int, int, int, int, int, int, int]:
    """(year, month, day, hour, minute, second, millisecond) in UTC of any integer millisecond count, proleptic Gregorian.

    Integer arithmetic only (H. Hinnant's ``civil_from_days``), so it has no range: year 0 and
    negative years (astronomical numbering) and years past 9999 come out as plain integers.
    """
    days, in_day = divmod(ts_ms, MS_PER_DAY)
    era, day_of_era = divmod(days + 719_468, 146_097)
    year_of_era = (day_of_era - day_of_era // 1460 + day_of_era // 36_524 - day_of_era // 146_096) // 365
    day_of_year = day_of_era - (365 * year_of_era + year_of_era // 4 - year_of_era // 100)
    shifted_month = (5 * day_of_year + 2) // 153
    day = day_of_year - (153 * shifted_month + 2) // 5 + 1
    month = shifted_month + 3 if shifted_month < 10 else shifted_month - 9
    year = year_of_era + era * 400 + (month <= 2)
    seconds, ms = divmod(in_day, 1000)
    return year, month, day, seconds // 3600, seconds // 60 % 60, seconds % 60, ms


def _year(year: int) -> str:
    # ISO 8601 expanded years as ECMAScript writes them: a sign and at least six digits outside 0000..9999.
    return f"{year:04d}" if 0 <= year <= 9999 else f"{'+' if year > 0 else '-'}{abs(year):06d}"


def iso_time(ts_ms: int) -> str:
    """``2026-11-27T03:00:00.000Z`` for any millisecond count; years outside 0000..9999 as ``+292278994-08-17T07:12:55.807Z``."""
    year, month, day, hour, minute, second, ms = civil(ts_ms)
    return f"{_year(year)}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}.{ms:03d}Z"


def clock(ts_ms: int, *, seconds: bool = True) -> str:
    """``2026-11-27 03:00:05 UTC`` (or to the minute) for any millisecond count, as the dashboard shows times."""
    year, month, day, hour, minute, second, _ = civil(ts_ms)
    tail = f":{second:02d}" if seconds else ""
    return f"{_year(year)}-{month:02d}-{day:02d} {hour:02d}:{minute:02d}{tail} UTC"


def json_number(value: Any) -> Any:
    """``value`` unchanged unless it is a float JSON cannot spell: NaN and the infinities become the strings
    ``"NaN"``, ``"Infinity"`` and ``"-Infinity"`` (RFC 8259 has no literal for them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else NON_FINITE[value]
    return value


def csv_text(text: str) -> str:
    """A device-controlled text cell a spreadsheet will not run: one starting with ``= + - @``, tab or CR gets a leading ``'``.

    Only text cells pass through here; numbers are written as they are (a minus sign is data).
    """
    return "'" + text if text.startswith(_FORMULA_START) else text


def csv_row(cells: Sequence[str | int | float]) -> str:
    """One CSV line (RFC 4180, ended by LF). A text cell is quoted when it holds a quote, a comma or a line break, and
    when it was neutralised (starts with ``'`` then a formula character), as OWASP asks; numbers are written as Python spells them.

    Written here rather than with ``csv.writer``: that quotes either every text cell or only where the syntax
    needs it, and with LF line ends it leaves a lone CR unquoted, which splits the row for every reader.
    """
    out = []
    for cell in cells:
        if isinstance(cell, str):
            neutralised = cell[:1] == "'" and cell[1:2] in _FORMULA_START
            out.append(f'"{cell.replace(chr(34), chr(34) * 2)}"' if neutralised or _NEEDS_QUOTES.search(cell) else cell)
        else:
            out.append(repr(cell) if isinstance(cell, float) else str(cell))
    return ",".join(out) + "\n"

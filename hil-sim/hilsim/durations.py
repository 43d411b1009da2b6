"""Parse the duration strings scenario files use ("500ms", "10s", "5m", "2h")."""

from __future__ import annotations

import re

__all__ = ["parse_duration"]

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")


def parse_duration(value: object, *, field: str) -> float:
    """Seconds in `value` (a string like "10s", or a plain number of seconds); ValueError names `field`."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    if isinstance(value, str) and (match := _DURATION_RE.match(value)):
        return float(match.group(1)) * _UNITS[match.group(2)]
    raise ValueError(f"{field} = {value!r}: expected a duration like \"500ms\", \"10s\", \"5m\", \"2h\" or \"1d\"")

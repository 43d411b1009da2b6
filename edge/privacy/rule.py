"""One policy rule as data, and the vocabulary every rule module shares to read and name it.

Split from the policy file's parser so each rule in ``edge.privacy.rules`` can read its own
settings, and name the channels it releases, without importing the policy that lists it.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BUDGET_CHANNEL",
    "DAY_MS",
    "Reader",
    "Rule",
    "aggregate_channel_id",
    "axis_of",
    "distinct_channel_id",
    "parse_distance_m",
    "parse_duration_ms",
    "show",
    "window_label",
]

DAY_MS = 86_400_000
_DURATION_RE = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")
_DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DISTANCE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|km)\s*$")

# One per device that has a differentially private rule: true at the start of each window
# whose count was not released because the epsilon budget of the period was spent.
BUDGET_CHANNEL = "privacy.budget_exhausted"


def parse_duration_ms(text: str) -> int:
    """'500ms', '30s', '15m', '1h', '1d' -> milliseconds; raises ValueError on anything else."""
    m = _DURATION_RE.match(text) if isinstance(text, str) else None
    if not m or int(m.group(1)) == 0:
        raise ValueError("expected a positive duration like \"30s\", \"15m\", \"1h\" or \"1d\"")
    return int(m.group(1)) * _DURATION_MS[m.group(2)]


def parse_distance_m(text: str) -> float:
    """'250m', '1.5km' -> metres; raises ValueError on anything else."""
    m = _DISTANCE_RE.match(text) if isinstance(text, str) else None
    if not m or float(m.group(1)) <= 0:
        raise ValueError("expected a positive distance like \"250m\" or \"1km\"")
    return float(m.group(1)) * (1000.0 if m.group(2) == "km" else 1.0)


def window_label(ms: int) -> str:
    """'15m', '1h', '1d', '30s', '500ms': the largest unit that divides the window exactly."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def aggregate_channel_id(channel_id: str, function: str, window_ms: int) -> str:
    """``weather-1/temperature`` + mean over 5 min -> ``weather-1/temperature.mean_5m``."""
    return f"{channel_id}.{function}_{window_label(window_ms)}"


def distinct_channel_id(channel_id: str, window_ms: int) -> str:
    """``ped-1/mac`` counted over 15 min -> ``ped-1/mac.distinct_15m``."""
    return f"{channel_id}.distinct_{window_label(window_ms)}"


@dataclass(frozen=True, slots=True)
class Rule:
    """One validated rule: the channel pattern it applies to, its name in the registry and its parameters."""

    pattern: str
    rule: str
    purpose: str = ""
    description: str = ""
    step: float | None = None  # quantize / aggregate output step
    time_step_ms: int | None = None  # round_time
    window_ms: int | None = None  # aggregate / count_distinct
    functions: tuple[str, ...] = ()
    grid_m: float | None = None
    geohash: int | None = None
    axis: str | None = None  # "latitude" | "longitude" | None (inferred from the channel name)
    bits: int = 64
    k: int = 5
    epsilon: float | None = None
    max_windows: int | None = None
    allow_personal: bool = False
    legal_basis: str = ""

    @property
    def specificity(self) -> tuple[int, int, int]:
        """Sort key for "most specific match wins": exact ids first, then more literal characters."""
        wild = sum(self.pattern.count(c) for c in "*?[")
        return (1 if wild == 0 else 0, len(self.pattern) - wild, -wild)

    def matches(self, channel_id: str) -> bool:
        return fnmatch.fnmatchcase(channel_id, self.pattern)


def axis_of(rule: Rule, channel_id: str) -> str | None:
    """Whether a generalize_location rule treats ``channel_id`` as latitude or longitude (None: cannot tell)."""
    if rule.axis:
        return rule.axis
    local = channel_id.rsplit("/", 1)[-1].lower()
    if local in ("lat", "latitude") or local.endswith(("_lat", "_latitude")):
        return "latitude"
    if local in ("lon", "lng", "longitude") or local.endswith(("_lon", "_lng", "_longitude")):
        return "longitude"
    return None


def show(value: Any) -> str:
    """A value as the policy file spells it, for a problem line."""
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


class Reader:
    """Reads one table with typed getters, collecting problems instead of stopping at the first."""

    def __init__(self, file: str, where: str, table: Mapping[str, Any], problems: list[str]) -> None:
        self.file, self.where, self.table, self.problems = file, where, table, problems

    def bad(self, key: str, value: Any, expected: str) -> None:
        self.problems.append(f"{self.file}: {self.where}.{key} = {show(value)}: expected {expected}")

    def text(self, key: str, default: str = "") -> str:
        value = self.table.get(key, default)
        if not isinstance(value, str):
            self.bad(key, value, "a string")
            return default
        return value

    def number(self, key: str, *, positive: bool = True) -> float | None:
        if key not in self.table:
            return None
        value = self.table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
            positive and value <= 0
        ):
            self.bad(key, value, "a number greater than 0")
            return None
        return float(value)

    def integer(self, key: str, low: int, high: int) -> int | None:
        if key not in self.table:
            return None
        value = self.table[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.bad(key, value, f"a whole number from {low} to {high}")
            return None
        return value

    def duration(self, key: str) -> int | None:
        if key not in self.table:
            return None
        try:
            return parse_duration_ms(self.table[key])
        except ValueError as exc:
            self.bad(key, self.table[key], str(exc).removeprefix("expected "))
            return None

    def boolean(self, key: str) -> bool:
        value = self.table.get(key, False)
        if not isinstance(value, bool):
            self.bad(key, value, "true or false")
            return False
        return value

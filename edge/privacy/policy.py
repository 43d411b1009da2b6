"""The privacy policy as data: parse a policy TOML file, validate every rule, compute its canonical digest."""

from __future__ import annotations

import fnmatch
import hashlib
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2

from edge.protocol.types import Channel, Kind

__all__ = [
    "AGGREGATE_FUNCTIONS",
    "RULES",
    "Budget",
    "Policy",
    "PolicyError",
    "Rule",
    "axis_of",
    "canonical_encoding",
    "parse_distance_m",
    "parse_duration_ms",
    "parse_policy",
]

RULES = ("keep", "drop", "quantize", "round_time", "aggregate", "generalize_location", "pseudonymize", "count_distinct")
AGGREGATE_FUNCTIONS = ("mean", "min", "max", "sum", "count", "last")
# Rules whose output no longer identifies a person; `keep` and `round_time` pass the value through.
RULES_SAFE_FOR_PERSONAL = ("drop", "pseudonymize", "count_distinct", "generalize_location")

_COMMON_KEYS = {"rule", "purpose", "description"}
_RULE_KEYS: dict[str, set[str]] = {
    "keep": {"allow_personal", "legal_basis"},
    "drop": set(),
    "quantize": {"step"},
    "round_time": {"step", "allow_personal", "legal_basis"},
    "aggregate": {"window", "functions", "step"},
    "generalize_location": {"grid", "geohash", "axis"},
    "pseudonymize": {"bits"},
    "count_distinct": {"window", "k", "epsilon", "max_windows"},
}
_DURATION_RE = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d)\s*$")
_DURATION_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DISTANCE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m|km)\s*$")
_TIME_OF_DAY_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
DAY_MS = 86_400_000
# The smallest cell generalize_location may put a personal position in. A GNSS fix is good to a
# few metres: a 1 m grid or a 12-character geohash (2 cm) releases the position as it is, which
# takes keep with allow_personal and a legal_basis (and says so on the notice).
MIN_PERSONAL_CELL_M = 100.0


class PolicyError(ValueError):
    """A policy file is invalid; ``problems`` holds one line per problem naming file, rule and value."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


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


def canonical_encoding(document: Mapping[str, Any]) -> bytes:
    """The bytes the policy digest is taken over: deterministic CBOR (RFC 8949 §4.2.1) of the parsed TOML.

    Policy documents only have text keys, for which bytewise and length-first key
    orders agree, so cbor2's canonical mode gives the §4.2.1 encoding: shortest
    integer and length heads, shortest float that keeps the value, sorted keys.
    """
    return cbor2.dumps(document, canonical=True)


@dataclass(frozen=True, slots=True)
class Rule:
    """One validated rule: the channel pattern it applies to and its parameters."""

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


@dataclass(frozen=True, slots=True)
class Budget:
    """The differential-privacy budget: total epsilon per period, periods aligned to UTC midnight."""

    epsilon: float
    period_ms: int = DAY_MS


@dataclass(frozen=True, slots=True)
class Policy:
    """A parsed, validated policy. ``digest`` is SHA-256 of :func:`canonical_encoding` of the document."""

    path: str
    document: Mapping[str, Any]
    digest: bytes
    rules: tuple[Rule, ...]
    name: str = ""
    version: str = ""
    organisation: str = ""
    contact: str = ""
    purpose: str = ""
    retention: str = ""
    storage: str = ""
    access: str = ""
    rotate_ms: int = DAY_MS
    rotate_offset_ms: int = 0
    budget: Budget | None = None
    signed_by: str | None = field(default=None)  # governance key id (hex) when the signature was verified

    def rule_for(self, channel_id: str) -> Rule | None:
        """The most specific rule whose pattern matches ``channel_id``; ties go to the lexically first pattern."""
        best: Rule | None = None
        for rule in self.rules:  # rules are sorted most specific first, then by pattern
            if rule.matches(channel_id):
                best = rule
                break
        return best

    def check_channels(self, channels: Sequence[Channel]) -> list[str]:
        """Problems with applying this policy to the declared channels (empty list: fine)."""
        name = Path(self.path).name
        problems: list[str] = []
        for channel in channels:
            rule = self.rule_for(channel.id)
            if rule is None or rule.rule == "drop":
                continue
            where = f'{name}: channels."{rule.pattern}".rule = "{rule.rule}"'
            if channel.personal and rule.rule not in RULES_SAFE_FOR_PERSONAL:
                if not (rule.allow_personal and rule.legal_basis):
                    problems.append(
                        f"{where}: {channel.id} is personal; {rule.rule} needs allow_personal = true and a "
                        f"legal_basis (or use drop, pseudonymize, count_distinct or generalize_location)"
                    )
            numeric = channel.kind is Kind.NUMBER
            if rule.rule in ("quantize", "generalize_location") and not numeric:
                problems.append(f"{where}: {channel.id} carries {channel.kind.value} values; {rule.rule} needs numbers")
            if rule.rule == "aggregate" and not numeric:
                bad = [f for f in rule.functions if f not in ("count", "last")]
                if bad:
                    problems.append(
                        f"{where}: {channel.id} carries {channel.kind.value} values; functions {bad} need numbers "
                        f"(count and last work on any value)"
                    )
            if rule.rule == "generalize_location" and channel.personal and _cell_m(rule) < MIN_PERSONAL_CELL_M:
                cell = f'grid = "{rule.grid_m:g}m"' if rule.grid_m is not None else f"geohash = {rule.geohash}"
                problems.append(
                    f"{where}: {channel.id} is personal; {cell} makes cells of about {_cell_m(rule):.3g} m, too "
                    f'small to hide the exact position: use cells of at least {MIN_PERSONAL_CELL_M:g} m (grid = "100m" '
                    f"or more, geohash = 7 or less), or keep with allow_personal = true and a legal_basis"
                )
            if rule.rule == "generalize_location" and axis_of(rule, channel.id) is None:
                problems.append(
                    f'{where}: cannot tell whether {channel.id} is a latitude or a longitude; set axis = "latitude" '
                    f'or axis = "longitude"'
                )
        return problems

    def unused_patterns(self, channels: Sequence[Channel]) -> list[str]:
        """Patterns that decide no declared channel (a typo, or a device not configured here)."""
        used = {rule.pattern for rule in map(self.rule_for, (c.id for c in channels)) if rule is not None}
        return [r.pattern for r in self.rules if r.pattern not in used]


def _cell_m(rule: Rule) -> float:
    """The side of a generalize_location cell on the ground, in metres (north to south for a geohash)."""
    if rule.grid_m is not None:
        return rule.grid_m
    lat_bits = 5 * (rule.geohash or 12) // 2
    return 180.0 / (1 << lat_bits) * 111_320.0


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


def _no_datetimes(value: Any, where: str, problems: list[str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _no_datetimes(v, f"{where}.{k}" if where else k, problems)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _no_datetimes(v, f"{where}[{i}]", problems)
    elif not isinstance(value, (str, int, float, bool)):
        problems.append(f"{where} = {value!r}: dates and times are not allowed in a policy; write them as strings")


class _Reader:
    """Reads one table with typed getters, collecting problems instead of stopping at the first."""

    def __init__(self, file: str, where: str, table: Mapping[str, Any], problems: list[str]) -> None:
        self.file, self.where, self.table, self.problems = file, where, table, problems

    def bad(self, key: str, value: Any, expected: str) -> None:
        self.problems.append(f"{self.file}: {self.where}.{key} = {_show(value)}: expected {expected}")

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


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _parse_rule(file: str, pattern: str, table: Any, problems: list[str]) -> Rule | None:
    where = f'channels."{pattern}"'
    if not isinstance(table, dict):
        problems.append(f"{file}: {where} = {_show(table)}: expected a table with a rule, e.g. rule = \"drop\"")
        return None
    r = _Reader(file, where, table, problems)
    before = len(problems)
    rule = table.get("rule")
    if rule not in RULES:
        r.bad("rule", rule, "one of " + ", ".join(RULES))
        return None
    for key in table:
        if key not in _COMMON_KEYS | _RULE_KEYS[rule]:
            allowed = ", ".join(sorted(_COMMON_KEYS | _RULE_KEYS[rule]))
            r.bad(key, table[key], f"no such setting for rule \"{rule}\" (settings: {allowed})")
    fields: dict[str, Any] = {"pattern": pattern, "rule": rule, "purpose": r.text("purpose"), "description": r.text("description")}
    if rule in ("keep", "round_time"):
        fields["allow_personal"] = r.boolean("allow_personal")
        fields["legal_basis"] = r.text("legal_basis")
        if fields["allow_personal"] and not fields["legal_basis"].strip():
            r.bad("allow_personal", True, "a legal_basis naming the law or consent that permits releasing personal data")
    if rule == "quantize":
        fields["step"] = r.number("step")
        if "step" not in table:
            r.bad("step", None, "a step to round values to, e.g. step = 0.5")
    if rule == "round_time":
        fields["time_step_ms"] = r.duration("step")
        if "step" not in table:
            r.bad("step", None, 'a time step, e.g. step = "1m"')
    if rule in ("aggregate", "count_distinct"):
        fields["window_ms"] = r.duration("window")
        if "window" not in table:
            r.bad("window", None, 'a window, e.g. window = "15m"')
        elif fields["window_ms"] is not None and DAY_MS % fields["window_ms"] != 0:
            r.bad("window", table["window"], "a window that divides a day evenly (so windows align to UTC midnight)")
    if rule == "aggregate":
        fields["step"] = r.number("step")
        functions = table.get("functions", ["mean"])
        if not isinstance(functions, list) or not functions or any(f not in AGGREGATE_FUNCTIONS for f in functions):
            r.bad("functions", functions, "a list drawn from " + ", ".join(AGGREGATE_FUNCTIONS))
        else:
            fields["functions"] = tuple(dict.fromkeys(functions))
    if rule == "generalize_location":
        if ("grid" in table) == ("geohash" in table):
            r.bad("grid", table.get("grid"), 'either grid = "250m" (a square grid cell) or geohash = 6, not both')
        if "grid" in table:
            try:
                fields["grid_m"] = parse_distance_m(table["grid"])
            except ValueError as exc:
                r.bad("grid", table["grid"], str(exc).removeprefix("expected "))
        fields["geohash"] = r.integer("geohash", 1, 12)
        axis = table.get("axis")
        if axis is not None and axis not in ("latitude", "longitude"):
            r.bad("axis", axis, '"latitude" or "longitude"')
        else:
            fields["axis"] = axis
    if rule == "pseudonymize":
        bits = r.integer("bits", 16, 256)
        if bits is not None and bits % 4:
            r.bad("bits", bits, "a multiple of 4 (the pseudonym is written as hex digits)")
        elif bits is not None:
            fields["bits"] = bits
    if rule == "count_distinct":
        k = r.integer("k", 1, 1_000_000)
        if k is not None:
            fields["k"] = k
        fields["epsilon"] = r.number("epsilon")
        fields["max_windows"] = r.integer("max_windows", 1, 1_000_000)
        if fields["max_windows"] is not None and fields["epsilon"] is None:
            r.bad("max_windows", fields["max_windows"], "an epsilon as well (max_windows bounds the noise budget)")
    if len(problems) > before:
        return None
    return Rule(**{k: v for k, v in fields.items() if v is not None})


def parse_policy(text: str, *, path: str = "policy.toml") -> Policy:
    """Parse and validate policy TOML text; raises :class:`PolicyError` listing every problem."""
    file = Path(path).name
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError([f"{file}: not valid TOML: {exc}"]) from None
    problems: list[str] = []
    _no_datetimes(document, "", problems)
    known = {"policy", "pseudonyms", "privacy_budget", "channels"}
    for key in document:
        if key not in known:
            problems.append(f"{file}: {key}: unknown section (sections: {', '.join(sorted(known))})")
    head = _Reader(file, "policy", document.get("policy", {}), problems)
    meta = {k: head.text(k) for k in ("name", "version", "organisation", "contact", "purpose", "retention", "storage", "access")}
    for key in head.table:
        if key not in meta:
            head.bad(key, head.table[key], "no such setting (settings: " + ", ".join(meta) + ")")
    for key in ("organisation", "contact", "purpose"):
        if not meta[key].strip():
            problems.append(f"{file}: policy.{key} is missing: the public notice must say who is accountable and why")

    pseudo = _Reader(file, "pseudonyms", document.get("pseudonyms", {}), problems)
    rotate_ms = pseudo.duration("rotate") or DAY_MS
    if DAY_MS % rotate_ms and rotate_ms % DAY_MS:
        pseudo.bad("rotate", pseudo.table.get("rotate"), "a period that divides a day, or whole days")
    rotate_at = pseudo.text("rotate_at", "00:00")
    m = _TIME_OF_DAY_RE.match(rotate_at)
    if not m:
        pseudo.bad("rotate_at", rotate_at, 'a UTC time of day "HH:MM"')
    offset_ms = (int(m.group(1)) * 60 + int(m.group(2))) * 60_000 if m else 0
    for key in pseudo.table:
        if key not in ("rotate", "rotate_at"):
            pseudo.bad(key, pseudo.table[key], "no such setting (settings: rotate, rotate_at)")

    budget: Budget | None = None
    if "privacy_budget" in document:
        b = _Reader(file, "privacy_budget", document["privacy_budget"], problems)
        epsilon = b.number("epsilon")
        if "epsilon" not in b.table:
            b.bad("epsilon", None, "the total epsilon allowed per period, e.g. epsilon = 4.0")
        period = b.duration("period") or DAY_MS
        for key in b.table:
            if key not in ("epsilon", "period"):
                b.bad(key, b.table[key], "no such setting (settings: epsilon, period)")
        if DAY_MS % period and period % DAY_MS:
            b.bad("period", b.table.get("period"), "a period that divides a day, or whole days")
        if epsilon is not None:
            budget = Budget(epsilon=epsilon, period_ms=period)

    channels = document.get("channels", {})
    rules: list[Rule] = []
    if not isinstance(channels, dict) or not channels:
        problems.append(f'{file}: channels: no rules; add at least one, e.g. [channels."pm-1/pm2_5"] rule = "keep"')
    else:
        for pattern, table in channels.items():
            if not re.fullmatch(r"[A-Za-z0-9_.:/*?\[\]!-]+", pattern):
                problems.append(f'{file}: channels."{pattern}": not a channel id or glob pattern like "ped-1/*"')
                continue
            rule = _parse_rule(file, pattern, table, problems)
            if rule is None:
                continue
            if rule.epsilon is not None and budget is None:
                problems.append(
                    f'{file}: channels."{pattern}".epsilon = {rule.epsilon!r}: needs a [privacy_budget] section '
                    f"(epsilon per period) so releases stop when the budget is spent"
                )
            elif rule.epsilon is not None and budget is not None and rule.epsilon > budget.epsilon:
                problems.append(
                    f'{file}: channels."{pattern}".epsilon = {rule.epsilon!r}: larger than the whole '
                    f"privacy_budget.epsilon = {budget.epsilon!r}; no window could ever be released"
                )
            rules.append(rule)
    if problems:
        raise PolicyError(problems)
    rules.sort(key=lambda r: (tuple(-x for x in r.specificity), r.pattern))
    return Policy(
        path=path,
        document=document,
        digest=hashlib.sha256(canonical_encoding(document)).digest(),
        rules=tuple(rules),
        rotate_ms=rotate_ms,
        rotate_offset_ms=offset_ms,
        budget=budget,
        **meta,
    )

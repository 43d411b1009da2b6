"""aggregate: only summaries (mean, min, max, sum, count, last) of each window leave, not the readings."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from edge.privacy.catalogue import Words
from edge.privacy.rule import Reader, Rule, aggregate_channel_id, window_label
from edge.privacy.rules.base import (
    Plan,
    PolicyTerms,
    StageServices,
    WindowedKind,
    is_number,
    parse_window,
    round_to_step,
)
from edge.protocol.types import Channel, Kind, Quality, Reading, Value

__all__ = ["AGGREGATE_FUNCTIONS", "Aggregate"]

AGGREGATE_FUNCTIONS = ("mean", "min", "max", "sum", "count", "last")


def _mean_resolution(channel: Channel) -> float | None:
    """A mean is kept to one decimal more than the readings it summarises: more would be float noise."""
    return None if channel.resolution is None else channel.resolution / 10


@dataclass(slots=True)
class _Summary:
    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    last: Value = 0  # every add sets it; a window without one is never released

    def add(self, value: Value) -> None:
        self.count += 1
        self.last = value
        if is_number(value):
            v = float(value)
            self.total += v
            self.low = min(self.low, v)
            self.high = max(self.high, v)


class Aggregate(WindowedKind):
    name = "aggregate"
    settings = frozenset({"window", "functions", "step"})
    declared_kind_only = True
    dtpr = ("de-identified", "aggregated")

    def parse(self, r: Reader, fields: dict[str, Any]) -> None:
        parse_window(r, fields)
        fields["step"] = r.number("step")
        functions = r.table.get("functions", ["mean"])
        if not isinstance(functions, list) or not functions or any(f not in AGGREGATE_FUNCTIONS for f in functions):
            r.bad("functions", functions, "a list drawn from " + ", ".join(AGGREGATE_FUNCTIONS))
        else:
            fields["functions"] = tuple(dict.fromkeys(functions))

    def channel_problems(self, rule: Rule, channel: Channel, where: str) -> list[str]:
        if channel.kind is Kind.NUMBER:
            return []
        bad = [f for f in rule.functions if f not in ("count", "last")]
        if not bad:
            return []
        return [
            f"{where}: {channel.id} carries {channel.kind.value} values; functions {bad} need numbers "
            f"(count and last work on any value)"
        ]

    def describe(self, rule: Rule, policy: PolicyTerms, unit: str, words: Words) -> str:
        functions = words.join([words(f"rule.{name}") for name in rule.functions])
        return words("rule.aggregate", functions=functions, duration=words.duration(rule.window_ms or 0))

    def outputs(self, rule: Rule, channel: Channel, policy: PolicyTerms) -> list[Channel]:
        window_ms = rule.window_ms or 0
        out: list[Channel] = []
        for fn in rule.functions:
            res: float | None
            if fn == "count":
                unit, kind, res = "", Kind.NUMBER, 1.0
            elif fn == "last":
                unit, kind, res = channel.unit, channel.kind, channel.resolution
            else:
                unit, kind = channel.unit, Kind.NUMBER
                res = _mean_resolution(channel) if fn == "mean" else channel.resolution
            if rule.step is not None and fn not in ("count",) and kind is Kind.NUMBER:
                res = rule.step
            out.append(
                Channel(
                    aggregate_channel_id(channel.id, fn, window_ms),
                    unit=unit,
                    kind=kind,
                    resolution=res,
                    description=f"{fn} of {channel.id} over {window_label(window_ms)} windows",
                )
            )
        return out

    def new_window(self) -> object:
        return _Summary()

    def add(self, plan: Plan, start: int, value: Value, stage: StageServices) -> list[Reading]:
        if not is_number(value) and any(f not in ("count", "last") for f in plan.rule.functions):
            return stage.drop("bad_value")
        window = plan.windows.setdefault(start, _Summary())
        if isinstance(window, _Summary):
            window.add(value)
        return []

    def close(self, plan: Plan, start: int, window: object, quality: Quality | None, stage: StageServices) -> list[Reading]:
        rule, ch = plan.rule, plan.channel
        out: list[Reading] = []
        if not isinstance(window, _Summary) or window.count == 0:
            return out
        s = window
        for fn in rule.functions:
            if fn == "count":
                value: Value = s.count
            elif fn == "last":
                value = s.last
            elif fn == "mean":
                value = s.total / s.count
            elif fn == "sum":
                value = s.total
            elif fn == "min":
                value = s.low
            else:
                value = s.high
            try:
                if fn == "mean" and not math.isfinite(s.total / s.count):
                    raise OverflowError("the sum of the window's values overflowed: it has no float mean")
                mean_step = _mean_resolution(ch)
                if fn == "mean" and rule.step is None and mean_step is not None and is_number(value):
                    value = round_to_step(value, mean_step)
                if rule.step is not None and fn != "count" and is_number(value):
                    value = round_to_step(float(value), rule.step)
            except OverflowError:
                # Beyond the float range (in steps): this summary is left out, the others and the
                # next windows are not (it raised out of tick() and stopped the gateway).
                stage.drop("bad_value")
                continue
            unit = "" if fn == "count" else ch.unit
            out.append(Reading(aggregate_channel_id(ch.id, fn, rule.window_ms or 0), start, value, unit, quality))
        return stage.release(*out)

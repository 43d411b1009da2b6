"""round_time: the value leaves as measured with its time rounded down to a step (when, not exactly when)."""

from __future__ import annotations

from typing import Any

from edge.privacy.catalogue import Words
from edge.privacy.rule import Reader, Rule
from edge.privacy.rules.base import PolicyTerms, RuleKind, StageServices, parse_personal_release
from edge.protocol.types import Channel, Reading

__all__ = ["RoundTime"]


class RoundTime(RuleKind):
    name = "round_time"
    settings = frozenset({"step", "allow_personal", "legal_basis"})
    declared_kind_only = True
    dtpr = ("identifiable",)

    def parse(self, r: Reader, fields: dict[str, Any]) -> None:
        parse_personal_release(r, fields)
        fields["time_step_ms"] = r.duration("step")
        if "step" not in r.table:
            r.bad("step", None, 'a time step, e.g. step = "1m"')

    def describe(self, rule: Rule, policy: PolicyTerms, unit: str, words: Words) -> str:
        return words("rule.round_time", duration=words.duration(rule.time_step_ms or 0))

    def outputs(self, rule: Rule, channel: Channel, policy: PolicyTerms) -> list[Channel]:
        return [channel]

    def apply(self, rule: Rule, reading: Reading, unit: str, stage: StageServices) -> list[Reading]:
        step = rule.time_step_ms or 1
        ts = reading.ts_ms - reading.ts_ms % step
        return stage.release(Reading(reading.channel, ts, reading.value, unit, reading.quality))

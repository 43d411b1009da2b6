"""quantize: a number leaves rounded to a step (a coarser value says less about who or what was measured)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from edge.privacy.catalogue import Words
from edge.privacy.rule import Reader, Rule
from edge.privacy.rules.base import PolicyTerms, RuleKind, StageServices, is_number, round_to_step
from edge.protocol.types import Channel, Kind, Reading

__all__ = ["Quantize"]


class Quantize(RuleKind):
    name = "quantize"
    settings = frozenset({"step"})
    dtpr = ("de-identified",)

    def parse(self, r: Reader, fields: dict[str, Any]) -> None:
        fields["step"] = r.number("step")
        if "step" not in r.table:
            r.bad("step", None, "a step to round values to, e.g. step = 0.5")

    def channel_problems(self, rule: Rule, channel: Channel, where: str) -> list[str]:
        if channel.kind is not Kind.NUMBER:
            return [f"{where}: {channel.id} carries {channel.kind.value} values; {rule.rule} needs numbers"]
        return []

    def describe(self, rule: Rule, policy: PolicyTerms, unit: str, words: Words) -> str:
        return words("rule.quantize", step=words.number(rule.step or 0.0), unit=f" {unit}" if unit else "")

    def outputs(self, rule: Rule, channel: Channel, policy: PolicyTerms) -> list[Channel]:
        return [replace(channel, resolution=rule.step, personal=False)]

    def apply(self, rule: Rule, reading: Reading, unit: str, stage: StageServices) -> list[Reading]:
        value = reading.value
        if not is_number(value) or rule.step is None:
            return stage.drop("bad_value")
        q = round_to_step(float(value), rule.step)
        return stage.release(Reading(reading.channel, reading.ts_ms, q, unit, reading.quality))

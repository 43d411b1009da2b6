"""keep: the reading leaves as measured; personal data only with allow_personal and a legal_basis."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from edge.privacy.catalogue import Words
from edge.privacy.rule import Reader, Rule
from edge.privacy.rules.base import PolicyTerms, RuleKind, StageServices, parse_personal_release
from edge.protocol.types import Channel, Reading

__all__ = ["Keep"]


class Keep(RuleKind):
    name = "keep"
    settings = frozenset({"allow_personal", "legal_basis"})
    declared_kind_only = True
    dtpr = ("identifiable",)

    def parse(self, r: Reader, fields: dict[str, Any]) -> None:
        parse_personal_release(r, fields)

    def describe(self, rule: Rule, policy: PolicyTerms, unit: str, words: Words) -> str:
        text = words("rule.keep")
        if rule.allow_personal:
            text += words("rule.keep_personal", legal_basis=rule.legal_basis)
        return text

    def outputs(self, rule: Rule, channel: Channel, policy: PolicyTerms) -> list[Channel]:
        return [channel]

    def apply(self, rule: Rule, reading: Reading, unit: str, stage: StageServices) -> list[Reading]:
        return stage.release(reading if reading.unit == unit else replace(reading, unit=unit))

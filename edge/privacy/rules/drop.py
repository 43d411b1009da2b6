"""drop: the channel never leaves the device and is never stored; the notice lists it as withheld."""

from __future__ import annotations

from edge.privacy.catalogue import Words
from edge.privacy.rule import Rule
from edge.privacy.rules.base import PolicyTerms, RuleKind

__all__ = ["Drop"]


class Drop(RuleKind):
    name = "drop"
    releases = False
    safe_for_personal = True
    dtpr = ("deleted on device",)

    def describe(self, rule: Rule, policy: PolicyTerms, unit: str, words: Words) -> str:
        return words("rule.drop")

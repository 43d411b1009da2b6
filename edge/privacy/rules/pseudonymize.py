"""pseudonymize: the value is replaced by a keyed hash under a key that lives in memory and dies each period."""

from __future__ import annotations

from typing import Any

from edge.privacy.catalogue import Words
from edge.privacy.rule import Reader, Rule, window_label
from edge.privacy.rules.base import PolicyTerms, RuleKind, StageServices
from edge.protocol.types import Channel, Kind, Reading

__all__ = ["Pseudonymize"]


class Pseudonymize(RuleKind):
    name = "pseudonymize"
    settings = frozenset({"bits"})
    safe_for_personal = True
    dtpr = ("pseudonymized",)

    def parse(self, r: Reader, fields: dict[str, Any]) -> None:
        bits = r.integer("bits", 16, 256)
        if bits is not None and bits % 4:
            r.bad("bits", bits, "a multiple of 4 (the pseudonym is written as hex digits)")
        elif bits is not None:
            fields["bits"] = bits

    def describe(self, rule: Rule, policy: PolicyTerms, unit: str, words: Words) -> str:
        return words("rule.pseudonymize", bits=rule.bits, duration=words.duration(policy.rotate_ms))

    def outputs(self, rule: Rule, channel: Channel, policy: PolicyTerms) -> list[Channel]:
        how = rule.description or rule.purpose
        # Still personal: a pseudonym singles out one device for a whole key period
        # (pseudonymised data is personal data, GDPR recital 26). The hub stores it
        # for the city's stated purpose and never publishes it (OXP §11).
        return [
            Channel(
                channel.id,
                kind=Kind.STRING,
                personal=True,
                description=how or f"pseudonym: keyed hash, {rule.bits} bits, key renewed every "
                f"{window_label(policy.rotate_ms)}",
            )
        ]

    def apply(self, rule: Rule, reading: Reading, unit: str, stage: StageServices) -> list[Reading]:
        digest = stage.pseudonym_digest(str(reading.value).encode("utf-8"))
        pseudonym = digest.hex()[: rule.bits // 4]
        return stage.release(Reading(reading.channel, reading.ts_ms, pseudonym, "", reading.quality))

"""Plain-language descriptions of what a policy lets leave the device, for `policy explain` and the notice."""

from __future__ import annotations

from collections.abc import Sequence

from edge.privacy.catalogue import Words, words
from edge.privacy.policy import Policy
from edge.privacy.rule import Rule
from edge.privacy.rules import kind_of
from edge.protocol.types import Channel

__all__ = ["describe_rule", "explain", "processes"]


def processes(rule: Rule) -> list[str]:
    """DTPR process labels for one rule (https://dtpr.io taxonomy, "Process" category)."""
    return kind_of(rule).processes(rule)


def describe_rule(rule: Rule, policy: Policy, unit: str = "", language: Words | None = None) -> str:
    """One sentence, for a member of the public, on what leaves the device under ``rule`` (in English unless ``language``)."""
    return kind_of(rule).describe(rule, policy, unit, language or words())


def explain(policy: Policy, channels: Sequence[Channel] | None = None) -> str:
    """The whole policy in plain language: per declared channel if given, otherwise per rule."""
    lines = [f"Policy {policy.name or policy.path}" + (f", version {policy.version}" if policy.version else "")]
    lines.append(f"Accountable: {policy.organisation} ({policy.contact})")
    lines.append(f"Purpose: {policy.purpose}")
    if policy.retention:
        lines.append(f"Retention: {policy.retention}")
    if policy.retention_days is not None:
        lines.append(f"Deletion: {words().count('notice.deletion', policy.retention_days)}")
    if len(policy.languages) > 1:
        lines.append(f"Notice in: {', '.join(policy.languages)} (the policy's texts above are in {policy.languages[0]})")
    lines.append(f"Digest: {policy.digest.hex()}" + (f" (signed by governance key {policy.signed_by})" if policy.signed_by else ""))
    lines.append("")
    if channels is None:
        for rule in sorted(policy.rules, key=lambda r: r.pattern):
            lines.append(f"{rule.pattern}: {describe_rule(rule, policy)}")
    else:
        for channel in channels:
            named = policy.rule_for(channel.id)
            if named is None:
                lines.append(f"{channel.id}: Never leaves the device (the policy does not name it).")
            else:
                lines.append(f"{channel.id}: {describe_rule(named, policy, channel.unit)}")
    lines.append("")
    lines.append("Anything the policy does not name never leaves the device and is never stored (default deny).")
    return "\n".join(lines)

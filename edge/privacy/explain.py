"""Plain-language descriptions of what a policy lets leave the device, for `policy explain` and the notice."""

from __future__ import annotations

from collections.abc import Sequence

from edge.privacy.location import METRES_PER_DEGREE, geohash_cell_deg
from edge.privacy.policy import Policy, Rule
from edge.protocol.types import Channel

__all__ = ["DTPR_PROCESS", "describe_rule", "explain", "human_duration", "processes"]

# DTPR "data process" entries each rule performs (https://dtpr.io taxonomy, "Process" category).
DTPR_PROCESS = {
    "keep": ("identifiable",),
    "round_time": ("identifiable",),
    "drop": ("deleted on device",),
    "quantize": ("de-identified",),
    "aggregate": ("de-identified", "aggregated"),
    "generalize_location": ("de-identified", "generalized"),
    "pseudonymize": ("pseudonymized",),
    "count_distinct": ("de-identified", "aggregated"),
}


def human_duration(ms: int) -> str:
    """86_400_000 -> '1 day', 900_000 -> '15 minutes'."""
    for name, size in (("day", 86_400_000), ("hour", 3_600_000), ("minute", 60_000), ("second", 1000)):
        if ms % size == 0:
            n = ms // size
            return f"{n} {name}" + ("" if n == 1 else "s")
    return f"{ms} milliseconds"


def _functions(names: Sequence[str]) -> str:
    words = {"mean": "average", "min": "minimum", "max": "maximum", "sum": "total", "count": "number of readings",
             "last": "last value"}
    items = [words[n] for n in names]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def processes(rule: Rule) -> list[str]:
    """DTPR process labels for one rule."""
    labels = list(DTPR_PROCESS[rule.rule])
    if rule.rule == "count_distinct" and rule.k > 1:
        labels.append("k-anonymity")
    if rule.rule == "count_distinct" and rule.epsilon is not None:
        labels.append("differential privacy")
    return labels


def describe_rule(rule: Rule, policy: Policy, unit: str = "") -> str:
    """One sentence, for a member of the public, on what leaves the device under ``rule``."""
    u = f" {unit}" if unit else ""
    if rule.rule == "drop":
        return "Never leaves the device and is never stored."
    if rule.rule == "keep":
        text = "Leaves the device as measured."
        if rule.allow_personal:
            text += f" This is personal data, released under: {rule.legal_basis}."
        return text
    if rule.rule == "round_time":
        return f"Leaves as measured, with its time rounded down to {human_duration(rule.time_step_ms or 0)}."
    if rule.rule == "quantize":
        return f"Leaves rounded to steps of {rule.step:g}{u}."
    if rule.rule == "aggregate":
        return (
            f"Only the {_functions(rule.functions)} over each {human_duration(rule.window_ms or 0)} leave; "
            f"individual readings do not."
        )
    if rule.rule == "generalize_location":
        if rule.geohash is not None:
            lat_m = geohash_cell_deg(rule.geohash, "latitude") * METRES_PER_DEGREE
            size = f"a geohash cell of {rule.geohash} characters (about {lat_m:,.0f} m north to south)"
        else:
            size = f"a {rule.grid_m:,.0f} m grid square"
        return f"The exact position never leaves; only the centre of {size} does."
    if rule.rule == "pseudonymize":
        return (
            f"Replaced on the device by a pseudonym (a keyed hash cut to {rule.bits} bits). The key exists only in "
            f"the device's memory and is destroyed every {human_duration(policy.rotate_ms)}, so the same device gets "
            f"unrelated pseudonyms in different periods. Pseudonymised data can still be personal data."
        )
    text = (
        f"Never leaves. Only the number of different values seen in each {human_duration(rule.window_ms or 0)} "
        f"leaves"
    )
    if rule.k > 1:
        text += f"; a count below {rule.k} is never published"
    if rule.epsilon is not None and policy.budget is not None:
        text += (
            f"; random noise is added to every count (differential privacy, epsilon {rule.epsilon:g} per count, "
            f"at most {policy.budget.epsilon:g} per {human_duration(policy.budget.period_ms)}; when that budget is "
            f"spent, no more counts are published until the next period)"
        )
        if rule.max_windows is not None:
            text += f"; each device is counted in at most {rule.max_windows} windows per period"
    return text + "."


def explain(policy: Policy, channels: Sequence[Channel] | None = None) -> str:
    """The whole policy in plain language: per declared channel if given, otherwise per rule."""
    lines = [f"Policy {policy.name or policy.path}" + (f", version {policy.version}" if policy.version else "")]
    lines.append(f"Accountable: {policy.organisation} ({policy.contact})")
    lines.append(f"Purpose: {policy.purpose}")
    if policy.retention:
        lines.append(f"Retention: {policy.retention}")
    lines.append(f"Digest: {policy.digest.hex()}" + (f" (signed by governance key {policy.signed_by})" if policy.signed_by else ""))
    lines.append("")
    if channels is None:
        for rule in sorted(policy.rules, key=lambda r: r.pattern):
            lines.append(f"{rule.pattern}: {describe_rule(rule, policy)}")
    else:
        for channel in channels:
            rule = policy.rule_for(channel.id)
            if rule is None:
                lines.append(f"{channel.id}: Never leaves the device (the policy does not name it).")
            else:
                lines.append(f"{channel.id}: {describe_rule(rule, policy, channel.unit)}")
    lines.append("")
    lines.append("Anything the policy does not name never leaves the device and is never stored (default deny).")
    return "\n".join(lines)

"""count_distinct: only how many different values each window saw leaves, with k-anonymity and optional noise.

The values themselves never leave and are not kept: a window holds keyed digests under a key
that is destroyed when the window closes.  With ``epsilon`` each count gets discrete Laplace
noise charged to the policy's privacy budget; ``max_windows`` bounds how many windows of a
budget period one value may count in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge.privacy.catalogue import Words
from edge.privacy.keys import EphemeralKey
from edge.privacy.rule import BUDGET_CHANNEL, Reader, Rule, distinct_channel_id, window_label
from edge.privacy.rules.base import Bound, Plan, PolicyTerms, StageServices, WindowedKind, device_of, parse_window
from edge.protocol.types import Channel, Quality, Reading, Value

__all__ = ["CountDistinct"]


@dataclass(slots=True)
class _Distinct:
    """One open count_distinct window: keyed digests seen, under a key that dies with the window."""

    key: EphemeralKey
    seen: set[bytes] = field(default_factory=set)

    def close(self) -> int:
        count = len(self.seen)
        self.seen.clear()
        self.key.destroy()
        return count


class CountDistinct(WindowedKind):
    name = "count_distinct"
    settings = frozenset({"window", "k", "epsilon", "max_windows"})
    safe_for_personal = True
    every_window = True
    dtpr = ("de-identified", "aggregated")

    def parse(self, r: Reader, fields: dict[str, Any]) -> None:
        parse_window(r, fields)
        k = r.integer("k", 1, 1_000_000)
        if k is not None:
            fields["k"] = k
        fields["epsilon"] = r.number("epsilon")
        fields["max_windows"] = r.integer("max_windows", 1, 1_000_000)
        if fields["max_windows"] is not None and fields["epsilon"] is None:
            r.bad("max_windows", fields["max_windows"], "an epsilon as well (max_windows bounds the noise budget)")

    def processes(self, rule: Rule) -> list[str]:
        labels = list(self.dtpr)
        if rule.k > 1:
            labels.append("k-anonymity")
        if rule.epsilon is not None:
            labels.append("differential privacy")
        return labels

    def describe(self, rule: Rule, policy: PolicyTerms, unit: str, words: Words) -> str:
        text = words("rule.count_distinct", duration=words.duration(rule.window_ms or 0))
        if rule.k > 1:
            text += words("rule.count_distinct_k", k=rule.k)
        if rule.epsilon is not None and policy.budget is not None:
            text += words("rule.count_distinct_noise", epsilon=words.number(rule.epsilon),
                          budget=words.number(policy.budget.epsilon), period=words.duration(policy.budget.period_ms))
            if rule.max_windows is not None:
                text += words.count("rule.count_distinct_bound", rule.max_windows)
        return text + words("rule.end")

    def outputs(self, rule: Rule, channel: Channel, policy: PolicyTerms) -> list[Channel]:
        window_ms = rule.window_ms or 0
        return [
            Channel(
                distinct_channel_id(channel.id, window_ms),
                resolution=1.0,
                description=f"distinct {channel.id} values per {window_label(window_ms)}"
                + (f", k >= {rule.k}" if rule.k > 1 else "")
                + (f", differentially private (epsilon {rule.epsilon})" if rule.epsilon else ""),
            )
        ]

    def open(self, plan: Plan, start: int, *, budgeted: bool) -> None:
        window_ms = plan.rule.window_ms or 1
        # Every window from start-up on is released (zero included), so whether a
        # window appears never depends on who walked past.
        plan.windows[start - start % window_ms] = _Distinct(EphemeralKey())
        if plan.rule.max_windows is not None and budgeted:
            plan.bounding = True

    def new_window(self) -> object:
        return _Distinct(EphemeralKey())

    def add(self, plan: Plan, start: int, value: Value, stage: StageServices) -> list[Reading]:
        rule = plan.rule
        window = plan.windows.get(start)
        if not isinstance(window, _Distinct):
            window = plan.windows[start] = _Distinct(EphemeralKey())
        digest = window.key.digest(str(value).encode("utf-8"))[:16]
        if digest in window.seen:
            return []  # each value counts once per window
        budget = stage.policy.budget
        if plan.bounding and budget is not None and rule.max_windows is not None:
            # The period of the window, not of the clock: a reading stamped 23:59:59.9 and
            # handled after midnight belongs to yesterday's windows, charged to yesterday.
            period = start // budget.period_ms
            bound = plan.bounds.get(period)
            if bound is None:
                bound = plan.bounds[period] = Bound(EphemeralKey())
            tag = bound.key.digest(str(value).encode("utf-8"))[:16]
            if bound.windows[tag] >= rule.max_windows:
                return stage.drop("contribution_bound")
            bound.windows[tag] += 1
        window.seen.add(digest)
        return []

    def close(self, plan: Plan, start: int, window: object, quality: Quality | None, stage: StageServices) -> list[Reading]:
        rule = plan.rule
        count = window.close() if isinstance(window, _Distinct) else 0
        if rule.epsilon is not None:
            noisy = stage.spend(plan.channel.id, rule.epsilon, start, rule.max_windows, count)
            if noisy is None:
                return stage.release(Reading(f"{device_of(plan.channel.id)}/{BUDGET_CHANNEL}", start, True))
            count = noisy
        if count < rule.k:
            return stage.suppress()
        return stage.release(Reading(distinct_channel_id(plan.channel.id, rule.window_ms or 0), start, count, "", quality))

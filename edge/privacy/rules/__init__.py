"""The registry of privacy rules: one module per rule, each registered here under the name a policy uses.

Adding a rule is one new module and one line below; the policy parser, `policy explain`, the
notice and the privacy stage find it here.  The order is the one problem lines list them in.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from edge.privacy.rule import Rule
from edge.privacy.rules.aggregate import AGGREGATE_FUNCTIONS, Aggregate
from edge.privacy.rules.base import Plan, PolicyTerms, RuleKind, StageServices, WindowedKind
from edge.privacy.rules.count_distinct import CountDistinct
from edge.privacy.rules.drop import Drop
from edge.privacy.rules.generalize_location import MIN_PERSONAL_CELL_M, GeneralizeLocation
from edge.privacy.rules.keep import Keep
from edge.privacy.rules.pseudonymize import Pseudonymize
from edge.privacy.rules.quantize import Quantize
from edge.privacy.rules.round_time import RoundTime

__all__ = [
    "AGGREGATE_FUNCTIONS",
    "MIN_PERSONAL_CELL_M",
    "RULES",
    "Plan",
    "PolicyTerms",
    "RuleKind",
    "StageServices",
    "WindowedKind",
    "kind_of",
]

RULES: Mapping[str, RuleKind] = MappingProxyType({
    kind.name: kind
    for kind in (Keep(), Drop(), Quantize(), RoundTime(), Aggregate(), GeneralizeLocation(), Pseudonymize(), CountDistinct())
})


def kind_of(rule: Rule) -> RuleKind:
    """The registered rule a parsed policy rule names (the parser admits no other)."""
    return RULES[rule.rule]

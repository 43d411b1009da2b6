"""Privacy at the edge: the city's policy as data, applied to every reading before it is stored or sent."""

from edge.privacy.load import load_policy
from edge.privacy.notice import build_notice, render_notice_html
from edge.privacy.policy import Policy, PolicyError, Rule, parse_policy
from edge.privacy.stage import BUDGET_CHANNEL, PrivacyStage, aggregate_channel_id, distinct_channel_id

__all__ = [
    "BUDGET_CHANNEL",
    "Policy",
    "PolicyError",
    "PrivacyStage",
    "Rule",
    "aggregate_channel_id",
    "build_notice",
    "distinct_channel_id",
    "load_policy",
    "parse_policy",
    "render_notice_html",
]

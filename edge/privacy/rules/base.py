"""What a privacy rule is to the policy, the notice and the stage: the `RuleKind` each rule module subclasses.

A rule module says, in one place, which settings its rule takes and how they are checked, what
it does to a channel's readings, what it releases and how that is explained to the public.
The policy parser, `policy explain`, the notice and the privacy stage ask the registry
(``edge.privacy.rules.RULES``) instead of comparing rule names.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeGuard

from edge.privacy.catalogue import Words
from edge.privacy.keys import EphemeralKey
from edge.privacy.rule import DAY_MS, Reader, Rule
from edge.protocol.types import Channel, Kind, Quality, Reading, Value

__all__ = [
    "BudgetTerms",
    "Plan",
    "PolicyTerms",
    "RuleKind",
    "StageServices",
    "WindowedKind",
    "device_of",
    "fits",
    "is_number",
    "round_to_step",
]


class BudgetTerms(Protocol):
    @property
    def epsilon(self) -> float: ...

    @property
    def period_ms(self) -> int: ...


class PolicyTerms(Protocol):
    """The policy-wide settings a rule's explanation and outputs depend on."""

    @property
    def rotate_ms(self) -> int: ...

    @property
    def budget(self) -> BudgetTerms | None: ...


class StageServices(Protocol):
    """What the privacy stage lends a rule while it handles a reading or closes a window."""

    @property
    def policy(self) -> PolicyTerms: ...

    def release(self, *readings: Reading) -> list[Reading]:
        """Count ``readings`` as released and return them."""
        ...

    def drop(self, reason: str) -> list[Reading]:
        """Count one reading dropped for ``reason``; returns nothing to release."""
        ...

    def suppress(self) -> list[Reading]:
        """Count one window withheld because its count was below k; returns nothing to release."""
        ...

    def pseudonym_digest(self, data: bytes) -> bytes:
        """Keyed hash of ``data`` under the pseudonym key of the current period."""
        ...

    def latitude_of(self, device: str) -> float | None:
        """The latitude cell last released for ``device`` (grid cells are narrower towards the poles)."""
        ...

    def remember_latitude(self, device: str, centre: float) -> None: ...

    def spend(self, channel_id: str, epsilon: float, start: int, max_windows: int | None, count: int) -> int | None:
        """Charge one release to the privacy budget: the noisy count, or None when the budget is spent."""
        ...


def is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fits(kind: Kind, value: object) -> bool:
    """Whether ``value`` is of the declared ``kind``: a value of another kind never leaves as is."""
    if kind is Kind.NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is Kind.STRING:
        return isinstance(value, str)
    return isinstance(value, bool)


@functools.lru_cache(maxsize=256)
def _decimals(step: float) -> int:
    # enough decimals to show any multiple of step, few enough to drop float noise (0.1 * 3)
    return max(0, min(12, -math.floor(math.log10(step)) + 6))


def round_to_step(value: float, step: float) -> float:
    return round(round(value / step) * step, _decimals(step))


def device_of(channel_id: str) -> str:
    return channel_id.rsplit("/", 1)[0] if "/" in channel_id else channel_id


@dataclass(slots=True)
class Bound:
    """Contribution bounding for one budget period: how many windows each person counted in, keyed."""

    key: EphemeralKey
    windows: Counter[bytes] = field(default_factory=Counter)

    def destroy(self) -> None:
        self.windows.clear()
        self.key.destroy()


@dataclass(slots=True)
class Plan:
    """What the stage keeps for one declared channel: its rule, and the windows of a windowed rule."""

    channel: Channel
    rule: Rule
    kind: RuleKind
    windows: dict[int, object] = field(default_factory=dict)  # window start -> the rule's window state
    closed_until: int | None = None  # readings before this time belong to released windows
    # count_distinct contribution bounding (max_windows): per budget period of the window
    # start, the period the accountant charges the window's release to
    bounding: bool = False
    bounds: dict[int, Bound] = field(default_factory=dict)
    seen_whole_from: int = 0  # windows starting before this were not seen whole (clock stepped back)


class RuleKind:
    """One privacy rule: its settings, checks, processing, outputs and plain-language explanation."""

    name: ClassVar[str]
    settings: ClassVar[frozenset[str]] = frozenset()  # besides rule, purpose and description
    releases: ClassVar[bool] = True  # False: the channel never leaves (listed as withheld)
    safe_for_personal: ClassVar[bool] = False  # the output no longer identifies a person
    declared_kind_only: ClassVar[bool] = False  # a value of another kind than the channel declares is dropped
    windowed: ClassVar[bool] = False
    dtpr: ClassVar[tuple[str, ...]] = ()  # DTPR "data process" labels (https://dtpr.io, "Process" category)

    def parse(self, r: Reader, fields: dict[str, Any]) -> None:
        """Read this rule's settings from ``r.table`` into ``fields``, reporting problems through ``r``."""

    def channel_problems(self, rule: Rule, channel: Channel, where: str) -> list[str]:
        """Problems with applying ``rule`` to ``channel`` beyond the personal-data check (empty: fine)."""
        return []

    def processes(self, rule: Rule) -> list[str]:
        """DTPR process labels for one rule."""
        return list(self.dtpr)

    def describe(self, rule: Rule, policy: PolicyTerms, unit: str, words: Words) -> str:
        """One sentence, for a member of the public, on what leaves the device under ``rule``, in ``words``' language."""
        raise NotImplementedError

    def outputs(self, rule: Rule, channel: Channel, policy: PolicyTerms) -> list[Channel]:
        """The channels that leave the stage for ``channel`` under ``rule``."""
        return []

    def apply(self, rule: Rule, reading: Reading, unit: str, stage: StageServices) -> list[Reading]:
        """What leaves now for one reading (rules that are not windowed)."""
        return stage.drop("default_deny")


class WindowedKind(RuleKind):
    """A rule that releases once per window, aligned to UTC boundaries, from the stage's clock."""

    windowed = True
    every_window: ClassVar[bool] = False  # True: quiet windows are released too (from start-up on)

    def open(self, plan: Plan, start: int, *, budgeted: bool) -> None:
        """Prepare ``plan`` when the stage starts at ``start``; ``budgeted``: the policy has a privacy budget."""

    def new_window(self) -> object:
        raise NotImplementedError

    def add(self, plan: Plan, start: int, value: Value, stage: StageServices) -> list[Reading]:
        """Take one reading's value into the window starting at ``start``."""
        raise NotImplementedError

    def close(self, plan: Plan, start: int, window: object, quality: Quality | None, stage: StageServices) -> list[Reading]:
        """Release what the window allows; the window's state is gone afterwards."""
        raise NotImplementedError


def parse_window(r: Reader, fields: dict[str, Any]) -> None:
    """The ``window`` setting of a windowed rule: present, a duration, and dividing a day."""
    fields["window_ms"] = r.duration("window")
    if "window" not in r.table:
        r.bad("window", None, 'a window, e.g. window = "15m"')
    elif fields["window_ms"] is not None and DAY_MS % fields["window_ms"] != 0:
        r.bad("window", r.table["window"], "a window that divides a day evenly (so windows align to UTC midnight)")


def parse_personal_release(r: Reader, fields: dict[str, Any]) -> None:
    """``allow_personal`` and its ``legal_basis``, for rules that pass a value through as it is."""
    fields["allow_personal"] = r.boolean("allow_personal")
    fields["legal_basis"] = r.text("legal_basis")
    if fields["allow_personal"] and not fields["legal_basis"].strip():
        r.bad("allow_personal", True, "a legal_basis naming the law or consent that permits releasing personal data")

"""The privacy stage: applies the policy to every reading between the drivers and the batcher."""

from __future__ import annotations

import functools
import logging
import math
import os
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from edge.privacy.dp import Accountant, IntegerSource
from edge.privacy.keys import EphemeralKey, RotatingKey
from edge.privacy.location import geohash_cell_deg, grid_cell_deg, snap
from edge.privacy.policy import DAY_MS, Policy, PolicyError, Rule, axis_of
from edge.protocol.types import Channel, Kind, Quality, Reading
from edge.util.clock import now_ms

__all__ = ["BUDGET_CHANNEL", "PrivacyStage", "aggregate_channel_id", "distinct_channel_id", "window_label"]

log = logging.getLogger("ocn.privacy")

# One per device that has a differentially private rule: true at the start of each window
# whose count was not released because the epsilon budget of the period was spent.
BUDGET_CHANNEL = "privacy.budget_exhausted"


def window_label(ms: int) -> str:
    """'15m', '1h', '1d', '30s', '500ms': the largest unit that divides the window exactly."""
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def aggregate_channel_id(channel_id: str, function: str, window_ms: int) -> str:
    """``weather-1/temperature`` + mean over 5 min -> ``weather-1/temperature.mean_5m``."""
    return f"{channel_id}.{function}_{window_label(window_ms)}"


def distinct_channel_id(channel_id: str, window_ms: int) -> str:
    """``ped-1/mac`` counted over 15 min -> ``ped-1/mac.distinct_15m``."""
    return f"{channel_id}.distinct_{window_label(window_ms)}"


def _device(channel_id: str) -> str:
    return channel_id.rsplit("/", 1)[0] if "/" in channel_id else channel_id


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _mean_resolution(channel: Channel) -> float | None:
    """A mean is kept to one decimal more than the readings it summarises: more would be float noise."""
    return None if channel.resolution is None else channel.resolution / 10


@functools.lru_cache(maxsize=256)
def _decimals(step: float) -> int:
    # enough decimals to show any multiple of step, few enough to drop float noise (0.1 * 3)
    return max(0, min(12, -math.floor(math.log10(step)) + 6))


def _round_to_step(value: float, step: float) -> float:
    return round(round(value / step) * step, _decimals(step))


def _fits(kind: Kind, value: object) -> bool:
    """Whether ``value`` is of the declared ``kind``: a value of another kind never leaves as is."""
    if kind is Kind.NUMBER:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is Kind.STRING:
        return isinstance(value, str)
    return isinstance(value, bool)


@dataclass(slots=True)
class _Summary:
    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf
    last: object = None

    def add(self, value: object) -> None:
        self.count += 1
        self.last = value
        if _is_number(value):
            v = float(value)  # type: ignore[arg-type]
            self.total += v
            self.low = min(self.low, v)
            self.high = max(self.high, v)


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


@dataclass(slots=True)
class _Bound:
    """Contribution bounding for one budget period: how many windows each person counted in, keyed."""

    key: EphemeralKey
    windows: Counter[bytes] = field(default_factory=Counter)

    def destroy(self) -> None:
        self.windows.clear()
        self.key.destroy()


@dataclass(slots=True)
class _Plan:
    channel: Channel
    rule: Rule
    windows: dict[int, object] = field(default_factory=dict)  # window start -> _Summary | _Distinct
    closed_until: int | None = None  # readings before this time belong to released windows
    # count_distinct contribution bounding (max_windows): per budget period of the window
    # start, the period the accountant charges the window's release to
    bounding: bool = False
    bounds: dict[int, _Bound] = field(default_factory=dict)
    seen_whole_from: int = 0  # windows starting before this were not seen whole (clock stepped back)


class PrivacyStage:
    """Default deny: a reading leaves only through the rule the policy gives its channel.

    ``process`` returns what may leave at once (keep, quantize, round_time,
    generalize_location, pseudonymize); windowed rules (aggregate, count_distinct)
    release from ``tick`` when a window closes (windows align to UTC boundaries, a
    released reading carries the window's start time) and from ``flush`` at shutdown.
    Raw values live only in this object's memory; count_distinct keeps keyed digests,
    not the values, under a key destroyed when the window closes.  ``budget_state`` (a
    file in the state directory) keeps the epsilon spent across restarts; it holds
    numbers only.
    """

    def __init__(
        self,
        policy: Policy,
        channels: Sequence[Channel],
        *,
        clock_ms: Callable[[], int] | None = None,
        rng: IntegerSource | None = None,
        budget_state: str | os.PathLike[str] | None = None,
    ) -> None:
        problems = policy.check_channels(channels)
        if problems:
            raise PolicyError(problems)
        self.policy = policy
        self._clock = clock_ms or now_ms
        self._rng: IntegerSource = rng or random.SystemRandom()
        self._pseudonyms = RotatingKey(period_ms=policy.rotate_ms, offset_ms=policy.rotate_offset_ms)
        self._accountant = (
            Accountant(
                epsilon=policy.budget.epsilon,
                period_ms=policy.budget.period_ms,
                rng=self._rng,
                state_path=budget_state,
            )
            if policy.budget
            else None
        )
        self._plans: dict[str, _Plan] = {}
        self._denied: dict[str, str] = {}  # declared channels that never leave -> reason
        self._last_latitude: dict[str, float] = {}
        self._in = 0
        self._released = 0
        self._dropped: Counter[str] = Counter()
        self._suppressed = 0
        self._budget_refused = 0
        self._budget_spent_logged = False
        start = self._clock()
        self._born_ms = start
        for channel in channels:
            rule = policy.rule_for(channel.id)
            if rule is None or rule.rule == "drop":
                self._denied[channel.id] = "default_deny" if rule is None else "drop"
                continue
            plan = _Plan(channel=channel, rule=rule)
            if rule.rule == "count_distinct":
                # Every window from start-up on is released (zero included), so whether a
                # window appears never depends on who walked past.
                plan.windows[start - start % rule.window_ms] = _Distinct(EphemeralKey())
                if rule.max_windows is not None and policy.budget is not None:
                    plan.bounding = True
            self._plans[channel.id] = plan
        self._outputs = self._output_channels()

    # -- what leaves -------------------------------------------------------------------

    def _output_channels(self) -> list[Channel]:
        out: list[Channel] = []
        dp_devices: list[str] = []
        for plan in self._plans.values():
            ch, rule = plan.channel, plan.rule
            how = rule.description or rule.purpose
            if rule.rule in ("keep", "round_time"):
                out.append(ch)
            elif rule.rule == "quantize":
                out.append(replace(ch, resolution=rule.step, personal=False))
            elif rule.rule == "generalize_location":
                cell = f"{rule.grid_m:g} m grid" if rule.grid_m else f"geohash-{rule.geohash}"
                out.append(replace(ch, personal=False, description=how or f"centre of its {cell} cell"))
            elif rule.rule == "pseudonymize":
                out.append(
                    # Still personal: a pseudonym singles out one device for a whole key period
                    # (pseudonymised data is personal data, GDPR recital 26). The hub stores it
                    # for the city's stated purpose and never publishes it (OXP §11).
                    Channel(
                        ch.id,
                        kind=Kind.STRING,
                        personal=True,
                        description=how or f"pseudonym: keyed hash, {rule.bits} bits, key renewed every "
                        f"{window_label(self.policy.rotate_ms)}",
                    )
                )
            elif rule.rule == "aggregate":
                for fn in rule.functions:
                    if fn == "count":
                        unit, kind, res = "", Kind.NUMBER, 1.0
                    elif fn == "last":
                        unit, kind, res = ch.unit, ch.kind, ch.resolution
                    else:
                        unit, kind = ch.unit, Kind.NUMBER
                        res = _mean_resolution(ch) if fn == "mean" else ch.resolution
                    if rule.step is not None and fn not in ("count",) and kind is Kind.NUMBER:
                        res = rule.step
                    out.append(
                        Channel(
                            aggregate_channel_id(ch.id, fn, rule.window_ms),  # type: ignore[arg-type]
                            unit=unit,
                            kind=kind,
                            resolution=res,
                            description=f"{fn} of {ch.id} over {window_label(rule.window_ms)} windows",  # type: ignore[arg-type]
                        )
                    )
            elif rule.rule == "count_distinct":
                out.append(
                    Channel(
                        distinct_channel_id(ch.id, rule.window_ms),  # type: ignore[arg-type]
                        resolution=1.0,
                        description=f"distinct {ch.id} values per {window_label(rule.window_ms)}"  # type: ignore[arg-type]
                        + (f", k >= {rule.k}" if rule.k > 1 else "")
                        + (f", differentially private (epsilon {rule.epsilon})" if rule.epsilon else ""),
                    )
                )
                if rule.epsilon is not None and _device(ch.id) not in dp_devices:
                    dp_devices.append(_device(ch.id))
        for device in dp_devices:
            out.append(
                Channel(
                    f"{device}/{BUDGET_CHANNEL}",
                    kind=Kind.BOOL,
                    description="true: this window's count was withheld because the privacy budget was spent",
                )
            )
        return out

    def output_channels(self) -> list[Channel]:
        """The channels that can leave the stage, in declaration order."""
        return list(self._outputs)

    # -- per reading -------------------------------------------------------------------

    def process(self, reading: Reading) -> list[Reading]:
        """Apply the channel's rule; returns the readings that may leave now (often none)."""
        self._in += 1
        plan = self._plans.get(reading.channel)
        if plan is None:
            return self._drop(self._denied.get(reading.channel, "default_deny"))
        rule = plan.rule
        unit = reading.unit or plan.channel.unit
        value = reading.value
        if rule.rule in ("keep", "round_time", "aggregate") and not _fits(plan.channel.kind, value):
            # A driver sending a value of another kind than it declared (a string on a number
            # channel) is not trusted to have declared it right: it would leave unchanged, and
            # the batcher's refusal would carry it into a log line.
            return self._drop("bad_value")
        if rule.rule == "keep":
            return self._release(reading if reading.unit == unit else replace(reading, unit=unit))
        if rule.rule == "round_time":
            ts = reading.ts_ms - reading.ts_ms % rule.time_step_ms  # type: ignore[operator]
            return self._release(Reading(reading.channel, ts, value, unit, reading.quality))
        if rule.rule == "quantize":
            if not _is_number(value):
                return self._drop("bad_value")
            q = _round_to_step(float(value), rule.step)  # type: ignore[arg-type]
            return self._release(Reading(reading.channel, reading.ts_ms, q, unit, reading.quality))
        if rule.rule == "generalize_location":
            return self._generalize(plan, reading, unit)
        if rule.rule == "pseudonymize":
            key = self._pseudonyms.key(self._clock())
            digest = key.digest(str(value).encode("utf-8"))
            pseudonym = digest.hex()[: rule.bits // 4]
            return self._release(Reading(reading.channel, reading.ts_ms, pseudonym, "", reading.quality))
        if reading.quality is Quality.BAD:
            return self._drop("bad_quality")
        start = reading.ts_ms - reading.ts_ms % rule.window_ms  # type: ignore[operator]
        if plan.closed_until is not None and start < plan.closed_until:
            return self._drop("late")
        if rule.rule == "aggregate":
            if not _is_number(value) and any(f not in ("count", "last") for f in rule.functions):
                return self._drop("bad_value")
            plan.windows.setdefault(start, _Summary()).add(value)  # type: ignore[union-attr]
            return []
        return self._count(plan, start, value)

    def _generalize(self, plan: _Plan, reading: Reading, unit: str) -> list[Reading]:
        rule, value = plan.rule, reading.value
        if not _is_number(value) or not -180.0 <= float(value) <= 180.0:  # type: ignore[arg-type]
            return self._drop("bad_value")
        axis = axis_of(rule, reading.channel)
        device = _device(reading.channel)
        if rule.geohash is not None:
            cell = geohash_cell_deg(rule.geohash, axis)  # type: ignore[arg-type]
        else:
            cell = grid_cell_deg(rule.grid_m, axis, self._last_latitude.get(device))  # type: ignore[arg-type]
        if axis == "latitude" and not -90.0 <= float(value) <= 90.0:  # type: ignore[arg-type]
            return self._drop("bad_value")
        centre = snap(float(value), cell, axis)  # type: ignore[arg-type]
        if axis == "latitude":
            self._last_latitude[device] = centre  # the cell, never the exact value, is remembered
        return self._release(Reading(reading.channel, reading.ts_ms, centre, unit, reading.quality))

    def _count(self, plan: _Plan, start: int, value: object) -> list[Reading]:
        rule = plan.rule
        window = plan.windows.get(start)
        if window is None:
            window = plan.windows[start] = _Distinct(EphemeralKey())
        digest = window.key.digest(str(value).encode("utf-8"))[:16]  # type: ignore[union-attr]
        if digest in window.seen:  # type: ignore[union-attr]
            return []  # each value counts once per window
        if plan.bounding and self.policy.budget is not None:
            # The period of the window, not of the clock: a reading stamped 23:59:59.9 and
            # handled after midnight belongs to yesterday's windows, charged to yesterday.
            period = start // self.policy.budget.period_ms
            bound = plan.bounds.get(period)
            if bound is None:
                bound = plan.bounds[period] = _Bound(EphemeralKey())
            tag = bound.key.digest(str(value).encode("utf-8"))[:16]
            if bound.windows[tag] >= rule.max_windows:  # type: ignore[operator]
                return self._drop("contribution_bound")
            bound.windows[tag] += 1
        window.seen.add(digest)  # type: ignore[union-attr]
        return []

    # -- windows -----------------------------------------------------------------------

    def tick(self, now_ms: int) -> list[Reading]:
        """Release every window that ended at or before ``now_ms``; retire expired keys."""
        self._pseudonyms.expire(now_ms)
        out: list[Reading] = []
        stepped_back: list[str] = []
        for plan in self._plans.values():
            rule = plan.rule
            if rule.window_ms is None:
                continue
            current = now_ms - now_ms % rule.window_ms
            if plan.closed_until is not None and plan.closed_until > now_ms + rule.window_ms:
                out.extend(self._restart_windows(plan, current, now_ms))
                stepped_back.append(plan.channel.id)
            if rule.rule == "count_distinct":
                # fill the gap with empty windows, up to one day back, so none goes missing
                opened = [s for s in plan.windows]
                first = min(opened) if opened else (plan.closed_until or current)
                first = max(first, current - DAY_MS)
                for s in range(first, current + 1, rule.window_ms):
                    if s not in plan.windows:
                        plan.windows[s] = _Distinct(EphemeralKey())
            for s in sorted(w for w in plan.windows if w + rule.window_ms <= now_ms):
                out.extend(self._close(plan, s, now_ms))
            if plan.bounds and plan.closed_until is not None:
                # a period whose windows are all closed takes no more readings: its key dies
                period_ms = self.policy.budget.period_ms  # type: ignore[union-attr]
                for period in [p for p in plan.bounds if (p + 1) * period_ms <= plan.closed_until]:
                    plan.bounds.pop(period).destroy()
        if stepped_back:
            log.warning(
                "clock stepped back over released windows: open windows closed early (flagged suspect), "
                "windows start again from now",
                extra={"channels": ",".join(stepped_back), "now_ms": now_ms},
            )
        return out

    def _restart_windows(self, plan: _Plan, current: int, now_ms: int) -> list[Reading]:
        """The clock went back over windows already released: start the windows again from ``current``.

        Otherwise every reading stamped by the corrected clock would be dropped as late (and
        no count_distinct window released) until the clock caught up with where it had been,
        years for a clock that had jumped ahead. The windows still open are closed now (k
        and the budget apply; flagged suspect), so each reading is still in one release only.
        """
        out: list[Reading] = []
        for s in sorted(plan.windows):
            out.extend(self._close(plan, s, now_ms))
        plan.closed_until = current
        plan.seen_whole_from = current + plan.rule.window_ms  # type: ignore[operator]
        if plan.bounds:
            keep = current // self.policy.budget.period_ms  # type: ignore[union-attr]
            for period in [p for p in plan.bounds if p != keep]:  # all their windows are closed
                plan.bounds.pop(period).destroy()
        return out

    def flush(self, now_ms: int) -> list[Reading]:
        """At shutdown: close every open window (partial ones too), still applying k and the budget."""
        out = self.tick(now_ms)
        for plan in self._plans.values():
            for s in sorted(plan.windows):
                out.extend(self._close(plan, s, now_ms))
            for bound in plan.bounds.values():
                bound.destroy()
            plan.bounds.clear()
        self._pseudonyms.destroy()
        return out

    def _close(self, plan: _Plan, start: int, now_ms: int) -> list[Reading]:
        rule, window = plan.rule, plan.windows.pop(start)
        end = start + rule.window_ms  # type: ignore[operator]
        plan.closed_until = max(plan.closed_until or end, end)
        # A window this stage did not see whole (it started, stopped or changed policy inside
        # it) is released flagged, so a reader can tell it from the full window's value.
        quality = Quality.SUSPECT if start < self._born_ms or start < plan.seen_whole_from or now_ms < end else None
        if isinstance(window, _Summary):
            return self._summarise(plan, start, window, quality)
        count = window.close()  # type: ignore[union-attr]
        if rule.epsilon is not None and self._accountant is not None:
            if not self._accountant.charge(plan.channel.id, rule.epsilon, start, max_windows=rule.max_windows):
                self._budget_refused += 1
                if not self._budget_spent_logged:
                    self._budget_spent_logged = True
                    log.warning(
                        "privacy budget of the period spent: counts withheld until the next period",
                        extra={"epsilon": self._accountant.state(start)["epsilon"], "channel": plan.channel.id},
                    )
                return self._release(Reading(f"{_device(plan.channel.id)}/{BUDGET_CHANNEL}", start, True))
            if self._budget_spent_logged:
                self._budget_spent_logged = False
                log.info("privacy budget renewed: counts published again", extra={"channel": plan.channel.id})
            count = self._accountant.noisy(count, rule.epsilon)
        if count < rule.k:
            self._suppressed += 1
            return []
        return self._release(Reading(distinct_channel_id(plan.channel.id, rule.window_ms), start, count, "", quality))  # type: ignore[arg-type]

    def _summarise(self, plan: _Plan, start: int, s: _Summary, quality: Quality | None = None) -> list[Reading]:
        rule, ch = plan.rule, plan.channel
        out: list[Reading] = []
        if s.count == 0:
            return out
        for fn in rule.functions:
            if fn == "count":
                value: object = s.count
            elif fn == "last":
                value = s.last
            elif fn == "mean":
                value = s.total / s.count
            elif fn == "sum":
                value = s.total
            elif fn == "min":
                value = s.low
            else:
                value = s.high
            try:
                if fn == "mean" and not math.isfinite(value):  # type: ignore[arg-type]
                    raise OverflowError("the sum of the window's values overflowed: it has no float mean")
                if fn == "mean" and rule.step is None and ch.resolution is not None:
                    value = _round_to_step(value, _mean_resolution(ch))  # type: ignore[arg-type]
                if rule.step is not None and fn != "count" and _is_number(value):
                    value = _round_to_step(float(value), rule.step)  # type: ignore[arg-type]
            except OverflowError:
                # Beyond the float range (in steps): this summary is left out, the others and the
                # next windows are not (it raised out of tick() and stopped the gateway).
                self._dropped["bad_value"] += 1
                continue
            unit = "" if fn == "count" else ch.unit
            out.append(Reading(aggregate_channel_id(ch.id, fn, rule.window_ms), start, value, unit, quality))  # type: ignore[arg-type]
        return self._release(*out)

    # -- accounting --------------------------------------------------------------------

    def _release(self, *readings: Reading) -> list[Reading]:
        self._released += len(readings)
        return list(readings)

    def _drop(self, reason: str) -> list[Reading]:
        self._dropped[reason] += 1
        return []

    def budget_exhausted(self, now_ms: int | None = None) -> bool:
        """True when the period's epsilon cannot pay for one more release of any DP rule."""
        if self._accountant is None:
            return False
        now = self._clock() if now_ms is None else now_ms
        costs = [p.rule.epsilon for p in self._plans.values() if p.rule.epsilon is not None]
        return bool(costs) and self._accountant.exhausted(now, min(costs))

    def stats(self) -> dict[str, object]:
        """Counters for the status report: in, released, dropped by reason, suppressed by k, budget."""
        now = self._clock()
        budget: dict[str, object] | None = None
        if self._accountant is not None:
            budget = self._accountant.state(now)
            budget["exhausted"] = self.budget_exhausted(now)
            budget["refused_total"] = self._budget_refused
        return {
            "in": self._in,
            "released": self._released,
            "dropped": dict(sorted(self._dropped.items())),
            "suppressed_by_k": self._suppressed,
            "pseudonym_key_rotations": self._pseudonyms.rotations,
            "budget": budget,
        }

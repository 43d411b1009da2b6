"""The privacy stage: applies the policy to every reading between the drivers and the batcher.

What each rule does to a reading lives in its module under ``edge.privacy.rules``; this stage
owns what rules share: the plan per channel, the windows' clock, the pseudonym key, the
privacy budget and the counters.
"""

from __future__ import annotations

import logging
import os
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from edge.privacy.dp import Accountant, IntegerSource
from edge.privacy.keys import RotatingKey
from edge.privacy.policy import DAY_MS, Policy, PolicyError
from edge.privacy.rule import BUDGET_CHANNEL, aggregate_channel_id, distinct_channel_id, window_label
from edge.privacy.rules import Keep, Plan, WindowedKind, kind_of
from edge.privacy.rules.base import device_of, fits
from edge.protocol.types import Channel, Kind, Quality, Reading
from edge.util.clock import now_ms
from edge.util.logonce import LogOnce

__all__ = ["BUDGET_CHANNEL", "PrivacyStage", "aggregate_channel_id", "distinct_channel_id", "window_label"]

log = logging.getLogger("ocn.privacy")


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
        self._plans: dict[str, Plan] = {}
        # Number channels kept as measured, with their declared unit: `process` does the keep rule's whole work for
        # them inline (most of a metering gateway's readings), the other rules go through their kind as usual.
        self._kept: dict[str, str] = {}
        self._denied: dict[str, str] = {}  # declared channels that never leave -> reason
        self._last_latitude: dict[str, float] = {}
        self._in = 0
        self._released = 0
        self._dropped: Counter[str] = Counter()
        self._suppressed = 0
        self._budget_refused = 0
        self._budget_note = LogOnce(log)
        # Whether `tick` has anything to do: windows to close, or (once one is made) a pseudonym key to retire.
        # ``on_ticks_needed`` is called when that becomes true after construction, so whoever ticks can sleep till then.
        self.ticks_needed = False
        self.on_ticks_needed: Callable[[], None] | None = None
        start = self._clock()
        self._born_ms = start
        for channel in channels:
            rule = policy.rule_for(channel.id)
            kind = kind_of(rule) if rule is not None else None
            if rule is None or kind is None or not kind.releases:
                self._denied[channel.id] = "default_deny" if kind is None else kind.name
                continue
            plan = Plan(channel=channel, rule=rule, kind=kind)
            if isinstance(kind, WindowedKind):
                kind.open(plan, start, budgeted=policy.budget is not None)
            self._plans[channel.id] = plan
            if type(kind) is Keep and rule.window_ms is None and channel.kind is Kind.NUMBER:
                self._kept[channel.id] = channel.unit
            if rule.window_ms is not None:
                self.ticks_needed = True
        self._outputs = self._output_channels()

    # -- what leaves -------------------------------------------------------------------

    def _output_channels(self) -> list[Channel]:
        out: list[Channel] = []
        dp_devices: list[str] = []
        for plan in self._plans.values():
            out.extend(plan.kind.outputs(plan.rule, plan.channel, self.policy))
            if plan.rule.epsilon is not None and device_of(plan.channel.id) not in dp_devices:
                dp_devices.append(device_of(plan.channel.id))
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
        return self.process_all((reading,))

    def process_all(self, readings: Iterable[Reading],
                    failed: Callable[[Reading, Exception], None] | None = None) -> list[Reading]:
        """:meth:`process` for each of ``readings`` in order; what they release, in order.

        A poll's readings in one call: a number under a plain keep rule (most of a meter's channels) takes
        Keep.apply's steps inline, without the calls per reading.  ``failed``: called with a reading whose
        rule raised, and the exception, and the rest go on; without it the exception propagates.
        """
        out: list[Reading] = []
        kept = self._kept
        for reading in readings:
            try:
                self._in += 1
                unit = kept.get(reading.channel)
                if unit is None:
                    out += self._apply(reading)
                    continue
                # Keep.apply, its declared-kind check and release, without the four calls (bench.gateway_load's fleet).
                value = reading.value
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    self._dropped["bad_value"] += 1
                    continue
                self._released += 1
                out.append(reading if reading.unit or not unit else replace(reading, unit=unit))
            except Exception as exc:
                if failed is None:
                    raise
                failed(reading, exc)  # the caller counts it; the other readings go on
        return out

    def _apply(self, reading: Reading) -> list[Reading]:
        """The rule of a channel that is not a plain keep of a number."""
        plan = self._plans.get(reading.channel)
        if plan is None:
            return self.drop(self._denied.get(reading.channel, "default_deny"))
        kind = plan.kind
        unit = reading.unit or plan.channel.unit
        if kind.declared_kind_only and not fits(plan.channel.kind, reading.value):
            # A driver sending a value of another kind than it declared (a string on a number
            # channel) is not trusted to have declared it right: it would leave unchanged, and
            # the batcher's refusal would carry it into a log line.
            return self.drop("bad_value")
        if not isinstance(kind, WindowedKind) or plan.rule.window_ms is None:
            return kind.apply(plan.rule, reading, unit, self)
        if reading.quality is Quality.BAD:
            return self.drop("bad_quality")
        start = reading.ts_ms - reading.ts_ms % plan.rule.window_ms
        if plan.closed_until is not None and start < plan.closed_until:
            return self.drop("late")
        return kind.add(plan, start, reading.value, self)

    # -- what rules may ask of the stage (StageServices) --------------------------------

    def release(self, *readings: Reading) -> list[Reading]:
        self._released += len(readings)
        return list(readings)

    def drop(self, reason: str) -> list[Reading]:
        self._dropped[reason] += 1
        return []

    def suppress(self) -> list[Reading]:
        self._suppressed += 1
        return []

    def pseudonym_digest(self, data: bytes) -> bytes:
        if not self.ticks_needed:
            # The key made now must be destroyed when its period ends, even if no reading comes then.
            self.ticks_needed = True
            if self.on_ticks_needed is not None:
                self.on_ticks_needed()
        return self._pseudonyms.key(self._clock()).digest(data)

    def latitude_of(self, device: str) -> float | None:
        return self._last_latitude.get(device)

    def remember_latitude(self, device: str, centre: float) -> None:
        self._last_latitude[device] = centre

    def spend(self, channel_id: str, epsilon: float, start: int, max_windows: int | None, count: int) -> int | None:
        if self._accountant is None:
            return count
        if not self._accountant.charge(channel_id, epsilon, start, max_windows=max_windows):
            self._budget_refused += 1
            self._budget_note.failure("budget", "privacy budget of the period spent: counts withheld until the next period",
                                      extra={"epsilon": self._accountant.state(start)["epsilon"], "channel": channel_id})
            return None
        self._budget_note.recovered("budget", "privacy budget renewed: counts published again", extra={"channel": channel_id})
        return self._accountant.noisy(count, epsilon)

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
            if isinstance(plan.kind, WindowedKind) and plan.kind.every_window:
                # fill the gap with empty windows, up to one day back, so none goes missing
                opened = [s for s in plan.windows]
                first = min(opened) if opened else (plan.closed_until or current)
                first = max(first, current - DAY_MS)
                for s in range(first, current + 1, rule.window_ms):
                    if s not in plan.windows:
                        plan.windows[s] = plan.kind.new_window()
            for s in sorted(w for w in plan.windows if w + rule.window_ms <= now_ms):
                out.extend(self._close(plan, s, now_ms))
            if plan.bounds and plan.closed_until is not None and self.policy.budget is not None:
                # a period whose windows are all closed takes no more readings: its key dies
                period_ms = self.policy.budget.period_ms
                for period in [p for p in plan.bounds if (p + 1) * period_ms <= plan.closed_until]:
                    plan.bounds.pop(period).destroy()
        if stepped_back:
            log.warning(
                "clock stepped back over released windows: open windows closed early (flagged suspect), "
                "windows start again from now",
                extra={"channels": ",".join(stepped_back), "now_ms": now_ms},
            )
        return out

    def _restart_windows(self, plan: Plan, current: int, now_ms: int) -> list[Reading]:
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
        plan.seen_whole_from = current + (plan.rule.window_ms or 0)
        if plan.bounds and self.policy.budget is not None:
            keep = current // self.policy.budget.period_ms
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

    def _close(self, plan: Plan, start: int, now_ms: int) -> list[Reading]:
        rule, window = plan.rule, plan.windows.pop(start)
        end = start + (rule.window_ms or 0)
        plan.closed_until = max(plan.closed_until or end, end)
        # A window this stage did not see whole (it started, stopped or changed policy inside
        # it) is released flagged, so a reader can tell it from the full window's value.
        quality = Quality.SUSPECT if start < self._born_ms or start < plan.seen_whole_from or now_ms < end else None
        if not isinstance(plan.kind, WindowedKind):
            return []
        return plan.kind.close(plan, start, window, quality, self)

    # -- accounting --------------------------------------------------------------------

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

"""The soak's reconciliation: what hil-sim served, through the policy replayed offline, against what the hub stored.

Pure and offline, so tests/soak can check it on cases whose answer is known.  Per channel:

- *served*: entries of hil-sim's ledger (``hilsim.ledger``), turned into the gateway's channel ids
  (a Modbus register by the gateway's profile: same address, a status bit picked out);
- *released*: what the gateway's own privacy code (``edge.privacy.PrivacyStage``, run here on the
  served values) lets leave; a channel the policy denies must have nothing at the hub;
- *stored*: the hub's readings, each matched to one released reading of equal value (within the
  channel's resolution) served at most ``max_lag_ms`` before and ``skew_ms`` after its timestamp,
  oldest first.  A stored reading twice is a duplicate; one matching nothing is *extra*.

A released reading the hub lacks needs a named cause, tried in this order (docs/soak.md):

- ``fault``: the frame carrying it was hit by a fault (checksum, cut, noise, late, dropped);
- ``unplugged``: its device, line or Modbus TCP server went away (a USB unplug, a unit losing power, a
  server stopping) within ``unplug_lead_ms`` after it was served (bytes still in the pty's buffer or the
  reply being written go with it, as a UART's FIFO does), or it was served within ``reopen_ms`` after it
  came back, while the gateway was still reopening the port;
- ``at_risk``: it was served within ``flush_ms`` (the batch flush interval) plus ``slack_ms`` before a ``kill -9``;
- ``update``: it was served after the installer sent the gateway SIGTERM to restart it into another slot (an update
  or a rollback) and before the new slot said it was running, or within ``slack_ms`` after, while its drivers were
  opening their ports.  Nothing served before that SIGTERM: a clean stop keeps everything read (docs/spool-and-uplink.md);
- ``not_running``: it was served while no gateway ran (before the first start, between a kill and the
  restarted gateway's start, after the last stop's SIGTERM), or within ``stop_lead_ms`` before a SIGTERM,
  in a poll that outlasted the stop's grace (a poll under way is finished and emitted within 2 s, so the
  window is slack: a 2-minute run reconciled with it at 0 came out the same);
- ``quota``: it was served while the spool refused batches, or within ``flush_ms`` plus ``slack_ms``
  before the first refusal (the readings of the first refused batch).  The gateway's ``readings_dropped``
  counter must lie between what this cause explains and every missing reading served in those windows
  (a reading there may have met a fault or a kill first: the count tells how many the quota took);
- ``not_running`` too: it was served within ``slack_ms`` after a gateway said it was running, while
  its drivers were still opening their ports (after ``quota``, whose count is exact, in the order);
- ``unexplained``: none of the above.  Any unexplained reading, duplicate or extra fails the soak.

Windowed channels (a count over a window, with noise) cannot be matched value by value: for them the
table checks duplicates only and shows the counts; two counts of one window that a clean stop split
(each run releases what it counted) are partial counts, not duplicates.
"""

from __future__ import annotations

import bisect
import datetime
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from edge.privacy import PrivacyStage
from edge.privacy.policy import Policy
from edge.privacy.stage import BUDGET_CHANNEL
from edge.protocol.types import Channel, Reading
from hilsim.ledger import LedgerEntry

__all__ = ["CAUSES", "Channelled", "Events", "Outcome", "Row", "reconcile", "replay", "table"]

CAUSES = ("fault", "unplugged", "at_risk", "update", "not_running", "quota", "unexplained")


@dataclass(frozen=True, slots=True)
class Channelled:
    """A ledger entry as a reading of one of the gateway's channels, with the faults on its frame."""

    reading: Reading
    faults: tuple[str, ...]


@dataclass
class Events:
    """What the soak did and when (wall milliseconds), and the bounds that go with it."""

    runs: list[tuple[int, int | None]] = field(default_factory=list)  # (gateway running from, until; None = killed at none)
    kills: list[int] = field(default_factory=list)  # when each kill -9 was sent
    stops: list[int] = field(default_factory=list)  # when each SIGTERM was sent
    restarts: list[tuple[int, int | None]] = field(default_factory=list)  # the installer's SIGTERM (an update, a rollback), the new slot running
    unplugged: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # device -> (unplugged at, back at)
    quota: list[tuple[int, int]] = field(default_factory=list)  # the spool refusing batches: (from, until)
    flush_ms: int = 2_000
    slack_ms: int = 3_000
    reopen_ms: int = 12_000
    unplug_lead_ms: int = 1_000
    stop_lead_ms: int = 2_000

    def in_quota(self, t_ms: int) -> bool:
        return any(start - self.flush_ms - self.slack_ms <= t_ms <= end for start, end in self.quota)

    def cause(self, device: str, t_ms: int, faults: Sequence[str]) -> str:
        if faults:
            return "fault"
        if any(gone - self.unplug_lead_ms <= t_ms <= back + self.reopen_ms for gone, back in self.unplugged.get(device, ())):
            return "unplugged"
        if any(kill - self.flush_ms - self.slack_ms <= t_ms <= kill for kill in self.kills):
            return "at_risk"
        if any(term <= t_ms <= (back if back is not None else term) + self.slack_ms for term, back in self.restarts):
            return "update"  # a clean stop keeps all it read: only what came after the SIGTERM, until the new slot reads
        if not any(start <= t_ms and (end is None or t_ms < end) for start, end in self.runs):
            return "not_running"
        if any(stop - self.stop_lead_ms <= t_ms <= stop for stop in self.stops):
            return "not_running"  # a poll under way at SIGTERM that outlasted the stop's 2 s grace
        if self.in_quota(t_ms):
            return "quota"
        if any(start <= t_ms < start + self.slack_ms for start, _ in self.runs):
            return "not_running"  # the gateway had just started: its drivers were opening their ports
        return "unexplained"


@dataclass
class Row:
    """One channel's line of the table."""

    channel: str
    rule: str
    served: int = 0
    released: int = 0
    stored: int = 0
    spooled: int = 0
    matched: int = 0
    duplicates: int = 0
    split: int = 0  # a windowed channel's partial counts of one window a clean stop split (not duplicates)
    extra: int = 0
    windowed: bool = False
    missing: Counter[str] = field(default_factory=Counter)
    unexplained: list[Reading] = field(default_factory=list)  # the released readings no cause explains
    quota_could: int = 0  # missing readings served in a quota window (whichever cause was named first)
    overrun_taken: int = 0  # readings hil-sim marked overrun (answered past the gateway's deadline) that reached the hub all the same
    at_risk_lead_ms: int = 0  # the longest a reading lost to a kill was served before it
    lost: list[tuple[str, int]] = field(default_factory=list)  # (cause, served at) of every released reading the hub lacks

    @property
    def ok(self) -> bool:
        return self.duplicates == 0 and self.extra == 0 and self.missing["unexplained"] == 0


@dataclass
class Outcome:
    rows: list[Row]
    problems: list[str]
    counted_quota_drops: int = 0

    @property
    def at_risk_lead_ms(self) -> int:
        """How long before its kill -9 the earliest reading lost to it was served."""
        return max((row.at_risk_lead_ms for row in self.rows), default=0)

    @property
    def quota_could(self) -> int:
        """Missing readings served in a quota window, whatever cause came first for them."""
        return sum(row.quota_could for row in self.rows)

    @property
    def overrun_taken(self) -> int:
        """Readings marked overrun that reached the hub all the same: a gateway that took a reply past its deadline
        (its own loop late), which says the mark's margin was too small for this machine's load."""
        return sum(row.overrun_taken for row in self.rows)

    @property
    def ok(self) -> bool:
        return not self.problems and all(row.ok for row in self.rows)

    def missing(self, cause: str) -> int:
        return sum(row.missing[cause] for row in self.rows)


def replay(policy: Policy, channels: Sequence[Channel], served: Iterable[Channelled]) -> tuple[dict[str, list[Channelled]], set[str]]:
    """The released readings of the per-reading rules, by channel, each with the faults of the entry it came from;
    and the set of windowed channels (whose outputs depend on noise and are not replayed value by value)."""
    stage = PrivacyStage(policy, channels, clock_ms=lambda: 0)
    windowed = {c.id for c in channels if (rule := policy.rule_for(c.id)) is not None and rule.window_ms is not None}
    out: dict[str, list[Channelled]] = defaultdict(list)
    for entry in served:
        if entry.reading.channel in windowed:
            continue
        for released in stage.process(entry.reading):
            out[released.channel].append(Channelled(released, entry.faults))
    return out, windowed


def _nearest(want: Sequence[Channelled], times: Sequence[int], used: Sequence[bool], ts: int, value: object,
             resolution: float | None, max_lag_ms: int, skew_ms: int) -> int | None:
    """The unused released reading of equal value served nearest in time to ``ts`` (from ``max_lag_ms`` before
    to ``skew_ms`` after it), so a constant value is matched to its own moment, not to an older one."""
    right = bisect.bisect_left(times, ts)
    left = right - 1
    while True:
        take_left = left >= 0 and times[left] >= ts - max_lag_ms
        take_right = right < len(times) and times[right] <= ts + skew_ms
        if not take_left and not take_right:
            return None
        if take_left and (not take_right or ts - times[left] <= times[right] - ts):
            i, left = left, left - 1
        else:
            i, right = right, right + 1
        if not used[i] and _same(want[i].reading.value, value, resolution):
            return i


def _same(a: object, b: object, resolution: float | None) -> bool:
    if isinstance(a, bool) or isinstance(b, bool) or isinstance(a, str) or isinstance(b, str):
        return a == b
    assert isinstance(a, int | float) and isinstance(b, int | float)
    tolerance = (resolution or 0.0) * 0.51 + 1e-9 * max(1.0, abs(a))
    return math.isclose(a, b, abs_tol=tolerance)


def reconcile(
    *,
    policy: Policy,
    channels: Sequence[Channel],
    served: Sequence[Channelled],
    stored: Mapping[str, Sequence[tuple[int, object]]],
    events: Events,
    counted_quota_drops: int,
    presealed: Mapping[str, Sequence[Channelled]] | None = None,
    spooled: Mapping[str, Sequence[tuple[int, object]]] | None = None,
    max_lag_ms: int = 10_000,
    skew_ms: int = 1_500,
) -> Outcome:
    """Match, explain, and check the gateway's own quota counter against what the quota explains.

    ``presealed``: readings sealed straight into the spool before the gateway started (the soak's
    backlog), by channel; they bypass the policy and must all reach the hub once.  ``spooled``: the
    readings still in the gateway's spool after its last stop (a SIGTERM seals what memory holds into
    the spool and leaves it there for the next start): not lost, so matched like stored ones.
    """
    released, windowed = replay(policy, channels, served)
    for name, readings in (presealed or {}).items():
        released[name] = list(readings)
    per_channel_served = Counter(entry.reading.channel for entry in served)
    resolutions = {c.id: c.resolution for c in channels}
    rows: list[Row] = []
    names = sorted(set(per_channel_served) | set(released) | set(stored))
    for name in names:
        source = name if name in resolutions else _source_of(name, resolutions)
        rule = policy.rule_for(source) if source in resolutions else None
        label = "pre-sealed" if name in (presealed or {}) else rule.rule if rule is not None else "default deny" if source in resolutions else "not declared"
        row = Row(name, label, served=per_channel_served.get(name, 0) or len((presealed or {}).get(name, ())))
        waiting = list((spooled or {}).get(name, ()))
        have = sorted([*stored.get(name, ()), *waiting], key=lambda r: r[0])
        row.stored = len(have) - len(waiting)
        row.spooled = len(waiting)
        row.duplicates = sum(n - 1 for n in Counter((ts, repr(v)) for ts, v in have).values() if n > 1)
        device, _, rest = name.partition("/")
        budget_flag = rest == BUDGET_CHANNEL and any(w.startswith(device + "/") for w in windowed)  # raised by noisy counts
        if name in windowed or source in windowed or budget_flag:
            row.windowed = True
            # A clean stop (an update's restart, the last SIGTERM) releases the window under way with what it counted so far
            # (edge.privacy.PrivacyStage.flush), and the next run counts the rest of that window and releases it again under
            # the same start: partial counts of one window, not a reading sent twice. Equal noisy counts would look alike.
            window_ms = max((rule.window_ms or 0 for w in windowed if w.startswith(device + "/") and (rule := policy.rule_for(w))), default=0)
            clean = [*events.stops, *(term for term, _ in events.restarts)]
            same = Counter((ts, repr(v)) for ts, v in have)
            row.split = sum(n - 1 for (ts, _), n in same.items() if n > 1 and any(ts <= t < ts + window_ms for t in clean))
            row.duplicates -= row.split
            rows.append(row)
            continue
        want = sorted(released.get(name, ()), key=lambda c: c.reading.ts_ms)
        row.released = len(want)
        used = [False] * len(want)
        times = [c.reading.ts_ms for c in want]
        resolution = resolutions.get(source)
        for ts, value in have:
            found = _nearest(want, times, used, ts, value, resolution, max_lag_ms, skew_ms)
            if found is None:
                row.extra += 1
            else:
                used[found] = True
                row.matched += 1
        row.extra -= min(row.extra, row.duplicates)  # a duplicate is counted once, as a duplicate
        for entry, hit in zip(want, used, strict=True):
            if hit and "overrun" in entry.faults:
                row.overrun_taken += 1
            if not hit:
                if events.in_quota(entry.reading.ts_ms):
                    row.quota_could += 1
                cause = events.cause(device, entry.reading.ts_ms, entry.faults)
                row.missing[cause] += 1
                row.lost.append((cause, entry.reading.ts_ms))
                if cause == "at_risk":
                    lead = min(kill - entry.reading.ts_ms for kill in events.kills if kill >= entry.reading.ts_ms)
                    row.at_risk_lead_ms = max(row.at_risk_lead_ms, lead)
                if cause == "unexplained":
                    row.unexplained.append(entry.reading)
        rows.append(row)
    outcome = Outcome(rows, [], counted_quota_drops)
    # A reading missing from a quota window may also have another cause (a fault that spared the frame, a
    # kill): the count the spool kept must lie between what only the quota explains and what it could.
    if not outcome.missing("quota") <= counted_quota_drops <= outcome.quota_could:
        outcome.problems.append(f"the spool's quota: the gateway counted {counted_quota_drops} readings dropped; the reconciliation "
                                f"explains {outcome.missing('quota')} by the quota alone and at most {outcome.quota_could} could be")
    return outcome


def _source_of(name: str, declared: Mapping[str, object]) -> str:
    """The declared channel an output channel comes from (``ped-1/mac_count`` → ``ped-1/mac``), else itself."""
    for channel in declared:
        if name.startswith(channel + "."):
            return channel
    return name


def table(outcome: Outcome) -> str:
    """The reconciliation table, one line a channel, then the totals and the problems."""
    head = f"{'channel':<34}{'rule':<20}{'served':>8}{'released':>9}{'stored':>8}{'spooled':>8}{'matched':>8}{'dup':>5}{'extra':>6}"
    head += "".join(f"{c:>12}" for c in CAUSES) + "  ok"
    lines = [head, "-" * len(head)]
    totals = Row("total", "")
    for row in outcome.rows:
        cells = f"{row.channel:<34}{row.rule[:19]:<20}{row.served:>8}{'(window)' if row.windowed else row.released:>9}"
        cells += f"{row.stored:>8}{row.spooled:>8}{'' if row.windowed else row.matched:>8}{row.duplicates:>5}{row.extra:>6}"
        cells += "".join(f"{row.missing[c]:>12}" for c in CAUSES) + ("  ok" if row.ok else "  FAIL")
        lines.append(cells)
        totals.served += row.served
        totals.released += row.released
        totals.stored += row.stored
        totals.spooled += row.spooled
        totals.matched += row.matched
        totals.duplicates += row.duplicates
        totals.extra += row.extra
        totals.missing.update(row.missing)
    lines.append("-" * len(head))
    lines.append(f"{'total':<34}{'':<20}{totals.served:>8}{totals.released:>9}{totals.stored:>8}{totals.spooled:>8}{totals.matched:>8}"
                 f"{totals.duplicates:>5}{totals.extra:>6}" + "".join(f"{totals.missing[c]:>12}" for c in CAUSES)
                 + ("  ok" if outcome.ok else "  FAIL"))
    lines += [f"PROBLEM: {p}" for p in outcome.problems]
    # When each unexplained reading was served (UTC, as the logs say it), its channels together: where to look in the logs.
    unexplained: dict[int, list[str]] = {}
    for row in outcome.rows:
        for reading in row.unexplained:
            unexplained.setdefault(reading.ts_ms, []).append(row.channel)
    for ts_ms, names in sorted(unexplained.items()):
        when = datetime.datetime.fromtimestamp(ts_ms / 1000, datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        lines.append(f"UNEXPLAINED: served {when}: {', '.join(names)}")
    return "\n".join(lines)


def channelled(entries: Iterable[LedgerEntry], names: Mapping[tuple[str, str], Sequence[tuple[str, int | None]]],
               units: Mapping[str, str]) -> list[Channelled]:
    """Ledger entries as readings of the gateway's channels: ``names`` maps (device, ledger name) to
    (channel name, status bit or None) pairs; entries of names the gateway has no channel for are left out."""
    out: list[Channelled] = []
    for entry in entries:
        for channel, bit in names.get((entry.device, entry.name), ((entry.name, None),)):
            cid = f"{entry.device}/{channel}"
            if cid not in units:
                continue
            value = entry.value
            if bit is not None and isinstance(value, int | float):
                value = bool((int(value) >> bit) & 1)
            out.append(Channelled(Reading(cid, entry.t_ms, value, units[cid]), entry.faults))
    return out


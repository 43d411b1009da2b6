"""Differential privacy with integers only: an exact discrete Laplace sampler and the epsilon budget accountant.

The sampler is Algorithm 2 of Canonne, Kamath and Steinke, "The Discrete Gaussian for
Differential Privacy" (NeurIPS 2020), built on their exact Bernoulli(exp(-γ)) sampler
(Algorithm 1).  Every step draws uniform integers, so the output distribution is exactly
P(x) ∝ exp(-|x|·s/t): no floating-point Laplace, whose rounding artefacts leak the input
(Mironov, CCS 2012).  Randomness comes from ``random.SystemRandom`` (the kernel CSPRNG).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import random
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Protocol

log = logging.getLogger("ocn.privacy")

__all__ = ["Accountant", "IntegerSource", "bernoulli_exp", "discrete_laplace", "noise_scale", "variance"]


class IntegerSource(Protocol):
    """What the samplers need from a random source: ``randrange(n)`` uniform on 0..n-1."""

    def randrange(self, stop: int, /) -> int: ...


def _bernoulli_exp_at_most_1(rng: IntegerSource, num: int, den: int) -> bool:
    """Bernoulli(exp(-num/den)) for 0 <= num/den <= 1 (CKS Algorithm 1, first case)."""
    k = 1
    while rng.randrange(den * k) < num:  # Bernoulli(γ / k)
        k += 1
    return k % 2 == 1


def bernoulli_exp(rng: IntegerSource, num: int, den: int) -> bool:
    """Bernoulli(exp(-num/den)) for any rational num/den >= 0, exactly."""
    while num > den:
        if not _bernoulli_exp_at_most_1(rng, 1, 1):
            return False
        num -= den
    return _bernoulli_exp_at_most_1(rng, num, den)


def discrete_laplace(rng: IntegerSource, t: int, s: int) -> int:
    """One draw from the discrete Laplace distribution with scale t/s: P(x) ∝ exp(-|x|·s/t)."""
    while True:
        u = rng.randrange(t)
        if not bernoulli_exp(rng, u, t):
            continue
        v = 0
        while bernoulli_exp(rng, 1, 1):
            v += 1
        y = (u + t * v) // s
        negative = rng.randrange(2) == 1
        if negative and y == 0:
            continue  # zero would otherwise be counted twice
        return -y if negative else y


@functools.lru_cache(maxsize=64)
def noise_scale(epsilon: float, sensitivity: int = 1) -> tuple[int, int]:
    """The scale b = sensitivity/epsilon as an exact fraction (t, s), epsilon read as its decimal text."""
    scale = Fraction(sensitivity) / Fraction(str(epsilon))
    return scale.numerator, scale.denominator


def variance(epsilon: float, sensitivity: int = 1) -> float:
    """Variance of the discrete Laplace with scale b = sensitivity/epsilon: 2·e^(-1/b) / (1 - e^(-1/b))²."""
    q = math.exp(-epsilon / sensitivity)
    return 2 * q / (1 - q) ** 2


@dataclass(slots=True)
class _PeriodSpend:
    spent: Fraction = Fraction(0)
    refused: int = 0
    releases: dict[str, int] = field(default_factory=dict)  # per rule, for max_windows


class Accountant:
    """Keeps the epsilon spent per budget period and refuses releases that would exceed it.

    A release is charged to the period its window starts in (periods align to UTC
    midnight), so a window closed late never spends the next period's budget.
    Spending uses basic sequential composition in exact fractions.  A rule with
    ``max_windows = L`` counts each person in at most L windows per period, so its
    releases beyond the L-th cost nothing more: one person's privacy loss from that rule
    is at most L·epsilon however many windows are released.

    With ``state_path`` the epsilon spent per period survives a restart (a small JSON
    file, replaced atomically after each release).  Release counts for ``max_windows``
    start again after a restart, because the bounding key does too: the releases after
    a restart are charged again, so the charge still covers every person's loss.  An
    unreadable state file counts as a spent budget up to the period it was last written.
    """

    KEEP_PERIODS = 3  # periods an unreadable state file counts as spent, up to the one it was written in
    # Periods remembered. Beyond it the lowest is forgotten and every period up to it refused
    # (``floor``): a period is either remembered whole or closed. Forgetting the lowest, not
    # those far below the highest, keeps one window charged to a far-future period (a clock
    # that jumped years ahead for a minute) from closing today's period for years.
    MAX_PERIODS = 8

    def __init__(
        self,
        *,
        epsilon: float,
        period_ms: int,
        rng: IntegerSource | None = None,
        state_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.total = Fraction(str(epsilon))
        self.period_ms = period_ms
        self.rng: IntegerSource = rng or random.SystemRandom()
        self._periods: dict[int, _PeriodSpend] = {}
        self._floor: int | None = None  # periods below it were forgotten: releases charged to them are refused
        self._save_failed = False  # logged once per outage
        self._state_path = Path(state_path) if state_path is not None else None
        if self._state_path is not None and self._state_path.exists():
            self._load(self._state_path)

    def _load(self, path: Path) -> None:
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            if document.get("period_ms") != self.period_ms:
                raise ValueError(f"period_ms {document.get('period_ms')!r} is not {self.period_ms}")
            for period, entry in document["periods"].items():
                spent = Fraction(entry["spent"])
                if spent < 0:
                    raise ValueError(f"period {period}: negative epsilon spent {entry['spent']!r}")
                self._periods[int(period)] = _PeriodSpend(spent=spent, refused=int(entry["refused"]))
            if "floor" in document:
                floor = document["floor"]
            else:  # written before the floor was: what lay below its periods is unknown
                floor = min(self._periods) if self._periods else None
            if floor is not None and type(floor) is not int:
                raise ValueError(f"floor {floor!r} is not an integer")
            self._floor = floor
        except (OSError, ValueError, KeyError, TypeError, AttributeError, ZeroDivisionError) as exc:
            last = int(path.stat().st_mtime * 1000) // self.period_ms
            self._periods = {p: _PeriodSpend(spent=self.total) for p in range(last - self.KEEP_PERIODS + 1, last + 1)}
            self._floor = last - self.KEEP_PERIODS + 1
            log.warning(
                "privacy budget state unreadable: treating the budget as spent until the next period",
                extra={"path": str(path), "error": str(exc)},
            )

    def _save(self) -> bool:
        """Write the state file; False (logged once per outage) if it cannot be written."""
        if self._state_path is None:
            return True
        try:
            self._write(self._state_path)
        except OSError as exc:
            if not self._save_failed:
                self._save_failed = True
                log.warning(
                    "privacy budget state cannot be written: noisy counts withheld until it can",
                    extra={"path": str(self._state_path), "error": type(exc).__name__},
                )
            return False
        if self._save_failed:
            self._save_failed = False
            log.info("privacy budget state written again", extra={"path": str(self._state_path)})
        return True

    def _write(self, path: Path) -> None:
        document = {
            "period_ms": self.period_ms,
            "floor": self._floor,
            "periods": {str(p): {"spent": str(s.spent), "refused": s.refused} for p, s in self._periods.items()},
        }
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(document, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def period(self, ts_ms: int) -> int:
        return ts_ms // self.period_ms

    def _lookup(self, ts_ms: int) -> _PeriodSpend | None:
        """The spending of the period of ``ts_ms`` (None: forgotten, closed); does not record a new period."""
        p = self.period(ts_ms)
        if self._floor is not None and p < self._floor:
            return None
        return self._periods.get(p) or _PeriodSpend()

    def _spend(self, ts_ms: int) -> _PeriodSpend | None:
        p = self.period(ts_ms)
        if self._floor is not None and p < self._floor:
            return None
        if p not in self._periods:
            self._periods[p] = _PeriodSpend()
            while len(self._periods) > self.MAX_PERIODS:
                lowest = min(self._periods)
                del self._periods[lowest]
                self._floor = lowest + 1
            if p not in self._periods:  # it was the lowest itself
                return None
        return self._periods[p]

    def charge(self, rule: str, epsilon: float, ts_ms: int, *, max_windows: int | None = None) -> bool:
        """Spend ``epsilon`` for one release of ``rule`` in the period of ``ts_ms``; False if the budget is short."""
        spend = self._spend(ts_ms)
        if spend is None:
            return False
        done = spend.releases.get(rule, 0)
        cost = Fraction(0) if max_windows is not None and done >= max_windows else Fraction(str(epsilon))
        if spend.spent + cost > self.total:
            spend.refused += 1
            self._save()
            return False
        spend.spent += cost
        spend.releases[rule] = done + 1
        if not self._save():
            # A release the file does not remember would be forgotten at a restart, which would
            # then grant its epsilon again: without a durable record there is no release.
            spend.spent -= cost
            spend.releases[rule] = done
            spend.refused += 1
            return False
        return True

    def noisy(self, value: int, epsilon: float) -> int:
        """``value`` plus discrete Laplace noise of scale 1/epsilon (sensitivity 1)."""
        t, s = noise_scale(epsilon)
        return value + discrete_laplace(self.rng, t, s)

    def exhausted(self, ts_ms: int, epsilon: float) -> bool:
        spend = self._lookup(ts_ms)
        return spend is None or spend.spent + Fraction(str(epsilon)) > self.total

    def state(self, ts_ms: int) -> dict[str, object]:
        """The period containing ``ts_ms``: epsilon per period, spent, left, releases refused."""
        spend = self._lookup(ts_ms) or _PeriodSpend(spent=self.total)
        return {
            "epsilon": float(self.total),
            "period_ms": self.period_ms,
            "period_start_ms": self.period(ts_ms) * self.period_ms,
            "spent": float(spend.spent),
            "left": float(self.total - spend.spent),
            "refused": spend.refused,
        }

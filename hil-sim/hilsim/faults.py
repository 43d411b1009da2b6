"""Fault timelines: which faults a device suffers when, decided deterministically from the seed.

A fault is a window in scenario time (``at`` .. ``at + duration``, optionally
repeating ``every``) during which each frame the device sends suffers it with
``probability``.  Draws come from one generator per device seeded by
(seed, device name), taken in frame order, so two runs with one seed that see
the same requests corrupt the same frames in the same way.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from hilsim.durations import parse_duration

__all__ = ["FAULT_KINDS", "Fault", "FaultTimeline", "parse_faults"]

FAULT_KINDS = (
    "bad_checksum",
    "drop_reply",
    "late_reply",
    "split_frame",
    "partial_frame",
    "exception",
    "disconnect",
    "stuck_value",
    "line_noise",
    "no_fix",
)


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted fault window."""

    kind: str
    at: float
    duration: float
    every: float = 0.0  # 0 = once
    probability: float = 1.0
    delay: float = 1.0  # late_reply: extra seconds before the reply
    gap: float = 0.05  # split_frame: silence between the two halves
    code: int = 4  # exception: Modbus exception code (4 = server device failure)
    burst: int = 16  # line_noise: up to this many garbage bytes before a frame

    def active(self, t: float) -> bool:
        """Whether scenario time `t` (seconds) falls in one of this fault's windows."""
        if t < self.at:
            return False
        offset = t - self.at
        if self.every:
            offset %= self.every
        return offset < self.duration


@dataclass(slots=True)
class FaultTimeline:
    """The faults of one device and the seeded generator that decides each frame's fate."""

    device: str
    faults: Sequence[Fault]
    seed: int
    log: list[tuple[int, str]] = field(default_factory=list)
    _rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(f"{self.seed}:{self.device}:faults")

    def windows(self, kind: str, t: float) -> bool:
        """Whether a window of `kind` is open at `t` (no draw: for state faults like stuck_value)."""
        return any(f.kind == kind and f.active(t) for f in self.faults)

    def draw(self, t: float, frame: int) -> dict[str, Fault]:
        """The faults that hit frame number `frame` sent at `t`, by kind; logs them as (frame, kind)."""
        hits: dict[str, Fault] = {}
        for fault in self.faults:
            if fault.kind in ("disconnect", "stuck_value", "no_fix") or not fault.active(t):
                continue
            # Always draw, hit or not, so the generator advances the same way in every run.
            if self._rng.random() < fault.probability and fault.kind not in hits:
                hits[fault.kind] = fault
                self.log.append((frame, fault.kind))
        return hits

    def randbytes(self, n: int) -> bytes:
        """Garbage bytes from the device's seeded generator (line noise, corruption)."""
        return self._rng.randbytes(n)

    def randint(self, low: int, high: int) -> int:
        """An integer in [low, high] from the device's seeded generator."""
        return self._rng.randint(low, high)


def parse_faults(entries: Sequence[Mapping[str, Any]], *, where: str, allowed: Sequence[str]) -> list[Fault]:
    """Build Faults from `[[devices.faults]]` tables; errors name `where`, the field, the value and the choices."""
    faults = []
    for index, entry in enumerate(entries):
        here = f"{where}[{index}]"
        kind = entry.get("kind")
        if kind not in FAULT_KINDS:
            raise ValueError(f"{here}.kind = {kind!r}: expected one of {', '.join(FAULT_KINDS)}")
        if kind not in allowed:
            raise ValueError(f"{here}.kind = {kind!r}: this device supports {', '.join(allowed)}")
        known = {"kind", "at", "duration", "every", "probability", "delay", "gap", "code", "burst"}
        for key in entry:
            if key not in known:
                raise ValueError(f"{here}.{key}: unknown field; expected {', '.join(sorted(known))}")
        probability = entry.get("probability", 1.0)
        if not isinstance(probability, (int, float)) or not 0.0 <= probability <= 1.0:
            raise ValueError(f"{here}.probability = {probability!r}: expected a number from 0 to 1")
        code = entry.get("code", 4)
        if not isinstance(code, int) or not 1 <= code <= 0x0B:
            raise ValueError(f"{here}.code = {code!r}: expected a Modbus exception code from 1 to 11")
        burst = entry.get("burst", 16)
        if not isinstance(burst, int) or burst < 1:
            raise ValueError(f"{here}.burst = {burst!r}: expected a whole number of bytes >= 1")
        faults.append(
            Fault(
                kind=kind,
                at=parse_duration(entry.get("at", 0), field=f"{here}.at"),
                duration=parse_duration(entry.get("duration", "1h"), field=f"{here}.duration"),
                every=parse_duration(entry.get("every", 0), field=f"{here}.every"),
                probability=float(probability),
                delay=parse_duration(entry.get("delay", "1s"), field=f"{here}.delay"),
                gap=parse_duration(entry.get("gap", "50ms"), field=f"{here}.gap"),
                code=code,
                burst=burst,
            )
        )
    return faults

"""Value models that drive simulated devices: constants, diurnal curves with noise, counters and CSV replay.

Every model is a pure function of the tick (whole seconds since the scenario
started) and the seed, so a run repeated with the same seed produces the same
values at the same ticks whatever the machine's timing.
"""

from __future__ import annotations

import bisect
import csv
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from hilsim.durations import parse_duration

__all__ = ["Model", "Constant", "Diurnal", "Counter", "Replay", "build_model", "noise_rng", "MODEL_KINDS"]

MODEL_KINDS = ("constant", "diurnal", "counter", "replay")


class Model(Protocol):
    """A value source: the value of one quantity at a tick."""

    def value(self, tick: int, wall_s: float) -> float: ...


def noise_rng(seed: int, name: str, tick: int) -> random.Random:
    """A generator seeded by (seed, name, tick): the same draw for the same tick in every run."""
    # A str seed goes through SHA-512 in random.seed, so it is stable across processes (unlike hash()).
    return random.Random(f"{seed}:{name}:{tick}")


@dataclass(frozen=True, slots=True)
class Constant:
    """The same value at every tick (what tests use to check documented register values)."""

    constant: float

    def value(self, tick: int, wall_s: float) -> float:
        return self.constant


@dataclass(frozen=True, slots=True)
class Diurnal:
    """A daily sine curve peaking at `peak_hour` (UTC) plus Gaussian noise, clamped to [low, high]."""

    mean: float
    amplitude: float
    peak_hour: float
    noise: float
    low: float
    high: float
    seed: int
    name: str

    def value(self, tick: int, wall_s: float) -> float:
        hour = (wall_s % 86400.0) / 3600.0
        curve = self.mean + self.amplitude * math.cos(2 * math.pi * (hour - self.peak_hour) / 24.0)
        if self.noise:
            curve += noise_rng(self.seed, self.name, tick).gauss(0.0, self.noise)
        return min(self.high, max(self.low, curve))


@dataclass(frozen=True, slots=True)
class Counter:
    """A monotonically increasing counter: `start` plus `rate` per hour."""

    start: float
    rate_per_hour: float

    def value(self, tick: int, wall_s: float) -> float:
        return self.start + self.rate_per_hour * tick / 3600.0


class Replay:
    """Replays one column of a recorded CSV trace, read in place, `speed` trace seconds per real second.

    Empty cells keep the previous value (a missing reading is not a zero); the
    trace loops when it ends.
    """

    def __init__(
        self,
        path: Path,
        *,
        column: str,
        time_column: str,
        delimiter: str = ",",
        speed: float = 1.0,
        scale: float = 1.0,
        offset: float = 0.0,
        skip: float = 0.0,
    ) -> None:
        self.path = path
        self.speed = speed
        self.scale = scale
        self.offset = offset
        times: list[float] = []
        values: list[float] = []
        try:
            handle = path.open(newline="", encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"replay file {str(path)!r}: cannot be read ({exc.strerror})") from exc
        with handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            header = reader.fieldnames or []
            for needed in (column, time_column):
                if needed not in header:
                    raise ValueError(
                        f"replay file {str(path)!r}: column {needed!r} not found; the file has {', '.join(header)}"
                    )
            for line_no, row in enumerate(reader, start=2):
                cell = (row.get(column) or "").strip()
                if not cell:
                    continue
                try:
                    values.append(float(cell))
                except ValueError:
                    raise ValueError(
                        f"replay file {str(path)!r} line {line_no}: column {column!r} = {cell!r} is not a number"
                    ) from None
                times.append(_parse_time(row[time_column], path=path, line_no=line_no))
        if not values:
            raise ValueError(f"replay file {str(path)!r}: column {column!r} has no values")
        self._times = times
        self._values = values
        self._start = times[0] + skip
        self._span = max(times[-1] - times[0], 1.0)

    def value(self, tick: int, wall_s: float) -> float:
        trace_t = self._times[0] + ((self._start - self._times[0]) + tick * self.speed) % self._span
        index = max(0, bisect.bisect_right(self._times, trace_t) - 1)
        return self._values[index] * self.scale + self.offset


def _parse_time(cell: str, *, path: Path, line_no: int) -> float:
    text = cell.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"replay file {str(path)!r} line {line_no}: time {text!r} is neither Unix seconds nor ISO 8601"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def build_model(spec: Mapping[str, Any], *, seed: int, name: str, where: str, base_dir: Path) -> Model:
    """Build a model from its scenario table; errors name `where` (file and field), the value and the choices."""
    kind = spec.get("model", "constant")
    try:
        if kind == "constant":
            return Constant(float(spec["value"]))
        if kind == "diurnal":
            peak = spec.get("peak", "14:00")
            hours, _, minutes = str(peak).partition(":")
            return Diurnal(
                mean=float(spec["mean"]),
                amplitude=float(spec.get("amplitude", 0.0)),
                peak_hour=int(hours) + int(minutes or 0) / 60.0,
                noise=float(spec.get("noise", 0.0)),
                low=float(spec.get("min", -math.inf)),
                high=float(spec.get("max", math.inf)),
                seed=seed,
                name=name,
            )
        if kind == "counter":
            return Counter(start=float(spec.get("start", 0.0)), rate_per_hour=float(spec["rate_per_hour"]))
        if kind == "replay":
            path = Path(spec["file"])
            return Replay(
                path if path.is_absolute() else base_dir / path,
                column=str(spec["column"]),
                time_column=str(spec["time_column"]),
                delimiter=str(spec.get("delimiter", ",")),
                speed=float(spec.get("speed", 1.0)),
                scale=float(spec.get("scale", 1.0)),
                offset=float(spec.get("offset", 0.0)),
                skip=parse_duration(spec.get("skip", 0), field=f"{where}.skip"),
            )
    except KeyError as exc:
        raise ValueError(f"{where}: model {kind!r} needs field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None
    raise ValueError(f"{where}.model = {kind!r}: expected one of {', '.join(MODEL_KINDS)}")

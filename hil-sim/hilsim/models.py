"""Value models that drive simulated devices: constants, diurnal curves with noise, counters and CSV replay.

Every model is a pure function of the tick (whole seconds since the scenario
started) and the seed, so a run repeated with the same seed produces the same
values at the same ticks whatever the machine's timing.
"""

from __future__ import annotations

import bisect
import csv
import functools
import math
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from hilsim.durations import parse_duration

__all__ = ["Model", "Constant", "Diurnal", "Counter", "Replay", "build_model", "dataset_path", "noise_rng", "MODEL_KINDS"]

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
        trace_times, columns = _read_trace(path, delimiter, time_column)
        if column not in columns:
            raise ValueError(f"replay file {str(path)!r}: column {column!r} is not a numeric column of the file; "
                             f"expected one of {', '.join(columns)}")
        times: list[float] = []
        values: list[float] = []
        for t, cell in zip(trace_times, columns[column], strict=True):
            if cell is not None:
                times.append(t)
                values.append(cell)
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


@functools.lru_cache(maxsize=16)
def _read_trace(path: Path, delimiter: str, time_column: str) -> tuple[list[float], dict[str, list[float | None]]]:
    """Every row's time and every numeric column of a CSV trace (None for an empty cell); read once per run."""
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"replay file {str(path)!r}: cannot be read ({exc.strerror})") from exc
    with handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = next(reader, [])
        if time_column not in header:
            raise ValueError(f"replay file {str(path)!r}: column {time_column!r} not found; "
                             f"the file has {', '.join(header)}")
        time_index = header.index(time_column)
        times: list[float] = []
        cells: list[list[str]] = []
        for line_no, row in enumerate(reader, start=2):
            times.append(_parse_time(row[time_index], path=path, line_no=line_no))
            cells.append(row)
    columns: dict[str, list[float | None]] = {}
    for index, name in enumerate(header):
        if index == time_index:
            continue
        try:
            columns[name] = [float(row[index]) if index < len(row) and row[index].strip() else None for row in cells]
        except ValueError:
            continue  # a text column (sensor type, ids): not replayable, so not offered
    return times, columns


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
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def datasets_dir() -> Path | None:
    """Where the shared real-sensor datasets are: $OCN_DATASETS, else ``../shared/datasets`` beside a source checkout.

    None when OCN_DATASETS is not set and hilsim is not running from a source
    checkout: an installed package has no repository beside it to look in.
    """
    if os.environ.get("OCN_DATASETS"):
        return Path(os.environ["OCN_DATASETS"])
    package = Path(__file__).resolve().parent
    checkout = package.parent.parent
    if package.parent.name == "hil-sim" and (checkout / "pyproject.toml").is_file():
        return checkout.parent / "shared" / "datasets"
    return None


def dataset_path(text: str) -> Path:
    """A replay file's path with `$VARIABLES` expanded; `$OCN_DATASETS` defaults to the shared datasets.

    The shared datasets sit beside the repository (``../shared/datasets``), read
    in place, never copied in; set OCN_DATASETS to point elsewhere.  An installed
    package has no repository beside it, so there a path naming `$OCN_DATASETS`
    needs the variable set, and says so.
    """
    environment = dict(os.environ)
    if not environment.get("OCN_DATASETS") and ("$OCN_DATASETS" in text or "${OCN_DATASETS}" in text):
        shared = datasets_dir()
        if shared is None:
            raise ValueError(f"replay file {text!r}: OCN_DATASETS is not set and this installed hilsim has no source "
                             f"checkout beside it (../shared/datasets); set OCN_DATASETS to the datasets directory")
        environment["OCN_DATASETS"] = str(shared)
    for name, value in environment.items():
        text = text.replace("${" + name + "}", value)
        if text.startswith("$" + name + "/") or text == "$" + name:
            text = value + text[len(name) + 1 :]
    return Path(text).expanduser()


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
            path = dataset_path(str(spec["file"]))
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

"""What every simulated device shares: the scenario clock, value models ticked once per second, faults."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from hilsim.faults import FaultTimeline
from hilsim.ledger import Ledger, Value
from hilsim.models import Model

__all__ = ["SimClock", "SimDevice"]

log = logging.getLogger("hilsim.device")


@dataclass(frozen=True, slots=True)
class SimClock:
    """Scenario time: seconds since start on the event loop's monotonic clock, and the wall time it maps to."""

    start_loop: float
    start_wall: float

    @classmethod
    def now(cls, *, start_wall: float | None = None) -> SimClock:
        return cls(asyncio.get_running_loop().time(), time.time() if start_wall is None else start_wall)

    def t(self) -> float:
        """Seconds since the scenario started."""
        return asyncio.get_running_loop().time() - self.start_loop

    def wall_ms(self) -> int:
        """The simulated devices' UTC clock, integer milliseconds since the Unix epoch."""
        return int((self.start_wall + self.t()) * 1000)


class SimDevice:
    """Base of every simulated device.

    Subclasses name their `kind`, the `driver` (and Modbus `profile`) a gateway
    uses for them, the faults they support, and the quantities their models
    drive with a default model spec each.  :meth:`compute` turns the model
    values of one tick into the device's state (registers, frames to send).
    """

    kind: ClassVar[str]
    driver: ClassVar[str]
    profile: ClassVar[str | None] = None
    fault_kinds: ClassVar[tuple[str, ...]] = ()
    quantities: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    options_spec: ClassVar[Mapping[str, Any]] = {}  # option -> default (its type is the accepted type)
    option_choices: ClassVar[Mapping[str, tuple[Any, ...]]] = {}
    extra_quantities: ClassVar[tuple[str, ...]] = ()  # quantities a scenario may model besides `quantities`

    @classmethod
    def check_options(cls, options: Mapping[str, Any], *, where: str) -> None:
        """Raise ValueError naming `where`, the option, the value and what is accepted."""
        for key, value in options.items():
            if key not in cls.options_spec:
                raise ValueError(f"{where}.{key}: unknown option of {cls.kind}; expected one of "
                                 f"{', '.join(cls.options_spec) or 'none'}")
            default = cls.options_spec[key]
            expected = (int, float) if isinstance(default, float) else type(default)
            if isinstance(value, bool) != isinstance(default, bool) or not isinstance(value, expected):
                raise ValueError(f"{where}.{key} = {value!r}: expected a {type(default).__name__} "
                                 f"like {default!r}")
            if key in cls.option_choices and value not in cls.option_choices[key]:
                raise ValueError(f"{where}.{key} = {value!r}: expected one of "
                                 f"{', '.join(repr(c) for c in cls.option_choices[key])}")

    @classmethod
    def modelled(cls) -> tuple[str, ...]:
        """Every quantity a scenario may give a value model for."""
        return (*cls.quantities, *cls.extra_quantities)

    def __init__(
        self,
        *,
        name: str,
        models: Mapping[str, Model],
        faults: FaultTimeline,
        clock: SimClock,
        seed: int,
        options: Mapping[str, Any],
    ) -> None:
        self.name = name
        self.models = dict(models)
        self.faults = faults
        self.clock = clock
        self.seed = seed
        self.options = {**self.options_spec, **options}
        self.values: dict[str, float] = {}
        self.tick = -1
        self.frames = 0
        self.ledger: Ledger | None = None  # set by run_scenario(ledger=...): every value served is written to it
        self._task: asyncio.Task[None] | None = None

    def model_values(self, tick: int) -> dict[str, float]:
        """Every modelled quantity's value at `tick`."""
        wall_s = self.clock.start_wall + tick
        return {name: model.value(tick, wall_s) for name, model in self.models.items()}

    def compute(self, tick: int, values: dict[str, float]) -> None:
        """Take the values of `tick` (override to derive quantities and refresh registers)."""
        self.values = values

    def advance(self) -> None:
        """Process every whole second up to now, in order, so integrals and populations never skip a tick."""
        target = int(self.clock.t())
        while self.tick < target:
            self.tick += 1
            if self.faults.windows("stuck_value", self.tick) and self.values:
                continue  # a stuck sensor repeats its last values
            self.compute(self.tick, self.model_values(self.tick))

    async def start(self) -> None:
        """Make the device ready (ports open, servers listening) and start its clock."""
        self.advance()
        self._task = asyncio.create_task(self._run(), name=f"hilsim:{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        disconnected = False
        open_windows: set[str] = set()
        while True:
            self.advance()
            now = self.clock.t()
            # Once when a fault window opens and once when it closes: never a line per frame.
            active = {fault.kind for fault in self.faults.faults if fault.active(now)}
            for kind in sorted(active - open_windows):
                log.info("%s: fault %s begins", self.name, kind)
            for kind in sorted(open_windows - active):
                log.info("%s: fault %s ends", self.name, kind)
            open_windows = active
            down = "disconnect" in active
            if down != disconnected:
                disconnected = down
                await (self.disconnect() if down else self.reconnect())
            if not disconnected:
                await self.every_step()
            await asyncio.sleep(0.05)

    async def every_step(self) -> None:
        """Called about every 50 ms while connected (active-mode devices send their frames from here)."""

    async def disconnect(self) -> None:
        """Disappear from the bus (override)."""

    async def reconnect(self) -> None:
        """Come back (override)."""

    def next_frame(self) -> int:
        self.frames += 1
        return self.frames

    def served(self, values: Mapping[str, Value], faults: Mapping[str, object]) -> None:
        """Write the values of one frame put on the wire (or withheld by a fault) to the ledger, if there is one."""
        if self.ledger is not None:
            self.ledger.record(self.name, self.clock.wall_ms(), values, tuple(faults))

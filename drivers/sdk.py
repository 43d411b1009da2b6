"""The driver contract: a driver is an async source of Readings plus the channels it declares.

Besides the driver base class it states what a driver may ask of its bus owner (``SerialBusLike``,
``ModbusBusLike``), so a driver written outside this tree is type-checked against the same
interface the gateway's bus owners provide, without importing them.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from drivers.health import Health
from edge.protocol.types import Channel, Reading
from edge.util.clock import now_ms

__all__ = [
    "BusDown",
    "DeviceContext",
    "Driver",
    "DriverError",
    "Emit",
    "EmitAll",
    "Emitter",
    "Manifest",
    "ModbusBusLike",
    "OptionError",
    "OptionSpec",
    "Options",
    "SerialBusLike",
    "emit_all_of",
]

Emit = Callable[[Reading], Awaitable[None]]
EmitAll = Callable[[Sequence[Reading]], Awaitable[None]]

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


class Emitter:
    """The ``emit`` the gateway hands :meth:`Driver.run`: ``await emit(reading)`` hands over one reading,
    ``await emit.all(readings)`` several at once (a poll's), in order, as if emitted one by one.

    A poll's readings handed over together pass the gateway's layers (supervisor, taps, pipeline) once
    instead of once a reading.  A driver that may also be run with a plain ``Emit`` (a test,
    ``drivers.testing``) takes ``emit_all_of(emit)`` once and uses that.
    """

    __slots__ = ("all",)

    def __init__(self, emit_all: EmitAll) -> None:
        self.all = emit_all

    async def __call__(self, reading: Reading) -> None:
        await self.all((reading,))


def emit_all_of(emit: Emit) -> EmitAll:
    """How to hand several readings at once through ``emit``: its ``all`` if it is an :class:`Emitter`,
    else one ``await emit(reading)`` after another."""
    if isinstance(emit, Emitter):
        return emit.all

    async def one_by_one(readings: Sequence[Reading]) -> None:
        for reading in readings:
            await emit(reading)

    return one_by_one


class DriverError(Exception):
    """A device failed in a way the driver cannot recover from by itself; the supervisor restarts it."""


class OptionError(ValueError):
    """A driver option is wrong: names the option, the value and what would be accepted."""

    def __init__(self, option: str, value: object, expected: str) -> None:
        super().__init__(f"{option} = {value!r}: expected {expected}")
        self.option = option
        self.value = value
        self.expected = expected


class BusDown(Exception):
    """The bus's port or connection is not open right now; its owner is reopening it."""


@runtime_checkable
class SerialBusLike(Protocol):
    """What a driver with transport "serial" may ask of its bus owner: one port, one streaming device.

    A driver re-sends its setup commands whenever :meth:`wait_open` returns a new session
    number (each successful open is a new session: a replugged sensor forgets its mode).
    """

    @property
    def is_open(self) -> bool: ...

    @property
    def bytes_in(self) -> int:
        """Bytes received since the owner started (a silent line and a line of garbage differ here)."""
        ...

    async def wait_open(self) -> int:
        """Wait until the port is open; returns the current session number."""
        ...

    async def receive(self) -> bytes:
        """The next bytes that arrived (waits while the port is closed)."""
        ...

    async def write(self, data: bytes) -> None:
        """Send ``data``; raises :class:`BusDown` when the port is not open."""
        ...


@runtime_checkable
class ModbusBusLike(Protocol):
    """What a driver with transport "modbus" may ask of its bus owner, which it shares with other devices.

    :meth:`read` raises the errors of ``drivers.modbus.adapter`` (``ExceptionReply`` when the unit
    refuses, another ``LinkError`` when it is silent, garbled, backing off or the line is down).
    """

    async def wait_open(self) -> None:
        """Wait until the line is open (drivers call this once before their first poll)."""
        ...

    async def read(self, unit: int, function: str, address: int, count: int, *,
                   timeout: float | None = None, used: int | None = None) -> list[int] | list[bool]:
        """Read ``count`` registers (bits for coil and discrete) of ``unit`` from ``address``."""
        ...


@dataclass(frozen=True, slots=True)
class OptionSpec:
    """One driver option: its type, default (None = required) and a sentence for the technician."""

    type: type
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] = ()
    required: bool = False


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a driver is, what it needs and what it emits (shown by `ocn-edge drivers`)."""

    name: str
    version: str
    summary: str
    hardware: tuple[str, ...] = ()
    transport: str = "none"  # "serial", "modbus", or "none" (no bus: e.g. a computed source)
    options: Mapping[str, OptionSpec] = field(default_factory=dict)


class Options(Mapping[str, Any]):
    """A device's options as its driver checked them, read-only: what the gateway config holds.

    It lists the options that have a value, so it writes back to TOML (which has no null) and
    compares equal to the table it came from.  It also keeps the complete set the driver
    returned, so that driver's ``check_options`` hands it back without checking again: options
    are validated once, when the config is loaded, not again by the runtime or the driver.
    """

    __slots__ = ("_checked_by", "_complete")

    def __init__(self, complete: Mapping[str, Any], checked_by: type[Driver]) -> None:
        self._complete = dict(complete)
        self._checked_by = checked_by

    def complete_for(self, driver: type[Driver]) -> dict[str, Any] | None:
        """Every option with defaults filled in, if ``driver`` is the one that checked them; else None."""
        return _Completed(self._complete, driver) if driver is self._checked_by else None

    def __getitem__(self, key: str) -> Any:
        value = self._complete[key]
        if value is None:
            raise KeyError(key)
        return value

    def __iter__(self) -> Iterator[str]:
        return (key for key, value in self._complete.items() if value is not None)

    def __len__(self) -> int:
        return sum(1 for value in self._complete.values() if value is not None)

    def __repr__(self) -> str:
        return f"Options({dict(self.items())!r})"


class _Completed(dict[str, Any]):
    """What ``check_options`` returns: a plain dict of every option, marked with the driver that checked it.

    The mark lets a second ``check_options`` by the same driver (the runtime completes the config's
    options, then the driver's constructor asks again) return at once instead of validating again.
    """

    __slots__ = ("checked_by",)

    def __init__(self, values: Mapping[str, Any], checked_by: type[Driver]) -> None:
        super().__init__(values)
        self.checked_by = checked_by


@dataclass(slots=True)
class DeviceContext:
    """Everything the runtime hands a driver instance: its name, its bus, its address and options."""

    device_id: str
    options: Mapping[str, Any]
    bus: SerialBusLike | ModbusBusLike | None = None  # the device's bus owner (None for transport "none")
    address: int | str | None = None
    poll_interval: float = 10.0
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("ocn.driver"))
    clock_ms: Callable[[], int] = now_ms
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the gateway stops, for a driver with ``stops_when_asked``: finish the poll under way, emit it, return."""

    def channel_id(self, local: str) -> str:
        """The gateway-wide id of one of this device's channels: ``<device>/<local>``."""
        return f"{self.device_id}/{local}"

    def serial_bus(self) -> SerialBusLike:
        """The device's bus, for a driver with transport "serial"."""
        if not isinstance(self.bus, SerialBusLike):
            raise DriverError(f"{self.device_id}: needs a serial bus, but was given {type(self.bus).__name__}")
        return self.bus

    def modbus_bus(self) -> ModbusBusLike:
        """The device's bus, for a driver with transport "modbus"."""
        if not isinstance(self.bus, ModbusBusLike):
            raise DriverError(f"{self.device_id}: needs a Modbus bus, but was given {type(self.bus).__name__}")
        return self.bus


class Driver(abc.ABC):
    """Base type of every driver.

    The runtime creates one instance per configured device, asks for its channels
    once, then awaits :meth:`run`, which emits readings until cancelled.  If
    ``run`` raises, the supervisor restarts a fresh instance with capped
    exponential backoff.  A driver never talks to the spool, the network or
    other drivers, and never logs a value of a personal channel.
    """

    manifest: ClassVar[Manifest]
    watches_silence: ClassVar[bool] = False
    """True for a driver that knows itself when its device went silent (any valid frame counts, a heartbeat
    too) and says so through :meth:`health`. The supervisor's rule, no reading for three poll intervals, is
    then not applied: a device that speaks only when something happens (a counter) is not failing between events."""
    stops_when_asked: ClassVar[bool] = False
    """True for a driver whose :meth:`run` watches ``ctx.stopping`` between polls: when the gateway stops it sets
    the event, and the driver finishes the poll under way, emits its readings and returns.  The gateway waits a
    short grace period (``edge.runtime.STOP_GRACE_S``) for that before it cancels the driver.  Left False, the
    driver is cancelled at once, as before: a poll under way then never emits what it had read."""

    def __init__(self, ctx: DeviceContext) -> None:
        self.ctx = ctx

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Validate raw options against the manifest; return them with defaults filled in.

        Raises :class:`OptionError` for the first bad option (config validation
        calls this per device and reports every device's problem).  Options this
        driver already checked (the config's :class:`Options`, or what this returned)
        are completed without checking again.  A driver
        that checks more (a cross-field rule, a file to read) overrides
        :meth:`validate_options`.
        """
        if isinstance(options, Options):
            complete = options.complete_for(cls)
            if complete is not None:
                return complete
        if isinstance(options, _Completed) and options.checked_by is cls:
            return _Completed(options, cls)
        return _Completed(cls.validate_options(options), cls)

    @classmethod
    def validate_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """The manifest's checks: known names, types, choices, required options; defaults filled in."""
        specs = cls.manifest.options
        out: dict[str, Any] = {}
        for key in options:
            if key not in specs:
                known = ", ".join(sorted(specs)) or "none"
                raise OptionError(key, options[key], f"a known option of driver {cls.manifest.name!r} ({known})")
        for key, spec in specs.items():
            if key not in options:
                if spec.required:
                    raise OptionError(key, None, f"a value (required by driver {cls.manifest.name!r})")
                out[key] = spec.default
                continue
            value = options[key]
            if value is None and spec.default is None and not spec.required:
                out[key] = None  # an unset optional option; keeps check_options idempotent
                continue
            if spec.type is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, spec.type) or (spec.type is int and isinstance(value, bool)):
                raise OptionError(key, value, _TYPE_NAMES.get(spec.type, f"a {spec.type.__name__}"))
            if spec.choices and value not in spec.choices:
                raise OptionError(key, value, "one of " + ", ".join(repr(c) for c in spec.choices))
            out[key] = value
        return out

    @abc.abstractmethod
    def channels(self) -> Sequence[Channel]:
        """The channels this device emits, with gateway-wide ids (see DeviceContext.channel_id)."""

    def health(self) -> Health | None:
        """The driver's own opinion of its device (e.g. some registers refused: degraded); None: nothing to add.

        The bus owner already says when the port is gone or the unit silent, and the supervisor when
        readings stop; a driver overrides this only for what it alone can see.
        """
        return None

    @abc.abstractmethod
    async def run(self, emit: Emit) -> None:
        """Read the device and ``await emit(reading)`` for each reading, until cancelled (or, with
        ``stops_when_asked``, until ``ctx.stopping`` is set and the poll under way is emitted).

        A driver that reads several values at a time may hand them over together through
        ``emit_all_of(emit)`` (:class:`Emitter`): the same readings in the same order, for less CPU."""

"""The driver contract: a driver is an async source of Readings plus the channels it declares."""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from edge.protocol.types import Channel, Reading

__all__ = ["DeviceContext", "Driver", "DriverError", "Emit", "Manifest", "OptionError", "OptionSpec"]

Emit = Callable[[Reading], Awaitable[None]]

_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


class DriverError(Exception):
    """A device failed in a way the driver cannot recover from by itself; the supervisor restarts it."""


class OptionError(ValueError):
    """A driver option is wrong: names the option, the value and what would be accepted."""

    def __init__(self, option: str, value: object, expected: str) -> None:
        super().__init__(f"{option} = {value!r}: expected {expected}")
        self.option = option
        self.value = value
        self.expected = expected


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


@dataclass(slots=True)
class DeviceContext:
    """Everything the runtime hands a driver instance: its name, its bus, its address and options."""

    device_id: str
    options: Mapping[str, Any]
    bus: Any = None  # the bus owner object for the device's bus (None for transport "none")
    address: int | str | None = None
    poll_interval: float = 10.0
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("ocn.driver"))
    clock_ms: Callable[[], int] = field(default_factory=lambda: lambda: time.time_ns() // 1_000_000)

    def channel_id(self, local: str) -> str:
        """The gateway-wide id of one of this device's channels: ``<device>/<local>``."""
        return f"{self.device_id}/{local}"


class Driver(abc.ABC):
    """Base type of every driver.

    The runtime creates one instance per configured device, asks for its channels
    once, then awaits :meth:`run`, which emits readings until cancelled.  If
    ``run`` raises, the supervisor restarts a fresh instance with capped
    exponential backoff.  A driver never talks to the spool, the network or
    other drivers, and never logs a value of a personal channel.
    """

    manifest: ClassVar[Manifest]

    def __init__(self, ctx: DeviceContext) -> None:
        self.ctx = ctx

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Validate raw options against the manifest; return them with defaults filled in.

        Raises :class:`OptionError` for the first bad option (config validation
        calls this per device and reports every device's problem).
        """
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

    @abc.abstractmethod
    async def run(self, emit: Emit) -> None:
        """Read the device and ``await emit(reading)`` for each reading, until cancelled."""

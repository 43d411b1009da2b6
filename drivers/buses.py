"""Bus owners: one task per physical bus (a serial port or a Modbus host:port) through which every transaction goes.

This module only picks the owner for a ``[[buses]]`` entry; each owner lives beside the drivers
that use it (``drivers.serial.bus``, ``drivers.modbus.bus``), so neither imports the other.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, TypeGuard

from drivers.line import BusConfigLike
from drivers.sdk import BusDown
from drivers.serial.bus import SerialBus
from edge.util.lazy import lazy_names

if TYPE_CHECKING:
    from drivers.modbus.adapter import ExceptionReply, GarbledReply, LinkError, NoReply
    from drivers.modbus.bus import ModbusBus, UnitBackingOff

__all__ = [
    "BusConfigLike",
    "BusDown",
    "ExceptionReply",
    "GarbledReply",
    "LinkError",
    "ModbusBus",
    "NoReply",
    "SerialBus",
    "MODBUS_BUSES",
    "UnitBackingOff",
    "create_bus",
    "is_modbus",
]

# The Modbus stack (pymodbus with it: about 2 MiB resident and 20 ms to import) loads with the first Modbus bus, or at
# the first use of one of its names here: a gateway whose devices are all on serial lines never loads it (issue 17).
_MODBUS_NAMES = {
    "ExceptionReply": "drivers.modbus.adapter",
    "GarbledReply": "drivers.modbus.adapter",
    "LinkError": "drivers.modbus.adapter",
    "NoReply": "drivers.modbus.adapter",
    "ModbusBus": "drivers.modbus.bus",
    "UnitBackingOff": "drivers.modbus.bus",
}


__getattr__ = lazy_names(__name__, _MODBUS_NAMES)


MODBUS_BUSES = ("modbus-rtu", "modbus-tcp", "modbus-rtu-over-tcp")


def create_bus(config: BusConfigLike, *, reopen_max: float = 30.0, unit_backoff_max: float = 60.0) -> ModbusBus | SerialBus:
    """The bus owner for one ``[[buses]]`` entry; run its ``run()`` as a task for the gateway's lifetime."""
    if config.type in MODBUS_BUSES:
        from drivers.modbus.bus import ModbusBus

        return ModbusBus(config, reopen_max=reopen_max, unit_backoff_max=unit_backoff_max)
    if config.type == "serial":
        return SerialBus(config, reopen_max=reopen_max)
    raise ValueError(f"bus {config.name!r}: type = {config.type!r}: "
                     f"expected 'serial', {', '.join(repr(t) for t in MODBUS_BUSES)}")


def is_modbus(bus: object) -> TypeGuard[ModbusBus]:
    """Whether ``bus`` is a Modbus bus owner; asking does not load the Modbus stack (without it there is none)."""
    module = sys.modules.get("drivers.modbus.bus")
    return module is not None and isinstance(bus, module.ModbusBus)

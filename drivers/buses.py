"""Bus owners: one task per physical bus (a serial port or a Modbus host:port) through which every transaction goes.

This module only picks the owner for a ``[[buses]]`` entry; each owner lives beside the drivers
that use it (``drivers.serial.bus``, ``drivers.modbus.bus``), so neither imports the other.
"""

from __future__ import annotations

from drivers.line import BusConfigLike
from drivers.modbus.adapter import ExceptionReply, GarbledReply, LinkError, NoReply
from drivers.modbus.bus import ModbusBus, UnitBackingOff
from drivers.sdk import BusDown
from drivers.serial.bus import SerialBus

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
]

MODBUS_BUSES = ("modbus-rtu", "modbus-tcp", "modbus-rtu-over-tcp")


def create_bus(config: BusConfigLike, *, reopen_max: float = 30.0, unit_backoff_max: float = 60.0) -> ModbusBus | SerialBus:
    """The bus owner for one ``[[buses]]`` entry; run its ``run()`` as a task for the gateway's lifetime."""
    if config.type in MODBUS_BUSES:
        return ModbusBus(config, reopen_max=reopen_max, unit_backoff_max=unit_backoff_max)
    if config.type == "serial":
        return SerialBus(config, reopen_max=reopen_max)
    raise ValueError(f"bus {config.name!r}: type = {config.type!r}: "
                     f"expected 'serial', {', '.join(repr(t) for t in MODBUS_BUSES)}")

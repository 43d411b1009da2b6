"""What a failed Modbus request means to a technician, in one sentence: the words `ocn-edge read` and the local page share."""

from __future__ import annotations

from drivers.modbus.adapter import ExceptionReply, GarbledReply, LinkError, NoReply
from drivers.modbus.bus import UnitBackingOff
from drivers.modbus.planner import ReadRequest

__all__ = ["diagnose"]


def diagnose(exc: LinkError, unit: int | None, request: ReadRequest | None = None) -> str:
    """One line naming the unit, the registers asked for, what went wrong and where to look."""
    span = f" ({request.function} {request.address}..{request.end - 1})" if request is not None else ""
    if isinstance(exc, ExceptionReply):
        return f"unit {unit} answered exception {exc.code}{span}: {exc.meaning}"
    if isinstance(exc, GarbledReply):
        return (f"unit {unit}: corrupt replies (CRC errors){span}: most likely the wrong baud rate or parity; "
                "find the right one with `ocn-edge scan --baud all`")
    if isinstance(exc, (NoReply, UnitBackingOff)):
        return (f"no reply from unit {unit}{span}: check the unit id (`ocn-edge scan`), baud rate and parity, "
                "A/B wiring (try swapping), termination and power")
    return f"bus not open: {exc}"

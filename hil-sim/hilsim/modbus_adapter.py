"""The one module of hil-sim that uses pymodbus (pinned 3.16.1): PDU decode/encode, the RTU CRC, the TCP server
(Modbus TCP framing, or RTU framing over TCP as an RS-485-to-Ethernet converter passes it through).

pymodbus changes its API between minor versions, so an upgrade touches only
this file.  The RTU line layer itself is hil-sim's (hilsim.modbus_bus): the
pymodbus serial server cannot pace bytes, keep a per-unit response delay or
corrupt a frame at the byte level, which is what a simulator of faults needs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import cast

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU
from pymodbus.server import ModbusTcpServer

__all__ = ["Read", "NoReply", "crc16", "answer_pdu", "exception_pdu", "TcpServer"]

# pymodbus logs a deprecation warning for every ModbusServerContext and a line per request; not ours to show.
logging.getLogger("pymodbus").setLevel(logging.ERROR)

# read(function_code, address, count) -> registers, or a Modbus exception code (int)
Read = Callable[[int, int, int], Awaitable[Sequence[int] | int]]


class NoReply(Exception):
    """Raised by a read to make the unit say nothing at all (unknown unit id, dropped reply)."""


def crc16(data: bytes) -> bytes:
    """The Modbus RTU CRC of `data`, as the two bytes sent on the wire (low byte first)."""
    return FramerRTU.compute_CRC(data).to_bytes(2, "big")


def exception_pdu(function_code: int, code: int) -> bytes:
    """A Modbus exception response PDU (function code | 0x80, exception code)."""
    return bytes([function_code | 0x80, code])


class _Units(ModbusServerContext):
    """A pymodbus server context that asks hil-sim's units instead of holding a datastore.

    pymodbus 3.16 takes a context that says it is an "old simulator" as a plain
    object with async_getValues/async_setValues, which is the seam used here.
    """

    def __init__(self, lookup: Callable[[int], Read | None]) -> None:  # no super(): it logs a deprecation
        self.old_simulator = True
        self.simdevices = []
        self._lookup = lookup

    def device_ids(self) -> list[int]:
        return []

    # pymodbus's method names
    async def async_getValues(self, device_id: int, func_code: int, address: int, count: int = 1) -> list[int] | ExcCodes:
        read = self._lookup(device_id)
        if read is None:
            raise NoSuchIdException(f"no unit {device_id}")
        try:
            result = await read(func_code, address, count)
        except NoReply:
            raise NoSuchIdException(f"unit {device_id} stays silent") from None
        return ExcCodes(result) if isinstance(result, int) else list(result)

    async def async_setValues(self, device_id: int, func_code: int, address: int,
                              values: Sequence[int] | Sequence[bool]) -> ExcCodes | None:
        if self._lookup(device_id) is None:
            raise NoSuchIdException(f"no unit {device_id}")
        return ExcCodes.ILLEGAL_ADDRESS  # simulated registers are read-only


async def answer_pdu(request: bytes, *, unit_id: int, read: Read) -> bytes | None:
    """The response PDU to request PDU `request`, or None when the unit stays silent."""
    pdu = DecodePDU(True).decode(request)
    if pdu is None:
        return exception_pdu(request[0], int(ExcCodes.ILLEGAL_FUNCTION))
    context = _Units(lambda unit: read if unit == unit_id else None)
    try:
        response = await pdu.datastore_update(context, unit_id)
    except NoSuchIdException:
        return None
    except Exception:  # a function pymodbus decodes but a meter does not implement (diagnostics, …)
        return exception_pdu(request[0], int(ExcCodes.ILLEGAL_FUNCTION))
    return response.function_code.to_bytes(1, "big") + response.encode()


class TcpServer:
    """pymodbus's Modbus TCP server on 127.0.0.1; unknown unit ids (and dropped replies) get no answer.

    ``rtu_framing``: RTU frames with their CRC on the socket instead of the Modbus TCP header,
    as a cheap RS-485-to-Ethernet converter in transparent mode serves its line.
    """

    def __init__(self, *, lookup: Callable[[int], Read | None], host: str = "127.0.0.1", port: int = 0,
                 rtu_framing: bool = False) -> None:
        self.host = host
        self.port = port
        self.rtu_framing = rtu_framing
        self._lookup = lookup
        self._server: ModbusTcpServer | None = None

    async def start(self) -> None:
        """Listen (on the same port after the first start, so a restarted device is found where it was)."""
        self._server = ModbusTcpServer(
            _Units(self._lookup), address=(self.host, self.port), ignore_missing_devices=True,
            framer=FramerType.RTU if self.rtu_framing else FramerType.SOCKET,
        )
        await self._server.serve_forever(background=True)
        listening = cast(asyncio.Server, self._server.transport)  # pymodbus types it as a transport; it is the server
        self.port = listening.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every connection, like a device losing power."""
        if self._server is None:
            return
        server, self._server = self._server, None
        await server.shutdown()  # closing the listener also closes every open connection

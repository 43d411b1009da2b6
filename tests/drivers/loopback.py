"""Real parts on loopback for driver tests: Modbus servers (TCP and RTU over linked ptys) and serial device ptys.

These are test stand-ins for single behaviours (one register map, one fault
switched at an exact moment); scenario-level tests run against hil-sim.
"""

from __future__ import annotations

import asyncio
import functools
import os
import struct
import tty
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.modbus.profile import TYPES, Profile, Register
from drivers.testing import BusSettings

__all__ = ["BusConfig", "NullModem", "RegisterStore", "SerialPeer", "float32_words", "modbus_rtu_server",
           "modbus_tcp_server", "serve_profile", "words_for"]

_FC = {1: "coil", 2: "discrete", 3: "holding", 4: "input"}


# A [[buses]] entry as drivers.testing runs buses outside the gateway, with the shorter
# timeout and no frame gap these loopback tests want by default.
BusConfig = functools.partial(BusSettings, name="bus-1", type="modbus-tcp", timeout=0.3, frame_gap=0.0)


def float32_words(value: float) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [hi, lo]


@dataclass
class RegisterStore:
    """Register tables per unit.  A unit in ``dead`` never answers; addresses outside ``readable`` get exception 02."""

    units: dict[int, dict[tuple[str, int], int | bool]] = field(default_factory=dict)
    readable: dict[int, dict[str, range]] = field(default_factory=dict)
    dead: set[int] = field(default_factory=set)
    requests: list[tuple[int, str, int, int]] = field(default_factory=list)
    gateway: bool = False  # a TCP-to-RTU gateway: a unit that is not there gets exception 0B, not silence

    def set_words(self, unit: int, function: str, address: int, words: Iterable[int | bool]) -> None:
        table = self.units.setdefault(unit, {})
        for i, w in enumerate(words):
            table[(function, address + i)] = w

    # The pymodbus server calls these on its context.
    async def async_getValues(self, device_id: int, func_code: int, address: int, count: int = 1) -> list[int] | list[bool] | ExcCodes:
        function = _FC[func_code]
        self.requests.append((device_id, function, address, count))
        if device_id not in self.units or device_id in self.dead:
            if self.gateway:
                return ExcCodes.GATEWAY_NO_RESPONSE
            raise NoSuchIdException(f"no unit {device_id}")
        allowed = self.readable.get(device_id, {}).get(function)
        if allowed is not None and not (address in allowed and address + count - 1 in allowed):
            return ExcCodes.ILLEGAL_ADDRESS
        table = self.units[device_id]
        return [table.get((function, a), False if func_code in (1, 2) else 0) for a in range(address, address + count)]

    async def async_setValues(self, device_id: int, func_code: int, address: int, values: Iterable[int | bool]) -> None:
        self.set_words(device_id, _FC[func_code], address, values)

    def device_ids(self) -> list[int]:
        return list(self.units)


def _placeholder() -> SimDevice:
    # pymodbus wants a device to start; requests are then served from the store put in server.context.
    return SimDevice(1, simdata=[SimData(0, values=[0], datatype=DataType.REGISTERS)])


async def modbus_tcp_server(store: RegisterStore, *, port: int = 0) -> tuple[ModbusTcpServer, int]:
    """A pymodbus TCP server on 127.0.0.1 (an ephemeral port unless given) serving ``store``; returns it and its port."""
    server = ModbusTcpServer(_placeholder(), address=("127.0.0.1", port), ignore_missing_devices=True)
    # The request handler reads and writes through server.context, calling only what RegisterStore has.
    server.context = cast(ModbusServerContext, store)
    await server.serve_forever(background=True)
    listener = server.transport
    assert isinstance(listener, asyncio.Server), listener
    port = listener.sockets[0].getsockname()[1]
    return server, port


class NullModem:
    """Two ptys joined back to back, like two RS-232/RS-485 adapters on one cable: ``a`` and ``b`` are paths."""

    def __init__(self) -> None:
        self._ma, sa = os.openpty()
        self._mb, sb = os.openpty()
        for fd in (sa, sb):
            tty.setraw(fd)
        self.a, self.b = os.ttyname(sa), os.ttyname(sb)
        self._slaves = (sa, sb)  # held open so neither side sees a hangup before its peer opens
        loop = asyncio.get_running_loop()
        loop.add_reader(self._ma, self._pump, self._ma, self._mb)
        loop.add_reader(self._mb, self._pump, self._mb, self._ma)

    @staticmethod
    def _pump(src: int, dst: int) -> None:
        try:
            os.write(dst, os.read(src, 4096))
        except OSError:
            pass

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for fd in (self._ma, self._mb):
            loop.remove_reader(fd)
        for fd in (self._ma, self._mb, *self._slaves):
            os.close(fd)


async def modbus_rtu_server(store: RegisterStore, port: str, *, baudrate: int = 9600) -> ModbusSerialServer:
    """A pymodbus RTU server on serial ``port`` serving ``store``."""
    server = ModbusSerialServer(_placeholder(), framer=FramerType.RTU, port=port, baudrate=baudrate,
                                ignore_missing_devices=True)
    server.context = cast(ModbusServerContext, store)
    await server.serve_forever(background=True)
    return server


class SerialPeer:
    """The device side of a serial port: a pty whose gateway side is reached through a stable symlink.

    ``unplug()`` closes the pty (the gateway sees EIO/hangup) and removes the
    symlink, as a USB adapter's /dev/ttyUSB0 disappears; ``replug()`` makes a
    fresh pty behind the same path.
    """

    def __init__(self, directory: Path, name: str = "ttyTEST0") -> None:
        self.path = str(directory / name)
        self.received = bytearray()
        self._master: int | None = None
        self.replug()

    def replug(self) -> None:
        master, slave = os.openpty()
        tty.setraw(slave)
        tty.setraw(master)
        target = os.ttyname(slave)
        os.close(slave)
        os.set_blocking(master, False)
        tmp = self.path + ".new"
        os.symlink(target, tmp)
        os.replace(tmp, self.path)
        self._master = master
        asyncio.get_running_loop().add_reader(master, self._readable, master)

    def _readable(self, master: int) -> None:
        try:
            self.received += os.read(master, 4096)
        except OSError:
            pass  # the gateway side is closed for the moment

    def unplug(self) -> None:
        if self._master is not None:
            asyncio.get_running_loop().remove_reader(self._master)
            os.close(self._master)
            self._master = None
        if os.path.lexists(self.path):
            os.unlink(self.path)

    def write(self, data: bytes) -> None:
        assert self._master is not None, "unplugged"
        os.write(self._master, data)

    async def wait_received(self, data: bytes, timeout: float = 3.0) -> None:
        """Wait until the gateway has written ``data`` (anywhere in what it sent)."""
        async with asyncio.timeout(timeout):
            while data not in self.received:
                await asyncio.sleep(0.01)


def words_for(register: Register, value: float | int | bool) -> list[int] | list[bool]:
    """The raw words a device holds for ``value`` of a profile register (big-endian profiles only)."""

    if register.type == "bool":
        return [bool(value)]
    raw = value if register.bit is not None else (value - register.offset) / register.scale
    fmt = TYPES[register.type][1]
    if register.bit is not None:
        packed = struct.pack(fmt, int(bool(raw)) << register.bit)
    else:
        packed = struct.pack(fmt, raw if "f" in fmt or "d" in fmt else round(raw))
    return [int.from_bytes(packed[i : i + 2], "big") for i in range(0, len(packed), 2)]


def serve_profile(store: RegisterStore, unit: int, profile: Profile, values: dict[str, float | int | bool]) -> None:
    """Put ``values`` (by channel name) into ``unit``'s tables where ``profile`` says they live."""
    for reg in profile.registers:
        if reg.channel in values:
            words = words_for(reg, values[reg.channel])
            if reg.bit is not None:  # bits share a register: OR them in
                table = store.units.setdefault(unit, {})
                words = [table.get((reg.function, reg.address), 0) | words[0]]
            store.set_words(unit, reg.function, reg.address, words)
    store.units.setdefault(unit, {})

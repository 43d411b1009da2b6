"""Fixtures for driver tests: a Modbus TCP server with its bus owner, RTU lines on linked ptys."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from drivers.buses import create_bus
from tests.drivers.loopback import BusConfig, NullModem, RegisterStore, modbus_rtu_server, modbus_tcp_server


@contextlib.asynccontextmanager
async def running(bus):
    """Run a bus owner as the runtime does (one task) until the block ends."""
    task = asyncio.create_task(bus.run())
    try:
        async with asyncio.timeout(5):
            while not bus.link.connected:
                await asyncio.sleep(0.01)
        yield bus
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
def store():
    return RegisterStore()


@pytest.fixture
async def tcp_bus(store):
    server, port = await modbus_tcp_server(store)
    bus = create_bus(BusConfig(type="modbus-tcp", tcp_port=port, timeout=0.3), unit_backoff_max=0.6)
    async with running(bus):
        yield bus
    await server.shutdown()


@pytest.fixture
async def rtu_line():
    """A null-modem pair: the device side path ``a`` and the gateway side path ``b``."""
    modem = NullModem()
    yield modem
    modem.close()


@pytest.fixture
async def rtu_bus(store, rtu_line):
    server = await modbus_rtu_server(store, rtu_line.a)
    bus = create_bus(BusConfig(type="modbus-rtu", port=rtu_line.b, timeout=0.3, frame_gap=0.004), unit_backoff_max=0.6)
    async with running(bus):
        yield bus
    await server.shutdown()

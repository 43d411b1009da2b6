"""Run a driver on a real bus outside the gateway: for driver tests (against hil-sim) and `ocn-edge read`."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from drivers.buses import SerialBus, create_bus
from drivers.registry import load_driver
from drivers.sdk import DeviceContext, Driver
from edge.protocol.types import Reading

if TYPE_CHECKING:
    from drivers.modbus.bus import ModbusBus  # the Modbus stack loads with a Modbus bus, not with this module

__all__ = ["BusSettings", "RunningDevice", "bus_settings_for", "running_device"]


@dataclass(frozen=True, slots=True)
class BusSettings:
    """A ``[[buses]]`` entry with the gateway config's defaults, for running a bus outside the gateway."""

    name: str = "bus"
    type: str = "serial"
    port: str = ""
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8
    host: str = "127.0.0.1"
    tcp_port: int = 502
    timeout: float = 0.5
    frame_gap: float = 0.005


def bus_settings_for(endpoint: Any, **overrides: Any) -> BusSettings:
    """Bus settings for a hil-sim endpoint (``sim.endpoints[name]``)."""
    if endpoint.transport in ("modbus-tcp", "modbus-rtu-over-tcp"):
        base = BusSettings(name=endpoint.bus or endpoint.device, type=endpoint.transport, host=endpoint.host,
                           tcp_port=endpoint.port)
    else:
        base = BusSettings(name=endpoint.bus or endpoint.device, type=endpoint.transport, port=endpoint.path,
                           baudrate=endpoint.baudrate, parity=endpoint.parity or "N", stopbits=endpoint.stopbits or 1)
    return replace(base, **overrides)


@dataclass
class RunningDevice:
    """A driver running on its own bus owner; ``readings`` fills as it emits."""

    driver: Driver
    bus: ModbusBus | SerialBus
    readings: list[Reading] = field(default_factory=list)

    async def wait_for_readings(self, count: int = 1, *, timeout: float = 10.0) -> list[Reading]:
        """Wait until at least ``count`` readings arrived; returns them all."""
        deadline = time.monotonic() + timeout
        while len(self.readings) < count:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(self.readings)} of {count} readings within {timeout:g} s")
            await asyncio.sleep(0.02)
        return list(self.readings)


@contextlib.asynccontextmanager
async def running_device(
    driver: str | type[Driver],
    *,
    bus: BusSettings,
    device_id: str = "dev-1",
    options: Mapping[str, Any] | None = None,
    address: int | None = None,
    poll_interval: float = 1.0,
) -> AsyncIterator[RunningDevice]:
    """Run ``driver`` (a registered name or a class) on a fresh bus owner until the block exits."""
    cls = load_driver(driver) if isinstance(driver, str) else driver
    owner = create_bus(bus)
    ctx = DeviceContext(device_id=device_id, options=dict(options or {}), bus=owner, address=address,
                        poll_interval=poll_interval)
    device = RunningDevice(driver=cls(ctx), bus=owner)

    async def emit(reading: Reading) -> None:
        device.readings.append(reading)

    tasks = [asyncio.create_task(owner.run()), asyncio.create_task(device.driver.run(emit))]
    try:
        yield device
    finally:
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                raise result

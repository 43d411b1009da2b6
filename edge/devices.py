"""The configured buses and devices: one bus owner per physical bus in use, one driver per enabled device, run and watched.

Built from the config before anything starts, so the channels every driver declares are
known when the privacy policy is checked against them.  Each bus owner and each device is
its own task; a failing driver is restarted by its DeviceRunner and never takes another
task down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drivers.buses import ModbusBus, SerialBus, create_bus
from drivers.sdk import DeviceContext, Driver, Emit
from edge.config import DeviceConfig, GatewayConfig
from edge.protocol.types import Channel
from edge.supervise import DeviceRunner

__all__ = ["Device", "Devices"]


@dataclass
class Device:
    """One enabled device: its config, its driver class and context, the channels it declares, its runner once started."""

    config: DeviceConfig
    driver_cls: type[Driver]
    context: DeviceContext
    channels: list[Channel]
    runner: DeviceRunner | None = None

    def make_driver(self) -> Driver:
        return self.driver_cls(self.context)


class Devices:
    """The buses and devices of one config, with their tasks once started."""

    def __init__(self, config: GatewayConfig, *, driver_lookup: Callable[[str], type[Driver]], clock_ms: Callable[[], int]) -> None:
        enabled = [d for d in config.devices if d.enabled]
        used_buses = {d.bus for d in enabled if d.bus}
        self.buses: dict[str, ModbusBus | SerialBus] = {b.name: create_bus(b) for b in config.buses if b.name in used_buses}
        self.devices: list[Device] = []
        for dev in enabled:
            cls = driver_lookup(dev.driver)
            ctx = DeviceContext(
                device_id=dev.name,
                options=cls.check_options(dev.options),
                bus=self.buses.get(dev.bus) if dev.bus else None,
                address=dev.address,
                poll_interval=dev.poll_interval,
                logger=logging.getLogger(f"ocn.driver.{dev.name}"),
                clock_ms=clock_ms,
            )
            self.devices.append(Device(dev, cls, ctx, list(cls(ctx).channels())))
        self.bus_tasks: list[asyncio.Task[None]] = []
        self.device_tasks: list[asyncio.Task[None]] = []

    def __len__(self) -> int:
        return len(self.devices)

    def channels(self) -> list[Channel]:
        """Every channel the devices declare (what the privacy policy is checked against)."""
        return [c for d in self.devices for c in d.channels]

    def start(self, emit: Emit) -> None:
        """One task per bus owner and per device; every reading goes to ``emit``."""
        for name, bus in self.buses.items():
            self.bus_tasks.append(asyncio.create_task(bus.run(), name=f"bus:{name}"))
        for dev in self.devices:
            personal = any(c.personal for c in dev.channels)
            dev.runner = DeviceRunner(dev.config.name, dev.make_driver, emit, personal=personal)
            self.device_tasks.append(asyncio.create_task(dev.runner.run(), name=f"device:{dev.config.name}"))

    def failing(self) -> list[str]:
        """``"<device>: <last error>"`` for each device failing now (for the status report)."""
        return [f"{d.config.name}: {d.runner.last_error}" for d in self.devices if d.runner and d.runner.failing]

    def status(self) -> dict[str, Any]:
        """Each device's readings and restarts, and each bus owner's statistics (for the local status page)."""
        return {
            "devices": {
                d.config.name: {
                    "driver": d.config.driver,
                    "readings": d.runner.readings if d.runner else 0,
                    "failing": bool(d.runner and d.runner.failing),
                    "restarts": d.runner.restarts if d.runner else 0,
                    "last_error": d.runner.last_error if d.runner else "",
                }
                for d in self.devices
            },
            "buses": {name: bus.stats() for name, bus in self.buses.items()},
        }

"""The configured buses and devices: one bus owner per physical bus in use, one driver per enabled device, run and watched.

Built from the config before anything starts, so the channels every driver declares are
known when the privacy policy is checked against them.  Each bus owner and each device is
its own task; a failing driver is restarted by its DeviceRunner and never takes another
task down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from drivers.buses import SerialBus, create_bus, is_modbus
from drivers.health import FAILING, HEALTH_WORDS, OK, Health, HealthSource, assess
from drivers.sdk import DeviceContext, Driver, Emit, Emitter, emit_all_of
from edge.config import DeviceConfig, GatewayConfig
from edge.protocol.types import Channel, Reading
from edge.supervise import DeviceRunner

if TYPE_CHECKING:
    from drivers.modbus.bus import ModbusBus

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

    def health(self) -> Health:
        """ok, degraded or failing, with the cause and the next step (drivers.health), from its bus, driver and runner."""
        runner = self.runner
        if runner is None:
            return Health()
        bus = self.context.bus
        name = self.config.name
        return assess(
            name,
            bus=bus.health_of(name, self.config.address) if isinstance(bus, HealthSource) else None,
            driver=runner.driver.health() if runner.driver is not None else None,
            crashing=runner.last_error if runner.failing else "",
            # A driver that hears its device itself (a heartbeat counts) says when it is silent, in its own opinion.
            silent_s=None if self.driver_cls.watches_silence else runner.silent_s(),
            poll_interval=self.config.poll_interval,
        )


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
            bus = self.buses.get(dev.bus) if dev.bus else None
            if is_modbus(bus) and isinstance(dev.address, int):
                bus.name_unit(dev.address, dev.name)
        self.bus_tasks: list[asyncio.Task[None]] = []
        self.device_tasks: list[asyncio.Task[None]] = []
        self._taps: dict[str, list[asyncio.Queue[Reading]]] = {}

    def __len__(self) -> int:
        return len(self.devices)

    def channels(self) -> list[Channel]:
        """Every channel the devices declare (what the privacy policy is checked against)."""
        return [c for d in self.devices for c in d.channels]

    def start(self, emit: Emit) -> None:
        """One task per bus owner and per device; every reading goes to ``emit`` (and to any :meth:`tap` of its device)."""
        for name, bus in self.buses.items():
            self.bus_tasks.append(asyncio.create_task(bus.run(), name=f"bus:{name}"))
        for dev in self.devices:
            personal = any(c.personal for c in dev.channels)
            dev.runner = DeviceRunner(dev.config.name, dev.make_driver, self._tapped(dev.config.name, emit), personal=personal)
            self.device_tasks.append(asyncio.create_task(dev.runner.run(), name=f"device:{dev.config.name}"))

    def _tapped(self, device: str, emit: Emit) -> Emitter:
        taps = self._taps.setdefault(device, [])
        emit_all = emit_all_of(emit)

        async def emit_and_tap(readings: Sequence[Reading]) -> None:
            for queue in taps:
                for reading in readings:
                    with contextlib.suppress(asyncio.QueueFull):  # a slow onlooker misses readings; the flow never waits for it
                        queue.put_nowait(reading)
            await emit_all(readings)

        return Emitter(emit_and_tap)

    @contextlib.contextmanager
    def tap(self, device: str, *, size: int = 256) -> Iterator[asyncio.Queue[Reading]]:
        """The readings ``device``'s running driver emits from now on, in memory only, while the block runs.

        How a technician's "read now" sees a streaming device without a second reader on its
        port: the next frames the running bus session delivers, as the driver decoded them.
        """
        queue: asyncio.Queue[Reading] = asyncio.Queue(maxsize=size)
        taps = self._taps.setdefault(device, [])
        taps.append(queue)
        try:
            yield queue
        finally:
            taps.remove(queue)

    def health(self) -> dict[str, Health]:
        """Each device's health now, by device name."""
        return {d.config.name: d.health() for d in self.devices}

    def failing(self) -> list[str]:
        """One sentence per device that is not ok, ``"<device> <health>: <cause>: <next step>"`` (the status report's errors)."""
        return [f"{name} {h.state}: {h.sentence}" for name, h in self.health().items() if h.state != OK]

    def health_report(self) -> dict[str, dict[str, str]]:
        """The status report's ``device_health``: each device's health word, diagnosis and next step."""
        return {name: h.as_dict() for name, h in self.health().items()}

    def health_counts(self) -> dict[str, int]:
        """How many devices are ok, degraded and failing."""
        counts: dict[str, int] = dict.fromkeys(HEALTH_WORDS, 0)
        for h in self.health().values():
            counts[h.state] += 1
        return counts

    def status(self) -> dict[str, Any]:
        """Each device's health, readings and restarts, and each bus owner's statistics (for the local status page)."""
        devices: dict[str, Any] = {}
        for d in self.devices:
            health = d.health()
            devices[d.config.name] = {
                "driver": d.config.driver,
                "bus": d.config.bus or "",
                **health.as_dict(),
                "readings": d.runner.readings if d.runner else 0,
                # Kept for readers of the earlier /status, now from the health model (it said false for a silent unit).
                "failing": health.state == FAILING,
                "restarts": d.runner.restarts if d.runner else 0,
                "last_error": d.runner.last_error if d.runner else "",
            }
        return {
            "devices": devices,
            "health_counts": self.health_counts(),
            "buses": {name: bus.stats() for name, bus in self.buses.items()},
        }

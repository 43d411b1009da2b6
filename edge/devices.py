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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from drivers.buses import ModbusBus, SerialBus, create_bus
from drivers.health import FAILING, HEALTH_WORDS, OK, STALE_POLLS, Health, HealthSource, assess
from drivers.sdk import DeviceContext, Driver, Emit
from edge.config import DeviceConfig, GatewayConfig
from edge.protocol.types import Channel, Reading
from edge.supervise import DeviceRunner

__all__ = ["Device", "Devices"]

log = logging.getLogger("ocn.devices")


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

    def bus_health(self) -> Health | None:
        """What the device's bus owner says of it (its port, its unit's answers); None for a device on no bus."""
        bus = self.context.bus
        return bus.health_of(self.config.name, self.config.address) if isinstance(bus, HealthSource) else None

    def health(self) -> Health:
        """ok, degraded or failing, with the cause and the next step (drivers.health), from its bus, driver and runner."""
        runner = self.runner
        if runner is None:
            return Health()
        name = self.config.name
        return assess(
            name,
            bus=self.bus_health(),
            driver=runner.driver.health() if runner.driver is not None else None,
            crashing=runner.last_error if runner.failing else "",
            silent_s=runner.silent_s(),
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
            if isinstance(bus, ModbusBus) and isinstance(dev.address, int):
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
        if self.devices:
            self.device_tasks.append(asyncio.create_task(self.watch_silence(), name="devices:silence"))

    async def watch_silence(self, *, every_s: float = 1.0) -> None:
        """Log once when a device goes silent while its bus is fine, and once when its readings come back.

        The bus owner logs its own failures (a port gone, a unit that never answered) and the runner
        each restart of a crashing driver; a sensor that simply stops sending on a line that is there
        (power, a loose wire, a sensor asleep) is said here, with the health model's words.
        """
        silent: set[str] = set()  # devices whose silence was logged
        while True:
            await asyncio.sleep(every_s)
            for dev in self.devices:
                runner, name = dev.runner, dev.config.name
                if runner is None:
                    continue
                quiet_s = runner.silent_s()
                if name in silent:
                    if quiet_s < STALE_POLLS * dev.config.poll_interval:
                        silent.discard(name)
                        log.info("%s: readings again", name, extra={"device": name})
                    continue
                bus = dev.bus_health()
                if quiet_s >= STALE_POLLS * dev.config.poll_interval and not runner.failing and (bus is None or bus.state == OK):
                    silent.add(name)
                    log.error(dev.health().sentence, extra={"device": name})

    def _tapped(self, device: str, emit: Emit) -> Emit:
        taps = self._taps.setdefault(device, [])

        async def emit_and_tap(reading: Reading) -> None:
            for queue in taps:
                with contextlib.suppress(asyncio.QueueFull):  # a slow onlooker misses readings; the flow never waits for it
                    queue.put_nowait(reading)
            await emit(reading)

        return emit_and_tap

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

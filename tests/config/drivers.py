"""Small real drivers for config tests: one per transport, with options to get wrong."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from drivers.registry import UnknownDriver
from drivers.sdk import Driver, Emit, Manifest, OptionSpec
from edge.protocol.types import Channel, Reading

__all__ = ["DRIVERS", "DustSensor", "Meter", "Uptime", "lookup"]


class DustSensor(Driver):
    manifest = Manifest(
        name="dust",
        version="1.0",
        summary="particulate sensor on its own serial port",
        transport="serial",
        options={
            "mode": OptionSpec(str, "active", choices=("active", "query")),
            "warmup": OptionSpec(int, 30, help="seconds before readings count"),
        },
    )

    def channels(self) -> Sequence[Channel]:
        return [Channel(self.ctx.channel_id("pm2_5"), unit="ug/m3", resolution=0.1)]

    async def run(self, emit: Emit) -> None:
        await emit(Reading(self.ctx.channel_id("pm2_5"), self.ctx.clock_ms(), 4.2, "ug/m3"))


class Meter(Driver):
    manifest = Manifest(
        name="meter",
        version="1.0",
        summary="energy meter on a Modbus line",
        transport="modbus",
        options={
            "profile": OptionSpec(str, required=True),
            "phases": OptionSpec(int, 3, choices=(1, 3)),
            "calibration": OptionSpec(Path, help="a file of per-phase correction factors"),
        },
    )

    def channels(self) -> Sequence[Channel]:
        return [Channel(self.ctx.channel_id("voltage_l1"), unit="V", resolution=0.1)]

    async def run(self, emit: Emit) -> None:
        await emit(Reading(self.ctx.channel_id("voltage_l1"), self.ctx.clock_ms(), 230.1, "V"))


class Uptime(Driver):
    manifest = Manifest(name="uptime", version="1.0", summary="the gateway's own uptime", transport="none")

    def channels(self) -> Sequence[Channel]:
        return [Channel(self.ctx.channel_id("uptime"), unit="s")]

    async def run(self, emit: Emit) -> None:
        await emit(Reading(self.ctx.channel_id("uptime"), self.ctx.clock_ms(), 1, "s"))


DRIVERS: dict[str, type[Driver]] = {cls.manifest.name: cls for cls in (DustSensor, Meter, Uptime)}


def lookup(name: str) -> type[Driver]:
    """Like drivers.registry.load_driver, over the drivers above."""
    try:
        return DRIVERS[name]
    except KeyError:
        raise UnknownDriver(name, sorted(DRIVERS)) from None

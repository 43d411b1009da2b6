"""Simulated Modbus devices: Eastron SDM630 and SDM120 meters, a weather station and a water-level sensor.

Each turns its model values into a register image once per second and
answers reads from it; derived quantities (power from voltage, current and
power factor; energy and rain counters integrated tick by tick) stay
physically consistent unless the scenario models them directly.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, ClassVar

from hilsim.device import SimDevice
from hilsim.registers import SDM120, SDM630, WATER_LEVEL, WEATHER, RegisterMap

__all__ = ["ModbusDevice", "Sdm630", "Sdm120", "WeatherStation", "WaterLevel", "MODBUS_FAULTS"]

MODBUS_FAULTS = ("bad_checksum", "drop_reply", "late_reply", "split_frame", "partial_frame", "exception",
                 "disconnect", "stuck_value", "line_noise")

_ILLEGAL_FUNCTION = 0x01
_ILLEGAL_ADDRESS = 0x02


def _diurnal(mean: float, amplitude: float, peak: str, noise: float, **bounds: float) -> dict[str, Any]:
    return {"model": "diurnal", "mean": mean, "amplitude": amplitude, "peak": peak, "noise": noise, **bounds}


class ModbusDevice(SimDevice):
    """A unit on a Modbus bus: a register map refreshed every tick, read by the bus layer."""

    register_map: ClassVar[RegisterMap]
    fault_kinds = MODBUS_FAULTS

    @classmethod
    def modelled(cls) -> tuple[str, ...]:
        """Model inputs plus every register of the map (a scenario may drive any register directly)."""
        return tuple(dict.fromkeys((*cls.quantities, *cls.extra_quantities, *cls.register_map.names())))

    def __init__(self, *, unit: int, response_delay: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.unit = unit
        self.response_delay = response_delay
        self.present = True
        self.on_power: Callable[[ModbusDevice], Awaitable[None]] | None = None  # set by the bus it is on
        self.image: list[int] = [0] * self.register_map.size
        self.totals: dict[str, float] = {}

    def compute(self, tick: int, values: dict[str, float]) -> None:
        derived = self.derive(tick, values)
        self.values = derived
        self.image = self.register_map.image(derived)

    def derive(self, tick: int, values: dict[str, float]) -> dict[str, float]:
        """Fill in the quantities the models do not drive (override)."""
        return values

    def integrate(self, name: str, per_hour: float, start: float) -> float:
        """Advance the running total `name` by one second at `per_hour` (an energy or rain counter)."""
        total = self.totals.get(name, start) + max(0.0, per_hour) / 3600.0
        self.totals[name] = total
        return total

    async def read(self, function_code: int, address: int, count: int) -> Sequence[int] | int:
        """Registers `address`..`address+count-1`, or a Modbus exception code."""
        if function_code not in (3, 4):
            return _ILLEGAL_FUNCTION
        if function_code != self.register_map.function_code or address + count > self.register_map.size:
            return _ILLEGAL_ADDRESS
        return self.image[address : address + count]

    def served_registers(self, address: int, words: Sequence[int], faults: Mapping[str, object]) -> None:
        """Write the registers of one reply (or one a fault withheld or spoiled) to the ledger, if there is one."""
        if self.ledger is not None:
            self.served(self.register_map.values_in(address, words), faults)

    async def disconnect(self) -> None:
        self.present = False
        if self.on_power is not None:
            await self.on_power(self)

    async def reconnect(self) -> None:
        self.present = True
        if self.on_power is not None:
            await self.on_power(self)


def _energy_counters(meter: ModbusDevice, out: dict[str, float], power_w: float, reactive_var: float) -> dict[str, float]:
    """An Eastron meter's energy registers: import counters integrate the power, nothing is exported."""
    out.setdefault("import_kwh", meter.integrate("import_kwh", power_w / 1000.0, float(meter.options["import_kwh"])))
    out.setdefault("export_kwh", 0.0)
    out.setdefault("import_kvarh", meter.integrate("import_kvarh", reactive_var / 1000.0,
                                                   float(meter.options["import_kvarh"])))
    out.setdefault("export_kvarh", 0.0)
    out.setdefault("total_kwh", out["import_kwh"] + out["export_kwh"])
    out.setdefault("total_kvarh", out["import_kvarh"] + out["export_kvarh"])
    return out


class Sdm630(ModbusDevice):
    """Eastron SDM630 three-phase meter (input registers, float32)."""

    kind = "eastron-sdm630"
    driver = "modbus"
    profile = "eastron-sdm630"
    register_map = SDM630
    quantities = {
        **{f"voltage_l{p}": _diurnal(230.0, 2.0, "03:00", 0.6) for p in (1, 2, 3)},
        **{f"current_l{p}": _diurnal(8.0 + p, 5.0, "18:30", 0.4, min=0.0) for p in (1, 2, 3)},
        **{f"power_factor_l{p}": _diurnal(0.93, 0.03, "18:30", 0.01, max=1.0) for p in (1, 2, 3)},
        "frequency": _diurnal(50.0, 0.0, "00:00", 0.015),
    }
    options_spec = {"import_kwh": 15234.0, "import_kvarh": 2811.0}

    def derive(self, tick: int, values: dict[str, float]) -> dict[str, float]:
        out = dict(values)
        phases = (1, 2, 3)
        for p in phases:
            v, i, pf = out[f"voltage_l{p}"], out[f"current_l{p}"], out[f"power_factor_l{p}"]
            out.setdefault(f"apparent_power_l{p}", v * i)
            out.setdefault(f"power_l{p}", v * i * pf)
            out.setdefault(f"reactive_power_l{p}", math.sqrt(max(0.0, (v * i) ** 2 - (v * i * pf) ** 2)))
        out.setdefault("voltage_avg", sum(out[f"voltage_l{p}"] for p in phases) / 3)
        out.setdefault("current_sum", sum(out[f"current_l{p}"] for p in phases))
        out.setdefault("current_avg", out["current_sum"] / 3)
        for total, part in (("power_total", "power"), ("apparent_power_total", "apparent_power"),
                            ("reactive_power_total", "reactive_power")):
            out.setdefault(total, sum(out[f"{part}_l{p}"] for p in phases))
        out.setdefault("power_factor_total", out["power_total"] / out["apparent_power_total"]
                       if out["apparent_power_total"] else 1.0)
        for a, b in ((1, 2), (2, 3), (3, 1)):
            # Line-to-line voltage of two phases 120° apart.
            va, vb = out[f"voltage_l{a}"], out[f"voltage_l{b}"]
            out.setdefault(f"voltage_l{a}_l{b}", math.sqrt(va * va + vb * vb + va * vb))
        ia, ib, ic = (out[f"current_l{p}"] for p in phases)
        out.setdefault("current_neutral", math.sqrt(max(0.0, ia * ia + ib * ib + ic * ic - ia * ib - ib * ic - ic * ia)))
        return _energy_counters(self, out, out["power_total"], out["reactive_power_total"])


class Sdm120(ModbusDevice):
    """Eastron SDM120 single-phase meter (input registers, float32)."""

    kind = "eastron-sdm120"
    driver = "modbus"
    profile = "eastron-sdm120"
    register_map = SDM120
    quantities = {
        "voltage": _diurnal(230.0, 2.0, "03:00", 0.6),
        "current": _diurnal(2.0, 1.5, "19:00", 0.2, min=0.0),
        "power_factor": _diurnal(0.95, 0.02, "19:00", 0.01, max=1.0),
        "frequency": _diurnal(50.0, 0.0, "00:00", 0.015),
    }
    options_spec = {"import_kwh": 812.0, "import_kvarh": 95.0}

    def derive(self, tick: int, values: dict[str, float]) -> dict[str, float]:
        out = dict(values)
        v, i, pf = out["voltage"], out["current"], out["power_factor"]
        out.setdefault("apparent_power", v * i)
        out.setdefault("power", v * i * pf)
        out.setdefault("reactive_power", math.sqrt(max(0.0, out["apparent_power"] ** 2 - out["power"] ** 2)))
        out.setdefault("phase_angle", math.degrees(math.acos(max(-1.0, min(1.0, pf)))))
        return _energy_counters(self, out, out["power"], out["reactive_power"])


class WeatherStation(ModbusDevice):
    """An RS-485 weather station (hil-sim's holding-register map, scaled integers)."""

    kind = "hilsim-weather"
    driver = "modbus"
    profile = "hilsim-weather"
    register_map = WEATHER
    quantities = {
        "temperature": _diurnal(12.0, 6.0, "15:00", 0.2),
        "humidity": _diurnal(70.0, 15.0, "05:00", 1.0, min=5.0, max=100.0),
        "pressure": _diurnal(1013.0, 1.5, "10:00", 0.2),
        "wind_speed": _diurnal(3.5, 1.5, "14:00", 0.8, min=0.0),
        "wind_direction": _diurnal(240.0, 40.0, "14:00", 15.0),
        "rain_rate": _diurnal(0.0, 0.6, "17:00", 0.8, min=0.0),  # mm/h
    }
    options_spec = {"rain": 0.0, "firmware": 0x0102}

    def derive(self, tick: int, values: dict[str, float]) -> dict[str, float]:
        out = dict(values)
        out["wind_direction"] = out["wind_direction"] % 360.0
        out.setdefault("wind_gust", out["wind_speed"] * 1.45)
        out.setdefault("rain", self.integrate("rain", out.get("rain_rate", 0.0), float(self.options["rain"])))
        out.setdefault("status", 0.0)
        out.setdefault("firmware", float(self.options["firmware"]))
        return out


class WaterLevel(ModbusDevice):
    """An RS-485 water-level transmitter (hil-sim's holding-register map, scaled integers)."""

    kind = "hilsim-water-level"
    driver = "modbus"
    profile = "hilsim-water-level"
    register_map = WATER_LEVEL
    quantities = {
        "level": _diurnal(1.2, 0.3, "06:00", 0.004),
        "water_temperature": _diurnal(9.0, 1.0, "16:00", 0.05),
        "supply_voltage": _diurnal(12.6, 0.2, "13:00", 0.02),
    }

    def derive(self, tick: int, values: dict[str, float]) -> dict[str, float]:
        out = dict(values)
        out.setdefault("status", 0.0)
        out.setdefault("measurements", float(tick + 1))
        return out

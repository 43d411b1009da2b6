"""Register maps of the simulated Modbus devices and how values become 16-bit registers.

Eastron SDM630/SDM120 follow the public Eastron Modbus protocol documents
(input registers, IEEE-754 float32, high word first).  The weather station
and water-level sensor maps are hil-sim's own; every map is tabled in
hil-sim/README.md, which is what driver profiles are written from.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["Register", "RegisterMap", "SDM630", "SDM120", "WEATHER", "WATER_LEVEL", "decode_value", "encode_value"]

_RANGES = {"int16": (-0x8000, 0x7FFF), "uint16": (0, 0xFFFF), "uint32": (0, 0xFFFFFFFF)}


@dataclass(frozen=True, slots=True)
class Register:
    """One value in a map: where it lives, how it is encoded, and its engineering scale and unit."""

    address: int
    name: str
    type: str  # "float32" | "int16" | "uint16" | "uint32"
    unit: str = ""
    scale: float = 1.0  # engineering value = raw × scale (integer types)

    @property
    def words(self) -> int:
        return 2 if self.type in ("float32", "uint32") else 1


def encode_value(register: Register, value: float) -> list[int]:
    """The 16-bit words holding `value` in `register`'s encoding, high word first."""
    if register.type == "float32":
        high, low = struct.unpack(">HH", struct.pack(">f", value))
        return [high, low]
    low_limit, high_limit = _RANGES[register.type]
    raw = min(high_limit, max(low_limit, round(value / register.scale)))
    if register.type == "uint32":
        return [raw >> 16, raw & 0xFFFF]
    return [raw & 0xFFFF]


def decode_value(register: Register, words: Sequence[int]) -> float | int:
    """The engineering value `words` (high word first) hold in `register`'s encoding: what a reader of them gets."""
    if register.type == "float32":
        value: float = struct.unpack(">f", struct.pack(">HH", words[0], words[1]))[0]
        return value
    raw = (words[0] << 16) | words[1] if register.type == "uint32" else words[0]
    if register.type == "int16" and raw >= 0x8000:
        raw -= 0x10000
    return raw if register.scale == 1.0 else raw * register.scale


@dataclass(frozen=True, slots=True)
class RegisterMap:
    """A device's readable register table: function 04 (input) or 03 (holding), addresses 0..size-1."""

    table: str  # "input" | "holding"
    size: int
    registers: tuple[Register, ...]

    @property
    def function_code(self) -> int:
        return 4 if self.table == "input" else 3

    def image(self, values: Mapping[str, float]) -> list[int]:
        """Every register of the table for `values`; registers not in the map read as 0."""
        words = [0] * self.size
        for register in self.registers:
            if register.name in values:
                words[register.address : register.address + register.words] = encode_value(
                    register, values[register.name]
                )
        return words

    def names(self) -> tuple[str, ...]:
        return tuple(r.name for r in self.registers)

    def values_in(self, address: int, words: Sequence[int]) -> dict[str, float | int]:
        """The value of every register lying wholly inside `words`, read from `address` on, by name."""
        end = address + len(words)
        return {r.name: decode_value(r, words[r.address - address : r.address - address + r.words])
                for r in self.registers if address <= r.address and r.address + r.words <= end}


def _floats(rows: list[tuple[int, str, str]]) -> tuple[Register, ...]:
    return tuple(Register(address, name, "float32", unit) for address, name, unit in rows)


SDM630 = RegisterMap(
    table="input",
    size=0x180,
    registers=_floats([
        (0x0000, "voltage_l1", "V"), (0x0002, "voltage_l2", "V"), (0x0004, "voltage_l3", "V"),
        (0x0006, "current_l1", "A"), (0x0008, "current_l2", "A"), (0x000A, "current_l3", "A"),
        (0x000C, "power_l1", "W"), (0x000E, "power_l2", "W"), (0x0010, "power_l3", "W"),
        (0x0012, "apparent_power_l1", "VA"), (0x0014, "apparent_power_l2", "VA"),
        (0x0016, "apparent_power_l3", "VA"),
        (0x0018, "reactive_power_l1", "VAr"), (0x001A, "reactive_power_l2", "VAr"),
        (0x001C, "reactive_power_l3", "VAr"),
        (0x001E, "power_factor_l1", ""), (0x0020, "power_factor_l2", ""), (0x0022, "power_factor_l3", ""),
        (0x002A, "voltage_avg", "V"), (0x002E, "current_avg", "A"), (0x0030, "current_sum", "A"),
        (0x0034, "power_total", "W"), (0x0038, "apparent_power_total", "VA"),
        (0x003C, "reactive_power_total", "VAr"), (0x003E, "power_factor_total", ""),
        (0x0046, "frequency", "Hz"),
        (0x0048, "import_kwh", "kWh"), (0x004A, "export_kwh", "kWh"),
        (0x004C, "import_kvarh", "kVArh"), (0x004E, "export_kvarh", "kVArh"),
        (0x00C8, "voltage_l1_l2", "V"), (0x00CA, "voltage_l2_l3", "V"), (0x00CC, "voltage_l3_l1", "V"),
        (0x00E0, "current_neutral", "A"),
        (0x0156, "total_kwh", "kWh"), (0x0158, "total_kvarh", "kVArh"),
    ]),
)

SDM120 = RegisterMap(
    table="input",
    size=0x180,
    registers=_floats([
        (0x0000, "voltage", "V"), (0x0006, "current", "A"), (0x000C, "power", "W"),
        (0x0012, "apparent_power", "VA"), (0x0018, "reactive_power", "VAr"), (0x001E, "power_factor", ""),
        (0x0024, "phase_angle", "deg"), (0x0046, "frequency", "Hz"),
        (0x0048, "import_kwh", "kWh"), (0x004A, "export_kwh", "kWh"),
        (0x004C, "import_kvarh", "kVArh"), (0x004E, "export_kvarh", "kVArh"),
        (0x0156, "total_kwh", "kWh"), (0x0158, "total_kvarh", "kVArh"),
    ]),
)

WEATHER = RegisterMap(
    table="holding",
    size=10,
    registers=(
        Register(0, "temperature", "int16", "Cel", 0.1),
        Register(1, "humidity", "uint16", "%RH", 0.1),
        Register(2, "pressure", "uint16", "hPa", 0.1),
        Register(3, "wind_speed", "uint16", "m/s", 0.01),
        Register(4, "wind_direction", "uint16", "deg", 1.0),
        Register(5, "wind_gust", "uint16", "m/s", 0.01),
        Register(6, "rain", "uint32", "mm", 0.1),
        Register(8, "status", "uint16"),
        Register(9, "firmware", "uint16"),
    ),
)

WATER_LEVEL = RegisterMap(
    table="holding",
    size=6,
    registers=(
        Register(0, "level", "int16", "m", 0.001),
        Register(1, "water_temperature", "int16", "Cel", 0.01),
        Register(2, "status", "uint16"),
        Register(3, "measurements", "uint32"),
        Register(5, "supply_voltage", "uint16", "V", 0.01),
    ),
)

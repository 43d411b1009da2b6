"""The OXP/2 unit registry and the static compression dictionary, both fixed by docs/protocol.md (Appendix B)."""

from __future__ import annotations

import hashlib

import cbor2

__all__ = ["UNITS", "UNIT_CODES", "CHANNEL_NAMES", "DEVICE_NAMES", "SUFFIXES", "DICTIONARY", "DICTIONARY_SHA256", "build_dictionary"]

# Unit symbols travel as one-byte codes: the index in this list (0 is "no unit"). The SenML
# registry (RFC 8428 §12.1 and its IANA additions) in registry order, then the symbols the
# OXP drivers and common municipal sensors use that SenML does not register. Append only:
# a code, once published, never changes meaning.
UNITS: tuple[str, ...] = (
    "",
    # RFC 8428 SenML units
    "m", "kg", "g", "s", "A", "K", "cd", "mol", "Hz", "rad", "sr", "N", "Pa", "J", "W", "C", "V", "F",
    "Ohm", "S", "Wb", "T", "H", "Cel", "lm", "lx", "Bq", "Gy", "Sv", "kat", "m2", "m3", "l", "m/s",
    "m/s2", "m3/s", "l/s", "W/m2", "cd/m2", "bit", "bit/s", "lat", "lon", "pH", "dB", "dBW", "Bspl",
    "count", "/", "%", "%RH", "%EL", "EL", "1/s", "1/min", "beat/min", "beats", "S/m",
    # RFC 8798 additions
    "B", "VA", "VAs", "var", "vars", "J/m", "kg/m3", "deg",
    # kilo-, milli- and hour-based forms meters and sensors report (many are SenML secondary units)
    "ms", "min", "h", "MHz", "kW", "kVA", "kvar", "Ah", "Wh", "kWh", "varh", "kvarh", "VAh", "kVAh",
    "Wh/km", "KiB", "GB", "Mbit/s", "B/s", "MB/s", "mV", "mA", "dBm", "ug/m3", "mm/h", "m/h", "cm",
    "km", "km/h", "ppm", "ppb",
    # common in municipal sensing, not registered with SenML
    "mm", "hPa", "kPa", "bar", "kn", "uS/cm", "NTU", "mg/l", "l/min", "m3/h", "dB(A)", "uW/cm2",
)
UNIT_CODES: dict[str, int] = {}
for _code, _unit in enumerate(UNITS):
    UNIT_CODES.setdefault(_unit, _code)

# Channel and device names of the OXP drivers and profiles and of common municipal sensors,
# least common first (zstd reaches the end of a dictionary with the shortest offsets).
CHANNEL_NAMES: tuple[str, ...] = (
    "status", "battery", "rssi", "snr", "uptime", "error", "fault", "sensor_fault", "heater_on", "out_of_range",
    "measurements", "supply_voltage", "phase_angle", "flow", "level", "water_temperature", "conductivity",
    "turbidity", "ph", "dissolved_oxygen", "illuminance", "uv_index", "solar_radiation", "noise", "laeq", "lamax",
    "co", "co2", "no", "no2", "o3", "so2", "voc", "pm1_0", "pm4_0", "count", "occupancy", "pedestrians", "cyclists",
    "vehicles", "direction", "course", "heading", "altitude", "fix_quality", "satellites", "hdop", "speed",
    "export_reactive_energy", "import_reactive_energy", "total_reactive_energy", "export_energy", "total_energy",
    "import_energy", "reactive_power_total", "reactive_power_l3", "reactive_power_l2", "reactive_power_l1",
    "reactive_power", "apparent_power_total", "apparent_power_l3", "apparent_power_l2", "apparent_power_l1",
    "apparent_power", "power_factor_total", "power_factor_l3", "power_factor_l2", "power_factor_l1", "power_factor",
    "power_total", "power_l3", "power_l2", "power_l1", "power", "current_neutral", "current_sum", "current_average",
    "current_l3", "current_l2", "current_l1", "current", "voltage_l3_l1", "voltage_l2_l3", "voltage_l1_l2",
    "voltage_average", "voltage_l3", "voltage_l2", "voltage_l1", "voltage", "frequency", "energy",
    "wind_gust", "wind_direction", "wind_speed", "rain", "rainfall", "pressure", "dew_point", "humidity",
    "temperature", "pm10", "pm2_5", "longitude", "latitude",
)
DEVICE_NAMES: tuple[str, ...] = (
    "counter-1", "noise-1", "air-1", "water-1", "th-1", "gps-1", "weather-1", "pm-1", "meter-1",
)

# What the privacy stage appends to a channel name it releases as a window summary
# ("<channel>.mean_5m", edge.privacy.stage.aggregate_channel_id) or a distinct count.
SUFFIXES: tuple[str, ...] = tuple(
    f".{function}_{window}"
    for window in ("1h", "15m", "1m", "5m")
    for function in ("distinct", "count", "sum", "max", "min", "mean")
)


def build_dictionary() -> bytes:
    """The dictionary bytes: unit symbols and device names as CBOR text strings, summary suffixes as bare
    UTF-8, then channel names as CBOR text strings, each list in order.

    As raw content (no zstd dictionary header), it lets the first occurrence of a common
    name in a batch cost a short back-reference instead of its letters.
    """
    parts = [cbor2.dumps(unit) for unit in UNITS[1:]]
    parts += [cbor2.dumps(name) for name in DEVICE_NAMES]
    parts += [suffix.encode() for suffix in SUFFIXES]
    parts += [cbor2.dumps(name) for name in CHANNEL_NAMES]
    return b"".join(parts)


DICTIONARY = build_dictionary()
DICTIONARY_SHA256 = hashlib.sha256(DICTIONARY).hexdigest()


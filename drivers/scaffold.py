"""Writes a new third-party driver package (`ocn-edge driver new NAME [--kind modbus|serial]`) with a working test against hil-sim."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["KINDS", "NAME_RE", "ScaffoldError", "scaffold"]

NAME_RE = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class ScaffoldError(ValueError):
    """The driver name or target directory is unusable."""


PYPROJECT = '''\
[build-system]
requires = ["setuptools>=68", "wheel"]
build-backend = "setuptools.build_meta"

[project]
name = "ocn-edge-driver-{name}"
version = "0.1.0"
description = "OCN Edge driver: {name}"
requires-python = ">=3.11"
dependencies = ["ocn-edge"]

# This line is what makes the gateway find the driver: the name on the left is what a
# gateway config writes as `driver = "{name}"`.
[project.entry-points."ocn_edge.drivers"]
{name} = "{module}.driver:{cls}"

[tool.setuptools]
packages = ["{module}"]

[tool.pytest.ini_options]
asyncio_mode = "auto"
'''

MODBUS_DRIVER = '''\
"""{name}: reads air temperature and humidity from an RS-485 weather station over Modbus.

Start from here for your own device: change the manifest, the channels and poll().
"""

from __future__ import annotations

import asyncio

from drivers.modbus.adapter import LinkError
from drivers.sdk import DeviceContext, Driver, Emit, Manifest, OptionError, OptionSpec
from edge.protocol.types import Channel, Reading
from edge.util.logonce import LogOnce


class {cls}(Driver):
    manifest = Manifest(
        name="{name}",
        version="0.1.0",
        summary="Air temperature and humidity from a Modbus weather station",
        hardware=("OCN hil-sim weather station",),
        transport="modbus",  # the gateway hands this driver a Modbus bus owner: ctx.modbus_bus()
        options={{
            "first_register": OptionSpec(int, default=0, help="holding register of the temperature"),
        }},
    )

    def __init__(self, ctx: DeviceContext) -> None:
        super().__init__(ctx)
        self.options = self.check_options(ctx.options)
        if not isinstance(ctx.address, int):
            raise OptionError("address", ctx.address, "a Modbus unit id 1..247")
        self.unit = ctx.address
        self.notes = LogOnce(ctx.logger)  # log once when it starts failing, once when it recovers

    def channels(self) -> list[Channel]:
        return [
            Channel(self.ctx.channel_id("temperature"), unit="Cel", resolution=0.1),
            Channel(self.ctx.channel_id("humidity"), unit="%RH", resolution=0.1),
        ]

    async def poll(self) -> list[Reading]:
        # Every transaction goes through the bus owner: it paces frames and isolates silent units.
        raw = await self.ctx.modbus_bus().read(self.unit, "holding", self.options["first_register"], 2)
        temperature = (raw[0] - 0x10000 if raw[0] & 0x8000 else raw[0]) / 10  # int16, 0.1 degC
        ts = self.ctx.clock_ms()
        return [
            Reading(self.ctx.channel_id("temperature"), ts, temperature, "Cel"),
            Reading(self.ctx.channel_id("humidity"), ts, raw[1] / 10, "%RH"),
        ]

    async def run(self, emit: Emit) -> None:
        await self.ctx.modbus_bus().wait_open()
        while True:
            try:
                readings = await self.poll()
            except LinkError as exc:
                self.notes.failure("unit", "%s: %s", self.ctx.device_id, exc)
            else:
                self.notes.recovered("unit", "%s: answers again", self.ctx.device_id)
                for reading in readings:
                    await emit(reading)
            await asyncio.sleep(self.ctx.poll_interval)
'''

MODBUS_TEST = '''\
"""{name} against hil-sim's weather station on Modbus TCP (127.0.0.1, an ephemeral port)."""

import hilsim

from drivers.registry import available
from drivers.testing import bus_settings_for, running_device

SCENARIO = """
[scenario]
name = "{name}-test"
seed = 1
[[buses]]
name = "tcp-1"
type = "modbus-tcp"
[[devices]]
name = "weather-1"
kind = "hilsim-weather"
bus = "tcp-1"
unit = 10
"""


def test_the_gateway_finds_the_driver_by_name():
    assert "{name}" in available()


async def test_reads_temperature_and_humidity_from_the_simulated_station(tmp_path):
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO)
    async with hilsim.run_scenario(scenario, run_dir=tmp_path / "run") as sim:
        endpoint = sim.endpoints["weather-1"]
        async with running_device("{name}", bus=bus_settings_for(endpoint), address=endpoint.unit,
                                  poll_interval=0.2) as device:
            readings = await device.wait_for_readings(4)
    values = {{r.channel: r.value for r in readings}}
    assert -40 < values["dev-1/temperature"] < 60
    assert 0 <= values["dev-1/humidity"] <= 100
'''

README = '''\
# ocn-edge-driver-{name}

An OCN Edge driver, made with `ocn-edge driver new {name}`. The walkthrough is in
OCN Edge's `docs/drivers.md`.

```sh
pip install .                             # into the gateway's environment
                                          # (offline: pip install --no-build-isolation .)
ocn-edge drivers                          # lists "{name}"
pytest tests                              # runs against hil-sim
```

Use it in a gateway config:

```toml
{config}```
'''

MODBUS_CONFIG = '''\
[[devices]]
name = "weather-1"
driver = "{name}"
bus = "rs485-1"
address = 10
poll_interval = "10s"
'''

SERIAL_DRIVER = '''\
"""{name}: reads PM2.5 and PM10 from a particulate sensor that streams 10-byte frames on its own serial port.

The frames are the Nova Fitness SDS011's (its datasheet, "Laser Dust Sensor Control Protocol" V1.3):
AA C0 pm25-low pm25-high pm10-low pm10-high id id checksum AB, values in 0.1 ug/m3, one frame a second.
Start from here for your own device: change the manifest, the decoder, the channels and readings().
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from drivers.sdk import Manifest
from drivers.serial.stream import Decoder, StreamDriver
from edge.protocol.types import Channel, Reading

HEAD, KIND, TAIL = 0xAA, 0xC0, 0xAB
FRAME_LEN = 10


@dataclass(frozen=True, slots=True)
class Frame:
    pm2_5: float  # ug/m3
    pm10: float


class {base}Decoder(Decoder[Frame]):
    """Finds frames in the byte stream; skips garbage and frames whose checksum fails (counted in stats)."""

    def _next(self) -> Frame | None:
        buf = self._buffer
        while True:
            start = buf.find(HEAD)
            if start < 0:
                self._skip(len(buf))
                return None
            self._skip(start)
            if len(buf) < FRAME_LEN:
                return None  # the rest of the frame is still on its way
            if buf[1] != KIND or buf[9] != TAIL:
                self._skip(1)  # not a frame start after all: look for the next one
                continue
            if sum(buf[2:8]) & 0xFF != buf[8]:
                self.stats.bad_checksum += 1
                self._skip(1)
                continue
            frame = bytes(buf[:FRAME_LEN])
            del buf[:FRAME_LEN]
            self.stats.frames += 1
            return Frame(pm2_5=int.from_bytes(frame[2:4], "little") / 10,
                         pm10=int.from_bytes(frame[4:6], "little") / 10)


class {cls}(StreamDriver[Frame]):
    # The serial bus owner opens the port, reopens it when it is unplugged, and hands this driver the bytes;
    # StreamDriver logs silence and bad frames once each.  A device that must be asked for each reading
    # returns its request from query_command(); commands to send after every (re)open from setup_commands().
    manifest = Manifest(
        name="{name}",
        version="0.1.0",
        summary="PM2.5 and PM10 from a particulate sensor streaming SDS011-style frames (UART, 9600 baud)",
        hardware=("OCN hil-sim SDS011",),
        transport="serial",  # the gateway hands this driver a serial bus owner: ctx.serial_bus()
    )

    def make_decoder(self) -> {base}Decoder:
        return {base}Decoder()

    def channels(self) -> Sequence[Channel]:
        return [
            Channel(self.ctx.channel_id("pm2_5"), unit="ug/m3", resolution=0.1),
            Channel(self.ctx.channel_id("pm10"), unit="ug/m3", resolution=0.1),
        ]

    def readings(self, frame: Frame, ts_ms: int) -> Sequence[Reading]:
        return (Reading(self.ctx.channel_id("pm2_5"), ts_ms, frame.pm2_5, "ug/m3"),
                Reading(self.ctx.channel_id("pm10"), ts_ms, frame.pm10, "ug/m3"))
'''

SERIAL_TEST = '''\
"""{name}: its decoder against the datasheet's bytes, and the driver against hil-sim's SDS011 on a pty."""

import hilsim

from drivers.registry import available
from drivers.testing import bus_settings_for, running_device
from {module}.driver import {base}Decoder

SCENARIO = """
[scenario]
name = "{name}-test"
seed = 1
[[devices]]
name = "pm-1"
kind = "sds011"
"""


def test_the_gateway_finds_the_driver_by_name():
    assert "{name}" in available()


def test_a_frame_behind_garbage_is_decoded_and_a_bad_checksum_is_counted():
    good = bytes.fromhex("AA C0 D4 04 3A 0A A1 60 1D AB")  # PM2.5 123.6, PM10 261.8 (datasheet layout)
    bad = good[:8] + bytes([good[8] ^ 0xFF]) + good[9:]
    decoder = {base}Decoder()
    [frame] = decoder.feed(b"\\x00\\x13" + bad + good[:4]) + decoder.feed(good[4:])
    assert (frame.pm2_5, frame.pm10) == (123.6, 261.8)
    assert decoder.stats.bad_checksum == 1


async def test_reads_pm_from_the_simulated_sensor(tmp_path):
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO)
    async with hilsim.run_scenario(scenario, run_dir=tmp_path / "run") as sim:
        async with running_device("{name}", bus=bus_settings_for(sim.endpoints["pm-1"])) as device:
            readings = await device.wait_for_readings(4)
    values = {{r.channel: r.value for r in readings}}
    assert 0 <= values["dev-1/pm2_5"] < 1000
    assert 0 <= values["dev-1/pm10"] < 1000
'''

SERIAL_CONFIG = '''\
[[buses]]
name = "pm-port"
type = "serial"
port = "/dev/serial/by-id/usb-1a86_USB_Serial-if00-port0"   # see ocn-edge ports
baudrate = 9600

[[devices]]
name = "pm-1"
driver = "{name}"
bus = "pm-port"
'''


@dataclass(frozen=True, slots=True)
class Kind:
    """The templates for one kind of driver: its code, its test, and its device in a gateway config."""

    driver: str
    test: str
    config: str


KINDS = {
    "modbus": Kind(MODBUS_DRIVER, MODBUS_TEST, MODBUS_CONFIG),
    "serial": Kind(SERIAL_DRIVER, SERIAL_TEST, SERIAL_CONFIG),
}


def scaffold(name: str, directory: Path, *, kind: str = "modbus") -> Path:
    """Write the package for a ``kind`` driver ``name`` into ``directory``/ocn-edge-driver-NAME; returns that path."""
    if kind not in KINDS:
        raise ScaffoldError(f"kind {kind!r}: expected one of {', '.join(repr(k) for k in KINDS)}")
    if not NAME_RE.match(name):
        raise ScaffoldError(f"driver name {name!r}: expected lowercase letters and digits, words joined by '-', "
                            "starting with a letter (e.g. 'acme-flowmeter')")
    module = "ocn_driver_" + name.replace("-", "_")
    base = "".join(part.capitalize() for part in name.split("-"))
    cls = base + "Driver"
    root = directory / f"ocn-edge-driver-{name}"
    if root.exists():
        raise ScaffoldError(f"{root}: already exists; choose another directory with --dir")
    values = {"name": name, "module": module, "cls": cls, "base": base}
    templates = KINDS[kind]
    values["config"] = templates.config.format(**values)
    files = {
        root / "pyproject.toml": PYPROJECT,
        root / "README.md": README,
        root / module / "__init__.py": f'"""OCN Edge driver {name}."""\n',
        root / module / "driver.py": templates.driver,
        root / "tests" / f"test_{module}.py": templates.test,
    }
    for path, template in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values), encoding="utf-8")
    return root

"""Writes a new third-party driver package (`ocn-edge driver new NAME`) with a working test against hil-sim."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["NAME_RE", "ScaffoldError", "scaffold"]

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

DRIVER = '''\
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

TEST = '''\
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
[[devices]]
name = "weather-1"
driver = "{name}"
bus = "rs485-1"
address = 10
poll_interval = "10s"
```
'''


def scaffold(name: str, directory: Path) -> Path:
    """Write the package for driver ``name`` into ``directory``/ocn-edge-driver-NAME; returns that path."""
    if not NAME_RE.match(name):
        raise ScaffoldError(f"driver name {name!r}: expected lowercase letters and digits, words joined by '-', "
                            "starting with a letter (e.g. 'acme-flowmeter')")
    module = "ocn_driver_" + name.replace("-", "_")
    cls = "".join(part.capitalize() for part in name.split("-")) + "Driver"
    root = directory / f"ocn-edge-driver-{name}"
    if root.exists():
        raise ScaffoldError(f"{root}: already exists; choose another directory with --dir")
    values = {"name": name, "module": module, "cls": cls}
    files = {
        root / "pyproject.toml": PYPROJECT,
        root / "README.md": README,
        root / module / "__init__.py": f'"""OCN Edge driver {name}."""\n',
        root / module / "driver.py": DRIVER,
        root / "tests" / f"test_{module}.py": TEST,
    }
    for path, template in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(template.format(**values), encoding="utf-8")
    return root

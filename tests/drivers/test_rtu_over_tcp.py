"""Modbus RTU over TCP: RTU frames with their CRC on a TCP socket, as RS-485-to-Ethernet converters pass them."""

from __future__ import annotations

from pathlib import Path

import hilsim
from drivers.buses import ModbusBus, create_bus
from drivers.modbus.driver import ModbusDriver
from drivers.sdk import DeviceContext
from drivers.testing import bus_settings_for
from edge.config import parse_config
from tests.drivers.conftest import running

CONVERTER = """
[scenario]
name = "converter"
seed = 1
[[buses]]
name = "converter-1"
type = "modbus-rtu-over-tcp"
[[devices]]
name = "weather-1"
kind = "hilsim-weather"
bus = "converter-1"
unit = 4
response_delay = "1ms"
[devices.values]
temperature = { value = 12.5 }
"""


def scenario(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    return path


async def test_a_profile_is_read_through_an_rtu_over_tcp_bus_configured_as_a_technician_would(tmp_path):
    (tmp_path / "policy.toml").write_text("# only its presence matters here\n")
    async with hilsim.run_scenario(scenario(tmp_path, CONVERTER), run_dir=tmp_path / "run") as sim:
        assert sim.endpoints["weather-1"].transport == "modbus-rtu-over-tcp"
        text = sim.gateway_config_toml(state_dir=tmp_path / "state", hub="https://hub.test")
        config = parse_config(text, path=tmp_path / "gateway.toml")
        [bus_config] = config.buses
        [device] = config.devices
        bus = create_bus(bus_config)
        assert isinstance(bus, ModbusBus)
        async with running(bus):
            driver = ModbusDriver(DeviceContext(device_id=device.name, options=dict(device.options), bus=bus,
                                                address=device.address))
            result = await driver.poll()
            stats = bus.stats()
    assert (bus_config.type, bus_config.host) == ("modbus-rtu-over-tcp", "127.0.0.1")
    assert not result.failures
    values = {r.channel: r.value for r in result.readings}
    assert values["weather-1/temperature"] == 12.5
    assert stats["type"] == "modbus-rtu-over-tcp"
    assert stats["crc_errors"] == 0 and stats["requests"] >= 1
    # An RTU read request is 8 bytes (unit, PDU, CRC); over Modbus TCP it would be 12 (MBAP header, PDU).
    assert stats["bytes_out"] == 8 * stats["requests"]


async def test_a_silent_unit_behind_the_converter_is_diagnosed_as_an_rs485_unit(tmp_path):
    async with hilsim.run_scenario(scenario(tmp_path, CONVERTER), run_dir=tmp_path / "run") as sim:
        bus = create_bus(bus_settings_for(sim.endpoints["weather-1"], timeout=0.2))
        assert isinstance(bus, ModbusBus)
        async with running(bus):
            bus.name_unit(9, "ghost-1")
            driver = ModbusDriver(DeviceContext(device_id="ghost-1", options={"profile": "hilsim-weather"},
                                                bus=bus, address=9))
            result = await driver.poll()
            health = bus.health_of("ghost-1", 9)
    assert result.failures and not result.readings
    assert health is not None and health.state == "failing"
    assert "unit 9 on converter-1 (ghost-1) has never answered" in health.cause
    assert "baud rate and parity" in health.next_step

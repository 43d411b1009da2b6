"""The simulated Modbus devices agree with an independent master (mbpoll) and behave like an RS-485 line."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from hilsim.modbus_adapter import crc16
from tests.helpers.tools import require_tool
from tests.hilsim.helpers import RawPort, write_scenario

METERS = """
[scenario]
name = "meters"
seed = 3

[[buses]]
name = "line"
type = "modbus-rtu"
baudrate = 9600

[[buses]]
name = "tcp"
type = "modbus-tcp"

[[devices]]
name = "meter-rtu"
kind = "eastron-sdm630"
bus = "line"
unit = 1
response_delay = "5ms"
[devices.values]
voltage_l1 = { value = 230.5 }
voltage_l2 = { value = 231.0 }
voltage_l3 = { value = 229.5 }
current_l1 = { value = 10.0 }
current_l2 = { value = 5.0 }
current_l3 = { value = 2.0 }
power_factor_l1 = { value = 0.5 }
power_factor_l2 = { value = 1.0 }
power_factor_l3 = { value = 1.0 }
frequency = { value = 50.0 }
import_kwh = { value = 1234.5 }

[[devices]]
name = "weather"
kind = "hilsim-weather"
bus = "line"
unit = 10
response_delay = "5ms"
[devices.values]
temperature = { value = -3.5 }
humidity = { value = 81.2 }
pressure = { value = 1009.9 }
wind_speed = { value = 4.25 }
wind_direction = { value = 270 }
wind_gust = { value = 6.5 }
rain = { value = 123456.7 }

[[devices]]
name = "meter-tcp"
kind = "eastron-sdm630"
bus = "tcp"
unit = 1
response_delay = "5ms"
[devices.values]
voltage_l1 = { value = 230.5 }
voltage_l2 = { value = 231.0 }
voltage_l3 = { value = 229.5 }
current_l1 = { value = 10.0 }
current_l2 = { value = 5.0 }
current_l3 = { value = 2.0 }
power_factor_l1 = { value = 0.5 }
power_factor_l2 = { value = 1.0 }
power_factor_l3 = { value = 1.0 }
frequency = { value = 50.0 }
import_kwh = { value = 1234.5 }
"""


def rtu_request(unit: int, function: int, address: int, count: int) -> bytes:
    body = struct.pack(">BBHH", unit, function, address, count)
    return body + crc16(body)


def mbpoll_floats(output: str) -> dict[int, float]:
    values = {}
    for line in output.splitlines():
        if line.startswith("[") and "]:" in line:
            ref, _, value = line.partition("]:")
            values[int(ref.strip("[ "))] = float(value)
    return values


async def run_mbpoll(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        require_tool("mbpoll"), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=20)
    assert proc.returncode == 0, err.decode() + out.decode()
    return out.decode()


@pytest.fixture
def meters_scenario(tmp_path):
    return write_scenario(tmp_path, METERS)


async def test_mbpoll_reads_documented_sdm630_values_over_tcp(hilsim_run, meters_scenario):
    sim = await hilsim_run(meters_scenario)
    port = sim.endpoints["meter-tcp"].port
    # -0: PDU addresses; -B: high word first, as Eastron sends float32; 3:float = input registers.
    out = await run_mbpoll("-m", "tcp", "-p", str(port), "-a", "1", "-t", "3:float", "-B", "-0",
                           "-r", "0", "-c", "8", "-1", "127.0.0.1")
    values = mbpoll_floats(out)
    assert values[0] == pytest.approx(230.5)  # phase 1 voltage, 30001
    assert values[6] == pytest.approx(10.0)  # phase 1 current, 30007
    assert values[12] == pytest.approx(1152.5)  # phase 1 power = 230.5 V × 10 A × 0.5, 30013
    out = await run_mbpoll("-m", "tcp", "-p", str(port), "-a", "1", "-t", "3:float", "-B", "-0",
                           "-r", "70", "-c", "2", "-1", "127.0.0.1")
    values = mbpoll_floats(out)
    assert values[70] == pytest.approx(50.0)  # frequency, 30071
    assert values[72] == pytest.approx(1234.5)  # total import kWh, 30073


async def test_mbpoll_reads_documented_sdm630_values_over_rtu(hilsim_run, meters_scenario):
    sim = await hilsim_run(meters_scenario)
    path = sim.endpoints["meter-rtu"].path
    out = await run_mbpoll("-m", "rtu", "-b", "9600", "-P", "none", "-a", "1", "-t", "3:float", "-B", "-0",
                           "-r", "0", "-c", "4", "-1", "-o", "2", path)
    values = mbpoll_floats(out)
    assert values[0] == pytest.approx(230.5)
    assert values[2] == pytest.approx(231.0)
    assert values[4] == pytest.approx(229.5)
    assert values[6] == pytest.approx(10.0)


async def test_weather_station_holding_registers_hold_documented_scaled_integers(hilsim_run, meters_scenario):
    sim = await hilsim_run(meters_scenario)
    port = RawPort(sim.endpoints["weather"].path)
    try:
        port.write(rtu_request(10, 3, 0, 10))
        reply, _ = await port.read_exactly(5 + 20)
    finally:
        port.close()
    assert reply[:3] == bytes([10, 3, 20])
    assert crc16(reply[:-2]) == reply[-2:]
    words = struct.unpack(">10H", reply[3:23])
    assert struct.unpack(">h", struct.pack(">H", words[0]))[0] == -35  # -3.5 °C in 0.1 °C
    assert words[1:6] == (812, 10099, 425, 270, 650)
    assert (words[6] << 16 | words[7]) == 1234567  # rain counter in 0.1 mm, uint32 high word first


async def test_unknown_unit_id_gets_no_reply_at_all_on_rtu(hilsim_run, meters_scenario):
    sim = await hilsim_run(meters_scenario)
    port = RawPort(sim.endpoints["meter-rtu"].path)
    try:
        port.write(rtu_request(7, 4, 0, 2))
        silence = await port.read_for(0.6)
        port.write(rtu_request(1, 4, 0, 2))  # the line still works for a unit that exists
        reply, _ = await port.read_exactly(9)
    finally:
        port.close()
    assert silence == b""
    assert reply[:3] == bytes([1, 4, 4])


async def test_unknown_unit_id_gets_no_reply_at_all_on_tcp(hilsim_run, meters_scenario):
    sim = await hilsim_run(meters_scenario)
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.endpoints["meter-tcp"].port)
    try:
        writer.write(struct.pack(">HHHBBHH", 1, 0, 6, 7, 4, 0, 2))  # MBAP + read input registers, unit 7
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read(100), timeout=0.6)
        writer.write(struct.pack(">HHHBBHH", 2, 0, 6, 1, 4, 0, 2))
        reply = await asyncio.wait_for(reader.read(100), timeout=2)
    finally:
        writer.close()
    assert reply[:2] == b"\x00\x02" and reply[6:9] == bytes([1, 4, 4])


async def test_request_with_bad_crc_is_ignored(hilsim_run, meters_scenario):
    sim = await hilsim_run(meters_scenario)
    port = RawPort(sim.endpoints["meter-rtu"].path)
    try:
        frame = bytearray(rtu_request(1, 4, 0, 2))
        frame[-1] ^= 0xFF
        port.write(bytes(frame))
        assert await port.read_for(0.5) == b""
    finally:
        port.close()


async def test_a_9600_baud_reply_takes_its_wire_time(hilsim_run, meters_scenario):
    sim = await hilsim_run(meters_scenario)
    port = RawPort(sim.endpoints["meter-rtu"].path)
    try:
        port.write(rtu_request(1, 4, 0, 125))
        reply, stamps = await port.read_exactly(5 + 250)
    finally:
        port.close()
    assert len(reply) == 255 and crc16(reply[:-2]) == reply[-2:]
    # 255 bytes × 10 bits at 9600 baud: the last byte lands 254 character times after the first.
    expected = 254 * 10 / 9600
    assert stamps[-1] - stamps[0] == pytest.approx(expected, rel=0.15)


async def test_reading_outside_the_map_is_an_illegal_address_exception(hilsim_run, meters_scenario):
    sim = await hilsim_run(meters_scenario)
    port = RawPort(sim.endpoints["meter-rtu"].path)
    try:
        port.write(rtu_request(1, 4, 0x0200, 2))
        reply, _ = await port.read_exactly(5)
    finally:
        port.close()
    assert reply[:3] == bytes([1, 0x84, 0x02])


async def test_exception_fault_answers_with_the_scripted_exception_code(hilsim_run, tmp_path):
    scenario = write_scenario(tmp_path, """
[[buses]]
name = "line"
type = "modbus-rtu"
[[devices]]
name = "m"
kind = "eastron-sdm120"
bus = "line"
unit = 2
[[devices.faults]]
kind = "exception"
at = "0s"
duration = "1h"
code = 6
""")
    sim = await hilsim_run(scenario)
    port = RawPort(sim.endpoints["m"].path)
    try:
        port.write(rtu_request(2, 4, 0, 2))
        reply, _ = await port.read_exactly(5)
    finally:
        port.close()
    assert reply == bytes([2, 0x84, 0x06]) + crc16(bytes([2, 0x84, 0x06]))


async def test_tcp_device_disconnect_stops_the_server_and_it_comes_back_on_the_same_port(hilsim_run, tmp_path):
    scenario = write_scenario(tmp_path, """
[[buses]]
name = "tcp"
type = "modbus-tcp"
[[devices]]
name = "m"
kind = "eastron-sdm120"
bus = "tcp"
unit = 1
[[devices.faults]]
kind = "disconnect"
at = "1s"
duration = "1s"
""")
    sim = await hilsim_run(scenario)
    port = sim.endpoints["m"].port
    await asyncio.sleep(1.4)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    await asyncio.sleep(1.2)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(struct.pack(">HHHBBHH", 9, 0, 6, 1, 4, 0, 2))
    reply = await asyncio.wait_for(reader.read(100), timeout=2)
    writer.close()
    assert reply[6:9] == bytes([1, 4, 4])


async def test_tcp_drop_reply_fault_leaves_the_master_waiting(hilsim_run, tmp_path):
    scenario = write_scenario(tmp_path, """
[[buses]]
name = "tcp"
type = "modbus-tcp"
[[devices]]
name = "m"
kind = "eastron-sdm120"
bus = "tcp"
unit = 1
[[devices.faults]]
kind = "drop_reply"
""")
    sim = await hilsim_run(scenario)
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.endpoints["m"].port)
    try:
        writer.write(struct.pack(">HHHBBHH", 1, 0, 6, 1, 4, 0, 2))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read(100), timeout=0.6)
    finally:
        writer.close()

"""The serial devices speak their datasheets byte for byte, pace bytes at the baud rate, and can be unplugged."""

from __future__ import annotations

import asyncio
import errno
import os
import select

import pytest

from hilsim.serial_devices import nmea_sentence
from tests.helpers.datasets import dataset
from tests.hilsim.helpers import RawPort, write_scenario

SDS011_QUERY = """
[[devices]]
name = "pm"
kind = "sds011"
[devices.options]
mode = "query"
device_id = 0xA160
[devices.values]
pm2_5 = { value = 123.6 }
pm10 = { value = 261.8 }
"""

# Datasheet examples: Nova Fitness "Laser Dust Sensor Control Protocol V1.3", device id A1 60.
QUERY_DATA = bytes.fromhex("AA B4 04 00 00 00 00 00 00 00 00 00 00 00 00 FF FF 02 AB")
DATA_REPLY = bytes.fromhex("AA C0 D4 04 3A 0A A1 60 1D AB")
SET_SLEEP = bytes.fromhex("AA B4 06 01 00 00 00 00 00 00 00 00 00 00 00 FF FF 05 AB")
SLEEP_REPLY = bytes.fromhex("AA C5 06 01 00 00 A1 60 08 AB")
SET_WORK = bytes.fromhex("AA B4 06 01 01 00 00 00 00 00 00 00 00 00 00 FF FF 06 AB")
WORK_REPLY = bytes.fromhex("AA C5 06 01 01 00 A1 60 09 AB")
SET_QUERY_MODE = bytes.fromhex("AA B4 02 01 01 00 00 00 00 00 00 00 00 00 00 FF FF 02 AB")
QUERY_MODE_REPLY = bytes.fromhex("AA C5 02 01 01 00 A1 60 05 AB")


@pytest.fixture
async def sds011(hilsim_run, tmp_path):
    sim = await hilsim_run(write_scenario(tmp_path, SDS011_QUERY))
    port = RawPort(sim.endpoints["pm"].path)
    yield port
    port.close()


async def test_sds011_answers_the_datasheet_query_with_the_datasheet_frame(sds011):
    sds011.write(QUERY_DATA)
    reply, _ = await sds011.read_exactly(10)
    assert reply == DATA_REPLY


async def test_sds011_reporting_mode_reply_matches_the_datasheet(sds011):
    sds011.write(SET_QUERY_MODE)
    reply, _ = await sds011.read_exactly(10)
    assert reply == QUERY_MODE_REPLY


async def test_sleeping_sds011_answers_only_the_wake_up_command(sds011):
    sds011.write(SET_SLEEP)
    assert (await sds011.read_exactly(10))[0] == SLEEP_REPLY
    sds011.write(QUERY_DATA)
    assert await sds011.read_for(0.4) == b""
    sds011.write(SET_WORK)
    assert (await sds011.read_exactly(10))[0] == WORK_REPLY


async def test_sds011_ignores_a_command_with_a_bad_checksum(sds011):
    sds011.write(QUERY_DATA[:17] + b"\x03\xAB")
    assert await sds011.read_for(0.4) == b""


async def test_sds011_frame_takes_ten_character_times_at_9600_baud(sds011):
    sds011.write(QUERY_DATA)
    reply, stamps = await sds011.read_exactly(10)
    assert reply == DATA_REPLY
    # 10 bytes × 10 bits at 9600 baud: the last byte lands 9 character times (9.4 ms) after the first.
    assert stamps[-1] - stamps[0] == pytest.approx(9 * 10 / 9600, abs=0.006)


async def test_active_sds011_reports_once_a_second(hilsim_run, tmp_path):
    sim = await hilsim_run(write_scenario(tmp_path, SDS011_QUERY.replace('mode = "query"', 'mode = "active"')))
    port = RawPort(sim.endpoints["pm"].path)
    try:
        data = await port.read_for(2.5)
    finally:
        port.close()
    assert data.count(DATA_REPLY) in (2, 3)


PMS_PASSIVE = """
[[devices]]
name = "pm"
kind = "pms5003"
[devices.options]
mode = "passive"
[devices.values]
pm1_0 = { value = 7 }
pm2_5 = { value = 12 }
pm10 = { value = 20 }
"""


async def test_pms5003_mode_command_reply_matches_the_datasheet(hilsim_run, tmp_path):
    sim = await hilsim_run(write_scenario(tmp_path, PMS_PASSIVE))
    port = RawPort(sim.endpoints["pm"].path)
    try:
        port.write(bytes.fromhex("42 4D E1 00 00 01 70"))  # change to passive mode (data manual appendix)
        reply, _ = await port.read_exactly(8)
    finally:
        port.close()
    assert reply == bytes.fromhex("42 4D 00 04 E1 00 01 74")


async def test_pms5003_passive_read_returns_a_32_byte_frame_with_its_check_code(hilsim_run, tmp_path):
    sim = await hilsim_run(write_scenario(tmp_path, PMS_PASSIVE))
    port = RawPort(sim.endpoints["pm"].path)
    try:
        port.write(bytes.fromhex("42 4D E2 00 00 01 71"))  # read in passive mode
        frame, _ = await port.read_exactly(32)
    finally:
        port.close()
    assert frame[:4] == bytes.fromhex("42 4D 00 1C")
    assert int.from_bytes(frame[30:32], "big") == sum(frame[:30])
    words = [int.from_bytes(frame[i : i + 2], "big") for i in range(4, 30, 2)]
    assert words[:6] == [7, 12, 20, 7, 12, 20]


def test_nmea_checksum_matches_a_real_receivers_capture():
    capture = dataset("gpsd_quectel-l76k-nmea.log")
    sentences = [line for line in capture.read_text().splitlines() if line.startswith("$")][:200]
    assert sentences
    for line in sentences:
        assert nmea_sentence(line[1 : line.rindex("*")]).decode().strip() == line


async def test_gps_sends_gga_and_rmc_each_second_with_valid_checksums(hilsim_run, tmp_path):
    sim = await hilsim_run(write_scenario(tmp_path, '[[devices]]\nname = "gps"\nkind = "nmea-gps"\n'))
    port = RawPort(sim.endpoints["gps"].path)
    try:
        data = await port.read_for(2.3)
    finally:
        port.close()
    lines = [line for line in data.decode("ascii").split("\r\n") if line.startswith("$")]
    kinds = [line[1:6] for line in lines]
    assert kinds.count("GPGGA") >= 2 and kinds.count("GPRMC") >= 2
    for line in lines:
        assert nmea_sentence(line[1 : line.rindex("*")]).decode().strip() == line
    gga = next(line for line in lines if line.startswith("$GPGGA")).split(",")
    assert gga[3] == "N" and gga[5] == "W" and gga[6] == "1"
    assert gga[2].startswith("4338") and gga[4].startswith("07923")  # 43.6452 N, 79.3957 W within metres


async def test_unplugged_device_hangs_up_the_gateway_end_and_comes_back_at_the_same_path(hilsim_run, tmp_path):
    sim = await hilsim_run(write_scenario(tmp_path, SDS011_QUERY))
    path = sim.endpoints["pm"].path
    port = RawPort(path)
    device = sim.device("pm")
    await device.disconnect()
    assert not os.path.exists(path)
    # What the gateway sees of a pulled adapter: poll says hang-up, a read gets end of file, a write EIO.
    events = select.poll()
    events.register(port.fd)
    assert events.poll(0)[0][1] & select.POLLHUP
    assert os.read(port.fd, 10) == b""
    with pytest.raises(OSError) as failure:
        os.write(port.fd, QUERY_DATA)
    assert failure.value.errno == errno.EIO
    port.close()
    await device.reconnect()
    port = RawPort(path)
    try:
        port.write(QUERY_DATA)
        assert (await port.read_exactly(10))[0] == DATA_REPLY
    finally:
        port.close()


async def test_disconnect_fault_unplugs_and_replugs_on_schedule(hilsim_run, tmp_path):
    text = SDS011_QUERY + '[[devices.faults]]\nkind = "disconnect"\nat = "1s"\nduration = "1s"\n'
    sim = await hilsim_run(write_scenario(tmp_path, text))
    path = sim.endpoints["pm"].path
    assert os.path.exists(path)
    await asyncio.sleep(1.3)
    assert not os.path.exists(path)
    await asyncio.sleep(1.0)
    assert os.path.exists(path)

"""Fault timelines are deterministic for a seed: a run repeated with one seed suffers exactly the same faults."""

from __future__ import annotations

import asyncio
import os
from itertools import pairwise

import pytest

from hilsim.faults import Fault
from hilsim.modbus_adapter import crc16
from hilsim.scenario import ScenarioError, load_scenario
from tests.hilsim.helpers import RawPort, write_scenario

FAULTY_SDS011 = """
[[devices]]
name = "pm"
kind = "sds011"
[devices.options]
mode = "query"
[devices.values]
pm2_5 = { value = 12.3 }
pm10 = { value = 20.1 }
[[devices.faults]]
kind = "bad_checksum"
probability = 0.3
[[devices.faults]]
kind = "line_noise"
probability = 0.3
burst = 6
[[devices.faults]]
kind = "partial_frame"
probability = 0.2
[[devices.faults]]
kind = "split_frame"
probability = 0.2
gap = "20ms"
[[devices.faults]]
kind = "drop_reply"
probability = 0.2
"""
QUERY = bytes.fromhex("AA B4 04 00 00 00 00 00 00 00 00 00 00 00 00 FF FF 02 AB")


async def _poll_twelve_times(hilsim_run, scenario, seed: int) -> tuple[list[bytes], list[tuple[str, int, str]]]:
    sim = await hilsim_run(scenario, seed=seed)
    port = RawPort(sim.endpoints["pm"].path)
    replies = []
    try:
        for _ in range(12):
            port.write(QUERY)
            replies.append(await port.read_for(0.1))
    finally:
        port.close()
    return replies, sim.fault_log()


async def test_a_fault_timeline_run_twice_with_one_seed_is_identical(hilsim_run, tmp_path):
    scenario = write_scenario(tmp_path, FAULTY_SDS011)
    first = await _poll_twelve_times(hilsim_run, scenario, seed=7)
    second = await _poll_twelve_times(hilsim_run, scenario, seed=7)
    assert first == second
    kinds = {kind for _, _, kind in first[1]}
    assert len(kinds) >= 3  # the run really exercised several faults


async def test_another_seed_gives_another_fault_timeline(hilsim_run, tmp_path):
    scenario = write_scenario(tmp_path, FAULTY_SDS011)
    _, log_a = await _poll_twelve_times(hilsim_run, scenario, seed=7)
    _, log_b = await _poll_twelve_times(hilsim_run, scenario, seed=8)
    assert log_a != log_b


def test_fault_window_repeats_every_period():
    fault = Fault(kind="drop_reply", at=10.0, duration=5.0, every=60.0)
    assert [fault.active(t) for t in (9.9, 10.0, 14.9, 15.0, 70.0, 74.9, 75.0)] == [
        False, True, True, False, True, True, False]


def test_unknown_fault_kind_is_rejected_naming_file_field_value_and_choices(tmp_path):
    path = write_scenario(tmp_path, '[[devices]]\nname = "pm"\nkind = "sds011"\n'
                                    '[[devices.faults]]\nkind = "gremlins"\n')
    with pytest.raises(ScenarioError) as error:
        load_scenario(path)
    message = str(error.value)
    assert str(path) in message and "devices[0].faults[0].kind" in message and "'gremlins'" in message
    assert "bad_checksum" in message


def test_fault_a_device_cannot_suffer_is_rejected(tmp_path):
    path = write_scenario(tmp_path, '[[buses]]\nname = "t"\ntype = "modbus-tcp"\n'
                                    '[[devices]]\nname = "m"\nkind = "eastron-sdm120"\nbus = "t"\nunit = 1\n'
                                    '[[devices.faults]]\nkind = "bad_checksum"\n')
    with pytest.raises(ScenarioError, match="this device supports drop_reply"):
        load_scenario(path)


RTU_FAULTS = """
[[buses]]
name = "line"
type = "modbus-rtu"
[[devices]]
name = "m"
kind = "eastron-sdm120"
bus = "line"
unit = 3
response_delay = "2ms"
[[devices.faults]]
kind = "{kind}"
{extra}
"""


async def _one_rtu_reply(hilsim_run, tmp_path, kind: str, extra: str = "") -> bytes:
    sim = await hilsim_run(write_scenario(tmp_path, RTU_FAULTS.format(kind=kind, extra=extra)))
    port = RawPort(sim.endpoints["m"].path)
    try:
        request = bytes([3, 4, 0, 0, 0, 2])
        port.write(request + crc16(request))
        return await port.read_for(0.5)
    finally:
        port.close()


async def test_rtu_bad_checksum_fault_sends_a_full_frame_with_a_wrong_crc(hilsim_run, tmp_path):
    reply = await _one_rtu_reply(hilsim_run, tmp_path, "bad_checksum")
    assert len(reply) == 9 and reply[:3] == bytes([3, 4, 4])
    assert crc16(reply[:-2]) != reply[-2:]


async def test_rtu_partial_frame_fault_sends_only_the_start_of_the_reply(hilsim_run, tmp_path):
    reply = await _one_rtu_reply(hilsim_run, tmp_path, "partial_frame")
    assert 1 <= len(reply) < 9 and reply[0] == 3


async def test_rtu_drop_reply_fault_keeps_the_line_silent(hilsim_run, tmp_path):
    reply = await _one_rtu_reply(hilsim_run, tmp_path, "drop_reply")
    assert reply == b""


async def test_rtu_split_frame_fault_pauses_inside_the_reply(hilsim_run, tmp_path):
    sim = await hilsim_run(write_scenario(tmp_path, RTU_FAULTS.format(kind="split_frame", extra='gap = "100ms"')))
    port = RawPort(sim.endpoints["m"].path)
    try:
        request = bytes([3, 4, 0, 0, 0, 2])
        port.write(request + crc16(request))
        reply, stamps = await port.read_exactly(9)
    finally:
        port.close()
    assert crc16(reply[:-2]) == reply[-2:]  # all the bytes arrive, intact
    gaps = [b - a for a, b in pairwise(stamps)]
    assert max(gaps) >= 0.09  # but with a silence mid-frame that a strict t3.5 receiver treats as a frame end


async def test_gps_no_fix_fault_reports_fix_quality_zero_and_void_status(hilsim_run, tmp_path):
    text = '[[devices]]\nname = "gps"\nkind = "nmea-gps"\n[[devices.faults]]\nkind = "no_fix"\n'
    sim = await hilsim_run(write_scenario(tmp_path, text))
    port = RawPort(sim.endpoints["gps"].path)
    try:
        data = await port.read_for(1.3)
    finally:
        port.close()
    lines = [line for line in data.decode("ascii").split("\r\n") if line.startswith("$")]
    assert lines
    for line in lines:
        fields = line.split(",")
        if fields[0] == "$GPGGA":
            assert fields[6] == "0" and fields[2] == ""
        else:
            assert fields[2] == "V"


async def test_stuck_value_fault_freezes_the_readings(hilsim_run, tmp_path):
    text = """
[[buses]]
name = "t"
type = "modbus-tcp"
[[devices]]
name = "m"
kind = "eastron-sdm120"
bus = "t"
unit = 1
[devices.values]
voltage = { model = "counter", start = 200.0, rate_per_hour = 36000.0 }
[[devices.faults]]
kind = "stuck_value"
at = "1s"
"""
    sim = await hilsim_run(write_scenario(tmp_path, text))
    device = sim.device("m")
    await asyncio.sleep(1.2)
    frozen = device.values["voltage"]
    await asyncio.sleep(1.0)
    device.advance()
    assert device.values["voltage"] == frozen


def test_an_option_of_the_wrong_type_is_rejected_with_what_is_accepted(tmp_path):
    path = write_scenario(tmp_path, '[[devices]]\nname = "pm"\nkind = "sds011"\n[devices.options]\nmode = "sometimes"\n')
    with pytest.raises(ScenarioError, match=r"devices\[0\]\.options\.mode = 'sometimes': expected one of 'active', 'query'"):
        load_scenario(path)


def test_a_quantity_the_device_does_not_have_is_rejected(tmp_path):
    path = write_scenario(tmp_path, '[[devices]]\nname = "pm"\nkind = "sds011"\n[devices.values]\npm4 = { value = 1 }\n')
    with pytest.raises(ScenarioError, match=r"devices\[0\]\.values\.pm4: sds011 has no such quantity; expected one of pm2_5, pm10"):
        load_scenario(path)


async def test_rtu_line_disconnect_fault_unplugs_the_adapter_and_plugs_it_back(hilsim_run, tmp_path):
    text = RTU_FAULTS.format(kind="drop_reply", extra='probability = 0.0').replace(
        'type = "modbus-rtu"\n', 'type = "modbus-rtu"\n[[buses.faults]]\nkind = "disconnect"\nat = "1s"\nduration = "1s"\n')
    sim = await hilsim_run(write_scenario(tmp_path, text))
    path = sim.endpoints["m"].path
    await asyncio.sleep(1.3)
    assert not os.path.exists(path)
    await asyncio.sleep(1.0)
    port = RawPort(path)
    try:
        request = bytes([3, 4, 0, 0, 0, 2])
        port.write(request + crc16(request))
        reply, _ = await port.read_exactly(9)
    finally:
        port.close()
    assert reply[:3] == bytes([3, 4, 4])

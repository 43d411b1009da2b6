"""Fault timelines are deterministic for a seed: a run repeated with one seed suffers exactly the same faults."""

from __future__ import annotations

import pytest

from hilsim.faults import Fault
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

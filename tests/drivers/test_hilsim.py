"""Every driver and profile against hil-sim, including its faults: garbage and bad checksums between frames,
split frames, a unit that dies and comes back, exception replies, a port that disappears and comes back."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from itertools import pairwise
from pathlib import Path

import pytest

import hilsim
from drivers.buses import ModbusBus, SerialBus, create_bus
from drivers.modbus.driver import ModbusDriver
from drivers.registry import load_driver
from drivers.sdk import DeviceContext, Driver
from edge.protocol.types import Reading
from tests.drivers.loopback import BusConfig

SERIAL_FAULTS = """
[scenario]
name = "serial-faults"
seed = 7
latitude = 43.6452
longitude = -79.3957

[[devices]]
name = "pm-1"
kind = "sds011"
[[devices.faults]]
kind = "bad_checksum"
at = "0s"
duration = "30s"
probability = 0.3
[[devices.faults]]
kind = "line_noise"
at = "0s"
duration = "30s"
probability = 0.5
[[devices.faults]]
kind = "disconnect"
at = "2500ms"
duration = "1s"

[[devices]]
name = "pm-2"
kind = "pms5003"
[[devices.faults]]
kind = "bad_checksum"
at = "0s"
duration = "30s"
probability = 0.3
[[devices.faults]]
kind = "split_frame"
at = "0s"
duration = "30s"
probability = 0.5

[[devices]]
name = "gps-1"
kind = "nmea-gps"
[devices.options]
latitude = 43.6452
longitude = -79.3957
[[devices.faults]]
kind = "bad_checksum"
at = "0s"
duration = "30s"
probability = 0.3

[[devices]]
name = "ped-1"
kind = "pedestrian-counter"
[devices.options]
regulars = 30
randomisers = 20
passers_per_minute = 60.0
[[devices.faults]]
kind = "line_noise"
at = "0s"
duration = "30s"
probability = 0.3
"""

MODBUS_FAULTS = """
[scenario]
name = "modbus-faults"
seed = 7

[[buses]]
name = "rs485-1"
type = "modbus-rtu"
baudrate = 38400

[[buses]]
name = "tcp-1"
type = "modbus-tcp"

[[devices]]
name = "meter-1"
kind = "eastron-sdm630"
bus = "rs485-1"
unit = 1
response_delay = "5ms"

[[devices]]
name = "meter-2"
kind = "eastron-sdm120"
bus = "rs485-1"
unit = 2
response_delay = "5ms"
[[devices.faults]]
kind = "drop_reply"
at = "1s"
duration = "1500ms"

[[devices]]
name = "weather-1"
kind = "hilsim-weather"
bus = "rs485-1"
unit = 10
response_delay = "5ms"
[[devices.faults]]
kind = "exception"
at = "1s"
duration = "1s"
code = 6

[[devices]]
name = "level-1"
kind = "hilsim-water-level"
bus = "tcp-1"
unit = 20
response_delay = "5ms"
[[devices.faults]]
kind = "drop_reply"
at = "1s"
duration = "1s"
"""

OPTIONS = {"pm-1": {"mode": "active"}, "pm-2": {"mode": "passive"}}


@contextlib.asynccontextmanager
async def gateway_on(sim, *, poll_interval: float, timeout: float = 0.3):
    """Bus owners and drivers for every simulated device, wired as the runtime wires them."""
    buses: dict[str, ModbusBus | SerialBus] = {}
    tasks: list[asyncio.Task[None]] = []
    drivers: dict[str, Driver] = {}
    readings: dict[str, list[tuple[float, Reading]]] = {}
    for name, e in sim.endpoints.items():
        key = e.bus or name
        if key not in buses:
            if e.transport == "modbus-tcp":
                config = BusConfig(name=key, type="modbus-tcp", tcp_port=e.port, timeout=timeout)
            else:
                config = BusConfig(name=key, type=e.transport, port=e.path, baudrate=e.baudrate, timeout=timeout,
                                   frame_gap=0.002)
            buses[key] = create_bus(config, reopen_max=0.2, unit_backoff_max=0.5)
            tasks.append(asyncio.create_task(buses[key].run()))
        options = {"profile": e.profile} if e.profile else OPTIONS.get(name, {})
        ctx = DeviceContext(device_id=name, options=options, bus=buses[key], address=e.unit,
                            poll_interval=poll_interval)
        drivers[name] = load_driver(e.driver)(ctx)
        readings[name] = []

        async def emit(reading, name=name):
            readings[name].append((time.monotonic(), reading))

        tasks.append(asyncio.create_task(drivers[name].run(emit)))
    try:
        yield buses, drivers, readings
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def scenario_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.toml"
    path.write_text(text)
    return path


async def test_serial_drivers_ride_through_garbage_bad_checksums_split_frames_and_an_unplug(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    async with hilsim.run_scenario(scenario_file(tmp_path, SERIAL_FAULTS), run_dir=tmp_path / "run") as sim:
        started = time.monotonic()
        async with gateway_on(sim, poll_interval=0.5) as (buses, drivers, readings):
            await asyncio.sleep(6.5)
            macs = sim.emitted_macs()
    assert buses["pm-1"].stats()["losses"] == 1 and buses["pm-1"].session == 2
    replugged_at = started + 2.5 + 1.0  # the scenario's disconnect window
    assert any(t > replugged_at + 0.5 for t, _ in readings["pm-1"]), "SDS011 read again after the replug"
    for name in ("pm-1", "pm-2", "gps-1"):
        stats = drivers[name].stats()
        assert stats["frames"] >= 3, (name, stats)
        assert stats["bad_checksum"] >= 1, (name, stats)
    assert drivers["pm-1"].stats()["garbage_bytes"] > 0
    assert drivers["ped-1"].stats()["bad_frames"] >= 1
    emitted = {r.value for _, r in readings["ped-1"] if r.channel == "ped-1/mac"}
    assert emitted and emitted <= macs
    # every value a driver emitted is one the device sent: no corrupt frame got through
    pm = [r.value for _, r in readings["pm-1"]]
    assert all(0 <= v < 1000 for v in pm)
    gps = {r.channel: r.value for _, r in readings["gps-1"]}
    assert abs(gps["gps-1/latitude"] - 43.6452) < 0.01
    logged = caplog.text + "".join(repr(r.args) for r in caplog.records)
    assert not [mac for mac in macs if mac in logged]
    assert "43.645" not in logged


async def test_modbus_profiles_ride_through_a_dead_unit_and_exception_replies(tmp_path):
    async with hilsim.run_scenario(scenario_file(tmp_path, MODBUS_FAULTS), run_dir=tmp_path / "run") as sim:
        async with gateway_on(sim, poll_interval=0.5) as (buses, drivers, readings):
            await asyncio.sleep(4.5)
    rtu = buses["rs485-1"].stats()
    assert rtu["units"][2]["timeouts"] >= 1 and rtu["units"][2]["state"] == "ok", rtu["units"][2]
    assert rtu["units"][10]["exceptions"] >= 1
    assert rtu["units"][1]["timeouts"] == rtu["units"][1]["exceptions"] == 0
    assert buses["tcp-1"].stats()["units"][20]["timeouts"] >= 1
    for name in ("meter-2", "weather-1", "level-1"):
        assert readings[name][-1][0] > readings[name][0][0] + 2.5, f"{name} is read again after its fault"
    # the healthy meter on the same line keeps its turn: between two of its requests the line carried at most one
    # request the dead unit left unanswered (one timeout per cycle, never a retry storm), read off the line itself
    # rather than timed, so a loaded machine cannot fail it
    line = list(sim.rtu_lines["rs485-1"].requests)
    meter_turns = [i for i, (unit, _) in enumerate(line) if unit == 1]
    assert len(meter_turns) >= 2, line
    lost = [sum(1 for unit, answered in line[a + 1:b] if unit == 2 and not answered) for a, b in pairwise(meter_turns)]
    assert any(lost), "the dead unit was asked while meter-1 was read"
    assert max(lost) <= 1, line
    values = {r.channel: r.value for _, r in readings["meter-1"]}
    assert 200 < values["meter-1/voltage_l1"] < 260
    assert 49 < values["meter-1/frequency"] < 51


@pytest.mark.parametrize("profile", ["eastron-sdm630", "eastron-sdm120", "hilsim-weather", "hilsim-water-level"])
async def test_each_profile_reads_the_simulated_device_with_the_minimum_requests(tmp_path, profile):
    from drivers.modbus.profile import load_profile
    from tests.drivers.test_planner import minimum_requests

    text = f"""
[scenario]
name = "one"
seed = 1
[[buses]]
name = "tcp-1"
type = "modbus-tcp"
[[devices]]
name = "dev-1"
kind = "{profile}"
bus = "tcp-1"
unit = 3
response_delay = "1ms"
"""
    async with hilsim.run_scenario(scenario_file(tmp_path, text), run_dir=tmp_path / "run") as sim:
        endpoint = sim.endpoints["dev-1"]
        assert endpoint.port is not None
        bus = create_bus(BusConfig(type="modbus-tcp", tcp_port=endpoint.port, timeout=1.0))
        task = asyncio.create_task(bus.run())
        try:
            await asyncio.wait_for(bus.wait_open(), 3)
            driver = load_driver("modbus")(DeviceContext(device_id="dev-1", options={"profile": profile}, bus=bus,
                                                         address=3))
            assert isinstance(driver, ModbusDriver)
            result = await driver.poll()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    p = load_profile(profile)
    assert not result.failures
    assert {r.channel for r in result.readings} == {c.id for c in driver.channels()}
    assert bus.stats()["requests"] == minimum_requests(p.spans(), max_gap=p.max_gap, limit=125,
                                                       holes=[h for hs in p.unreadable.values() for h in hs])


@pytest.mark.parametrize(("kind", "driver", "options", "channel"), [
    ("sds011", "sds011", {"mode": "query"}, "dev-1/pm2_5"),
    ("pms5003", "pms5003", {"mode": "active"}, "dev-1/pm2_5"),
])
async def test_the_other_reporting_mode_works_against_the_simulated_sensor(tmp_path, kind, driver, options, channel):
    from drivers.testing import bus_settings_for, running_device

    text = f'[scenario]\nname = "mode"\nseed = 3\n[[devices]]\nname = "pm"\nkind = "{kind}"\n'
    async with hilsim.run_scenario(scenario_file(tmp_path, text), run_dir=tmp_path / "run") as sim:
        async with running_device(driver, bus=bus_settings_for(sim.endpoints["pm"]), options=options,
                                  poll_interval=0.3) as device:
            readings = await device.wait_for_readings(4, timeout=5)
    assert channel in {r.channel for r in readings}
    assert all(isinstance(r.value, int | float) and 0 <= r.value < 1000 for r in readings if r.channel == channel)


LATE_REPLY = """
[scenario]
name = "late-reply"
seed = 5

[[buses]]
name = "rs485-1"
type = "modbus-rtu"
baudrate = 38400

[[devices]]
name = "meter-1"
kind = "eastron-sdm120"
bus = "rs485-1"
unit = 1
response_delay = "2ms"
[[devices.faults]]
kind = "late_reply"
at = "0s"
duration = "100ms"
every = "1500ms"
delay = "500ms"
"""


async def test_a_late_rtu_reply_is_never_taken_as_the_answer_to_the_next_request(tmp_path):
    # The meter answers some requests 0.5 s late, after the gateway's 0.2 s timeout.  RTU frames carry no
    # transaction id: the late reply lands while the next request waits, and the meter's answer to that
    # one while the request after it waits.  A reply of the wrong length belongs to another request.
    async with hilsim.run_scenario(scenario_file(tmp_path, LATE_REPLY), run_dir=tmp_path / "run") as sim:
        async with gateway_on(sim, poll_interval=0.05, timeout=0.2) as (buses, drivers, readings):
            await asyncio.sleep(3.2)
        late = [kind for _, _, kind in sim.fault_log() if kind == "late_reply"]
    stats = buses["rs485-1"].stats()["units"][1]
    assert late and stats["timeouts"] >= 1, (late, stats)
    values: dict[str, list[float]] = {}
    for _, r in readings["meter-1"]:
        values.setdefault(r.channel.split("/", 1)[1], []).append(r.value)
    assert len(values["frequency"]) >= 10
    assert all(49 < v < 51 for v in values["frequency"]), sorted(set(values["frequency"]))
    assert all(200 < v < 260 for v in values["voltage"]), sorted(set(values["voltage"]))
    energy = values["total_energy"]
    assert energy == sorted(energy) and energy[0] > 100, energy  # a meter's energy register only grows


NOISY_LINE = """
[scenario]
name = "noisy-line"
seed = 11

[[buses]]
name = "rs485-1"
type = "modbus-rtu"
baudrate = 38400

[[devices]]
name = "weather-1"
kind = "hilsim-weather"
bus = "rs485-1"
unit = 1
response_delay = "2ms"
[[devices.faults]]
kind = "line_noise"
at = "0s"
duration = "1h"
burst = 3
"""


async def test_noise_before_every_rtu_reply_costs_no_reply(tmp_path, caplog):
    # A few bytes of noise, a pause, then the reply.  The byte before the reply, followed by the reply's
    # unit id 1 (which reads as function code 1), looks like a frame start; its CRC fails.  That must cost
    # that one byte, not every byte received (pymodbus's own RTU framer drops the whole buffer).
    caplog.set_level(logging.INFO)
    async with hilsim.run_scenario(scenario_file(tmp_path, NOISY_LINE), run_dir=tmp_path / "run") as sim:
        async with gateway_on(sim, poll_interval=0.02, timeout=0.2) as (buses, drivers, readings):
            await asyncio.sleep(1.5)
        noisy = [kind for _, _, kind in sim.fault_log() if kind == "line_noise"]
    stats = buses["rs485-1"].stats()["units"][1]
    assert len(noisy) >= 20 and stats["replies"] >= len(noisy) - 1, (len(noisy), stats)
    assert stats["crc_errors"] == stats["timeouts"] == 0, stats
    assert not [r for r in caplog.records if r.name == "ocn.bus"]
    temperatures = [r.value for _, r in readings["weather-1"] if r.channel == "weather-1/temperature"]
    assert len(temperatures) >= stats["replies"] - 1  # the last reply may be cut off by the end of the test


SLOW_LINE = """
[scenario]
name = "slow-line"
seed = 2

[[buses]]
name = "rs485-1"
type = "modbus-rtu"
baudrate = 4800

[[devices]]
name = "meter-1"
kind = "eastron-sdm630"
bus = "rs485-1"
unit = 1
response_delay = "20ms"
"""


async def test_the_reply_timeout_does_not_count_the_replys_own_time_on_a_slow_line(tmp_path):
    # The SDM630's first request reads 80 registers: 173 bytes, 0.36 s on the wire at 4800 baud.  A meter that
    # answers within 20 ms is not silent because its long answer takes longer than the 0.25 s timeout to send.
    async with hilsim.run_scenario(scenario_file(tmp_path, SLOW_LINE), run_dir=tmp_path / "run") as sim:
        async with gateway_on(sim, poll_interval=0.5, timeout=0.25) as (buses, drivers, readings):
            async with asyncio.timeout(5):
                while len({r.channel for _, r in readings["meter-1"]}) < len(drivers["meter-1"].channels()):
                    await asyncio.sleep(0.05)
    stats = buses["rs485-1"].stats()["units"][1]
    assert stats["timeouts"] == 0, stats

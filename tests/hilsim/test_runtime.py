"""Running scenarios: the default scenario, the command line, gateway configs, replay, and loopback only."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import tomllib
from pathlib import Path

import pytest

from hilsim.scenario import ScenarioError, available_scenarios, load_scenario
from tests.helpers.datasets import dataset
from tests.hilsim.helpers import write_scenario


def listening_addresses_of_this_process() -> list[str]:
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    addresses = []
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                addresses.append(fields[1].split(":")[0])
    return addresses


async def test_nothing_listens_beyond_loopback(hilsim_run, tmp_path):
    await hilsim_run("default", hub="http://127.0.0.1:9/")
    addresses = listening_addresses_of_this_process()
    assert len(addresses) >= 2  # the Modbus TCP meter and the uplink proxy
    assert set(addresses) == {"0100007F"}  # 127.0.0.1, little-endian hex


async def test_default_scenario_has_every_device_type(hilsim_run):
    sim = await hilsim_run("default")
    kinds = {e.kind for e in sim.endpoints.values()}
    assert kinds == {"sds011", "pms5003", "nmea-gps", "pedestrian-counter", "eastron-sdm630", "eastron-sdm120",
                     "hilsim-weather", "hilsim-water-level"}
    assert {e.transport for e in sim.endpoints.values()} == {"serial", "modbus-rtu", "modbus-tcp"}


async def test_gateway_config_points_at_the_simulated_devices(hilsim_run, tmp_path):
    sim = await hilsim_run("default")
    config = tomllib.loads(sim.gateway_config_toml(state_dir=tmp_path / "state", hub="http://127.0.0.1:8443/"))
    buses = {bus["name"]: bus for bus in config["buses"]}
    devices = {device["name"]: device for device in config["devices"]}
    assert devices["pm-1"]["driver"] == "sds011"
    assert buses[devices["pm-1"]["bus"]]["port"] == sim.endpoints["pm-1"].path
    assert devices["meter-1"]["options"] == {"profile": "eastron-sdm630"} and devices["meter-1"]["address"] == 1
    assert buses["rs485-1"]["type"] == "modbus-rtu"
    assert buses["meters-tcp"]["tcp_port"] == sim.endpoints["meter-2"].port
    assert config["uplink"]["hub"] == "http://127.0.0.1:8443/"


async def test_gateway_config_is_accepted_by_the_gateways_config_loader(hilsim_run, tmp_path):
    config_module = pytest.importorskip("edge.config")
    sim = await hilsim_run("default")
    (tmp_path / "policy.toml").write_text("", encoding="utf-8")
    path = tmp_path / "gateway.toml"
    path.write_text(sim.gateway_config_toml(state_dir=tmp_path / "state"), encoding="utf-8")
    config = config_module.load_config(path)
    assert len(config.devices) == len(sim.endpoints)


async def test_sim_command_prints_one_json_line_when_ready_and_writes_a_config(tmp_path):
    config = tmp_path / "gw.toml"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge.cli", "sim", "default", "--json", "--duration", "30",
        "--write-config", str(config), "--run-dir", str(tmp_path / "run"),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=20)
        ready = json.loads(line)
        assert os.path.islink(ready["devices"]["pm-1"]["path"])
        port = ready["devices"]["meter-2"]["port"]
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        assert tomllib.loads(config.read_text())["gateway"]["id"] == "sim-gateway"
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), timeout=10) == 0


def test_unknown_scenario_name_lists_the_shipped_ones():
    with pytest.raises(ScenarioError, match="one of .*default"):
        load_scenario("no-such-scenario")
    assert "default" in available_scenarios()


def test_unknown_device_kind_names_file_field_value_and_choices(tmp_path):
    path = write_scenario(tmp_path, '[[devices]]\nname = "x"\nkind = "toaster"\n')
    with pytest.raises(ScenarioError) as error:
        load_scenario(path)
    assert all(part in str(error.value) for part in (str(path), "devices[0].kind", "'toaster'", "sds011"))


def test_modbus_device_on_an_undefined_bus_is_rejected(tmp_path):
    path = write_scenario(tmp_path, '[[devices]]\nname = "m"\nkind = "eastron-sdm630"\nbus = "nope"\nunit = 1\n')
    with pytest.raises(ScenarioError, match=r"devices\[0\]\.bus = 'nope'"):
        load_scenario(path)


async def test_replay_drives_a_meter_from_a_recorded_trace(hilsim_run, tmp_path):
    AMPDS2 = dataset("ampds2_Electricity_B1E-11.csv")
    text = f"""
[[buses]]
name = "t"
type = "modbus-tcp"
[[devices]]
name = "m"
kind = "eastron-sdm120"
bus = "t"
unit = 1
[devices.values]
voltage = {{ model = "replay", file = "{AMPDS2}", column = "V", time_column = "unix_ts" }}
frequency = {{ model = "replay", file = "{AMPDS2}", column = "f", time_column = "unix_ts" }}
"""
    sim = await hilsim_run(write_scenario(tmp_path, text))
    values = sim.device("m").values
    assert values["voltage"] == pytest.approx(118.9)  # the trace's first row
    assert values["frequency"] == pytest.approx(60.0)


def test_replay_of_a_missing_column_names_the_file_and_the_columns(tmp_path):
    from hilsim.models import build_model

    trace = tmp_path / "trace.csv"
    trace.write_text("t,a\n1,2\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"column 'b' is not a numeric column of the file; expected one of a"):
        build_model({"model": "replay", "file": str(trace), "column": "b", "time_column": "t"},
                    seed=1, name="x", where="devices[0].values.v", base_dir=tmp_path)


async def test_scenario_uplink_schedule_drives_the_proxy(hilsim_run, tmp_path):
    text = '[uplink]\nhub = "http://127.0.0.1:9/"\nschedule = [{ at = "0s", mode = "blackhole" }]\n'
    sim = await hilsim_run(write_scenario(tmp_path, text))
    await asyncio.sleep(0.1)
    assert sim.proxy is not None and sim.proxy.mode == "blackhole"
    assert tomllib.loads(sim.gateway_config_toml(state_dir=tmp_path))["uplink"]["hub"] == sim.proxy.url


def test_unknown_proxy_mode_in_a_scenario_is_rejected(tmp_path):
    path = write_scenario(tmp_path, '[uplink]\nhub = "http://127.0.0.1:9/"\nschedule = [{ mode = "flaky" }]\n')
    with pytest.raises(ScenarioError, match=r"uplink\.schedule\[0\]: uplink proxy mode = 'flaky': expected one of"):
        load_scenario(path)

"""The technician and integrator commands, run as a person runs them (the installed `ocn-edge` command)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.modbus.profile import load_profile
from drivers.registry import available
from edge.cli import main
from tests.drivers.loopback import NullModem, RegisterStore, SerialPeer, modbus_rtu_server, modbus_tcp_server, serve_profile

OCN_EDGE = str(Path(sys.executable).with_name("ocn-edge"))
MAC = "3c:22:fb:10:4e:a1"


async def ocn_edge(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(OCN_EDGE, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def test_drivers_lists_every_installed_driver_and_shipped_profile(capsys):
    assert main(["drivers"]) == 0
    out = capsys.readouterr().out
    for name in ("modbus", "sds011", "pms5003", "nmea-gps", "pedestrian-counter", "eastron-sdm630", "hilsim-weather"):
        assert name in out


def test_drivers_name_shows_a_drivers_options_with_choices(capsys):
    assert main(["drivers", "sds011"]) == 0
    assert "mode (str; one of query, active; default query)" in capsys.readouterr().out


def test_drivers_unknown_name_says_what_exists(capsys):
    assert main(["drivers", "sds01"]) == 2
    assert "no installed driver or shipped profile named 'sds01'" in capsys.readouterr().err


async def test_read_prints_each_channel_with_value_and_unit():
    store = RegisterStore()
    serve_profile(store, 4, load_profile("hilsim-weather"), {"temperature": 21.5, "humidity": 40.0, "pressure": 1001.3})
    server, port = await modbus_tcp_server(store)
    try:
        code, out, err = await ocn_edge("read", "--tcp", f"127.0.0.1:{port}", "--unit", "4", "--profile",
                                        "hilsim-weather")
    finally:
        await server.shutdown()
    assert code == 0, err
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert lines["device/temperature"] == "21.5 Cel"
    assert lines["device/pressure"] == "1001.3 hPa"
    assert lines["device/heater_on"] == "False"


async def test_read_diagnoses_a_silent_unit():
    store = RegisterStore()
    server, port = await modbus_tcp_server(store)
    try:
        code, out, err = await ocn_edge("read", "--tcp", f"127.0.0.1:{port}", "--unit", "9", "--profile",
                                        "eastron-sdm120", "--timeout", "0.2")
    finally:
        await server.shutdown()
    assert code == 1
    assert "problem: no reply from unit 9 (input 0..37): check the unit id (`ocn-edge scan`)" in err
    assert ">>>>>" not in out + err and "pymodbus" not in out + err  # only our own words reach the technician
    assert "backing off" not in err  # the gateway's own fault line is for the log, not for a one-off read


async def test_read_names_the_exception_code_and_its_meaning():
    store = RegisterStore()
    serve_profile(store, 1, load_profile("eastron-sdm120"), {"voltage": 230.0})
    store.readable[1] = {"input": range(0, 0x100)}
    server, port = await modbus_tcp_server(store)
    try:
        code, out, err = await ocn_edge("read", "--tcp", f"127.0.0.1:{port}", "--unit", "1", "--profile",
                                        "eastron-sdm120")
    finally:
        await server.shutdown()
    assert code == 1
    assert "device/voltage                 230.00 V" in out
    assert ("problem: unit 1 answered exception 2 (input 342..345): illegal data address: "
            "the device has no register at this address") in err


async def test_scan_reports_the_units_that_answer_on_an_rtu_line():
    store = RegisterStore()
    for unit in (1, 5):
        serve_profile(store, unit, load_profile("hilsim-water-level"), {"level": 1.5})
    store.readable[5] = {"holding": range(100, 200)}  # answers with an exception: still there
    modem = NullModem()
    server = await modbus_rtu_server(store, modem.a)
    try:
        code, out, err = await ocn_edge("scan", "--port", modem.b, "--units", "1-6", "--timeout", "0.1", "--json")
    finally:
        await server.shutdown()
        modem.close()
    assert code == 0, err
    found = json.loads(out)["found"]
    assert [f["unit"] for f in found] == [1, 5]
    assert found[0]["answer"] == "holding 0 = 1500"
    assert found[1]["answer"].startswith("exception 2: illegal data address")


async def test_scan_says_when_nobody_answers():
    store = RegisterStore()
    server, port = await modbus_tcp_server(store)
    try:
        code, out, err = await ocn_edge("scan", "--tcp", f"127.0.0.1:{port}", "--units", "1-3", "--timeout", "0.1")
    finally:
        await server.shutdown()
    assert code == 1
    assert "No unit answered" in out
    assert ">>>>>" not in out + err and "pymodbus" not in out + err


async def test_scan_through_a_tcp_gateway_does_not_count_its_no_such_unit_exceptions_as_units():
    # A Modbus TCP-to-RTU gateway answers for every unit id: exception 0B ("target device failed to
    # respond") or 0A for the ones behind it that are not there.  Only the units that answer are found.
    store = RegisterStore(gateway=True)
    serve_profile(store, 2, load_profile("hilsim-water-level"), {"level": 1.5})
    server, port = await modbus_tcp_server(store)
    try:
        code, out, err = await ocn_edge("scan", "--tcp", f"127.0.0.1:{port}", "--units", "1-4", "--timeout", "0.1",
                                        "--json")
    finally:
        await server.shutdown()
    assert code == 0, err
    assert [f["unit"] for f in json.loads(out)["found"]] == [2]


async def test_read_of_a_streaming_sensor_masks_personal_values(tmp_path):
    peer = SerialPeer(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        OCN_EDGE, "read", "--port", peer.path, "--baud", "115200", "--driver", "pedestrian-counter", "--wait", "5",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    done = asyncio.create_task(proc.communicate())
    try:
        while not done.done():  # the counter keeps hearing the phone until the command has read it
            peer.write(f"SEEN 1764205200123 wifi {MAC} -67\r\n".encode())
            await asyncio.wait([done], timeout=0.2)
        out, err = await done
    finally:
        peer.unplug()
    text = out.decode() + err.decode()
    assert "device/mac    <personal value, not shown>" in text
    assert "device/rssi   -67 dBm" in text
    assert MAC not in text


async def test_read_says_when_the_port_is_not_there(tmp_path):
    code, _, err = await ocn_edge("read", "--port", str(tmp_path / "ttyNONE"), "--driver", "sds011", "--wait", "1")
    assert code == 1
    assert "cannot open serial bus 'cli'" in err


def test_read_without_a_bus_says_how_to_name_one(capsys):
    assert main(["read", "--profile", "eastron-sdm630", "--unit", "1"]) == 2
    assert "say which bus: --port DEVICE, --tcp HOST[:PORT] or --rtu-over-tcp HOST[:PORT]" in capsys.readouterr().err


def test_driver_new_refuses_a_bad_name(tmp_path, capsys):
    assert main(["driver", "new", "Acme_Meter", "--dir", str(tmp_path)]) == 2
    assert "expected lowercase letters and digits" in capsys.readouterr().err


@pytest.mark.timeout(120)
def test_a_driver_scaffolded_by_driver_new_installs_as_a_separate_package_and_is_discovered_and_runs(tmp_path):
    """pip installs the scaffold into its own target directory (the shared venv stays untouched); with that
    directory on PYTHONPATH the unchanged core discovers the driver by entry point and the scaffold's own
    test reads hil-sim's weather station with it."""
    assert main(["driver", "new", "acme-weather", "--dir", str(tmp_path)]) == 0
    root = tmp_path / "ocn-edge-driver-acme-weather"
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps",
                    "--no-index", "--target", str(target), str(root)], check=True, timeout=90,
                   cwd=tmp_path)
    env = {**os.environ, "PYTHONPATH": str(target)}
    listed = subprocess.run([OCN_EDGE, "drivers"], env=env, capture_output=True, text=True, timeout=30)
    assert "acme-weather" in listed.stdout
    assert "acme-weather" not in available(), "the shared environment is untouched"
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=root,
                           env=env, capture_output=True, text=True, timeout=90)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout


def test_ports_shows_the_stable_by_id_name_of_each_port(tmp_path, monkeypatch, capsys):
    from serial.tools import list_ports

    import edge.commands.drivers

    ports = list_ports.comports()
    if not ports:
        pytest.skip("this machine has no serial port to list")
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    (by_id / "usb-FTDI_FT232R_USB_UART_A10KXYZ-if00-port0").symlink_to(ports[0].device)
    monkeypatch.setattr(edge.commands.drivers, "BY_ID", by_id)
    assert main(["ports", "--json"]) == 0
    listed = {p["device"]: p for p in json.loads(capsys.readouterr().out)["ports"]}
    assert listed[ports[0].device]["by_id"] == str(by_id / "usb-FTDI_FT232R_USB_UART_A10KXYZ-if00-port0")


async def test_read_takes_driver_bus_and_options_from_the_gateway_config(tmp_path):
    import hilsim

    scenario = tmp_path / "one.toml"
    scenario.write_text('[scenario]\nname = "one"\nseed = 1\n[[buses]]\nname = "rs485-1"\ntype = "modbus-rtu"\n'
                        '[[devices]]\nname = "level-1"\nkind = "hilsim-water-level"\nbus = "rs485-1"\nunit = 20\n')
    (tmp_path / "policy.toml").write_text((Path(__file__).parents[2] / "policies" / "demo.toml").read_text())
    async with hilsim.run_scenario(scenario, run_dir=tmp_path / "run") as sim:
        (tmp_path / "gateway.toml").write_text(sim.gateway_config_toml(state_dir=tmp_path / "state"))
        code, out, err = await ocn_edge("read", "--config", str(tmp_path / "gateway.toml"), "level-1")
    assert code == 0, err
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert lines["level-1/supply_voltage"].endswith(" V")
    assert set(lines) == {f"level-1/{c}" for c in ("level", "water_temperature", "sensor_fault", "out_of_range",
                                                   "measurements", "supply_voltage")}

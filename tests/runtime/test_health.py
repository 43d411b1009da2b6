"""Device health that tells the truth, and logs an operator can use, from a real `ocn-edge run` on hil-sim.

A Modbus unit configured with the wrong unit id and a serial sensor whose adapter is pulled out:
both show failing in /status with a diagnosis and a next step, the wrong unit id costs exactly one
error line naming the device and the unit however many polls fail, and no pymodbus text appears.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import urllib.request
from pathlib import Path
from typing import Any

from edge.spool import SpoolStats
from edge.statusreport import ReportFacts, status_report
from hilsim.scenario import Simulation
from hilsim.serial_devices import SerialDevice

SCENARIO = """
[scenario]
name = "health-test"
seed = 3

[[buses]]
name = "rs485-1"
type = "modbus-rtu"

[[devices]]
name = "weather-1"
kind = "hilsim-weather"
bus = "rs485-1"
unit = 1
poll_interval = "300ms"

[[devices]]
name = "pm-1"
kind = "sds011"
poll_interval = "1s"
[devices.options]
mode = "active"
"""

POLICY = """
[policy]
name = "keep everything measured here"
version = "1"
organisation = "Test city"
contact = "it@test.example"
purpose = "testing device health"
retention = "none"

[channels."weather-1/*"]
rule = "keep"
purpose = "weather"

[channels."pm-1/*"]
rule = "keep"
purpose = "air quality"
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.load(reply)


async def _status(port: int) -> dict[str, Any]:
    status: dict[str, Any] = await asyncio.to_thread(_get_json, f"http://127.0.0.1:{port}/status")
    return status


async def _wait_health(port: int, device: str, word: str, *, timeout: float = 10.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(OSError):
                entry: dict[str, Any] = (await _status(port))["devices"][device]
                if entry["health"] == word:
                    return entry
            await asyncio.sleep(0.2)


async def _wait_timeouts(port: int, bus: str, unit: str, count: int, *, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            with contextlib.suppress(OSError, KeyError):
                if (await _status(port))["buses"][bus]["units"][unit]["timeouts"] >= count:
                    return
            await asyncio.sleep(0.2)


async def test_a_wrong_unit_id_and_an_unplugged_sensor_fail_with_one_error_line_no_pymodbus_text_and_ocn_bus_alone_at_debug(
        hilsim_run, tmp_path: Path) -> None:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO)
    sim: Simulation = await hilsim_run(scenario)
    (tmp_path / "policy.toml").write_text(POLICY)
    api = _free_port()
    text = sim.gateway_config_toml(state_dir=tmp_path / "state", hub="", policy="policy.toml",
                                   local_api_listen=f"127.0.0.1:{api}")
    assert "address = 1\n" in text
    text = text.replace("address = 1\n", "address = 11\n")  # the technician typed the wrong unit id
    # ... and, hunting it, turned the lines' log to debug, and no other: each failure is logged, no frame's hex.
    text += '\n[gateway.log_levels]\nocn.bus = "debug"\n'
    config = tmp_path / "gateway.toml"
    config.write_text(text)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge.cli", "run", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        weather = await _wait_health(api, "weather-1", "failing", timeout=20)
        pm = await _wait_health(api, "pm-1", "ok")
        # The wrong unit id fails again and again, its backoff growing (0.5, 1, 2 s after each timeout):
        # wait for its third timeout rather than for a time that a loaded machine may not keep.
        await _wait_timeouts(api, "rs485-1", "11", 3)
        sensor = sim.device("pm-1")
        assert isinstance(sensor, SerialDevice)
        await sensor.disconnect()  # the USB adapter is pulled out
        unplugged = await _wait_health(api, "pm-1", "failing")
        status = await _status(api)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    lines = (out + err).decode().splitlines()

    assert "unit 11 on rs485-1 (weather-1) has never answered" in weather["diagnosis"], weather
    assert "check the unit id with ocn-edge scan" in weather["next_step"], weather
    assert weather["failing"] is True and weather["readings"] == 0
    assert pm["diagnosis"] == "" and pm["next_step"] == ""
    assert "(bus serial-pm-1, pm-1) is not there" in unplugged["diagnosis"], unplugged
    assert "ocn-edge ports" in unplugged["next_step"], unplugged
    assert status["health_counts"] == {"ok": 0, "degraded": 0, "failing": 2}, status["health_counts"]
    assert status["buses"]["rs485-1"]["units"]["11"]["timeouts"] >= 3  # it failed again and again, logged once

    errors = [line for line in lines if "level=error" in line]
    about_unit = [line for line in errors if "unit 11" in line]
    assert len(about_unit) == 1, "\n".join(lines)
    assert "weather-1" in about_unit[0] and "has never answered" in about_unit[0]
    assert not [line for line in lines if "pymodbus" in line or ">>>>>" in line], "\n".join(lines)
    # At debug for ocn.bus only: the failures said once already are there, one line each, and nothing else at debug.
    again = [line for line in lines if "level=debug" in line and "unit 11 on rs485-1 (weather-1) failed again (no reply within" in line]
    assert len(again) >= 2, "\n".join(lines)
    assert all("logger=ocn.bus " in line for line in lines if "level=debug" in line), "\n".join(lines)


def test_the_status_report_carries_each_devices_health_only_when_a_gateway_knows_its_devices() -> None:
    spool = SpoolStats(batches=0, bytes=0, readings=0, oldest_age_s=None, max_bytes=0, when_full="drop_oldest",
                       batches_dropped=0, readings_dropped=0, batches_quarantined=0, readings_quarantined=0,
                       quarantine_batches=0, unclean_stops=0)
    health = {"weather-1": {"health": "failing", "diagnosis": "unit 11 on rs485-1 (weather-1) has never answered",
                            "next_step": "check the unit id with ocn-edge scan, baud rate and parity, A/B wiring"}}
    report = status_report(spool, device_id="pole-7", ts_ms=1, boot_epoch=1, facts=ReportFacts(device_health=health))
    assert report["device_health"] == health
    assert "device_health" not in status_report(spool, device_id="pole-7", ts_ms=1, boot_epoch=1, facts=ReportFacts())



EVENT_SCENARIO = """
[scenario]
name = "few-passers"
seed = 5

[[devices]]
name = "ped-1"
kind = "pedestrian-counter"
poll_interval = "500ms"
[devices.options]
regulars = 0
randomisers = 0
passers_per_minute = 0.5
"""

EVENT_POLICY = """
[policy]
name = "signal strength only"
version = "1"
organisation = "Test city"
contact = "it@test.example"
purpose = "testing device health"
retention = "none"

[channels."ped-1/rssi"]
rule = "keep"
purpose = "signal strength"
"""


async def test_a_counter_that_speaks_only_when_someone_passes_is_not_failing_between_passers(hilsim_run, tmp_path: Path) -> None:
    """Its heartbeats say it is there: silence is judged by the driver's frames, not by three poll intervals without a reading."""
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(EVENT_SCENARIO)
    sim: Simulation = await hilsim_run(scenario)
    (tmp_path / "policy.toml").write_text(EVENT_POLICY)
    api = _free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(sim.gateway_config_toml(state_dir=tmp_path / "state", hub="", policy="policy.toml",
                                              local_api_listen=f"127.0.0.1:{api}"))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge.cli", "run", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    seen: list[dict[str, Any]] = []
    try:
        await _wait_health(api, "ped-1", "ok", timeout=20)
        for _ in range(16):  # 4 s: eight poll intervals, far more than three, with a passer every two minutes on average
            seen.append((await _status(api))["devices"]["ped-1"])
            await asyncio.sleep(0.25)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert {entry["health"] for entry in seen} == {"ok"}, seen
    assert not [line for line in (out + err).decode().splitlines() if "ped-1" in line and "level=error" in line]

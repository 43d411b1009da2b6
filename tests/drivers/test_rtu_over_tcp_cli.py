"""`ocn-edge scan` and `read` reach a unit behind an RS-485-to-Ethernet converter with --rtu-over-tcp (hil-sim's converter)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pytest

import hilsim
from edge.cli import main
from edge.config import load_config
from edge.demo import DEMO_POLICY
from edge.portlock import RUN_DIR_ENV, remove_record, write_record
from edge.runtime import Gateway
from tests.drivers.test_rtu_over_tcp import CONVERTER, scenario


async def test_scan_and_read_take_rtu_over_tcp(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with hilsim.run_scenario(scenario(tmp_path, CONVERTER), run_dir=tmp_path / "run") as sim:
        endpoint = sim.endpoints["weather-1"]
        where = f"{endpoint.host}:{endpoint.port}"
        # The commands run their own event loop: in a thread, so the simulator's keeps answering.
        scanned = await asyncio.to_thread(main, ["scan", "--rtu-over-tcp", where, "--units", "3-5", "--timeout", "0.2",
                                                 "--json"])
        found = json.loads(capsys.readouterr().out)["found"]
        read = await asyncio.to_thread(main, ["read", "--rtu-over-tcp", where, "--unit", "4", "--profile",
                                              "hilsim-weather"])
        out = capsys.readouterr().out

    assert (scanned, [f["unit"] for f in found]) == (0, [4])
    assert read == 0
    assert dict(line.split(None, 1) for line in out.splitlines())["device/temperature"] == "12.5 Cel"


def test_rtu_over_tcp_is_for_modbus_devices(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["read", "--rtu-over-tcp", "127.0.0.1:4196", "--driver", "sds011"]) == 2
    assert "--rtu-over-tcp reaches a Modbus device; driver 'sds011' reads a serial device: give --port" \
        in capsys.readouterr().err


async def test_behind_a_converter_the_running_gateway_owns_scan_and_read_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # Two masters through one converter would share its RS-485 line: while the gateway runs, they go through it.
    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path))
    monkeypatch.delenv("INVOCATION_ID", raising=False)
    async with hilsim.run_scenario(scenario(tmp_path, CONVERTER), run_dir=tmp_path / "run") as sim:
        endpoint = sim.endpoints["weather-1"]
        where = f"{endpoint.host}:{endpoint.port}"
        config = tmp_path / "gateway.toml"
        config.write_text(sim.gateway_config_toml(state_dir=tmp_path / "state", hub="", policy=str(DEMO_POLICY),
                                                  local_api_listen="127.0.0.1:0"), encoding="utf-8")
        gateway = Gateway(load_config(config))
        await gateway.start()
        record = write_record(gateway.config, local_page=gateway.local_page)
        try:
            scanned = await asyncio.to_thread(main, ["scan", "--rtu-over-tcp", where, "--units", "3-5", "--timeout",
                                                     "0.2", "--json"])
            scan = capsys.readouterr()
            read = await asyncio.to_thread(main, ["read", "--config", str(config), "weather-1"])
            out = capsys.readouterr()
        finally:
            remove_record(record)
            await gateway.stop()

    assert scanned == 0 and scan.err == f"through the running gateway (pid {os.getpid()})\n"
    assert [(f["unit"], f["devices"]) for f in json.loads(scan.out)["found"]] == [(4, ["weather-1"])]
    assert read == 0 and out.err == f"through the running gateway (pid {os.getpid()})\n"
    assert dict(line.split(None, 1) for line in out.out.splitlines())["weather-1/temperature"] == "12.5 Cel"

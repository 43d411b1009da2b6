"""`ocn-edge scan` and `read` reach a unit behind an RS-485-to-Ethernet converter with --rtu-over-tcp (hil-sim's converter)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

import hilsim
from edge.cli import main
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

"""`ocn-edge read` and `scan` go through the running gateway when it holds the port: a real `ocn-edge run` process
holds hil-sim's RS-485 pty, and the commands find it by its port record and ask its local API."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import hilsim
from edge.cli import main
from edge.config import load_config
from edge.demo import DEMO_POLICY
from edge.portlock import RUN_DIR_ENV, remove_record, write_record
from tests.cli.test_port_holder import write_config

OCN_EDGE = [sys.executable, "-m", "edge.cli"]

SCENARIO = """
[scenario]
name = "through"
seed = 4
[[buses]]
name = "rs485-1"
type = "modbus-rtu"
baudrate = 9600
[[devices]]
name = "weather-1"
kind = "hilsim-weather"
bus = "rs485-1"
unit = 10
response_delay = "5ms"
poll_interval = "1s"
[devices.values]
temperature = { value = 12.5 }
[[devices]]
name = "level-1"
kind = "hilsim-water-level"
bus = "rs485-1"
unit = 20
response_delay = "5ms"
poll_interval = "1s"
"""


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "run"
    directory.mkdir()
    monkeypatch.setenv(RUN_DIR_ENV, str(directory))
    monkeypatch.delenv("INVOCATION_ID", raising=False)  # as if run by hand, even when the tests run under systemd
    return directory


@dataclass
class Running:
    pid: int
    config: Path
    port: str


@pytest.fixture
async def gateway(tmp_path: Path, run_dir: Path) -> AsyncIterator[Running]:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO, encoding="utf-8")
    async with hilsim.run_scenario(scenario, run_dir=tmp_path / "sim") as sim:
        config = tmp_path / "gateway.toml"
        config.write_text(sim.gateway_config_toml(state_dir=tmp_path / "state", hub="", gateway_id="pole-7",
                                                  policy=str(DEMO_POLICY), local_api_listen="127.0.0.1:0"), encoding="utf-8")
        proc = await asyncio.create_subprocess_exec(*OCN_EDGE, "run", str(config), stdout=subprocess.DEVNULL,
                                                    stderr=subprocess.DEVNULL, env=os.environ.copy())
        try:
            record = run_dir / f"gateway-{proc.pid}.json"
            deadline = time.monotonic() + 60  # a bound for a loaded machine, not a timing assertion
            while not record.exists() and proc.returncode is None and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert record.exists(), f"ocn-edge run wrote no port record (exit {proc.returncode})"
            port = sim.endpoints["weather-1"].path
            assert port is not None and json.loads(record.read_text())["buses"] == {"rs485-1": port}
            yield Running(proc.pid, config, port)
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 60)


async def test_read_and_scan_go_through_the_running_gateway_and_direct_names_it(gateway: Running,
                                                                              capsys: pytest.CaptureFixture[str]) -> None:
    # The commands run their own event loop: in a thread, so the simulator's keeps answering the gateway.
    code = await asyncio.to_thread(main, ["read", "--config", str(gateway.config), "weather-1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err == f"through the running gateway (pid {gateway.pid})\n"
    lines = dict(line.split(None, 1) for line in out.splitlines())
    assert lines["weather-1/temperature"] == "12.5 Cel"
    assert "withheld" not in out  # the demo policy releases every weather channel

    # Other baud rates cannot be tried while the gateway holds the line at its own: said, not silently skipped.
    code = await asyncio.to_thread(main, ["scan", "--port", gateway.port, "--units", "9-21", "--timeout", "0.1",
                                          "--baud", "19200"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert err == f"through the running gateway (pid {gateway.pid})\n"
    assert f"Scanning {gateway.port} at 9600 8N1 (bus rs485-1), units 9..21 (13 ids, 0.1 s each):" in out
    assert f"note: the running gateway holds {gateway.port} at 9600 baud, so only that was scanned" in out
    assert [line.split(" answers")[0].split() for line in out.splitlines() if " answers " in line] == [
        ["unit", "10", "(weather-1)"], ["unit", "20", "(level-1)"]]

    # --direct opens the port itself, as before: the gateway holds it, and is named.
    assert main(["read", "--config", str(gateway.config), "weather-1", "--direct"]) == 1
    err = capsys.readouterr().err
    assert f"held by the running gateway (pid {gateway.pid})" in err and "through the running gateway" not in err


def test_without_a_local_api_the_message_says_how_to_turn_it_on(tmp_path: Path, run_dir: Path, pty_port: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, pty_port)
    record = write_record(load_config(config), local_page=None)
    try:
        codes = (main(["read", "--config", str(config), "meter-1"]), main(["scan", "--port", pty_port, "--units", "1"]))
    finally:
        remove_record(record)

    assert codes == (1, 1)
    read, scan = capsys.readouterr().err.splitlines()
    for line in (read, scan):
        assert f"held by the running gateway (pid {os.getpid()})" in line
        assert "turn its local API on ([local_api] enabled = true in its gateway.toml" in line

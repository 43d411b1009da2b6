"""A port the running gateway holds is named as held, with the way through it, never as "not there".

Real pseudo-terminals stand in for RS-485 adapters; `ocn-edge read` and `ocn-edge run` run as
real processes, so the holder is another process, as on a pole.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial
from serial.tools import list_ports
from serial.tools.list_ports_common import ListPortInfo

from drivers.buses import create_bus
from drivers.testing import BusSettings
from edge.cli import main
from edge.config import load_config
from edge.portlock import RUN_DIR_ENV, find_holder, held_message, probe_locked, remove_record, write_record
from edge.starter import DEMO_POLICY

OCN_EDGE = [sys.executable, "-m", "edge.cli"]


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "run"
    directory.mkdir()
    monkeypatch.setenv(RUN_DIR_ENV, str(directory))
    monkeypatch.delenv("INVOCATION_ID", raising=False)  # as if run by hand, even when the tests run under systemd
    return directory


def write_config(tmp_path: Path, port: str) -> Path:
    (tmp_path / "policy.toml").write_text(DEMO_POLICY.read_text(encoding="utf-8"), encoding="utf-8")
    config = tmp_path / "gateway.toml"
    config.write_text(f"""\
[gateway]
id = "pole-0042"
state_dir = "{tmp_path / 'state'}"

[[buses]]
name = "rs485-1"
type = "modbus-rtu"
port = "{port}"

[[devices]]
name = "meter-1"
driver = "modbus"
bus = "rs485-1"
address = 1
[devices.options]
profile = "eastron-sdm120"

[privacy]
policy = "policy.toml"

[uplink]
hub = ""

[local_api]
enabled = true
listen = "127.0.0.1:0"
""", encoding="utf-8")
    return config


def ocn_edge(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*OCN_EDGE, *args], capture_output=True, text=True, timeout=60, env=os.environ.copy())


def test_read_names_the_gateway_whose_record_holds_the_port(tmp_path: Path, run_dir: Path, pty_port: str) -> None:
    config = write_config(tmp_path, pty_port)
    record = write_record(load_config(config), local_page="http://127.0.0.1:8080/")
    with serial.Serial(pty_port, exclusive=True):
        result = ocn_edge("read", "--config", str(config), "meter-1", "--direct")
    remove_record(record)

    assert result.returncode == 1
    assert f"cannot open {pty_port}: held by the running gateway (pid {os.getpid()})" in result.stderr
    assert "read and scan go through it (`ocn-edge read --config`, `ocn-edge scan`, or its local page " \
           "http://127.0.0.1:8080/), or stop it" in result.stderr
    assert "not there" not in result.stderr


def test_scan_names_the_gateway_whose_record_holds_the_port(tmp_path: Path, run_dir: Path, pty_port: str) -> None:
    record = write_record(load_config(write_config(tmp_path, pty_port)))
    result = ocn_edge("scan", "--port", pty_port, "--units", "1")
    remove_record(record)

    assert result.returncode == 1
    assert f"held by the running gateway (pid {os.getpid()})" in result.stderr


def test_read_while_ocn_edge_run_holds_the_port_names_the_holder(tmp_path: Path, run_dir: Path,
                                                                 pty_port: str) -> None:
    config = write_config(tmp_path, pty_port)
    gateway = subprocess.Popen([*OCN_EDGE, "run", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=os.environ.copy())
    try:
        record = run_dir / f"gateway-{gateway.pid}.json"
        deadline = time.monotonic() + 60  # a bound for a loaded machine, not a timing assertion
        while not record.exists() and gateway.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert record.exists(), f"ocn-edge run wrote no port record (exit {gateway.poll()})"
        assert oct(record.stat().st_mode & 0o777) == "0o644"

        result = ocn_edge("read", "--config", str(config), "meter-1", "--direct")
        assert result.returncode == 1
        assert f"held by the running gateway (pid {gateway.pid})" in result.stderr

        # Without --direct the read goes through the gateway, whose bus owner asks the (silent) unit.
        result = ocn_edge("read", "--config", str(config), "meter-1")
        assert result.returncode == 1
        assert result.stderr.startswith(f"through the running gateway (pid {gateway.pid})\nproblem: no reply from unit 1")
        assert "not there" not in result.stderr
    finally:
        gateway.send_signal(signal.SIGTERM)
        output, _ = gateway.communicate(timeout=60)
    assert not record.exists(), f"the record outlived the gateway: {output}"
    assert not (tmp_path / "state" / "ports.json").exists()


def test_a_port_locked_by_another_process_is_called_busy_not_missing(tmp_path: Path, run_dir: Path,
                                                                      pty_port: str) -> None:
    with serial.Serial(pty_port, exclusive=True):
        result = ocn_edge("read", "--port", pty_port, "--unit", "1", "--profile", "eastron-sdm120")

    assert result.returncode == 1
    assert f"another process holds it (not a gateway that left a record); `fuser -v {pty_port}` names it" \
        in result.stderr


def test_a_record_whose_process_is_gone_is_stale(tmp_path: Path, run_dir: Path, pty_port: str) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    (run_dir / "gateway-1.json").write_text(
        f'{{"pid": {gone.stdout.strip()}, "unit": "ocn-edge.service", "ports": ["{pty_port}"], "started": "",'
        ' "state_dir": "/var/lib/ocn-edge"}', encoding="utf-8")

    assert find_holder(pty_port) is None


def test_the_holder_is_found_by_the_resolved_path_of_a_stable_name(tmp_path: Path, run_dir: Path,
                                                                   pty_port: str) -> None:
    stable = tmp_path / "usb-FTDI_FT232R-if00-port0"
    stable.symlink_to(pty_port)
    record = write_record(load_config(write_config(tmp_path, str(stable))))
    try:
        holder = find_holder(pty_port)
    finally:
        remove_record(record)

    assert holder is not None and holder.pid == os.getpid()


def test_under_systemd_the_message_names_the_unit_and_how_to_stop_it(tmp_path: Path, run_dir: Path,
                                                                     pty_port: str) -> None:
    (run_dir / f"gateway-{os.getpid()}.json").write_text(
        f'{{"pid": {os.getpid()}, "unit": "ocn-edge.service", "ports": ["{pty_port}"], "started": "",'
        ' "state_dir": "/var/lib/ocn-edge", "local_page": "http://127.0.0.1:8080/"}', encoding="utf-8")
    holder = find_holder(pty_port)

    assert holder is not None
    assert held_message(holder) == (
        f"held by the running gateway (ocn-edge.service, pid {os.getpid()}): read and scan go through it "
        "(`ocn-edge read --config`, `ocn-edge scan`, or its local page http://127.0.0.1:8080/), "
        "or stop the service (sudo systemctl stop ocn-edge.service)")


def test_ports_marks_the_port_the_gateway_holds(tmp_path: Path, run_dir: Path, pty_port: str,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    # A pty is no serial adapter, so the kernel's list of ports is told about it.
    monkeypatch.setattr(list_ports, "comports", lambda: [ListPortInfo(pty_port, skip_link_detection=True)])
    record = write_record(load_config(write_config(tmp_path, pty_port)))
    try:
        assert main(["ports", "--json"]) == 0
    finally:
        remove_record(record)

    [port] = json.loads(capsys.readouterr().out)["ports"]
    assert port["held_by"] == {"pid": os.getpid(), "unit": None, "local_page": None}
    assert port["held"] == f"held by the running gateway (pid {os.getpid()}); to open the port yourself, stop it"


def test_the_record_is_public_in_the_run_directory_and_private_in_the_state_directory(tmp_path: Path, run_dir: Path,
                                                                                      pty_port: str) -> None:
    config = load_config(write_config(tmp_path, pty_port))
    (tmp_path / "state").mkdir()
    shared, private = write_record(config)
    try:
        assert (shared.parent, private.parent) == (run_dir, tmp_path / "state")
        assert (shared.stat().st_mode & 0o777, private.stat().st_mode & 0o777) == (0o644, 0o600)
    finally:
        remove_record([shared, private])


@pytest.mark.parametrize("bus_type", ["serial", "modbus-rtu"])
async def test_the_bus_owners_hold_their_port_exclusively(bus_type: str, pty_port: str) -> None:
    bus = create_bus(BusSettings(name="line", type=bus_type, port=pty_port))
    owner = asyncio.create_task(bus.run())
    try:
        await asyncio.wait_for(bus.wait_open(), 30)
        assert probe_locked(pty_port), f"the {bus_type} bus owner left {pty_port} open to others"
    finally:
        owner.cancel()
        await asyncio.gather(owner, return_exceptions=True)
        await bus.aclose()
    assert not probe_locked(pty_port)

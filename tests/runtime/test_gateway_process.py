"""`ocn-edge run` as systemd runs it: readiness, watchdog, and a SIGTERM that flushes memory to the spool."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import sys
from pathlib import Path

from edge.protocol import load_public_key, open_batch

SCENARIO = """
[scenario]
name = "runtime-test"
seed = 7
latitude = 43.6452
longitude = -79.3957

[[buses]]
name = "meters"
type = "modbus-tcp"

[[devices]]
name = "pm-1"
kind = "sds011"
poll_interval = "1s"
[devices.options]
mode = "active"

[[devices]]
name = "meter-1"
kind = "eastron-sdm120"
bus = "meters"
unit = 3
poll_interval = "1s"
"""

POLICY = """
[policy]
name = "keep everything measured here"
version = "1"
organisation = "Test city"
contact = "it@test.example"
purpose = "testing the runtime"
retention = "none"

[channels."pm-1/*"]
rule = "keep"
purpose = "air quality"

[channels."meter-1/*"]
rule = "keep"
purpose = "energy"
"""


async def _start_gateway(hilsim_run, tmp_path: Path, env: dict[str, str]) -> tuple[asyncio.subprocess.Process, Path]:
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO)
    sim = await hilsim_run(scenario)
    (tmp_path / "policy.toml").write_text(POLICY)
    text = sim.gateway_config_toml(state_dir=tmp_path / "state", hub="", policy="policy.toml")
    # Long batches: everything the gateway read is still in memory when SIGTERM arrives.
    text = text.replace('span = "5m"', 'span = "1h"').replace('flush_interval = "30s"', 'flush_interval = "1h"')
    config = tmp_path / "gateway.toml"
    config.write_text(text)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge.cli", "run", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **env},
    )
    return proc, tmp_path / "state"


def _spooled_readings(state: Path) -> int:
    key = load_public_key(state / "device.pub")
    db = sqlite3.connect(state / "spool.db")
    total = 0
    for (data,) in db.execute("SELECT data FROM batches"):
        total += len(open_batch(bytes(data), key).readings)
    db.close()
    return total


async def test_sigterm_flushes_every_released_reading_into_the_spool(hilsim_run, tmp_path):
    proc, state = await _start_gateway(hilsim_run, tmp_path, {})
    lines: list[str] = []

    async def read_until(pattern: str) -> str:
        while True:
            assert proc.stdout is not None
            line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
            assert line, "gateway exited early:\n" + "".join(lines)
            lines.append(line)
            if re.search(pattern, line):
                return line

    await read_until("gateway running")
    await asyncio.sleep(4)
    proc.send_signal(signal.SIGTERM)
    stopped = await read_until("stopped cleanly")
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    found = re.search(r"readings_released=(\d+)", stopped)
    assert found, stopped
    released = int(found.group(1))
    assert released > 10, stopped
    assert _spooled_readings(state) == released


async def test_ready_watchdog_and_stopping_reach_the_notify_socket(hilsim_run, tmp_path, notify_socket):
    path, sock = notify_socket
    proc, _ = await _start_gateway(
        hilsim_run, tmp_path, {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    )
    messages: list[str] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while sum(m == "WATCHDOG=1" for m in messages) < 4 and loop.time() < deadline:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            await asyncio.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 30) == 0
    while True:
        try:
            messages.append(sock.recv(4096).decode())
        except BlockingIOError:
            break
    ready = [i for i, m in enumerate(messages) if m.startswith("READY=1")]
    assert len(ready) == 1, messages
    assert messages.count("WATCHDOG=1") >= 4
    assert "STOPPING=1" in messages
    assert messages.index("STOPPING=1") > ready[0]

"""A SIGTERM that comes while a poll is under way: the poll finishes and its readings reach the spool.

A real `ocn-edge run` process polls an SDM630 on a real Modbus TCP server on loopback.  The server
holds one reply of a poll, the test sends SIGTERM while it is held, waits until the gateway says it
is stopping, then lets the reply go with a value the meter never showed before.  That value must be
in the spool after the clean stop: the runtime asks the driver to finish its poll before it stops it
(docs/spool-and-uplink.md, "What a clean stop keeps").  The same for an SDS011 on a real pty whose
reply frame is half on the wire when SIGTERM comes.  And the contract stays additive: a driver that
does not opt in (``Driver.stops_when_asked``) is cancelled as before; one that does returns, and that
is no failure for its supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pymodbus.constants import ExcCodes

from drivers.modbus.profile import load_profile
from drivers.sdk import DeviceContext, Driver, Emit, Manifest
from drivers.serial import sds011
from edge.protocol import load_public_key, open_batch
from edge.protocol.types import Channel, Reading
from edge.supervise import DeviceRunner
from tests.drivers.loopback import RegisterStore, SerialPeer, modbus_tcp_server, serve_profile

UNIT = 5
PROFILE = load_profile("eastron-sdm630")
VOLTAGE = next(r for r in PROFILE.registers if r.channel == "voltage_l1")

POLICY = """
[policy]
name = "keep the meter"
version = "1"
organisation = "Test city"
contact = "it@test.example"
purpose = "testing a clean stop"
retention = "none"

[channels."meter-1/*"]
rule = "keep"
purpose = "energy"

[channels."pm-1/*"]
rule = "keep"
purpose = "air quality"
"""


@dataclass
class HeldStore(RegisterStore):
    """A register store that, once armed, holds the next request covering voltage L1 until released."""

    armed: bool = False
    answered: asyncio.Event = field(default_factory=asyncio.Event)  # a voltage request was answered (a poll went by)
    held: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def async_getValues(self, device_id: int, func_code: int, address: int, count: int = 1) -> list[int] | list[bool] | ExcCodes:
        covers = address <= VOLTAGE.address < address + count
        if covers and self.armed:
            self.armed = False
            self.held.set()
            await self.release.wait()
        words = await super().async_getValues(device_id, func_code, address, count)
        if covers:
            self.answered.set()
        return words


MODBUS = """
[[buses]]
name = "meters"
type = "modbus-tcp"
host = "127.0.0.1"
tcp_port = {port}
timeout = "5s"

[[devices]]
name = "meter-1"
driver = "modbus"
bus = "meters"
address = {unit}
poll_interval = "1s"
[devices.options]
profile = "eastron-sdm630"
"""

SERIAL = """
[[buses]]
name = "serial-pm-1"
type = "serial"
port = "{path}"
baudrate = 9600

[[devices]]
name = "pm-1"
driver = "sds011"
bus = "serial-pm-1"
poll_interval = "1s"
[devices.options]
mode = "query"
"""


def _config(tmp_path: Path, devices: str) -> Path:
    (tmp_path / "policy.toml").write_text(POLICY)
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[gateway]
id = "stop-test"
site = "test bench"
latitude = 43.6452
longitude = -79.3957
state_dir = "{tmp_path / 'state'}"
log_level = "info"
{devices}
[privacy]
policy = "policy.toml"
require_signed = false
governance_key = ""

[batch]
span = "1h"
flush_interval = "1h"
max_readings = 20000
codec = "zstd"

[spool]
max_size = "20MB"
when_full = "drop_oldest"

[uplink]
hub = ""
ca = ""
timeout = "30s"
daily_budget = "0"
key = ""

[local_api]
enabled = false
listen = "127.0.0.1:8080"
""")
    return config


def _spooled(state: Path, channel: str) -> list[float]:
    key = load_public_key(state / "device.pub")
    db = sqlite3.connect(state / "spool.db")
    try:
        return [float(r.value) for (data,) in db.execute("SELECT data FROM batches")
                for r in open_batch(bytes(data), key).readings if r.channel == channel]
    finally:
        db.close()


class Gateway:
    """A real `ocn-edge run` process and its output, read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    @classmethod
    async def start(cls, config: Path) -> Gateway:
        return cls(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge.cli", "run", str(config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=dict(os.environ),
        ))

    @property
    def output(self) -> str:
        return "".join(self.lines)

    async def read_until(self, pattern: str) -> None:
        while True:
            assert self.proc.stdout is not None
            line = (await asyncio.wait_for(self.proc.stdout.readline(), 30)).decode()
            assert line, "gateway exited early:\n" + self.output
            self.lines.append(line)
            if re.search(pattern, line):
                return

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


async def _stop_during_a_held_poll(tmp_path: Path, *, release: bool) -> tuple[list[float], str]:
    """Start a gateway, hold its second poll's voltage reply, SIGTERM it; the reply goes (or never does).

    Returns the voltages in the spool after the clean stop and the gateway's output.
    """
    store = HeldStore()
    serve_profile(store, UNIT, PROFILE, {"voltage_l1": 230.0})
    server, port = await modbus_tcp_server(store)
    gateway = await Gateway.start(_config(tmp_path, MODBUS.format(port=port, unit=UNIT)))
    try:
        await gateway.read_until("gateway running")
        await asyncio.wait_for(store.answered.wait(), 30)  # one poll answered with 230 V
        store.armed = True
        await asyncio.wait_for(store.held.wait(), 30)  # a poll is under way: its voltage request is held
        serve_profile(store, UNIT, PROFILE, {"voltage_l1": 241.5})  # what the held reply will carry
        gateway.proc.send_signal(signal.SIGTERM)
        await gateway.read_until("stopping: flushing")
        if release:
            store.release.set()
        await gateway.read_until("stopped cleanly")
        assert await asyncio.wait_for(gateway.proc.wait(), 30) == 0, gateway.output
    finally:
        store.release.set()
        await gateway.kill()
        await server.shutdown()
    return _spooled(tmp_path / "state", "meter-1/voltage_l1"), gateway.output


async def test_sigterm_during_a_modbus_poll_finishes_the_poll_and_spools_its_readings(tmp_path: Path) -> None:
    voltages, output = await _stop_during_a_held_poll(tmp_path, release=True)
    assert 230.0 in voltages, voltages  # the polls before the stop
    assert voltages[-1] == 241.5, (voltages, output)  # the poll under way at SIGTERM, emitted and spooled last
    assert "task did not stop" not in output, output


async def test_a_poll_that_never_finishes_is_cancelled_after_the_grace_and_the_stop_stays_clean(tmp_path: Path) -> None:
    voltages, output = await _stop_during_a_held_poll(tmp_path, release=False)
    assert 230.0 in voltages, voltages  # what was read before the stop is sealed
    assert 241.5 not in voltages, voltages  # the unit never answered the poll under way
    assert "task did not stop" not in output, output
    assert "shutdown step failed" not in output, output


def _sds011_frame(pm2_5: float, pm10: float) -> bytes:
    body = int(pm2_5 * 10).to_bytes(2, "little") + int(pm10 * 10).to_bytes(2, "little") + bytes([0xA1, 0x60])
    return bytes([0xAA, 0xC0]) + body + bytes([sum(body) & 0xFF, 0xAB])


async def test_sigterm_while_an_sds011_reply_is_half_on_the_wire_reads_it_whole_and_spools_it(tmp_path: Path) -> None:
    peer = SerialPeer(tmp_path)
    gateway = await Gateway.start(_config(tmp_path, SERIAL.format(path=peer.path)))
    deadline = asyncio.get_running_loop().time() + 30

    async def queries(n: int) -> None:  # until the gateway has asked n times
        while peer.received.count(sds011.QUERY) < n:
            assert asyncio.get_running_loop().time() < deadline, "the gateway stopped asking:\n" + gateway.output
            await asyncio.sleep(0.01)

    try:
        await gateway.read_until("gateway running")
        await queries(1)
        peer.write(_sds011_frame(12.3, 20.0))
        await queries(2)
        frame = _sds011_frame(55.5, 60.0)
        peer.write(frame[:5])  # the reply is half on the wire when SIGTERM comes
        gateway.proc.send_signal(signal.SIGTERM)
        await gateway.read_until("stopping: flushing")
        peer.write(frame[5:])
        await gateway.read_until("stopped cleanly")
        assert await asyncio.wait_for(gateway.proc.wait(), 30) == 0, gateway.output
    finally:
        await gateway.kill()
        peer.unplug()
    values = _spooled(tmp_path / "state", "pm-1/pm2_5")
    assert values[0] == 12.3, values  # the poll before
    assert values[-1] == 55.5, (values, gateway.output)  # the reply under way at SIGTERM, read whole and spooled
    assert "task did not stop" not in gateway.output, gateway.output


class Ticker(Driver):
    """A driver written before ``stops_when_asked``: emits a counter until cancelled."""

    manifest = Manifest(name="ticker", version="1", summary="emits a counter every 10 ms")

    def channels(self) -> list[Channel]:
        return [Channel(self.ctx.channel_id("n"))]

    async def run(self, emit: Emit) -> None:
        n = 0
        while True:
            await emit(Reading(self.ctx.channel_id("n"), n, n))
            n += 1
            await asyncio.sleep(0.01)


class PoliteTicker(Ticker):
    """The same driver opted in: it checks ``ctx.stopping`` between ticks and returns when it is set."""

    stops_when_asked = True

    async def run(self, emit: Emit) -> None:
        n = 0
        while not self.ctx.stopping.is_set():
            await emit(Reading(self.ctx.channel_id("n"), n, n))
            n += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.01):
                    await self.ctx.stopping.wait()


async def _running(driver: type[Ticker]) -> tuple[DeviceRunner, asyncio.Task[None], list[Reading]]:
    got: list[Reading] = []

    async def emit(reading: Reading) -> None:
        got.append(reading)

    runner = DeviceRunner("t-1", lambda: driver(DeviceContext("t-1", {})), emit)
    task = asyncio.create_task(runner.run())
    async with asyncio.timeout(10):
        while not got:
            await asyncio.sleep(0.01)
    return runner, task, got


async def test_a_driver_that_does_not_opt_in_is_left_to_be_cancelled_as_before() -> None:
    runner, task, _ = await _running(Ticker)
    assert runner.request_stop() is False  # nothing to wait for: the runtime cancels it at once
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_driver_that_opts_in_returns_when_asked_and_that_is_no_failure() -> None:
    runner, task, got = await _running(PoliteTicker)
    assert runner.request_stop() is True
    await asyncio.wait_for(task, 10)  # returned by itself, not cancelled
    assert runner.failures == 0 and runner.restarts == 0, runner.last_error
    assert runner.readings == len(got) > 0

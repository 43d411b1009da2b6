"""A real gateway on a hil-sim scenario with its local API on 127.0.0.1, for the page, the metrics and the status command."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.config import load_config
from edge.demo import DEMO_POLICY
from edge.enrol import enrol
from edge.runtime import Gateway
from hilsim import Simulation, run_scenario
from hub.app import run_hub


@dataclass
class LocalGateway:
    gateway: Gateway
    sim: Simulation
    config_path: Path

    @property
    def url(self) -> str:
        host, port = self.gateway._local_api_runner.addresses[0][:2]
        return f"http://{host}:{port}"


def wrong_unit_and_unplugged(text: str, tmp_path: Path) -> str:
    """weather-1 asked at unit 11 (it answers at 10), pm-1's serial port gone: the two faults a technician meets most."""
    text = re.sub(r'(name = "weather-1"\n(?:[^\n]*\n)*?address = )10', r"\g<1>11", text, count=1)
    return re.sub(r'port = "[^"]*ttySDS011-pm-1"', f'port = "{tmp_path / "ttyUSB7"}"', text, count=1)


async def start_gateway(tmp_path: Path, edit: Callable[[str, Path], str] | None = None) -> AsyncIterator[LocalGateway]:
    async with run_scenario("default", seed=5, run_dir=tmp_path / "sim") as sim:
        text = sim.gateway_config_toml(state_dir=tmp_path / "state", hub="", gateway_id="pole-7", policy=str(DEMO_POLICY),
                                       local_api_listen="127.0.0.1:0")
        path = tmp_path / "gateway.toml"
        path.write_text(edit(text, tmp_path) if edit else text, encoding="utf-8")
        gateway = Gateway(load_config(path))
        await gateway.start()
        try:
            yield LocalGateway(gateway, sim, path)
        finally:
            await asyncio.wait_for(gateway.stop(), timeout=30)


@pytest.fixture
async def local_gateway(tmp_path: Path) -> AsyncIterator[LocalGateway]:
    async for running in start_gateway(tmp_path):
        yield running


@pytest.fixture
async def faulty_gateway(tmp_path: Path) -> AsyncIterator[LocalGateway]:
    async for running in start_gateway(tmp_path, wrong_unit_and_unplugged):
        yield running


@pytest.fixture
async def hub_gateway(tmp_path: Path) -> AsyncIterator[LocalGateway]:
    """A gateway enrolled at a hub on loopback through hil-sim's uplink proxy (``sim.proxy.set_mode("cut")`` takes the hub away), sealing every second."""
    async with run_hub(state_dir=tmp_path / "hub", admin_token="x") as hub, \
            run_scenario("default", seed=5, run_dir=tmp_path / "sim", hub=hub.url) as sim:
        path = tmp_path / "gateway.toml"
        path.write_text(sim.gateway_config_toml(state_dir=tmp_path / "state", gateway_id="pole-7", policy=str(DEMO_POLICY),
                                                local_api_listen="127.0.0.1:0"), encoding="utf-8")
        config = load_config(path)
        config = dataclasses.replace(config, batch=dataclasses.replace(config.batch, span=1.0, flush_interval=1.0))
        await enrol(hub_url=hub.url, token=await hub.create_token(), device_id="pole-7", key_path=Path(config.uplink.key))
        gateway = Gateway(config)
        await gateway.start()
        try:
            yield LocalGateway(gateway, sim, path)
        finally:
            await asyncio.wait_for(gateway.stop(), timeout=30)

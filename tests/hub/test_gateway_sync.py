"""A real gateway (edge.runtime) syncing with the hub: batches stored, desired policy applied, drift cleared."""

from __future__ import annotations

import asyncio
import dataclasses
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp

from edge.config import GatewayConfig, load_config
from edge.demo import DEMO_POLICY
from edge.enrol import enrol
from edge.runtime import Gateway
from hilsim import run_scenario
from hub.app import run_hub
from hub.fleet import part_digest


def fast_batches(config: GatewayConfig) -> GatewayConfig:
    """Seal a batch every second, so a test sees readings arrive without waiting for the default 30 s flush."""
    return dataclasses.replace(config, batch=dataclasses.replace(config.batch, span=2.0, flush_interval=1.0))


async def wait_for(condition: Callable[[], Awaitable[bool]], *, timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.1)):
        if await condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


async def test_a_gateway_applies_the_fleet_policy_from_the_hub_and_the_drift_clears(tmp_path: Path) -> None:
    policy = tomllib.loads(DEMO_POLICY.read_text())
    policy["policy"]["purpose"] = "Plan city services (set from the hub)"
    async with run_hub(state_dir=tmp_path / "hub", admin_token="x") as hub, run_scenario("default", seed=3, run_dir=tmp_path / "sim") as sim:
        await hub.set_desired("fleet", "street", {"policy": policy})
        config_path = tmp_path / "gateway.toml"
        config_path.write_text(sim.gateway_config_toml(state_dir=tmp_path / "gateway", hub=hub.url, gateway_id="pole-0042", policy=str(DEMO_POLICY)))
        config = fast_batches(load_config(config_path))
        await enrol(hub_url=hub.url, token=await hub.create_token(fleet="street"), device_id="pole-0042", key_path=Path(config.uplink.key))
        gateway = Gateway(config)
        await gateway.start()
        try:
            # The gateway's first status report at start brings the desired policy; it validates and swaps it in.
            async def applied() -> bool:
                return bool(gateway.desired.applied_etag)

            await wait_for(applied)
            device = await hub.store.device("pole-0042")
            assert device is not None and device.policy_digest != part_digest(policy)  # not reported yet: drift
            assert gateway.uplink is not None
            await gateway.uplink.send_status()

            async def in_step() -> bool:
                d = await hub.store.device("pole-0042")
                return d is not None and d.policy_digest == part_digest(policy) and d.applied_etag == gateway.desired.applied_etag

            await wait_for(in_step)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{hub.url}/admin/api/devices", headers={"Authorization": "Bearer x"}) as resp:
                    (row,) = (await resp.json())["devices"]
            assert row["drift"] == [] and row["fleet"] == "street"

            async def readings_arrive() -> bool:
                return (await hub.counters("pole-0042"))["readings_stored"] > 0

            await wait_for(readings_arrive)
        finally:
            await asyncio.wait_for(gateway.stop(drain_timeout_s=5), timeout=30)


async def test_a_desired_config_the_gateway_cannot_apply_shows_as_drift_with_its_reason(tmp_path: Path) -> None:
    async with run_hub(state_dir=tmp_path / "hub", admin_token="x") as hub, run_scenario("default", seed=3, run_dir=tmp_path / "sim") as sim:
        await hub.set_desired("device", "pole-0042", {"config": {"batch": {"span": "1m"}}})
        config_path = tmp_path / "gateway.toml"
        config_path.write_text(sim.gateway_config_toml(state_dir=tmp_path / "gateway", hub=hub.url, gateway_id="pole-0042", policy=str(DEMO_POLICY)))
        config = fast_batches(load_config(config_path))
        await enrol(hub_url=hub.url, token=await hub.create_token(), device_id="pole-0042", key_path=Path(config.uplink.key))
        gateway = Gateway(config)  # without a supervisor it cannot restart its pipeline: the config must be refused
        await gateway.start()
        try:
            async def refused() -> bool:
                return bool(gateway.desired.last_error)

            await wait_for(refused)
            assert gateway.uplink is not None
            await gateway.uplink.send_status()

            async def reported() -> bool:
                d = await hub.store.device("pole-0042")
                return d is not None and any("not applied" in e for e in d.errors)

            await wait_for(reported)
            async with aiohttp.ClientSession() as http:
                async with http.get(f"{hub.url}/admin/api/devices", headers={"Authorization": "Bearer x"}) as resp:
                    (row,) = (await resp.json())["devices"]
            assert row["drift"] == ["config"] and row["health"] == "degraded"
        finally:
            await asyncio.wait_for(gateway.stop(drain_timeout_s=5), timeout=30)

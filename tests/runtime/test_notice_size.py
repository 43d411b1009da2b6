"""A gateway of many channels (20 simulated SDM630 meters, 720 channels) publishes its transparency notice and keeps running.

`ocn-edge run` as systemd runs it, a real hub on loopback, hil-sim's Modbus TCP meters.  A
notice is one signed status-type message of at most 64 KiB (OXP §7.3): before notices grouped
alike channels, this gateway's was 130,838 bytes, sealing it raised, the notice task stopped the
gateway and systemd restarted it, forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge.config import load_config
from edge.enrol import enrol
from edge.privacy.notice import notice_channels
from hub.app import RunningHub, run_hub
from hub.models import Notice
from hub.reports import notice_problem

METERS = 20
SDM630_CHANNELS = 36


def scenario() -> str:
    out = ['[scenario]\nname = "many-meters"\nseed = 5\n', '[[buses]]\nname = "meters"\ntype = "modbus-tcp"\n']
    for i in range(1, METERS + 1):
        out.append(f'[[devices]]\nname = "meter-{i}"\nkind = "eastron-sdm630"\nbus = "meters"\nunit = {i}\npoll_interval = "5s"\n')
    return "\n".join(out)


POLICY = """
[policy]
name = "energy use of the city's buildings"
version = "1"
organisation = "Test city"
contact = "energy@test.example"
purpose = "Know what the city's buildings use"
retention = "none"

[channels."meter-*/*"]
rule = "keep"
purpose = "Energy use of the city's buildings"
"""

# Each meter in its own building, with its own purpose: no two channels are alike, and the notice
# (720 items of their own) is over the limit however it is grouped.
OWN_PURPOSES = POLICY.split("[channels.")[0] + "".join(
    f'[channels."meter-{i}/*"]\nrule = "keep"\npurpose = "Energy use of building {i}, to plan its renovation"\n\n' for i in range(1, METERS + 1)
)


@contextlib.asynccontextmanager
async def _gateway(hilsim_run, tmp_path: Path, hub: RunningHub, policy: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, Path]]:
    path = tmp_path / "scenario.toml"
    path.write_text(scenario())
    sim = await hilsim_run(path)
    (tmp_path / "policy.toml").write_text(policy)
    config_path = tmp_path / "gateway.toml"
    text = sim.gateway_config_toml(state_dir=tmp_path / "state", hub=hub.url, gateway_id="many-meters", policy="policy.toml")
    config_path.write_text(text.replace('flush_interval = "30s"', 'flush_interval = "1s"'))
    config = load_config(config_path)
    await enrol(hub_url=hub.url, token=await hub.create_token(), device_id="many-meters", key_path=Path(config.uplink.key))
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "edge.cli", "run", str(config_path), stdout=out, stderr=asyncio.subprocess.STDOUT, env=dict(os.environ),
        )
    try:
        yield proc, log
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(60):
                await proc.wait()


async def _registered(hub: RunningHub, proc: asyncio.subprocess.Process, log: Path) -> Notice:
    """The notice the hub registered from the gateway, polled while the gateway runs; fails at once if the gateway stops."""
    async with asyncio.timeout(90):
        while True:
            notices = await hub.hub.store.notices(device_id="many-meters", limit=1)
            if notices:
                return notices[0]
            assert proc.returncode is None, f"the gateway stopped ({proc.returncode}) before its notice was registered:\n" + log.read_text()[-3000:]
            await asyncio.sleep(0.1)


async def _readings_arrive(hub: RunningHub, proc: asyncio.subprocess.Process, log: Path) -> None:
    """Readings from the gateway reach the hub after its notice: the pipeline runs on."""
    async with asyncio.timeout(60):
        while not await hub.hub.store.readings(device_id="many-meters", channel="meter-20/voltage_l1", limit=1):
            assert proc.returncode is None, f"the gateway stopped ({proc.returncode}):\n" + log.read_text()[-3000:]
            await asyncio.sleep(0.1)


def _register_page(hub: RunningHub) -> str:
    with urllib.request.urlopen(f"{hub.url}/transparency", timeout=30) as answer:
        return str(answer.read().decode())


@pytest.fixture
async def hub(tmp_path) -> AsyncIterator[RunningHub]:
    async with run_hub(listen="127.0.0.1:0", state_dir=tmp_path / "hub") as running:
        yield running


async def test_twenty_sdm630_meters_publish_one_notice_grouping_alike_channels_and_keep_running(hilsim_run, tmp_path, hub) -> None:
    async with _gateway(hilsim_run, tmp_path, hub, POLICY) as (proc, log):
        stored = await _registered(hub, proc, log)
        notice = stored.notice
        assert notice_problem(notice) is None and "abridged" not in notice
        channels = [c for item in notice["data"] for c in notice_channels(item)]
        assert len(channels) == len(set(channels)) == METERS * SDM630_CHANNELS, "every channel, each once"
        assert len(notice["data"]) == SDM630_CHANNELS, "one item per kind of value, each naming its 20 meters' channels"
        voltage = next(item for item in notice["data"] if item["channel"] == "meter-1/voltage_l1")
        assert voltage["channels"] == [f"meter-{i}/voltage_l1" for i in range(1, METERS + 1)]
        page = await asyncio.to_thread(_register_page, hub)
        assert all(f"<code>{channel}</code>" in page for channel in channels), "the register shows every channel of every item"
        await _readings_arrive(hub, proc, log)


async def test_a_notice_too_long_even_grouped_is_published_abridged_with_one_error_line_and_the_gateway_keeps_running(
    hilsim_run, tmp_path, hub
) -> None:
    async with _gateway(hilsim_run, tmp_path, hub, OWN_PURPOSES) as (proc, log):
        stored = await _registered(hub, proc, log)
        notice = stored.notice
        assert notice_problem(notice) is None
        abridged = notice["abridged"]
        assert abridged["channels"] == METERS * SDM630_CHANNELS and abridged["devices"] == METERS
        assert abridged["full_bytes"] > abridged["limit_bytes"] and "channel lists" in abridged["left_out"]
        assert notice["policy"]["name"] == "energy use of the city's buildings" and notice["accountable"]["contact"] == "energy@test.example"
        page = await asyncio.to_thread(_register_page, hub)
        assert "too long to publish whole" in page and "It covers 720 channels that leave the device" in page
        errors = [line for line in log.read_text().splitlines() if "transparency notice is" in line]
        assert len(errors) == 1, errors
        assert f"{abridged['full_bytes']:,} bytes" in errors[0] and "own notice page shows it whole" in errors[0]
        await _readings_arrive(hub, proc, log)

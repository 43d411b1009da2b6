"""From a seeded card to a gateway in the fleet: seed a folder, lay its user-data out in a temporary root as
cloud-init's write_files would, run `ocn-edge enrol --first-boot` against a real hub on loopback, then run the
gateway on simulated sensors until it syncs. Also: a refused token reaches the local page, an unreachable hub
keeps the token, and the clock hold."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from edge.cli import main
from edge.clock import RELEASE_FLOOR_MS, clock_floor_ms, wait_for_clock
from edge.config import load_config
from edge.runtime import Gateway
from hilsim import run_scenario
from hilsim.scenario import Simulation
from hub import RunningHub, run_hub

SITE = "King St W & Spadina Ave"


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[RunningHub]:
    async with run_hub(listen="127.0.0.1:0", state_dir=tmp_path / "hub", admin_token="admin-secret") as running:
        yield running


def seed_card(tmp_path: Path, sim: Simulation, *, device_id: str, hub_url: str, token: str) -> Path:
    """Seed a boot-partition folder for ``device_id`` from a config template for the simulated sensors; return its root."""
    root = tmp_path / device_id
    template = tmp_path / f"{device_id}-template.toml"
    template.write_text(sim.gateway_config_toml(state_dir=root / "var/lib/ocn-edge", hub="", gateway_id="template",
                                                local_api_listen="127.0.0.1:0"))
    boot = root / "boot/firmware"
    boot.mkdir(parents=True)
    assert main(["image", "seed", str(boot), "--device-id", device_id, "--hub", hub_url, "--token", token, "--site", SITE,
                 "--latitude", "43.6452", "--longitude", "-79.3957", "--config", str(template)]) == 0
    apply_write_files(boot / "user-data", root)
    return root


def apply_write_files(user_data: Path, root: Path) -> None:
    """What cloud-init's write_files module does with the seed, with ``root`` standing for /."""
    header, _, body = user_data.read_text().partition("\n")
    assert header == "#cloud-config"
    for item in json.loads(body)["write_files"]:
        path = root / item["path"].lstrip("/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(item["content"])
        os.chmod(path, int(item["permissions"], 8))


def first_boot(root: Path, *extra: str) -> int:
    return main(["enrol", "--first-boot", str(root / "etc/ocn-edge/gateway.toml"), *extra])


async def wait_for(condition: Callable[[], Awaitable[bool]], *, timeout: float = 60.0) -> None:
    for _ in range(int(timeout / 0.1)):
        if await condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


async def test_a_seeded_card_enrols_at_first_boot_syncs_and_appears_in_the_fleet(
    tmp_path: Path, hub: RunningHub, capsys: pytest.CaptureFixture[str]
) -> None:
    token = await hub.create_token(uses=10, approve=True, note="King St roll-out")
    async with run_scenario("default", seed=5, run_dir=tmp_path / "sim") as sim:
        root = seed_card(tmp_path, sim, device_id="pole-0042", hub_url=hub.url, token=token)
        token_file = root / "etc/ocn-edge/enrol-token"
        state = root / "var/lib/ocn-edge"
        assert token_file.read_text() == token + "\n" and not (state / "device.key").exists()

        assert await asyncio.to_thread(first_boot, root) == 0
        assert "device pole-0042 enrolled" in capsys.readouterr().out
        assert not token_file.exists()
        assert (state / "device.key").stat().st_mode & 0o777 == 0o600
        assert json.loads((state / "enrolment.json").read_text())["status"] == "active"

        # Run again (the next boot, or the unit restarted): nothing happens, the token is not used twice.
        assert await asyncio.to_thread(first_boot, root) == 0
        assert "already enrolled" in capsys.readouterr().out
        (info,) = await hub.store.tokens()
        assert info.uses_left == 9

        config = load_config(root / "etc/ocn-edge/gateway.toml")
        config = dataclasses.replace(config, batch=dataclasses.replace(config.batch, span=2.0, flush_interval=1.0))
        gateway = Gateway(config)
        await gateway.start()
        try:
            async def in_the_fleet() -> bool:
                device = await hub.store.device("pole-0042")
                return device is not None and device.site == SITE and device.readings_stored > 0

            await wait_for(in_the_fleet)
        finally:
            await asyncio.wait_for(gateway.stop(drain_timeout_s=5), timeout=30)

    async with aiohttp.ClientSession(headers={"Authorization": "Bearer admin-secret"}) as http:
        async with http.get(f"{hub.url}/fleet/tokens") as resp:
            assert resp.status == 200
            page = await resp.text()
    assert "King St roll-out" in page and 'href="/fleet/devices/pole-0042"' in page and "King St W &amp; Spadina Ave" in page


async def test_a_refused_token_is_recorded_once_and_shown_on_the_local_page(
    tmp_path: Path, hub: RunningHub, capsys: pytest.CaptureFixture[str]
) -> None:
    async with run_scenario("default", seed=5, run_dir=tmp_path / "sim") as sim:
        root = seed_card(tmp_path, sim, device_id="pole-0043", hub_url=hub.url, token="ocnenrol_not-a-token-of-this-hub")
        assert await asyncio.to_thread(first_boot, root) == 1
        err = capsys.readouterr().err
        assert err.count("enrolment refused") == 1 and "the hub refused the enrolment token" in err
        record = json.loads((root / "var/lib/ocn-edge/enrolment.json").read_text())
        assert record["status"] == "refused"
        assert (root / "etc/ocn-edge/enrol-token").exists()  # kept: re-seeding or a new token file replaces it

        gateway = Gateway(load_config(root / "etc/ocn-edge/gateway.toml"))
        await gateway.start()
        try:
            port = gateway._local_api_runner.addresses[0][1]
            async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/status") as resp:
                status = await resp.json()
        finally:
            await asyncio.wait_for(gateway.stop(drain_timeout_s=5), timeout=30)
    assert status["enrolment"]["status"] == "refused"
    assert "ask city IT for a new token" in status["enrolment"]["detail"]


async def test_an_unreachable_hub_is_retried_then_postponed_with_the_token_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as probe:  # a loopback port nobody listens on: connections are refused at once
        probe.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{probe.getsockname()[1]}/"
    async with run_scenario("default", seed=5, run_dir=tmp_path / "sim") as sim:
        root = seed_card(tmp_path, sim, device_id="pole-0044", hub_url=closed, token="ocnenrol_anything")
    assert await asyncio.to_thread(first_boot, root, "--retry-for", "0") == 75
    err = capsys.readouterr().err
    assert "enrolment postponed: cannot reach the hub" in err and "token is kept" in err
    assert (root / "etc/ocn-edge/enrol-token").exists()
    assert not (root / "var/lib/ocn-edge/enrolment.json").exists()


async def test_the_gateway_holds_until_the_clock_is_past_the_floor_or_synchronised(tmp_path: Path) -> None:
    clock = iter([0, 0, 0, RELEASE_FLOOR_MS + 1])  # a Pi without a battery clock: 1970 until NTP answers
    slept: list[float] = []
    waited: list[tuple[int, int]] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    flag = tmp_path / "synchronized"
    polls = await wait_for_clock(RELEASE_FLOOR_MS, synchronized=flag, now_ms=lambda: next(clock), sleep=sleep,
                                 on_wait=lambda now, floor: waited.append((now, floor)))
    assert polls == 2 and slept == [1.0, 1.0] and waited == [(0, RELEASE_FLOOR_MS)]  # said once, not per poll

    flag.touch()  # systemd-timesyncd's flag: believed whatever the floor
    assert await wait_for_clock(RELEASE_FLOOR_MS * 2, synchronized=flag, now_ms=lambda: 0, sleep=sleep) == 0


def test_the_floor_is_the_release_date_or_the_newest_state_file(tmp_path: Path) -> None:
    assert clock_floor_ms(tmp_path / "absent") == RELEASE_FLOOR_MS
    spool = tmp_path / "spool.db"
    spool.touch()
    later = RELEASE_FLOOR_MS // 1000 + 86400 * 30
    os.utime(spool, (later, later))
    assert clock_floor_ms(tmp_path) == later * 1000

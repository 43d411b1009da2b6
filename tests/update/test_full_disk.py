"""A full disk during an update: refused (no_space) with a clear reason on the local page, in the status report and on the
dashboard, the running version untouched and nothing of the release left behind — a real gateway on a small real filesystem,
a real hub that rolls the release out."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import aiohttp
import pytest

from edge.config import load_config
from edge.demo import DEMO_POLICY
from edge.enrol import enrol
from edge.update.fetch import INSTALLED_FILE, REQUEST_FILE, fetch_release
from edge.update.manifest import Refused
from edge.update.report import last_update
from edge.update.updater import OPT_ENV, RELEASE_KEY_ENV
from hilsim import run_scenario
from hub.app import RunningHub
from hub.rollout import start_rollout
from tests.pipeline.small_disk import small_disk
from tests.update.conftest import Releases, copy_root
from tests.update.test_installer import installer, request, runs
from tests.update.test_updater import hub, release_key
from tests.update.trustkit import gateway_running, until

__all__ = ["hub", "release_key"]  # fixtures, from tests/update/test_updater.py


async def test_a_release_the_disk_has_no_room_for_is_refused_before_downloading_and_shown_everywhere(
    tmp_path: Path, release_key, hub: RunningHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(RELEASE_KEY_ENV, str(tmp_path / "release.pub"))
    monkeypatch.setenv(OPT_ENV, str(tmp_path / "opt"))
    with small_disk(tmp_path / "disk", size=24 << 20) as disk:
        async with run_scenario("default", seed=4, run_dir=tmp_path / "sim") as sim:
            config_path = tmp_path / "gateway.toml"
            config_path.write_text(sim.gateway_config_toml(state_dir=disk.path / "gateway", hub=hub.url, gateway_id="pole-0042",
                                                           policy=str(DEMO_POLICY), local_api_listen="127.0.0.1:0"))
            await enrol(hub_url=hub.url, token=await hub.create_token(approve=True, fleet="street"), device_id="pole-0042",
                        key_path=Path(load_config(config_path).uplink.key))
            async with gateway_running(config_path) as gateways:
                disk.fill(leave=2 << 20)  # 2 MB left: the spool's, not an update's (16 MB stay free)
                await start_rollout(hub.store, tmp_path / "hub" / "releases", version="2.0.0", fleet="street", stages=(100.0,),
                                    wait_ms=3_600_000, max_failure=0.5, actor="cli:test")
                gateway = gateways[-1]
                await until(lambda: (last_update(disk.path / "gateway") or {}).get("reason", "").startswith("no_space"), "refused no_space")
                assert gateway.uplink is not None
                await gateway.uplink.send_status()
                update = (await hub.store.software_updates())["pole-0042"]
                assert (update.state, update.version) == ("refused", "2.0.0")
                assert update.reason.startswith("no_space: ") and "stay free for the spool" in update.reason
                assert not (disk.path / "gateway/update/request.json").exists()  # nothing asked of the installer
                assert not list((disk.path / "gateway/update/blobs").iterdir())  # nothing downloaded but the manifest
                async with aiohttp.ClientSession() as http:
                    assert gateway.local_page is not None
                    async with http.get(f"{gateway.local_page.rstrip('/')}/status") as resp:
                        local = await resp.json()
                    async with http.get(f"{gateway.local_page.rstrip('/')}/technician.json") as resp:
                        page = await resp.json()
                    async with http.get(f"{hub.url}/fleet", headers={"Authorization": "Bearer x", "Accept": "text/html"}) as resp:
                        fleet_page = await resp.text()
                assert local["software_update"]["reason"].startswith("no_space: "), local
                assert page["overview"]["software_update"].startswith("2.0.0 refused: no_space: "), page["overview"]
                assert "refused 2.0.0" in fleet_page and "no_space" in fleet_page
                assert gateway.status()["software_update"]["state"] == "refused"  # and it still runs the version it ran


async def test_a_disk_that_fills_during_the_download_frees_what_it_took_and_the_refusal_is_still_reported(
    tmp_path: Path, release_key, hub: RunningHub
) -> None:
    with small_disk(tmp_path / "disk", size=4 << 20) as disk:
        state = disk.path / "gateway"
        state.mkdir()
        disk.fill(leave=8 << 10)  # room for the manifest, not for the 20 KB wheel: the write fails half way
        with pytest.raises(Refused) as refused:
            await asyncio.to_thread(lambda: fetch_release(f"{hub.url}/releases/2.0.0", release_key.public_key(), state=state,
                                                          opt=tmp_path / "opt", installed="0.1.0", keep_free=0))
        assert refused.value.reason == "no_space" and "the disk filled up" in str(refused.value)
        assert not list((state / "update/blobs").glob("*.part"))  # what the release took is given back to the spool
        assert "the disk filled up" in (last_update(state) or {}).get("reason", "")
        # Not a byte left: the next try is refused too, and fetched.json cannot be written; the process still reports it.
        (state / "update/fetched.json").unlink(missing_ok=True)
        disk.fill()
        with pytest.raises(Refused) as again:
            await asyncio.to_thread(lambda: fetch_release(f"{hub.url}/releases/2.0.0", release_key.public_key(), state=state,
                                                          opt=tmp_path / "opt", installed="0.1.0", keep_free=0))
        assert again.value.reason == "no_space" and not (state / "update/fetched.json").exists()
        assert (last_update(state) or {}).get("reason", "").startswith("no_space: ")
        disk.free()  # room again: the same release is fetched whole and asked for
        fetched = await asyncio.to_thread(lambda: fetch_release(f"{hub.url}/releases/2.0.0", release_key.public_key(), state=state,
                                                                opt=tmp_path / "opt", installed="0.1.0", keep_free=0))
        assert json.loads((state / "update/request.json").read_text())["version"] == fetched.version == "2.0.0"
        assert (last_update(state) or {}).get("state") == "requested"


def test_a_disk_that_fills_while_the_installer_builds_the_other_slot_leaves_the_running_version_and_gives_the_room_back(
    installed_v1: Path, releases: Releases, tmp_path: Path
) -> None:
    with small_disk(tmp_path / "disk", size=400 << 20) as disk:
        root = copy_root(installed_v1, disk.path / "root")
        request(root, releases.bundles["2.0.0"], "2.0.0")
        target_files = sum(f.stat().st_size for f in releases.bundles["2.0.0"].rglob("*") if f.is_file())
        # The installer copies the bundle (once the files) and checks for four times the files, which passes; the slot (a
        # whole venv) does not fit.
        disk.fill(leave=6 * target_files)
        free_before = disk.free_bytes()
        out, _ = installer(root).communicate(timeout=300)
        outcome = json.loads((root / "var/lib/ocn-edge/update" / INSTALLED_FILE).read_text())
        assert outcome["state"] == "failed" and outcome["reason"].startswith("no_space: the disk filled up while slot b was built"), out
        assert os.readlink(root / "opt/ocn-edge/current") == "a" and runs(root) == "1.0.0" and not (root / "opt/ocn-edge/b").exists()
        assert not (root / "var/lib/ocn-edge/update" / REQUEST_FILE).exists()  # answered once, not tried over and over
        assert disk.free_bytes() >= free_before - (1 << 20)  # the half-built slot's room is given back
        update = last_update(root / "var/lib/ocn-edge")
        assert update is not None and update["reason"].startswith("no_space: ")  # what /status and the status report say

"""A gateway updates itself end to end: real venvs in a temporary root, a real hub and simulated sensors on loopback.

1.0.0 is installed by images/install.sh; the releases are registered at the hub, which serves them;
the gateway runs under bench/releases/supervisor.py (the stand-in for the shipped units). A hub-staged
rollout targets 2.0.0 at its fleet: the running gateway hears of it in its signed desired document,
fetches 2.0.0 from the hub by itself with only a delta of the changed wheel on the link, asks, and
the installer builds slot b, switches and watches the probation, which 2.0.0 passes. A rollout of
3.0.0, which never delivers a batch, follows: its probation fails, the installer rolls back to
2.0.0, which reports why, and the hub halts the rollout by itself. At the end the spool is
reconciled with the hub: every batch sealed, by any version, is stored there once.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from bench.releases import BASE_PYTHON, Releases, Supervisor, copy_root
from edge.cli import main
from edge.demo import DEMO_POLICY
from edge.enrol import enrol
from edge.update.fetch import FETCHED_FILE, INSTALLED_FILE
from hilsim import run_scenario
from hub import RunningHub, run_hub

pytestmark = pytest.mark.timeout(600)

# 3.0.0's probation: time enough to read both sensors and seal a batch (1 s polls, 2 s spans, 1 s flushes), none to wait.
PROBATION_TO_FAIL_S = 6.0

SCENARIO = """\
[scenario]
name = "update"
description = "two sensors that answer every second"
seed = 7
latitude = 43.6452
longitude = -79.3957

[[buses]]
name = "meters-tcp"
type = "modbus-tcp"

[[devices]]
name = "pm-2"
kind = "pms5003"
poll_interval = "1s"
[devices.options]
mode = "passive"

[[devices]]
name = "meter-2"
kind = "eastron-sdm120"
bus = "meters-tcp"
unit = 1
poll_interval = "1s"
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def wait_for(condition: Callable[[], Awaitable[bool] | bool], what: str, *, timeout: float = 180.0) -> None:
    for _ in range(int(timeout / 0.2)):
        result = condition()
        if await result if isinstance(result, Awaitable) else result:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout:.0f} s")


def outcome(root: Path, name: str = INSTALLED_FILE) -> dict[str, object]:
    try:
        value: dict[str, object] = json.loads((root / "var/lib/ocn-edge/update" / name).read_text())
    except FileNotFoundError:
        return {}
    return value


async def fetch(root: Path, url: str) -> tuple[int, str]:
    """The gateway's side of an update, run with the installed version's own code."""
    process = await asyncio.create_subprocess_exec(
        str(root / "opt/ocn-edge/current/bin/ocn-edge"),
        "release",
        "fetch",
        url,
        "--key",
        str(root / "etc/ocn-edge/release.pub"),
        "--state",
        str(root / "var/lib/ocn-edge"),
        "--opt",
        str(root / "opt/ocn-edge"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[RunningHub]:
    async with run_hub(listen="127.0.0.1:0", state_dir=tmp_path / "hub", admin_token="admin-secret", rollout_interval_s=0.5) as running:
        yield running


def stored_batches(hub_db: Path, device_id: str) -> dict[int, list[int]]:
    """boot epoch -> the sequence numbers the hub stored, from its database (which keeps OXP uints shifted by 2**63, hub/schema.py)."""
    with sqlite3.connect(f"file:{hub_db}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT boot_epoch, seq FROM batches WHERE device_id = ? ORDER BY boot_epoch, seq", (device_id,)).fetchall()
    boots: dict[int, list[int]] = {}
    for boot, seq in rows:
        boots.setdefault(boot + (1 << 63), []).append(seq + (1 << 63))
    return boots


async def rollout(tmp_path: Path, *arguments: str) -> int:
    """`ocn-edge hub rollout ...` as city IT runs it, beside the running hub (on a thread: the command runs its own loop)."""
    return await asyncio.to_thread(main, ["hub", "rollout", *arguments, "--state-dir", str(tmp_path / "hub")])


async def test_v1_updates_to_v2_and_a_v3_that_fails_probation_is_rolled_back_to_v2(
    tmp_path: Path, releases: Releases, installed_v1: Path, hub: RunningHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    for bundle in releases.bundles.values():  # city IT registers the releases at the hub, which serves them
        assert main(["hub", "release", "add", str(bundle), "--key", str(releases.public_key), "--state-dir", str(tmp_path / "hub")]) == 0
    served = f"{hub.url}/releases"
    root = copy_root(installed_v1, tmp_path / "root")
    state = root / "var/lib/ocn-edge"
    (tmp_path / "scenario.toml").write_text(SCENARIO)
    port = free_port()
    async with run_scenario(tmp_path / "scenario.toml", run_dir=tmp_path / "sim") as sim:
        config = root / "etc/ocn-edge/gateway.toml"
        text = sim.gateway_config_toml(state_dir=state, hub=hub.url, gateway_id="pole-0007", policy=str(DEMO_POLICY), local_api_listen=f"127.0.0.1:{port}")
        config.write_text(text.replace('span = "5m"', 'span = "2s"').replace('flush_interval = "30s"', 'flush_interval = "1s"'))
        await enrol(hub_url=hub.url, token=await hub.create_token(fleet="street"), device_id="pole-0007", key_path=state / "device.key")
        # The running gateway checks the hub's targets with this root's release key and reuses this root's slots.
        monkeypatch.setenv("OCN_EDGE_RELEASE_KEY", str(root / "etc/ocn-edge/release.pub"))
        monkeypatch.setenv("OCN_EDGE_OPT", str(root / "opt/ocn-edge"))
        # A version that passes its probation ends it as soon as it has proven itself, so 2.0.0's deadline costs nothing and
        # is generous (a loaded machine is slow to prove); 3.0.0 fails by running out of its deadline, so its deadline is short.
        supervisor = Supervisor(root, config, status_url=f"http://127.0.0.1:{port}/status", python=BASE_PYTHON, deadline_s=60.0)
        supervisor.start()
        try:

            async def reports(version: str) -> bool:
                device = await hub.store.device("pole-0007")
                return device is not None and device.software_version == version and device.batches_stored > 0

            await wait_for(lambda: reports("1.0.0"), "1.0.0 syncs with the hub")

            # City IT rolls 2.0.0 out to the fleet; the gateway fetches it by itself. 2.0.0 changes only OCN Edge's own
            # wheel: the manifest, the constraints and a delta of that wheel travel.
            assert await rollout(tmp_path, "start", "2.0.0", "--fleet", "street", "--stages", "100%", "--wait", "1s") == 0
            await wait_for(lambda: outcome(root).get("version") == "2.0.0", "the installer records 2.0.0's outcome")
            fetched = outcome(root, FETCHED_FILE)
            assert fetched["state"] == "requested" and fetched["version"] == "2.0.0", fetched
            assert int(str(fetched["bytes"])) <= 400_000, fetched  # issue 15's bound for an update of OCN Edge's own code
            assert outcome(root)["state"] == "installed", outcome(root)
            assert os.readlink(root / "opt/ocn-edge/current") == "b" and os.readlink(root / "opt/ocn-edge/previous") == "a"
            await wait_for(lambda: reports("2.0.0"), "2.0.0 reports to the hub")

            async def rollout_state(state: str) -> bool:
                return [r.state for r in await hub.store.rollouts()][:1] == [state]

            await wait_for(lambda: rollout_state("done"), "the rollout of 2.0.0 is done")

            # 3.0.0 never delivers: no batch of its boot is acknowledged, so it fails probation when its deadline has passed.
            supervisor.deadline_s = PROBATION_TO_FAIL_S  # read when the installer for 3.0.0 is started
            assert await rollout(tmp_path, "start", "3.0.0", "--fleet", "street", "--stages", "100%", "--wait", "1h", "--max-failures", "0%") == 0
            await wait_for(lambda: outcome(root).get("version") == "3.0.0", "the installer records 3.0.0's outcome")
            result = outcome(root)
            assert result["state"] == "rolled_back" and result["running"] == "2.0.0", result
            assert "no batch acknowledged by the hub" in str(result["reason"]), result
            assert os.readlink(root / "opt/ocn-edge/current") == "b"
            await wait_for(lambda: reports("2.0.0"), "2.0.0 runs again and reports")
            await wait_for(lambda: rollout_state("halted"), "the hub halts the rollout of 3.0.0")
            [halted, _] = await hub.store.rollouts()
            assert "pole-0007: rolled_back (3.0.0 failed probation" in halted.reason, halted
            assert [e.actor for e in await hub.store.audit_log() if e.action == "rollout.halt"] == ["hub"]

            async def local_api_answers() -> bool:
                try:
                    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/status") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_for(local_api_answers, "2.0.0's local API answers")
            async with aiohttp.ClientSession() as http:
                async with http.get(f"http://127.0.0.1:{port}/status") as response:
                    local = await response.json()
                async with http.get(f"http://127.0.0.1:{port}/technician.json") as response:
                    page = await response.json()
            assert local["software_update"]["state"] == "rolled_back" and local["software_update"]["version"] == "3.0.0", local
            assert page["overview"]["software_update"].startswith("3.0.0 rolled back: 3.0.0 failed probation"), page["overview"]

            # The failed version is not fetched again, and an older one is a downgrade.
            status, out = await fetch(root, f"{served}/3.0.0")
            assert status == 1 and "refused (rolled_back)" in out, out
            status, out = await fetch(root, f"{served}/1.0.0")
            assert status == 1 and "refused (downgrade)" in out, out
            assert outcome(root, FETCHED_FILE)["reason"] == "downgrade"
        finally:
            supervisor.stop()

        # Reconcile: every batch sealed in any boot, by any version, is at the hub or still in the spool: no seq is missing.
        at_hub = stored_batches(tmp_path / "hub/hub.db", "pole-0007")
        with sqlite3.connect(f"file:{state / 'spool.db'}?mode=ro", uri=True) as spool:
            waiting = spool.execute("SELECT boot_epoch, seq FROM batches").fetchall()
        boots = {boot: set(seqs) for boot, seqs in at_hub.items()}
        for boot, seq in waiting:
            boots.setdefault(boot, set()).add(seq)
        assert len(boots) >= 4, boots  # 1.0.0, 2.0.0, 3.0.0, 2.0.0 again
        for boot, seqs in boots.items():
            assert seqs == set(range(len(seqs))), (boot, sorted(seqs))
    assert supervisor.failures == 0, supervisor.log

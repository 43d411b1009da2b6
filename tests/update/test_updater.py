"""The running gateway's updater: the software target in the signed desired document, fetched from the hub within the daily
byte budget and asked for; and a gateway started for real that fetches a release a hub-staged rollout targets at it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.config import load_config
from edge.demo import DEMO_POLICY
from edge.desired import DesiredError, DesiredState
from edge.enrol import enrol
from edge.protocol import generate_keypair, key_id
from edge.protocol.desired import sign_document
from edge.runtime import Gateway
from edge.update.bundle import ReleaseSpec, build_bundle
from edge.update.manifest import this_target
from edge.update.updater import OPT_ENV, RELEASE_KEY_ENV, Updater, parse_target
from hilsim import run_scenario
from hub.app import RunningHub, run_hub
from hub.releases import add_release
from hub.rollout import start_rollout
from tests.update.wheels import tiny_wheel


def tiny_bundle(tmp_path: Path, key: Ed25519PrivateKey, version: str) -> Path:
    """A release of one small wheel for this machine's target, upgradable from the version under test (0.1.0)."""
    folder = tmp_path / f"wheelhouse-{version}" / this_target()
    own = tiny_wheel(folder, "ocn_edge", version, text="# " + "x" * 20_000 + "\n")
    (folder / "constraints.txt").write_text(f"ocn-edge=={version}  # {own.name}\n")
    return build_bundle(folder.parent, tmp_path / f"ocn-edge-{version}", ReleaseSpec(version, "0.0.1"), key)


@pytest.fixture
def release_key(tmp_path: Path) -> Ed25519PrivateKey:
    key = generate_keypair()
    (tmp_path / "release.pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key


def target_of(key: Ed25519PrivateKey, version: str = "2.0.0") -> dict[str, str]:
    return {"version": version, "url": f"/releases/{version}", "key_id": key_id(key).hex()}


def test_the_software_target_travels_signed_and_a_document_without_one_still_applies(tmp_path: Path, release_key) -> None:
    hub_key = generate_keypair()
    state = DesiredState(tmp_path, device_id="pole-7")
    base = {"device_id": "pole-7", "fleet": "street", "etag": "e1"}
    change = state.verify(sign_document({**base, "software": target_of(release_key)}, hub_key), "e1", hub_key.public_key())
    assert change.software == parse_target(target_of(release_key))
    state.record_success(change, policy_toml=None)
    assert DesiredState(tmp_path, device_id="pole-7").saved_software() == change.software  # kept for the updater across restarts
    # A document from a hub that names no software (or from before this key existed) applies as before, and drops the target.
    older = state.verify(sign_document({**base, "etag": "e2"}, hub_key), "e2", hub_key.public_key())
    assert older.software is None
    state.record_success(older, policy_toml=None)
    assert state.applied_etag == "e2" and state.saved_software() is None
    bad = {**base, "etag": "e3", "software": {**target_of(release_key), "url": "ftp://elsewhere/2.0.0"}}
    with pytest.raises(DesiredError, match=r"desired software.url = 'ftp://elsewhere/2.0.0': expected an https URL or a path on the hub"):
        state.verify(sign_document(bad, hub_key), "e3", hub_key.public_key())


@pytest.fixture
async def hub(tmp_path: Path, release_key: Ed25519PrivateKey) -> AsyncIterator[RunningHub]:
    async with run_hub(state_dir=tmp_path / "hub", admin_token="x", rollout_interval_s=0.1) as running:
        add_release(tmp_path / "hub" / "releases", tiny_bundle(tmp_path, release_key, "2.0.0"), release_key.public_key())
        yield running


async def test_the_updater_fetches_within_the_budget_and_asks_once(tmp_path: Path, release_key, hub) -> None:
    left, waiting = [0], [40]
    spent: list[int] = []
    updater = Updater(state_dir=tmp_path / "gw", hub_url=hub.url, release_key=tmp_path / "release.pub", opt=tmp_path / "opt",
                      allowance=lambda: left[0], spend=spent.append, backlog=lambda: waiting[0], running="0.1.0", retry_s=3600)
    target = parse_target({**target_of(release_key), "pause_backlog": 30})
    assert await updater.try_once(target) == 3600  # 40 batches wait, over the rollout's 30: the readings go first
    waiting[0] = 30
    assert await updater.try_once(target) == 3600  # today's budget is spent: nothing travels, it tries again later
    assert not (tmp_path / "gw/update").exists() and spent == []
    left[0] = 1000  # enough for the manifest, not for the wheel: the download stops there and resumes next time
    assert await updater.try_once(target) == 3600
    assert 0 < sum(spent) <= 1000
    assert json.loads((tmp_path / "gw/update/fetched.json").read_text())["state"] == "downloading"
    left[0] = 10_000_000
    assert await updater.try_once(target) is None
    request = json.loads((tmp_path / "gw/update/request.json").read_text())
    assert request["version"] == "2.0.0" and Path(request["bundle"]).is_dir()
    assert await updater.try_once(target) is None and len(spent) == 2  # asked once: not fetched again
    # A target signed by another key than this gateway's is refused before anything is downloaded.
    other = parse_target({**target_of(generate_keypair(), "2.1.0")})
    assert await updater.try_once(other) is None
    refused = json.loads((tmp_path / "gw/update/fetched.json").read_text())
    assert (refused["state"], refused["reason"], refused["version"]) == ("refused", "wrong_key", "2.1.0") and len(spent) == 2


async def test_a_running_gateway_fetches_the_release_a_rollout_targets_and_the_hub_sees_it_asked(
    tmp_path: Path, release_key, hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(RELEASE_KEY_ENV, str(tmp_path / "release.pub"))
    monkeypatch.setenv(OPT_ENV, str(tmp_path / "opt"))
    async with run_scenario("default", seed=3, run_dir=tmp_path / "sim") as sim:
        config_path = tmp_path / "gateway.toml"
        config_path.write_text(sim.gateway_config_toml(state_dir=tmp_path / "gateway", hub=hub.url, gateway_id="pole-0042", policy=str(DEMO_POLICY)))
        config = load_config(config_path)
        await enrol(hub_url=hub.url, token=await hub.create_token(approve=True, fleet="street"), device_id="pole-0042", key_path=Path(config.uplink.key))
        gateway = Gateway(config)
        await gateway.start()
        try:
            await start_rollout(hub.store, tmp_path / "hub" / "releases", version="2.0.0", fleet="street", stages=(100.0,), wait_ms=3_600_000,
                                max_failure=0.1, actor="cli:test")
            request = tmp_path / "gateway/update/request.json"
            for _ in range(400):  # the long poll tells the gateway within seconds; a generous bound, not a timing assertion
                if request.exists():
                    break
                await asyncio.sleep(0.05)
            assert json.loads(request.read_text())["version"] == "2.0.0"
            assert gateway.uplink is not None
            await gateway.uplink.send_status()
            update = (await hub.store.software_updates())["pole-0042"]
            assert (update.state, update.version) == ("requested", "2.0.0")
            assert gateway.desired.saved_software() == parse_target(target_of(release_key))
        finally:
            await gateway.stop()

"""Threat model (docs/threat-model.md): a compromised hub trying to weaken the privacy policy a gateway enforces.

A gateway with ``privacy.require_signed = true`` takes its policy only as a file signed by the city's governance
key: a hub (compromised, or simply wrong) may neither send a policy of its own nor switch the requirement off with
a desired config. The hub's signing key is pinned only where nobody on the path can answer in the hub's place.
Real parts on loopback: hil-sim, a hub, a running gateway.
"""

from __future__ import annotations

import asyncio
import time
import tomllib
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.config import load_config
from edge.desired import DesiredIgnored, DesiredState
from edge.enrol import enrol
from edge.privacy.load import load_policy
from edge.privacy.signing import load_governance_private_key, write_governance_keypair, write_signature
from edge.protocol.desired import sign_document
from edge.runtime import Gateway
from edge.service import run_gateway
from edge.transport import TransportError
from edge.transport.http import HttpTransport
from hub.app import RunningHub, run_hub
from tests.helpers.pole import sds011_policy, sds011_scenario

SCENARIO = sds011_scenario("policy-authority", seed=5)
POLICY = sds011_policy("air quality, quantized", purpose="testing who may change the policy", rule='rule = "quantize"\nstep = 5.0')

# What a hub would rather have: every value as measured.
KEEP_ALL = tomllib.loads(POLICY.replace('version = "1"', 'version = "2"').replace('rule = "quantize"\nstep = 5.0', 'rule = "keep"'))


async def _until(predicate, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.05)


async def unchecked_desired(hub: RunningHub, document: dict) -> None:
    """Store a document as a compromised hub would send it, past the hub's own checks: the gateway's checks are under test."""
    await hub.hub.store.set_desired("device", "pole-9", document, now_ms=time.time_ns() // 1_000_000)


@pytest.fixture
async def signed_gateway(hilsim_run, tmp_path):
    """A hub and the config of an enrolled gateway whose policy must carry the governance signature (and does)."""
    scenario = tmp_path / "scenario.toml"
    scenario.write_text(SCENARIO)
    sim = await hilsim_run(scenario)
    private, public = write_governance_keypair(tmp_path / "governance")
    policy_path = tmp_path / "policy.toml"
    policy_path.write_text(POLICY)
    write_signature(policy_path, load_policy(policy_path).digest, load_governance_private_key(private))
    async with run_hub(listen="127.0.0.1:0", state_dir=tmp_path / "hub") as hub:
        text = sim.gateway_config_toml(state_dir=tmp_path / "state", hub=hub.url, gateway_id="pole-9", policy="policy.toml")
        text = text.replace("require_signed = false", "require_signed = true", 1).replace('governance_key = ""', f'governance_key = "{public}"', 1)
        config_path = tmp_path / "gateway.toml"
        config_path.write_text(text)
        config = load_config(config_path)
        assert config.privacy.require_signed
        await enrol(hub_url=hub.url, token=await hub.create_token(), device_id="pole-9", key_path=Path(config.uplink.key))
        yield hub, config


async def _refused(hub: RunningHub, config, document: dict) -> tuple[str, bytes, bytes]:
    """Send ``document`` to a gateway run as ``ocn-edge run`` runs it; its error and its policy digest before and after.

    A config change restarts the pipeline in place, so the answer is read from whichever pipeline runs last.
    """
    stop = asyncio.Event()
    running: list[Gateway] = []
    task = asyncio.create_task(run_gateway(config, stop=stop, started=running.append))
    try:
        await _until(lambda: running)
        first = running[0]
        signed = first.policy.digest
        await unchecked_desired(hub, document)
        assert first.uplink is not None
        await first.uplink.send_status()
        await _until(lambda: running[-1].desired.last_error != "" or running[-1].desired.applied_etag != "")
        return running[-1].desired.last_error, signed, running[-1].policy.digest
    finally:
        stop.set()
        await task


async def test_a_hub_policy_is_refused_where_the_policy_must_be_signed(signed_gateway):
    hub, config = signed_gateway
    error, before, after = await _refused(hub, config, {"policy": KEEP_ALL})
    assert "require_signed" in error, error
    assert after == before, "the governance-signed policy stays in force"


async def test_a_desired_config_cannot_switch_off_the_signed_policy_requirement(signed_gateway):
    hub, config = signed_gateway
    # One document that first lifts the requirement, then brings a policy that keeps every value as measured.
    error, before, after = await _refused(hub, config, {"config": {"privacy": {"require_signed": False}}, "policy": KEEP_ALL})
    assert "may not change privacy.require_signed" in error, error
    assert after == before, "the governance-signed policy stays in force"


async def test_a_desired_config_cannot_name_another_governance_key(signed_gateway, tmp_path):
    hub, config = signed_gateway
    _, rogue = write_governance_keypair(tmp_path / "rogue")
    error, before, after = await _refused(hub, config, {"config": {"privacy": {"governance_key": str(rogue)}}})
    assert "may not change privacy.governance_key" in error, error
    assert after == before


async def test_the_hub_key_is_never_pinned_over_plain_http_beyond_loopback():
    # 192.0.2.0/24 is TEST-NET-1: the refusal comes before any connection is tried, so nothing leaves this machine.
    transport = HttpTransport("http://192.0.2.10:8080")
    try:
        with pytest.raises(TransportError, match="pinned only over https"):
            await transport.fetch_hub_key()
    finally:
        await transport.aclose()


def test_a_desired_document_the_hub_signed_for_another_gateway_is_not_applied(tmp_path) -> None:
    # Whoever carries documents (a broker, a proxy) cannot hand one gateway's signed document to another.
    hub_key = Ed25519PrivateKey.generate()
    state = DesiredState(tmp_path / "state", device_id="pole-9")
    signed = sign_document({"device_id": "pole-8", "policy": KEEP_ALL}, hub_key)
    with pytest.raises(DesiredIgnored, match="is for device 'pole-8', not 'pole-9'"):  # ignored: not held against etag-1
        state.verify(signed, "etag-1", hub_key.public_key())
    assert state.verify(sign_document({"device_id": "pole-9", "policy": KEEP_ALL}, hub_key), "etag-2", hub_key.public_key()).policy == KEEP_ALL

"""Rotating the hub's signing key and the CA gateways trust over the signed desired documents, end to end: a real hub over
HTTP (and behind TLS), gateways run as `ocn-edge run` runs them — one online through the rotation, one offline that comes
back after the hub switched and still follows."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization

from edge.cli import main
from edge.config import load_config
from edge.demo import DEMO_POLICY
from edge.desired import DesiredIgnored, DesiredState
from edge.enrol import enrol
from edge.protocol import generate_keypair, key_id
from edge.protocol.desired import sign_document
from edge.protocol.hubtrust import ROLLOVER, load_pem, rollover_link
from edge.runtime import Gateway
from hilsim import run_scenario
from hub.app import RunningHub, run_hub
from hub.fleet import desired_document
from tests.update.trustkit import Authority, TlsFront, gateway_running, until


def hub_cli(tmp_path: Path, *args: str) -> int:
    return main(["hub", *args, "--state-dir", str(tmp_path / "hub")])


async def etag_of(hub: RunningHub, device_id: str) -> str:
    device = await hub.hub.store.device(device_id)
    assert device is not None
    return (await desired_document(hub.hub.store, device))[1]


async def applied(hub: RunningHub, gateways: list[Gateway], device_id: str) -> None:
    """Tell the hub how the gateway stands (a status report; its answer carries a newer document) until it applied the newest,
    then report that."""
    want = await etag_of(hub, device_id)
    for _ in range(3):  # a document applied by a pipeline restart is reported by the pipeline that follows
        gateway = gateways[-1]
        assert gateway.uplink is not None
        await gateway.uplink.send_status()

        def settled(g: Gateway = gateway) -> bool:
            return g.desired.applied_etag == want or gateways[-1] is not g or bool(g.desired.last_error)

        await until(settled, f"{device_id} applying {want}")
        if gateways[-1].desired.applied_etag == want:
            uplink = gateways[-1].uplink
            assert uplink is not None
            await uplink.send_status()  # and tells the hub, as its next status report would
            return
    raise AssertionError(f"{device_id}: {gateways[-1].desired.last_error or 'not applied'}")


def pinned(state: Path) -> str:
    return key_id(load_pem((state / "hub.pub").read_bytes(), where="hub.pub")).hex()


async def test_the_hub_key_rotates_and_a_gateway_offline_through_two_rotations_follows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async with run_hub(state_dir=tmp_path / "hub", admin_token="x") as hub, run_scenario("default", seed=5, run_dir=tmp_path / "sim") as sim:
        configs = {}
        for name in ("pole-0001", "pole-0002"):
            configs[name] = tmp_path / f"{name}.toml"
            configs[name].write_text(sim.gateway_config_toml(state_dir=tmp_path / name, hub=hub.url, gateway_id=name, policy=str(DEMO_POLICY)))
            await enrol(hub_url=hub.url, token=await hub.create_token(fleet="street"), device_id=name, key_path=Path(load_config(configs[name]).uplink.key))
        await hub.set_desired("fleet", "street", {})  # a document: each gateway pins the hub's first key
        first = key_id(hub.hub.signing_key).hex()
        async with gateway_running(configs["pole-0002"]) as gateways:
            await applied(hub, gateways, "pole-0002")
        assert pinned(tmp_path / "pole-0002") == first  # and now pole-0002 is off, through everything below
        async with gateway_running(configs["pole-0001"]) as gateways:
            await applied(hub, gateways, "pole-0001")
            for _ in range(2):
                assert await asyncio.to_thread(hub_cli, tmp_path, "key", "rotate") == 0
                await applied(hub, gateways, "pole-0001")
                announced = (tmp_path / "pole-0001/hub.next.pub").read_bytes()  # kept; documents of either key are accepted
                async with aiohttp.ClientSession() as http, http.get(f"{hub.url}/fleet", headers={"Authorization": "Bearer x"}) as resp:
                    page = await resp.text()  # the dashboard says how far the gateways are: pole-0002 is off
                assert "A new hub signing key is announced" in page and "1 of 2 active gateways applied" in page
                assert await asyncio.to_thread(hub_cli, tmp_path, "key", "switch") == 0
                await applied(hub, gateways, "pole-0001")
                assert (tmp_path / "pole-0001/hub.pub").read_bytes() == announced and not (tmp_path / "pole-0001/hub.next.pub").exists()
        newest = pinned(tmp_path / "pole-0001")
        assert newest != first
        # pole-0002 comes back two keys later: the rollover chain every document carries leads it from the key it pinned.
        async with gateway_running(configs["pole-0002"]) as gateways:
            await applied(hub, gateways, "pole-0002")
        assert pinned(tmp_path / "pole-0002") == newest
        capsys.readouterr()
        assert await asyncio.to_thread(hub_cli, tmp_path, "key", "status") == 0
        status = capsys.readouterr().out
        assert f"signing desired documents with key id {newest} (hub.signing.key); 2 rollover(s)" in status
        assert "2 of 2 active devices applied their current desired document" in status
        # A gateway that pinned a key the hub never vouched for (a hub rebuilt from nothing) is told what to do.
        stranger = DesiredState(tmp_path / "stranger", device_id="pole-0001")
        stranger.pin_hub_key(generate_keypair().public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        device, stranger_key = await hub.hub.store.device("pole-0001"), stranger.hub_key()
        assert device is not None and stranger_key is not None
        document, etag = await desired_document(hub.hub.store, device)
        assert document is not None
        with pytest.raises(DesiredIgnored, match=r"neither the pinned hub key .* delete .*hub.pub to pin the hub's key again"):
            stranger.verify(hub.hub.ingest.signer.sign(document), etag, stranger_key)


def test_a_document_signed_by_an_unannounced_key_with_a_forged_rollover_is_refused(tmp_path: Path) -> None:
    old, new, forger = generate_keypair(), generate_keypair(), generate_keypair()
    state = DesiredState(tmp_path, device_id="pole-7")
    signed = sign_document({"device_id": "pole-7", "fleet": "street", "etag": "e1"}, new)
    signed[ROLLOVER] = [{**rollover_link(forger, new.public_key()), "previous_key_id": key_id(old).hex()}]
    with pytest.raises(DesiredIgnored, match="rollover from key id .* does not verify"):
        state.verify(signed, "e1", old.public_key())
    signed[ROLLOVER] = [rollover_link(old, new.public_key())]
    assert state.verify(signed, "e1", old.public_key()).etag == "e1"


def refused_with_old_ca(url: str, ca: str) -> bool:
    context = ssl.create_default_context(cafile=ca)
    host, port = url.removeprefix("https://").split(":")
    try:
        with socket.create_connection((host, int(port)), timeout=10) as raw, context.wrap_socket(raw, server_hostname=host):
            return False
    except ssl.SSLCertVerificationError:
        return True


async def test_the_ca_changes_over_the_signed_documents_and_a_gateway_offline_meanwhile_follows_through_the_cross_certificate(
    tmp_path: Path,
) -> None:
    old, new = Authority("old"), Authority("new")
    (tmp_path / "old-ca.pem").write_text(old.pem())
    (tmp_path / "both.pem").write_text(old.pem() + new.pem())
    async with run_hub(state_dir=tmp_path / "hub", admin_token="x") as hub, run_scenario("default", seed=6, run_dir=tmp_path / "sim") as sim:
        front = TlsFront(hub.url)
        front.serve(*old.server(tmp_path, "old-server"))
        url = await front.start()
        try:
            configs = {}
            for name in ("pole-0001", "pole-0002"):
                configs[name] = tmp_path / f"{name}.toml"
                text = sim.gateway_config_toml(state_dir=tmp_path / name, hub=url, gateway_id=name, policy=str(DEMO_POLICY))
                configs[name].write_text(text.replace('ca = ""', f'ca = "{tmp_path / "old-ca.pem"}"'))
                await enrol(hub_url=url, token=await hub.create_token(fleet="street"), device_id=name,
                            key_path=Path(load_config(configs[name]).uplink.key), ca=tmp_path / "old-ca.pem")
            # pole-0002 is off from here on; pole-0001 gets the bundle of both CAs and restarts its pipeline to use it.
            async with gateway_running(configs["pole-0001"]) as gateways:
                assert await asyncio.to_thread(hub_cli, tmp_path, "key", "ca", "--bundle", str(tmp_path / "both.pem")) == 0
                await applied(hub, gateways, "pole-0001")
                assert (tmp_path / "pole-0001/hub-ca.pem").read_text() == old.pem() + new.pem() and len(gateways) == 2
                # A bundle that would not verify the certificate the hub presents now would cut the gateway off: refused.
                (tmp_path / "new-only.pem").write_text(new.pem())
                assert await asyncio.to_thread(hub_cli, tmp_path, "key", "ca", "--bundle", str(tmp_path / "new-only.pem")) == 0
                assert gateways[-1].uplink is not None
                await gateways[-1].uplink.send_status()
                await until(lambda: "does not verify the hub's certificate" in gateways[-1].desired.last_error, "the bundle refused")
                assert (tmp_path / "pole-0001/hub-ca.pem").read_text() == old.pem() + new.pem() and len(gateways) == 2
                assert await asyncio.to_thread(hub_cli, tmp_path, "key", "ca", "--bundle", str(tmp_path / "both.pem")) == 0
                # The city moves the hub to a certificate of the new CA, served with the new CA cross-signed by the old one.
                cross = old.cross_sign(new)
                front.serve(*new.server(tmp_path, "new-server-cross", chain=(cross,)))
                await applied(hub, gateways, "pole-0001")
            # pole-0002 comes back knowing only the old CA: the cross-certificate lets it reach the hub and take the bundle.
            async with gateway_running(configs["pole-0002"]) as gateways:
                await applied(hub, gateways, "pole-0002")
                assert (tmp_path / "pole-0002/hub-ca.pem").read_text() == old.pem() + new.pem()
                front.serve(*new.server(tmp_path, "new-server"))  # the changeover is over: the new CA's certificate alone
                assert await asyncio.to_thread(refused_with_old_ca, url, str(tmp_path / "old-ca.pem"))  # [uplink] ca alone no longer reaches it
                assert await asyncio.to_thread(hub_cli, tmp_path, "key", "ca", "--bundle", str(tmp_path / "new-ca.pem")) == 2  # no such file
                (tmp_path / "new-ca.pem").write_text(new.pem())
                assert await asyncio.to_thread(hub_cli, tmp_path, "key", "ca", "--bundle", str(tmp_path / "new-ca.pem")) == 0
                await applied(hub, gateways, "pole-0002")  # reached with the bundle it holds; now it trusts the new CA only
                assert (tmp_path / "pole-0002/hub-ca.pem").read_text() == new.pem()
        finally:
            await front.close()

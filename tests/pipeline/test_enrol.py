"""`ocn-edge enrol` creates the device key if needed, registers it at the reference hub, and explains refusals."""

from __future__ import annotations

import asyncio
import stat
import sys
from pathlib import Path

import pytest

from edge.enrol import EnrolError, enrol
from edge.protocol import key_id, load_private_key, write_keypair
from edge.spool import Spool
from edge.transport import open_transport
from edge.uplink import Uplink
from hub.app import run_hub
from tests.pipeline.conftest import seal_readings

REPO = Path(__file__).resolve().parents[2]


def write_config(directory: Path, hub_url: str, device_id: str = "pole-0042") -> Path:
    (directory / "policy.toml").write_text("")
    config = directory / "gateway.toml"
    config.write_text(
        f'[gateway]\nid = "{device_id}"\nsite = "test"\nstate_dir = "state"\n'
        f'[privacy]\npolicy = "policy.toml"\n[uplink]\nhub = "{hub_url}"\ntimeout = "5s"\n'
    )
    return config


async def ocn_edge(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge.cli", *args, cwd=REPO,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_enrol_creates_a_private_key_only_its_owner_can_read_and_prints_the_hub_confirmed_key_id(tmp_path):
    async with run_hub(state_dir=tmp_path / "hub") as hub:
        token = await hub.create_token()
        config = write_config(tmp_path, hub.url)
        code, out, err = await ocn_edge("enrol", str(config), "--token", token)
    key_path = tmp_path / "state" / "device.key"
    assert code == 0, err
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert f"key id {key_id(load_private_key(key_path)).hex()}" in out
    assert "status active" in out
    assert "created device key" in out


async def test_an_enrolled_gateway_delivers_batches_and_status_the_hub_takes(tmp_path):
    async with run_hub(state_dir=tmp_path / "hub") as hub:
        config = write_config(tmp_path, hub.url)
        code, _, err = await ocn_edge("enrol", str(config), "--token", await hub.create_token())
        assert code == 0, err
        key = load_private_key(tmp_path / "state" / "device.key")
        spool = await Spool.open(tmp_path / "state" / "spool.db", max_bytes=10_000_000)
        await spool.begin_boot()
        for _ in range(3):
            spool.put(seal_readings(key, spool, 20), readings=20)
        uplink = Uplink(spool=spool, transport=open_transport(hub.url), private_key=key, device_id="pole-0042", status_interval_s=0)
        task = asyncio.create_task(uplink.run())
        async with asyncio.timeout(20):
            while spool.stats()["batches"]:
                await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        status_taken = await uplink.send_status()
        await uplink.aclose()
        await spool.close()
        counters = await hub.counters("pole-0042")
    assert (counters["batches_stored"], counters["readings_stored"]) == (3, 60)
    assert status_taken


async def test_a_used_token_is_refused_with_what_to_do(tmp_path):
    async with run_hub(state_dir=tmp_path / "hub") as hub:
        token = await hub.create_token(uses=1)
        await enrol(hub_url=hub.url, token=token, device_id="pole-0042", key_path=tmp_path / "a" / "device.key")
        with pytest.raises(EnrolError, match="the hub refused the enrolment token .*ask city IT for a new token"):
            await enrol(hub_url=hub.url, token=token, device_id="pole-0043", key_path=tmp_path / "b" / "device.key")


async def test_a_device_id_enrolled_with_another_key_is_reported_as_a_conflict(tmp_path):
    async with run_hub(state_dir=tmp_path / "hub") as hub:
        await enrol(hub_url=hub.url, token=await hub.create_token(), device_id="pole-0042", key_path=tmp_path / "a" / "device.key")
        with pytest.raises(EnrolError, match="'pole-0042' is already enrolled at the hub with another key"):
            await enrol(
                hub_url=hub.url, token=await hub.create_token(), device_id="pole-0042", key_path=tmp_path / "b" / "device.key"
            )


async def test_an_existing_device_key_is_kept_and_enrolled(tmp_path, device_key):
    write_keypair(tmp_path, private_key=device_key)
    async with run_hub(state_dir=tmp_path / "hub") as hub:
        result = await enrol(hub_url=hub.url, token=await hub.create_token(), device_id="pole-0042", key_path=tmp_path / "device.key")
    assert (result.key_created, result.key_id) == (False, key_id(device_key).hex())


async def test_an_unreachable_hub_is_named_in_the_error(tmp_path):
    with pytest.raises(EnrolError, match=r"cannot reach the hub at http://127.0.0.1:9/ .*check \[uplink\] hub"):
        await enrol(hub_url="http://127.0.0.1:9/", token="t0k3n", device_id="pole-0042", key_path=tmp_path / "device.key")


async def test_the_command_explains_a_refusal_and_exits_1(tmp_path):
    config = write_config(tmp_path, "http://127.0.0.1:9/")
    code, _, err = await ocn_edge("enrol", str(config), "--token", "t0k3n")
    assert code == 1
    assert f"{config}: enrolment failed: cannot reach the hub at http://127.0.0.1:9/" in err

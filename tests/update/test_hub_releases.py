"""The hub keeps release bundles (`ocn-edge hub release add`) and serves them to gateways with HTTP range requests."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.cli import main
from edge.protocol import generate_keypair
from edge.update.bundle import ReleaseSpec, build_bundle
from edge.update.fetch import fetch_release
from edge.update.manifest import file_digest
from hub import RunningHub, run_hub
from tests.update.wheels import tiny_wheel

TARGET = "aarch64-cp311"


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return generate_keypair()


@pytest.fixture
def public_pem(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    path = tmp_path / "release.pub"
    path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[RunningHub]:
    async with run_hub(listen="127.0.0.1:0", state_dir=tmp_path / "hub", admin_token="admin-secret") as running:
        yield running


def bundle(tmp_path: Path, key: Ed25519PrivateKey, version: str) -> Path:
    folder = tmp_path / f"wheelhouse-{version}" / TARGET
    own = tiny_wheel(folder, "ocn_edge", version, text=f"# {hashlib.shake_256(b'code').hexdigest(40_000)}\n")
    (folder / "constraints.txt").write_text(f"ocn-edge=={version}  # {own.name}\n")
    return build_bundle(folder.parent, tmp_path / f"ocn-edge-{version}", ReleaseSpec(version, "1.0.0"), key)


def add(tmp_path: Path, path: Path, public_pem: Path) -> int:
    return main(["hub", "release", "add", str(path), "--key", str(public_pem), "--state-dir", str(tmp_path / "hub")])


async def test_a_kept_release_is_served_and_a_gateway_resumes_its_download_with_a_range(tmp_path: Path, key, public_pem, hub, capsys) -> None:
    source = bundle(tmp_path, key, "2.0.0")
    assert add(tmp_path, source, public_pem) == 0
    assert "release 2.0.0 kept" in capsys.readouterr().out
    wheel = next((source / "wheels").glob("*.whl"))
    data = wheel.read_bytes()
    part = tmp_path / "gw/update/blobs" / f"{file_digest(wheel)[1].hex()}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:1000])
    fetched = await asyncio.to_thread(
        lambda: fetch_release(f"{hub.url}/releases/2.0.0", key.public_key(), state=tmp_path / "gw", opt=tmp_path / "opt", target=TARGET, installed="1.0.0")
    )
    assert (fetched.bundle / "wheels" / wheel.name).read_bytes() == data
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{hub.url}/releases/2.0.0/wheels/{wheel.name}", headers={"Range": "bytes=1000-"}) as response:
            assert response.status == 206 and await response.read() == data[1000:]
        for path in ("2.0.0/../../hub.key", "2.0.0/.hidden", "9.9.9/manifest.cose", "2.0.0/nothing.whl"):
            async with http.get(f"{hub.url}/releases/{path}") as response:
                assert response.status == 404, path


def test_a_release_is_kept_once_and_a_tampered_bundle_not_at_all(tmp_path: Path, key, public_pem, capsys) -> None:
    source = bundle(tmp_path, key, "2.0.0")
    assert add(tmp_path, source, public_pem) == 0
    assert add(tmp_path, source, public_pem) == 1
    assert "release 2.0.0 is kept already" in capsys.readouterr().err
    other = bundle(tmp_path, key, "3.0.0")
    wheel = next((other / "wheels").glob("*.whl"))
    data = bytearray(wheel.read_bytes())
    data[200] ^= 0xFF
    wheel.write_bytes(bytes(data))
    assert add(tmp_path, other, public_pem) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "refused (tampered)" in err
    assert not (tmp_path / "hub/releases/3.0.0").exists()

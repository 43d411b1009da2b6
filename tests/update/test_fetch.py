"""The gateway's download of a release (edge.update.fetch) from a real HTTP server on loopback: only what it lacks, resumed, checked.

The bundles here hold small wheels that are never installed (tests/update/test_update.py installs
real ones); the server is aiohttp's static file handler, which answers Range requests as a city's
web server or the hub would.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.releases.wheels import write_wheel
from edge.protocol import generate_keypair
from edge.update.bundle import ReleaseSpec, build_bundle
from edge.update.fetch import FETCHED_FILE, REQUEST_FILE, Fetched, FetchError, fetch_release
from edge.update.manifest import Refused, check_bundle, file_digest
from tests.update.wheels import tiny_wheel

TARGET = "aarch64-cp311"
PADDING = 200_000  # the own wheel's size, about: big enough that a resumed download is visibly shorter


@dataclass
class Served:
    url: str
    root: Path
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, Range header)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Served]:
    served = Served("", tmp_path / "www")
    served.root.mkdir()

    @web.middleware
    async def record(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        served.requests.append((request.path, request.headers.get("Range", "")))
        return await handler(request)

    app = web.Application(middlewares=[record])
    app.router.add_static("/", served.root)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    served.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield served
    await runner.cleanup()


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return generate_keypair()


def release(served: Served, key: Ed25519PrivateKey, version: str, *, delta_from: list[Path] | None = None) -> Path:
    """A bundle of ``version`` (its own wheel padded to PADDING bytes, one dependency) served under /ocn-edge-<version>."""
    source = served.root.parent / f"wheelhouse-{version}" / TARGET
    own = write_wheel(
        source,
        f"ocn_edge-{version}-py3-none-any.whl",
        {
            "edge/__init__.py": f"__version__ = {version!r}\n".encode(),
            "edge/padding.bin": hashlib.shake_256(b"code").digest(PADDING),  # incompressible, the same in every version
            f"ocn_edge-{version}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: ocn-edge\nVersion: {version}\n".encode(),
            f"ocn_edge-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        },
    )
    dep = tiny_wheel(source, "cbor_like", "5.6.0", text=f"# {hashlib.shake_256(b'dependency').hexdigest(25_000)}\n")
    (source / "constraints.txt").write_text(f"ocn-edge=={version}\ncbor-like==5.6.0  # {own.name} {dep.name}\n")
    return build_bundle(source.parent, served.root / f"ocn-edge-{version}", ReleaseSpec(version, "1.0.0"), key, delta_from=delta_from)


def installed_slot(opt: Path, bundle: Path) -> None:
    """Slot a, current, holding the bundle it was built from (as the installer and install.sh leave it)."""
    shutil.copytree(bundle, opt / "a" / "release")
    (opt / "current").symlink_to("a")


async def fetch(
    served: Served, key: Ed25519PrivateKey, version: str, state: Path, opt: Path, *, installed: str = "1.0.0", target: str = TARGET, max_bytes: int = 0
) -> Fetched:
    url = f"{served.url}/ocn-edge-{version}"
    return await asyncio.to_thread(lambda: fetch_release(url, key.public_key(), state=state, opt=opt, target=target, installed=installed, max_bytes=max_bytes))


def own_wheel(bundle: Path) -> Path:
    return next((bundle / "wheels").glob("ocn_edge-*.whl"))


async def test_only_the_files_the_device_does_not_hold_travel_and_the_install_is_requested(server: Served, key, tmp_path: Path) -> None:
    installed_slot(tmp_path / "opt", release(server, key, "1.0.0"))
    bundle = release(server, key, "2.0.0")
    fetched = await fetch(server, key, "2.0.0", tmp_path / "state", tmp_path / "opt", installed="1.0.0")
    paths = [path for path, _ in server.requests]
    assert not any("cbor_like" in path for path in paths), paths  # held in slot a: not downloaded
    assert sorted(paths) == sorted(
        f"/ocn-edge-2.0.0/{name}" for name in ("manifest.cose", "targets/aarch64-cp311/constraints.txt", own_wheel(bundle).relative_to(bundle).as_posix())
    )
    expected = sum((bundle / path.split("/", 2)[2]).stat().st_size for path in paths)
    assert fetched.downloaded == expected and fetched.requests == 3 and fetched.reused == 1
    request = json.loads((tmp_path / "state/update" / REQUEST_FILE).read_text())
    assert request["version"] == "2.0.0" and Path(request["bundle"]) == fetched.bundle
    assert check_bundle(fetched.bundle, key.public_key(), now=1e9, target=TARGET, installed="1.0.0").version == "2.0.0"


async def test_an_interrupted_download_resumes_with_a_range_request(server: Served, key, tmp_path: Path) -> None:
    bundle = release(server, key, "2.0.0")
    wheel = own_wheel(bundle)
    data = wheel.read_bytes()
    part = tmp_path / "state/update/blobs" / f"{file_digest(wheel)[1].hex()}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[: len(data) // 2])  # what a first try got before the link dropped
    fetched = await fetch(server, key, "2.0.0", tmp_path / "state", tmp_path / "opt", installed="1.0.0")
    ranges = dict(server.requests)
    assert ranges[f"/ocn-edge-2.0.0/wheels/{wheel.name}"] == f"bytes={len(data) // 2}-"
    assert fetched.downloaded < len(data)  # only the second half travelled (and the small files)
    assert (fetched.bundle / "wheels" / wheel.name).read_bytes() == data


async def test_a_byte_allowance_pauses_the_download_and_the_next_run_completes_it(server: Served, key, tmp_path: Path) -> None:
    bundle = release(server, key, "2.0.0")
    with pytest.raises(FetchError, match="byte allowance of 60000 is used up"):
        await fetch(server, key, "2.0.0", tmp_path / "state", tmp_path / "opt", installed="1.0.0", max_bytes=60_000)
    assert not (tmp_path / "state/update" / REQUEST_FILE).exists()
    assert json.loads((tmp_path / "state/update" / FETCHED_FILE).read_text())["state"] == "downloading"
    fetched = await fetch(server, key, "2.0.0", tmp_path / "state", tmp_path / "opt", installed="1.0.0")
    total = sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())
    assert fetched.downloaded < total  # what the first run fetched was kept
    assert (tmp_path / "state/update" / REQUEST_FILE).exists()


@pytest.mark.parametrize(("damage", "reason"), [("changed", "tampered"), ("cut", "truncated")])
async def test_a_damaged_file_on_the_server_is_refused_and_nothing_is_requested(server: Served, key, tmp_path: Path, damage: str, reason: str) -> None:
    wheel = own_wheel(release(server, key, "2.0.0"))
    data = wheel.read_bytes()
    wheel.write_bytes(data[:-1] + bytes([data[-1] ^ 1]) if damage == "changed" else data[:-5000])
    with pytest.raises(Refused) as caught:
        await fetch(server, key, "2.0.0", tmp_path / "state", tmp_path / "opt", installed="1.0.0")
    assert caught.value.reason == reason
    record = json.loads((tmp_path / "state/update" / FETCHED_FILE).read_text())
    assert record["state"] == "refused" and record["reason"] == reason
    assert not (tmp_path / "state/update" / REQUEST_FILE).exists()
    assert not list((tmp_path / "state/update/blobs").glob(f"{wheel.name}*"))


@pytest.mark.parametrize(
    ("installed", "target", "reason"),
    [("2.0.0", TARGET, "downgrade"), ("1.0.0", "x86_64-cp313", "other_platform")],
)
async def test_a_release_this_device_must_not_install_is_refused_before_any_file_is_fetched(
    server: Served, key, tmp_path: Path, installed: str, target: str, reason: str
) -> None:
    release(server, key, "2.0.0")
    with pytest.raises(Refused) as caught:
        await fetch(server, key, "2.0.0", tmp_path / "state", tmp_path / "opt", installed=installed, target=target)
    assert caught.value.reason == reason
    assert [path for path, _ in server.requests] == ["/ocn-edge-2.0.0/manifest.cose"]


async def test_a_release_signed_by_another_key_is_refused(server: Served, key, tmp_path: Path) -> None:
    release(server, key, "2.0.0")
    with pytest.raises(Refused) as caught:
        await fetch(server, generate_keypair(), "2.0.0", tmp_path / "state", tmp_path / "opt", installed="1.0.0")
    assert caught.value.reason == "wrong_key"


async def test_a_changed_wheel_travels_as_a_delta_from_the_installed_one(server: Served, key, tmp_path: Path) -> None:
    old = release(server, key, "1.0.0")
    installed_slot(tmp_path / "opt", old)
    bundle = release(server, key, "2.0.0", delta_from=[old])
    fetched = await fetch(server, key, "2.0.0", tmp_path / "state", tmp_path / "opt")
    paths = [path for path, _ in server.requests]
    assert f"/ocn-edge-2.0.0/wheels/{own_wheel(bundle).name}" not in paths
    assert any(path.startswith("/ocn-edge-2.0.0/deltas/") for path in paths), paths
    assert fetched.downloaded < PADDING // 10  # the manifest, the constraints and a delta of a few kilobytes
    assert (fetched.bundle / "wheels" / own_wheel(bundle).name).read_bytes() == own_wheel(bundle).read_bytes()


async def test_a_tampered_delta_is_refused(server: Served, key, tmp_path: Path) -> None:
    old = release(server, key, "1.0.0")
    installed_slot(tmp_path / "opt", old)
    bundle = release(server, key, "2.0.0", delta_from=[old])
    (delta,) = (bundle / "deltas").glob("*/*.zst")
    delta.write_bytes(delta.read_bytes()[:-1] + bytes([delta.read_bytes()[-1] ^ 0xFF]))
    with pytest.raises(Refused) as caught:
        await fetch(server, key, "2.0.0", tmp_path / "state", tmp_path / "opt")
    assert caught.value.reason == "tampered" and "deltas/" in str(caught.value)

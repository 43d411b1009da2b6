"""Release key rotation: a rollover signed by the old key lets gateways installed with it accept releases of the new key —
also a gateway that was offline through two rotations — and retires the old key once its time is up."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path

import cbor2
import pytest

from edge.cli import main
from edge.protocol import generate_keypair, key_id
from edge.protocol.keys import load_private_key
from edge.protocol.release import open_release, seal_release
from edge.update.fetch import fetch_release
from edge.update.manifest import Refused, this_target
from edge.update.rollover import ROLLOVER_FILE, check_trusted_bundle, load_chain, seal_rollover
from edge.update.updater import Updater, parse_target
from hub.app import run_hub
from tests.update.conftest import Releases
from tests.update.test_installer import installer, journal_step, kill_when, request, root, stopped
from tests.update.test_updater import tiny_bundle

__all__ = ["root"]  # the fixture, from tests/update/test_installer.py


def keygen(folder: Path) -> Path:
    assert main(["release", "keygen", "--out", str(folder)]) == 0
    return folder


def rotate(old: Path, new: Path, out: Path, *, chain: Path | None = None, days: int = 30) -> Path:
    args = ["release", "rotate", "--key", str(old / "release.key"), "--new", str(new / "release.pub"), "--out", str(out), "--old-valid-days", str(days)]
    assert main([*args, *(["--chain", str(chain)] if chain else [])]) == 0
    return out


def build(tmp_path: Path, keys: Path, version: str, chain: Path | None = None) -> Path:
    """A release of this machine's target built by the CLI with ``keys`` (and the chain leading to them)."""
    tiny_bundle(tmp_path / "scratch", load_private_key(keys / "release.key"), version)
    wheelhouse = tmp_path / "scratch" / f"wheelhouse-{version}"
    out = tmp_path / f"bundle-{version}"
    args = ["release", "build", str(wheelhouse), "--version", version, "--min-from", "0.0.1", "--key", str(keys / "release.key"), "--out", str(out)]
    assert main([*args, *(["--rollover", str(chain)] if chain else [])]) == 0
    return out


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Path]:
    """Key A (the one gateways were installed with), then B and C, each retiring the one before."""
    return {name: keygen(tmp_path / name) for name in "ABC"}


def test_a_release_of_the_new_key_verifies_with_the_old_public_key_through_the_chain(tmp_path: Path, keys, capsys) -> None:
    ab = rotate(keys["A"], keys["B"], tmp_path / "ab.cbor")
    abc = rotate(keys["B"], keys["C"], tmp_path / "abc.cbor", chain=ab)
    bundle = build(tmp_path, keys["C"], "2.0.0", chain=abc)
    capsys.readouterr()
    assert main(["release", "verify", str(bundle), "--key", str(keys["A"] / "release.pub"), "--target", "this", "--installed", "1.0.0"]) == 0
    c_id = key_id(load_private_key(keys["C"] / "release.key")).hex()
    a_id = key_id(load_private_key(keys["A"] / "release.key")).hex()
    assert f"signed by key id {c_id} (through 2 rollover(s) from key id {a_id})" in capsys.readouterr().out
    # Without the chain the new key is a stranger to a gateway of key A.
    (bundle / ROLLOVER_FILE).unlink()
    assert main(["release", "verify", str(bundle), "--key", str(keys["A"] / "release.pub")]) == 1
    assert "refused (wrong_key)" in capsys.readouterr().err


def test_a_chain_not_started_by_a_trusted_key_or_changed_is_refused(tmp_path: Path, keys, capsys) -> None:
    stranger = keygen(tmp_path / "S")
    rotate(stranger, keys["C"], tmp_path / "sc.cbor")  # someone's key vouching for C: not a key the gateways trust
    bundle = build(tmp_path, keys["C"], "2.0.0", chain=tmp_path / "sc.cbor")
    assert main(["release", "verify", str(bundle), "--key", str(keys["A"] / "release.pub")]) == 1
    assert "refused (wrong_key): rollover 0 is signed by key id" in capsys.readouterr().err
    a, c = load_private_key(keys["A"] / "release.key"), load_private_key(keys["C"] / "release.key")
    rollover = bytearray(seal_rollover(a, c.public_key(), issued=1, old_key_until=2))
    rollover[-70] ^= 1  # inside the payload: the new key
    (bundle / ROLLOVER_FILE).write_bytes(cbor2.dumps([bytes(rollover)]))
    with pytest.raises(Refused) as refused:
        check_trusted_bundle(bundle, a.public_key(), now=time.time())
    assert refused.value.reason in ("bad_signature", "malformed")
    # The CLI refuses to sign with a key the chain does not lead to, before writing anything.
    assert main(["release", "rotate", "--key", str(keys["A"] / "release.key"), "--new", str(keys["C"] / "release.pub"),
                 "--chain", str(tmp_path / "sc.cbor"), "--out", str(tmp_path / "x.cbor")]) == 2
    assert "its newest key is key id" in capsys.readouterr().err and not (tmp_path / "x.cbor").exists()


async def test_a_gateway_offline_through_two_rotations_follows_the_chain_the_hub_serves_and_the_old_key_retires(tmp_path: Path, keys) -> None:
    ab = rotate(keys["A"], keys["B"], tmp_path / "ab.cbor", days=0)  # A retired at once, for gateways that hold the rollover
    abc = rotate(keys["B"], keys["C"], tmp_path / "abc.cbor", chain=ab)
    a_pub = keys["A"] / "release.pub"
    async with run_hub(state_dir=tmp_path / "hub", admin_token="x") as hub:
        # The hub is given only key A too: it keeps a release of key C because the bundle carries the chain from A.
        assert main(["hub", "release", "add", str(build(tmp_path, keys["C"], "2.0.0", chain=abc)), "--key", str(a_pub),
                     "--state-dir", str(tmp_path / "hub")]) == 0
        c_id = key_id(load_private_key(keys["C"] / "release.key")).hex()
        # A gateway that was off while A became B and B became C: it knows key A and nothing else.
        updater = Updater(state_dir=tmp_path / "gw", hub_url=hub.url, release_key=a_pub, opt=tmp_path / "opt", running="0.1.0", retry_s=3600)
        assert await updater.try_once(parse_target({"version": "2.0.0", "url": "/releases/2.0.0", "key_id": c_id})) is None
        request = json.loads((tmp_path / "gw/update/request.json").read_text())
        assert request["version"] == "2.0.0"
        assert len(load_chain(Path(request["bundle"]) / ROLLOVER_FILE)) == 2  # the installer walks it from /etc/ocn-edge/release.pub too
        installer_view, _ = check_trusted_bundle(Path(request["bundle"]), load_private_key(keys["A"] / "release.key").public_key(),
                                                 now=time.time(), target=this_target(), installed="0.1.0")
        assert installer_view.version == "2.0.0"
        assert len(load_chain(tmp_path / "gw/update" / ROLLOVER_FILE)) == 2  # kept: the gateway now trusts C
        # Key A is retired by the rollover the gateway now holds: a release signed with A (stolen, say) is refused, even
        # from a server that offers no chain at all.
        old = build(tmp_path, keys["A"], "3.0.0")
        assert main(["hub", "release", "add", str(old), "--key", str(a_pub), "--state-dir", str(tmp_path / "hub")]) == 0
        with pytest.raises(Refused) as refused:
            await asyncio.to_thread(lambda: fetch_release(f"{hub.url}/releases/3.0.0", load_private_key(keys["A"] / "release.key").public_key(),
                                                          state=tmp_path / "gw", opt=tmp_path / "opt", installed="2.0.0"))
        assert refused.value.reason == "wrong_key" and "retired by a rollover" in str(refused.value)
        fetched = json.loads((tmp_path / "gw/update/fetched.json").read_text())
        assert (fetched["state"], fetched["reason"]) == ("refused", "wrong_key")


def test_rotate_writes_a_chain_once(tmp_path: Path, keys, capsys) -> None:
    rotate(keys["A"], keys["B"], tmp_path / "ab.cbor")
    assert main(["release", "rotate", "--key", str(keys["A"] / "release.key"), "--new", str(keys["B"] / "release.pub"),
                 "--out", str(tmp_path / "ab.cbor")]) == 2
    assert "already exists" in capsys.readouterr().err


def test_the_privileged_installer_takes_a_release_of_the_new_key_only_with_the_chain(root: Path, releases: Releases, tmp_path: Path) -> None:
    """The installer (the slot's own code, run as the update unit runs it) walks the chain in the bundle from
    /etc/ocn-edge/release.pub; it is stopped right after its checks, before the slow build."""
    new = generate_keypair()
    anchor = load_private_key(releases.keys / "release.key")
    bundle = tmp_path / "resigned"
    shutil.copytree(releases.bundles["2.0.0"], bundle)
    raw = open_release((bundle / "manifest.cose").read_bytes(), anchor.public_key())
    (bundle / "manifest.cose").write_bytes(seal_release(raw, new))  # 2.0.0 as city IT signs it after the rotation
    request(root, bundle, "2.0.0")
    out, _ = installer(root).communicate(timeout=120)
    assert "refused (wrong_key)" in out, out  # without the chain, a stranger's key
    rollover = seal_rollover(anchor, new.public_key(), issued=int(time.time()), old_key_until=int(time.time()) + 86_400)
    (bundle / ROLLOVER_FILE).write_bytes(cbor2.dumps([rollover]))
    request(root, bundle, "2.0.0")
    process = installer(root, stop_at="build")
    kill_when(process, lambda: stopped(process))
    assert journal_step(root) == "build"  # every check passed: it was about to build the other slot

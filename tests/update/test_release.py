"""`ocn-edge release keygen|build|verify`: a bundle signed with the release key, checked offline with one reason per refusal."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import cbor2
import pytest

from edge.cli import main
from edge.protocol import ProtocolError, load_private_key, open_status, peek_header
from edge.protocol.release import open_release, seal_release
from edge.update.bundle import ReleaseSpec, build_bundle
from edge.update.manifest import MANIFEST_FILE, Refused, check_bundle, read_manifest
from tests.update.wheels import tiny_wheel

TARGET = "aarch64-cp311"


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    assert main(["release", "keygen", "--out", str(tmp_path / "keys")]) == 0
    return tmp_path / "keys"


def wheelhouse(root: Path, version: str, *, targets: tuple[str, ...] = (TARGET,)) -> Path:
    for target in targets:
        folder = root / target
        own = tiny_wheel(folder, "ocn_edge", version)
        dep = tiny_wheel(folder, "cbor_like", "5.6.0")
        (folder / "constraints.txt").write_text(f"ocn-edge=={version}\ncbor-like==5.6.0 # {own.name} {dep.name}\n")
    return root


def build(tmp_path: Path, keys: Path, version: str = "2.0.0", *extra: str, targets: tuple[str, ...] = (TARGET,)) -> Path:
    out = tmp_path / f"bundle-{version}"
    source = wheelhouse(tmp_path / f"wh-{version}", version, targets=targets)
    assert (
        main(["release", "build", str(source), "--version", version, "--min-from", "1.0.0", "--key", str(keys / "release.key"), "--out", str(out), *extra]) == 0
    )
    return out


def verify(bundle: Path, key: Path, *extra: str) -> int:
    return main(["release", "verify", str(bundle), "--key", str(key), *extra])


def refusal(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err  # one line
    return err


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_replaces_it(keys: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (keys / "release.key").stat().st_mode & 0o777 == 0o600
    assert main(["release", "keygen", "--out", str(keys)]) == 2
    assert "already exists; a release key is never replaced" in refusal(capsys)


def test_a_built_bundle_verifies_and_holds_every_wheel_once_and_a_constraints_file_per_target(tmp_path: Path, keys: Path, capsys) -> None:
    bundle = build(tmp_path, keys, targets=(TARGET, "x86_64-cp311"))
    assert sorted(p.name for p in (bundle / "wheels").iterdir()) == ["cbor_like-5.6.0-py3-none-any.whl", "ocn_edge-2.0.0-py3-none-any.whl"]
    assert (bundle / "targets" / TARGET / "constraints.txt").is_file()
    capsys.readouterr()
    assert verify(bundle, keys / "release.pub") == 0
    out = capsys.readouterr().out
    assert "release 2.0.0 verified" in out and "aarch64-cp311, x86_64-cp311" in out
    assert verify(bundle, keys / "release.pub", "--target", TARGET, "--installed", "1.0.0") == 0


def test_the_manifest_is_a_cose_sign1_message_that_no_batch_or_status_reader_accepts(tmp_path: Path, keys: Path) -> None:
    data = (build(tmp_path, keys) / MANIFEST_FILE).read_bytes()
    tag = cbor2.loads(data)
    assert tag.tag == 18 and cbor2.loads(tag.value[0])[-65539] == {0: 2}
    for reader in (peek_header, lambda d: open_status(d, load_private_key(keys / "release.key").public_key())):
        with pytest.raises(ProtocolError) as caught:
            reader(data)
        assert caught.value.reason == "wrong_type"


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("wheel_changed", "tampered"),
        ("wheel_cut", "truncated"),
        ("wheel_gone", "missing"),
        ("manifest_changed", "bad_signature"),
        ("manifest_cut", "truncated"),
        ("constraints_changed", "tampered"),
    ],
)
def test_a_damaged_bundle_is_refused_with_its_reason(tmp_path: Path, keys: Path, capsys, damage: str, reason: str) -> None:
    bundle = build(tmp_path, keys)
    wheel = bundle / "wheels" / "ocn_edge-2.0.0-py3-none-any.whl"
    manifest = bundle / MANIFEST_FILE
    if damage == "wheel_changed":
        data = bytearray(wheel.read_bytes())
        data[40] ^= 1
        wheel.write_bytes(bytes(data))
    elif damage == "wheel_cut":
        wheel.write_bytes(wheel.read_bytes()[:-100])
    elif damage == "wheel_gone":
        wheel.unlink()
    elif damage == "manifest_changed":
        manifest.write_bytes(manifest.read_bytes().replace(b"2.0.0", b"9.0.0"))
    elif damage == "manifest_cut":
        manifest.write_bytes(manifest.read_bytes()[:-30])
    else:
        constraints = bundle / "targets" / TARGET / "constraints.txt"
        constraints.write_text(constraints.read_text().replace("5.6.0", "5.6.1"))
    capsys.readouterr()
    assert verify(bundle, keys / "release.pub") == 1
    line = refusal(capsys)
    assert line.startswith(f"ocn-edge: refused ({reason}): "), line


def test_a_bundle_signed_with_another_key_is_refused_naming_both_key_ids(tmp_path: Path, keys: Path, capsys) -> None:
    bundle = build(tmp_path, keys)
    assert main(["release", "keygen", "--out", str(tmp_path / "other")]) == 0
    capsys.readouterr()
    assert verify(bundle, tmp_path / "other" / "release.pub") == 1
    line = refusal(capsys)
    assert "refused (wrong_key): manifest is signed by key id" in line and "not by the release key given" in line


def test_an_expired_manifest_is_refused(tmp_path: Path, keys: Path) -> None:
    key = load_private_key(keys / "release.key")
    source = wheelhouse(tmp_path / "wh", "2.0.0")
    bundle = build_bundle(source, tmp_path / "old", ReleaseSpec("2.0.0", "1.0.0", valid_days=1), key, now=time.time() - 2 * 86400)
    with pytest.raises(Refused) as caught:
        check_bundle(bundle, key.public_key(), now=time.time())
    assert caught.value.reason == "expired"


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("--target", "x86_64-cp313"), "other_platform"),
        (("--target", TARGET, "--installed", "2.0.0"), "downgrade"),
        (("--target", TARGET, "--installed", "3.1.0"), "downgrade"),
        (("--target", TARGET, "--installed", "0.9.0"), "too_old"),
    ],
)
def test_a_bundle_for_another_device_or_an_older_version_is_refused(tmp_path: Path, keys: Path, capsys, args, reason: str) -> None:
    bundle = build(tmp_path, keys)
    capsys.readouterr()
    assert verify(bundle, keys / "release.pub", *args) == 1
    assert refusal(capsys).startswith(f"ocn-edge: refused ({reason}): ")


def test_a_downgrade_is_accepted_only_when_the_manifest_allows_it(tmp_path: Path, keys: Path) -> None:
    bundle = build(tmp_path, keys, "2.0.0", "--allow-downgrade")
    assert verify(bundle, keys / "release.pub", "--target", TARGET, "--installed", "3.1.0") == 0


def test_a_release_that_cannot_be_rolled_back_needs_explicit_approval(tmp_path: Path, keys: Path) -> None:
    key = load_private_key(keys / "release.key")
    bundle = build(tmp_path, keys, "2.0.0", "--not-rollback-safe")
    with pytest.raises(Refused) as caught:
        check_bundle(bundle, key.public_key(), now=time.time(), target=TARGET, installed="1.0.0")
    assert caught.value.reason == "needs_approval"
    assert check_bundle(bundle, key.public_key(), now=time.time(), target=TARGET, installed="1.0.0", approved=True).version == "2.0.0"


def test_a_signed_manifest_with_a_bad_field_is_refused_naming_the_field(keys: Path) -> None:
    key = load_private_key(keys / "release.key")
    good = open_release(seal_release({"format": 1}, key), key.public_key())
    assert good == {"format": 1}
    with pytest.raises(Refused) as caught:
        read_manifest(seal_release({"format": 1, "product": "ocn-edge", "version": "2.0.0-beta"}, key), key.public_key())
    assert caught.value.reason == "malformed" and "manifest version = '2.0.0-beta'" in str(caught.value)


def test_build_refuses_a_version_that_is_not_the_wheel_s_own(tmp_path: Path, keys: Path, capsys) -> None:
    source = wheelhouse(tmp_path / "wh", "2.0.0")
    assert (
        main(["release", "build", str(source), "--version", "2.0.1", "--min-from", "1.0.0", "--key", str(keys / "release.key"), "--out", str(tmp_path / "b")])
        == 2
    )
    assert "OCN Edge's wheel is version 2.0.0, not --version 2.0.1" in refusal(capsys)
    assert not (tmp_path / "b").exists() and not list(tmp_path.glob(".b*"))
    shutil.rmtree(source)


def test_a_bundle_with_deltas_verifies_them_and_refuses_a_damaged_one(tmp_path: Path, keys: Path, capsys) -> None:
    old = build(tmp_path, keys, "1.0.0")
    bundle = build(tmp_path, keys, "2.0.0", "--delta-from", str(old))
    (delta,) = (bundle / "deltas").glob("*/ocn_edge-2.0.0-py3-none-any.whl.zst")
    assert verify(bundle, keys / "release.pub") == 0
    delta.write_bytes(delta.read_bytes()[:-1] + bytes([delta.read_bytes()[-1] ^ 0xFF]))
    capsys.readouterr()
    assert verify(bundle, keys / "release.pub") == 1
    assert refusal(capsys).startswith("ocn-edge: refused (tampered): ")

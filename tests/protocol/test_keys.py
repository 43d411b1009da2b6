"""Device key files: private key readable only by its owner, public key separate, ids stable."""

from __future__ import annotations

import hashlib
import stat

import pytest

from edge.protocol import (
    KeyFileError,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    raw_public_key,
    write_keypair,
)


def test_key_id_is_the_first_8_bytes_of_sha256_of_the_raw_public_key(device_key):
    raw = raw_public_key(device_key.public_key())
    assert len(raw) == 32
    assert key_id(device_key.public_key()) == hashlib.sha256(raw).digest()[:8]
    assert key_id(device_key) == key_id(device_key.public_key())


def test_written_private_key_is_mode_0600_and_public_key_separate(tmp_path):
    private_path, public_path = write_keypair(tmp_path / "keys")
    assert stat.S_IMODE(private_path.stat().st_mode) == 0o600
    assert private_path != public_path
    assert b"PRIVATE" not in public_path.read_bytes()
    assert key_id(load_private_key(private_path)) == key_id(load_public_key(public_path))


def test_written_key_pair_loads_back_to_the_same_key(tmp_path, device_key):
    private_path, public_path = write_keypair(tmp_path, private_key=device_key)
    assert raw_public_key(load_private_key(private_path)) == raw_public_key(device_key)
    assert raw_public_key(load_public_key(public_path)) == raw_public_key(device_key)


def test_existing_key_is_never_silently_replaced(tmp_path):
    write_keypair(tmp_path)
    with pytest.raises(FileExistsError, match="device.key"):
        write_keypair(tmp_path)


def test_missing_key_file_error_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(KeyFileError, match=r"nokey\.pem.*ocn-edge keygen"):
        load_private_key(tmp_path / "nokey.pem")


def test_garbage_key_file_error_names_the_file(tmp_path):
    path = tmp_path / "device.key"
    path.write_text("hello")
    with pytest.raises(KeyFileError, match="device.key"):
        load_private_key(path)
    with pytest.raises(KeyFileError, match="device.key"):
        load_public_key(path)


def test_a_non_ed25519_key_is_refused_with_what_it_is(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = tmp_path / "ec.pem"
    path.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(KeyFileError, match="Ed25519"):
        load_private_key(path)


def test_generated_keys_differ():
    assert key_id(generate_keypair()) != key_id(generate_keypair())


def test_a_key_pair_that_does_not_fit_on_a_full_disk_leaves_no_file_behind_and_fits_once_there_is_room(tmp_path):
    from edge.enrol import EnrolError, ensure_device_key
    from tests.pipeline.small_disk import small_disk

    with small_disk(tmp_path / "disk", size=1 << 20) as disk:
        state = disk.path / "state"
        state.mkdir()
        disk.fill()
        with pytest.raises(EnrolError, match=r"cannot create the device key there .*No space left on device"):
            ensure_device_key(state / "device.key")
        # No half-written key (which would look like a corrupt key at the next start) and no temporary file.
        assert sorted(p.name for p in state.iterdir()) == []
        disk.free()
        created_path, created = ensure_device_key(state / "device.key")
        assert created and load_private_key(created_path) is not None
        assert sorted(p.name for p in state.iterdir()) == ["device.key", "device.pub"]

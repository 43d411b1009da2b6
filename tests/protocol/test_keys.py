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
        with pytest.raises(EnrolError, match=r"cannot create the device key there .*the disk is full"):
            ensure_device_key(state / "device.key")
        # No half-written key (which would look like a corrupt key at the next start) and no temporary file.
        assert sorted(p.name for p in state.iterdir()) == []
        disk.free()
        created_path, created = ensure_device_key(state / "device.key")
        assert created and load_private_key(created_path) is not None
        assert sorted(p.name for p in state.iterdir()) == ["device.key", "device.pub"]


def _pems(key):
    from cryptography.hazmat.primitives import serialization

    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


def test_ed25519_pem_files_read_without_cryptographys_parser_give_the_key_it_reads(tmp_path):
    # What a gateway reads at start (its device key, the pinned hub key) is taken apart here, not by cryptography's
    # serialization module (issue 17); every variant of the same PEM must still give the same key, byte for byte.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    from edge.protocol.keys import pem_private_key, pem_public_key, public_pem

    for _ in range(20):
        key = generate_keypair()
        private, public = _pems(key)
        assert public_pem(key) == public_pem(key.public_key()) == public
        for form in (private, private.replace(b"\n", b"\r\n"), b"\n" + private + b"\n\n"):
            got, ref = pem_private_key(form), serialization.load_pem_private_key(form, password=None)
            assert isinstance(got, Ed25519PrivateKey) and isinstance(ref, Ed25519PrivateKey)
            assert got.private_bytes_raw() == ref.private_bytes_raw() == key.private_bytes_raw()
        for form in (public, public.replace(b"\n", b"\r\n")):
            got_public, ref_public = pem_public_key(form), serialization.load_pem_public_key(form)
            assert isinstance(got_public, Ed25519PublicKey) and isinstance(ref_public, Ed25519PublicKey)
            assert got_public.public_bytes_raw() == ref_public.public_bytes_raw() == raw_public_key(key)
        (tmp_path / "k.pem").write_bytes(private)
        (tmp_path / "k.pub").write_bytes(public)
        assert raw_public_key(load_private_key(tmp_path / "k.pem")) == raw_public_key(load_public_key(tmp_path / "k.pub")) == raw_public_key(key)


def test_pem_files_that_are_not_the_plain_ed25519_form_go_to_cryptographys_parser_and_fail_or_pass_as_there(tmp_path):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from edge.protocol.keys import pem_private_key, pem_public_key

    key = generate_keypair()
    private, public = _pems(key)
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"secret"))
    cut = private[: len(private) // 2] + private[-26:]  # base64 cut short: not 48 bytes of DER
    spliced = private.replace(b"-----END PRIVATE KEY-----", b"-----END PUBLIC KEY-----")
    for bad in (encrypted, cut, spliced, b"-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n", public):
        with pytest.raises((ValueError, TypeError)):
            serialization.load_pem_private_key(bad, password=None)
        with pytest.raises((ValueError, TypeError)):
            pem_private_key(bad)
        (tmp_path / "bad.pem").write_bytes(bad)
        with pytest.raises(KeyFileError, match="bad.pem: not an unencrypted PEM private key"):
            load_private_key(tmp_path / "bad.pem")
    # A key of another type still loads as what it is, so the message can say so.
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_public = ec_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert isinstance(pem_public_key(ec_public), ec.EllipticCurvePublicKey)
    (tmp_path / "ec.pub").write_bytes(ec_public)
    with pytest.raises(KeyFileError, match="ec.pub: holds a .*; OXP device keys are Ed25519"):
        load_public_key(tmp_path / "ec.pub")

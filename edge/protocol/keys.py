"""Device key pairs: Ed25519 generation, key ids, and PEM key files (the only module here that touches files)."""

from __future__ import annotations

import binascii
import contextlib
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes

# cryptography's serialization module (with its SSH, RSA, DSA, EC and legacy-cipher modules behind it, ~0.8 MiB
# resident) is imported only to write key files and to read one that is not the plain Ed25519 PEM `write_keypair`
# writes: a running gateway reads its key once, at start, and needs none of it (issue 17).

__all__ = [
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "KeyFileError",
    "generate_keypair",
    "key_id",
    "raw_key_id",
    "raw_public_key",
    "write_keypair",
    "load_private_key",
    "load_public_key",
    "pem_private_key",
    "pem_public_key",
    "public_pem",
]

PRIVATE_KEY_FILE = "device.key"
PUBLIC_KEY_FILE = "device.pub"


class KeyFileError(ValueError):
    """A key file is missing, unreadable or holds something other than an Ed25519 key; names the file."""


def generate_keypair() -> Ed25519PrivateKey:
    """A fresh Ed25519 device key (its public half is ``.public_key()``)."""
    return Ed25519PrivateKey.generate()


def raw_public_key(public_key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key (of a private key: of its public half)."""
    if isinstance(public_key, Ed25519PrivateKey):
        public_key = public_key.public_key()
    return public_key.public_bytes_raw()


def key_id(public_key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    """The 8-byte key id: the first 8 bytes of SHA-256 over the raw 32-byte public key."""
    return raw_key_id(raw_public_key(public_key))


def raw_key_id(raw: bytes) -> bytes:
    """:func:`key_id` of a public key given as its 32 raw bytes."""
    return hashlib.sha256(raw).digest()[:8]


def write_keypair(
    directory: str | os.PathLike[str],
    *,
    private_key: Ed25519PrivateKey | None = None,
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write ``device.key`` (PKCS#8 PEM, mode 0600) and ``device.pub`` (SPKI PEM) into ``directory``.

    A new key is generated unless ``private_key`` is given.  Existing files are
    never replaced unless ``overwrite`` is true: losing a device key means
    re-enrolling the device.
    """
    from cryptography.hazmat.primitives import serialization

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = private_key or generate_keypair()
    private_path = directory / PRIVATE_KEY_FILE
    public_path = directory / PUBLIC_KEY_FILE
    if not overwrite:
        for path in (private_path, public_path):
            if path.exists():
                raise FileExistsError(f"{path}: a key file already exists; refusing to replace a device key")
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_atomically(private_path, private_pem, mode=0o600)
    _write_atomically(public_path, public_pem, mode=0o644)
    return private_path, public_path


def _write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    # The temporary file is created with its final mode, so the private key is never readable by others.
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            # os.write may write less than asked (a nearly full disk): a short key file must never be renamed into place.
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such {what} file (create one with `ocn-edge keygen --out DIR`)") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the {what} file ({exc.strerror})") from None


# The DER that precedes the 32 key bytes in the two PEM files write_keypair writes (RFC 8410 §7 and §4):
# PKCS#8 PrivateKeyInfo v1 with the Ed25519 OID and an OCTET STRING of the seed; SubjectPublicKeyInfo likewise.
_PKCS8_ED25519 = bytes.fromhex("302e020100300506032b657004220420")
_SPKI_ED25519 = bytes.fromhex("302a300506032b6570032100")


def _pem_body(data: bytes, label: bytes) -> bytes | None:
    """The DER inside a PEM block of ``label`` that is the whole file, or None for anything else (the full parser decides)."""
    lines = data.strip().splitlines()
    if len(lines) < 3 or lines[0].strip() != b"-----BEGIN " + label + b"-----" or lines[-1].strip() != b"-----END " + label + b"-----":
        return None
    try:
        return binascii.a2b_base64(b"".join(line.strip() for line in lines[1:-1]), strict_mode=True)
    except binascii.Error:
        return None


def _raw_key(data: bytes, label: bytes, prefix: bytes) -> bytes | None:
    der = _pem_body(data, label)
    if der is None or len(der) != len(prefix) + 32 or not der.startswith(prefix):
        return None
    return der[len(prefix):]


def pem_private_key(data: bytes) -> PrivateKeyTypes:
    """What cryptography's ``serialization.load_pem_private_key(data, password=None)`` returns, and what it raises for
    anything it refuses; the PKCS#8 Ed25519 PEM that :func:`write_keypair` writes is read without importing it."""
    seed = _raw_key(data, b"PRIVATE KEY", _PKCS8_ED25519)
    if seed is not None:
        return Ed25519PrivateKey.from_private_bytes(seed)
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_private_key(data, password=None)


def pem_public_key(data: bytes) -> PublicKeyTypes:
    """What cryptography's ``serialization.load_pem_public_key(data)`` returns, and what it raises for anything it refuses;
    an Ed25519 SubjectPublicKeyInfo PEM (what :func:`write_keypair` and the hub write) is read without importing it."""
    raw = _raw_key(data, b"PUBLIC KEY", _SPKI_ED25519)
    if raw is not None:
        return Ed25519PublicKey.from_public_bytes(raw)
    from cryptography.hazmat.primitives import serialization

    return serialization.load_pem_public_key(data)


def public_pem(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    """The SubjectPublicKeyInfo PEM of an Ed25519 public key (of a private key: of its public half), byte for byte as
    cryptography's ``public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)`` writes it."""
    body = binascii.b2a_base64(_SPKI_ED25519 + raw_public_key(key))  # 44 bytes: one line of 60 characters and its newline
    return b"-----BEGIN PUBLIC KEY-----\n" + body + b"-----END PUBLIC KEY-----\n"


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The Ed25519 private key in a PEM file written by :func:`write_keypair`."""
    data = _read(path, "private key")
    try:
        key = pem_private_key(data)
    except (ValueError, TypeError):  # the library's own text speaks of its internals, not of the file
        raise KeyFileError(f"{path}: not an unencrypted PEM private key (`ocn-edge keygen` writes one)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: holds a {type(key).__name__}; OXP device keys are Ed25519")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM file (SubjectPublicKeyInfo)."""
    data = _read(path, "public key")
    try:
        key = pem_public_key(data)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path}: not a PEM public key (`ocn-edge keygen` writes one as device.pub)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: holds a {type(key).__name__}; OXP device keys are Ed25519")
    return key

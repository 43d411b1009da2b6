"""Device key pairs: Ed25519 generation, key ids, and PEM key files (the only module here that touches files)."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

__all__ = [
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "KeyFileError",
    "generate_keypair",
    "key_id",
    "raw_public_key",
    "write_keypair",
    "load_private_key",
    "load_public_key",
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
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public_key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    """The 8-byte key id: the first 8 bytes of SHA-256 over the raw 32-byte public key."""
    return hashlib.sha256(raw_public_key(public_key)).digest()[:8]


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


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The Ed25519 private key in a PEM file written by :func:`write_keypair`."""
    data = _read(path, "private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):  # the library's own text speaks of its internals, not of the file
        raise KeyFileError(f"{path}: not an unencrypted PEM private key (`ocn-edge keygen` writes one)") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: holds a {type(key).__name__}; OXP device keys are Ed25519")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM file (SubjectPublicKeyInfo)."""
    data = _read(path, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path}: not a PEM public key (`ocn-edge keygen` writes one as device.pub)") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: holds a {type(key).__name__}; OXP device keys are Ed25519")
    return key

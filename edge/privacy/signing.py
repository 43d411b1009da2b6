"""Governance signatures over a policy: a detached Ed25519 signature file next to the policy, over its digest."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.protocol.keys import pem_private_key, pem_public_key

__all__ = [
    "SignatureError",
    "governance_key_id",
    "load_governance_private_key",
    "load_governance_public_key",
    "read_signature",
    "sign_digest",
    "signature_path",
    "verify_digest",
    "write_governance_keypair",
    "write_signature",
]

# Domain separation: a governance signature over a policy can never be replayed as any other signature.
_CONTEXT = b"OCN policy signature v1\x00"
_MAGIC = "ocn-policy-signature v1"


class SignatureError(ValueError):
    """A policy signature is missing, malformed, from another key, or does not match the policy."""


def signature_path(policy_path: str | os.PathLike[str]) -> Path:
    """Where the detached signature of a policy lives: ``<policy file>.sig``."""
    p = Path(policy_path)
    return p.with_name(p.name + ".sig")


def governance_key_id(public_key: Ed25519PublicKey) -> str:
    """Hex of the first 8 bytes of SHA-256 of the raw 32-byte public key (same rule as device key ids)."""
    raw = public_key.public_bytes_raw()
    return hashlib.sha256(raw).digest()[:8].hex()


def sign_digest(digest: bytes, private_key: Ed25519PrivateKey) -> bytes:
    return private_key.sign(_CONTEXT + digest)


def verify_digest(digest: bytes, signature: bytes, public_key: Ed25519PublicKey) -> None:
    try:
        public_key.verify(signature, _CONTEXT + digest)
    except InvalidSignature:
        raise SignatureError("the signature does not match this policy (edited after signing, or signed with another key)") from None


def write_signature(policy_path: str | os.PathLike[str], digest: bytes, private_key: Ed25519PrivateKey) -> Path:
    """Sign the policy digest and write the detached signature file; returns its path."""
    sig = sign_digest(digest, private_key)
    path = signature_path(policy_path)
    path.write_text(
        f"{_MAGIC}\n"
        f"key_id: {governance_key_id(private_key.public_key())}\n"
        f"digest: {digest.hex()}\n"
        f"signature: {base64.urlsafe_b64encode(sig).decode().rstrip('=')}\n",
        encoding="utf-8",
    )
    return path


def read_signature(policy_path: str | os.PathLike[str]) -> tuple[str, bytes, bytes]:
    """(key id hex, digest, signature) from the policy's signature file; raises SignatureError."""
    path = signature_path(policy_path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise SignatureError(f"{path.name}: no signature file (sign it with `ocn-edge policy sign`)") from None
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    if not lines or lines[0] != _MAGIC or not {"key_id", "digest", "signature"} <= fields.keys():
        raise SignatureError(f"{path.name}: not a policy signature file (expected first line {_MAGIC!r})")
    try:
        digest = bytes.fromhex(fields["digest"])
        sig = base64.urlsafe_b64decode(fields["signature"] + "=" * (-len(fields["signature"]) % 4))
    except ValueError:
        raise SignatureError(f"{path.name}: digest or signature is not valid hex/base64url") from None
    return fields["key_id"], digest, sig


def write_governance_keypair(directory: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Create ``governance.key`` (PEM, mode 0600) and ``governance.pub`` in ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private_path, public_path = d / "governance.key", d / "governance.pub"
    if private_path.exists():
        raise FileExistsError(f"{private_path} already exists; refusing to overwrite a governance key")
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    from cryptography.hazmat.primitives import serialization

    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def load_governance_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    key = pem_private_key(Path(path).read_bytes())
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{Path(path).name}: not an Ed25519 private key")
    return key


def load_governance_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    key = pem_public_key(Path(path).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{Path(path).name}: not an Ed25519 public key")
    return key

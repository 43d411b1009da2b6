"""What the hub's signed desired document says about trust (protocol §8.4): its next signing key, its key rollovers, a CA bundle.

A gateway pins the hub's signing key on first use (edge.desired). So that the key can change
without a visit, the hub first **announces** its next key inside a document signed with the
current one (``trust.next_hub_key``); the gateway keeps it and accepts documents signed with either.
When the hub switches, every signed document it sends also carries ``hub_key_rollover``, beside
the document: each key it ever switched to, signed by the key before. A gateway that was offline
through the announcement (or through several rotations) walks that chain from the key it pinned.
``trust.ca`` is the CA bundle the gateway trusts the hub's https certificate with from then on.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.protocol.desired import canonical_json
from edge.protocol.keys import key_id, pem_public_key, public_pem

__all__ = ["CA", "KEY_ID", "MAX_CA_BYTES", "NEXT_KEY", "ROLLOVER", "TrustError", "load_pem", "parse_trust", "pem", "rollover_link", "signing_key"]

NEXT_KEY = "next_hub_key"  # in the document's "trust": the PEM public key the hub will sign with next
KEY_ID = "hub_key_id"  # in the document's "trust": the key id it is signed with, set by a switch (informative: it moves every ETag)
CA = "ca"  # in the document's "trust": PEM CA certificates for the hub's https certificate
ROLLOVER = "hub_key_rollover"  # in the signed form, beside "document": [{key, previous_key_id, signature}], oldest first
MAX_CA_BYTES = 64 * 1024
_CONTEXT = "OXP hub key rollover"  # what a link's signature covers, so it can never pass for a desired document's


class TrustError(ValueError):
    """Trust material that cannot be taken; the message names the field and what would be accepted."""


def pem(key: Ed25519PublicKey | Ed25519PrivateKey) -> bytes:
    """The SubjectPublicKeyInfo PEM of the (public half of the) key, as cryptography writes it."""
    return public_pem(key)


def load_pem(data: bytes, *, where: str) -> Ed25519PublicKey:
    try:
        key = pem_public_key(data)
    except ValueError as exc:
        raise TrustError(f"{where}: not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise TrustError(f"{where}: not an Ed25519 public key")
    return key


def parse_trust(trust: object) -> tuple[bytes | None, bytes | None]:
    """(next hub key PEM, CA bundle PEM) of a document's ``trust`` object, each None when absent; TrustError naming the field."""
    if trust is None:
        return None, None
    if not isinstance(trust, Mapping):
        raise TrustError(f"desired trust: expected an object with {NEXT_KEY} and/or {CA}, got {type(trust).__name__}")
    announced = trust.get(NEXT_KEY)
    if announced is not None:
        if not isinstance(announced, str):
            raise TrustError(f"desired trust.{NEXT_KEY}: expected a PEM public key, got {type(announced).__name__}")
        load_pem(announced.encode(), where=f"desired trust.{NEXT_KEY}")
    ca = trust.get(CA)
    if ca is not None:
        if not isinstance(ca, str) or "-----BEGIN CERTIFICATE-----" not in ca or len(ca) > MAX_CA_BYTES:
            raise TrustError(f"desired trust.{CA}: expected PEM certificates (-----BEGIN CERTIFICATE-----), at most {MAX_CA_BYTES} bytes")
        from cryptography import x509  # here, not at import: only a desired document that names a CA needs it (start-up time)

        try:
            x509.load_pem_x509_certificates(ca.encode())
        except ValueError as exc:
            raise TrustError(f"desired trust.{CA}: a certificate does not parse ({exc})") from None
    return (announced.encode() if announced else None), (ca.encode() if ca else None)


def _link_bytes(key_pem: str, previous: str) -> bytes:
    return canonical_json({"context": _CONTEXT, "key": key_pem, "previous_key_id": previous})


def rollover_link(old: Ed25519PrivateKey, new: Ed25519PublicKey) -> dict[str, str]:
    """One link of the rollover chain: ``new`` signed by ``old``."""
    key_pem, previous = pem(new).decode(), key_id(old).hex()
    signature = old.sign(_link_bytes(key_pem, previous))
    return {"key": key_pem, "previous_key_id": previous, "signature": base64.urlsafe_b64encode(signature).rstrip(b"=").decode()}


def signing_key(signed: Mapping[str, Any], *, pinned: Ed25519PublicKey, announced: Ed25519PublicKey | None) -> Ed25519PublicKey:
    """The key a signed desired document says it is signed with, if this gateway may trust it: the pinned key, the announced
    one, or one the rollover chain leads to from either; TrustError otherwise. (The caller verifies the signature with it.)"""
    kid = signed.get("key_id")
    trusted = [pinned] + ([announced] if announced is not None else [])
    if not isinstance(kid, str) or kid == key_id(pinned).hex():
        return pinned  # a hub from before key ids: the pinned key, whose check names a mismatch
    for start in trusted:
        if kid == key_id(start).hex():
            return start
    chain = signed.get(ROLLOVER)
    links = [link for link in chain if isinstance(link, Mapping)] if isinstance(chain, list) else []
    for start in trusted:
        head = start
        for link in links:
            if link.get("previous_key_id") != key_id(head).hex():
                continue
            try:
                new = load_pem(str(link.get("key", "")).encode(), where=f"{ROLLOVER} key")
                sig = str(link.get("signature", ""))
                head.verify(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)), _link_bytes(str(link["key"]), key_id(head).hex()))
            except (TrustError, ValueError, InvalidSignature):
                raise TrustError(f"the hub's key rollover from key id {key_id(head).hex()} does not verify") from None
            head = new
            if key_id(head).hex() == kid:
                return head
    raise TrustError(
        f"the desired document's signature is by hub key id {kid}, neither the pinned hub key (key id {key_id(pinned).hex()}) nor one it vouched for"
    )

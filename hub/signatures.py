"""The hub's check of device signatures: Ed25519 through libsodium (PyNaCl), and the keys it will check with.

libsodium verifies a batch's signature in about half the CPU time of OpenSSL through cryptography (~75 against
~145 us here, about a tenth of the hub's time a batch over MQTT); gateways keep signing with cryptography, and
nothing a gateway imports imports this module.  libsodium is stricter than OpenSSL: it refuses a public key that
is not a canonical encoding of a curve point or is of small order, and a signature whose R is of small order or
whose S is not reduced.  A key made by any Ed25519 key generator, and the signatures it makes, pass either; so the
hub enrols no key libsodium would refuse (:func:`acceptable_key`), and no device is enrolled with a key its
batches could not be verified under.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from nacl.bindings import crypto_core_ed25519_is_valid_point, crypto_sign_open
from nacl.exceptions import BadSignatureError

from edge.protocol.keys import raw_key_id
from edge.protocol.preauth import SIGNATURE_BYTES

__all__ = ["DeviceKeyCheck", "acceptable_key", "device_key"]

PUBLIC_KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class DeviceKeyCheck:
    """An enrolled device's raw Ed25519 public key and its key id (edge.protocol.envelope.KeyCheck), checked by libsodium."""

    raw: bytes
    key_id: bytes

    def verifies(self, signature: bytes, data: bytes) -> bool:
        """Whether ``signature`` is this key's Ed25519 signature of ``data``."""
        if len(signature) != SIGNATURE_BYTES:
            return False  # crypto_sign_open reads the first 64 bytes of what it is given as the signature
        try:
            crypto_sign_open(signature + data, self.raw)
        except BadSignatureError:
            return False
        return True


@functools.lru_cache(maxsize=65536)
def device_key(raw: bytes) -> DeviceKeyCheck:
    """The check of an enrolled device's key (32 raw bytes), made once: its key id is not hashed again for every batch."""
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ValueError(f"an Ed25519 public key is {PUBLIC_KEY_BYTES} bytes, not {len(raw)}")
    return DeviceKeyCheck(raw, raw_key_id(raw))


def acceptable_key(raw: bytes) -> bool:
    """Whether the hub enrols ``raw`` as a device's public key: 32 bytes encoding, canonically, a point of the curve's
    prime-order subgroup, as every key an Ed25519 key generator makes does.  libsodium refuses to verify under a key
    that is not canonical or of small order; a key with a small-order part besides (no key generator makes one) is
    refused here too."""
    return len(raw) == PUBLIC_KEY_BYTES and crypto_core_ed25519_is_valid_point(raw)

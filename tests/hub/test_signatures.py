"""The hub checks device signatures with libsodium (hub.signatures), gateways sign with cryptography: both verifiers
agree on what a gateway signs and on what they refuse, and the hub enrols no key libsodium would refuse."""

from __future__ import annotations

import base64

import aiohttp
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nacl.bindings import crypto_scalarmult_ed25519_base_noclamp

from edge.protocol import ProtocolError, key_id, raw_public_key, verify_sealed
from edge.protocol.preauth import read_envelope
from hub.app import RunningHub
from hub.signatures import DeviceKeyCheck, acceptable_key, device_key
from tests.hub.gateways import SimGateway

# Points libsodium refuses as public keys: the identity (small order), another small-order point, and an encoding of
# y = p + 1 (not canonical: it stands for y = 1, the identity again).
IDENTITY = b"\x01" + bytes(31)
ORDER_FOUR = bytes(32)  # y = 0: a point of order 4
NOT_CANONICAL = b"\xee" + b"\xff" * 30 + b"\x7f"
# The order of the prime subgroup: a signature's S at or above it is not reduced.
L = 2**252 + 27742317777372353535851937790883648493


def _cryptography_verifies(public: Ed25519PublicKey, signature: bytes, data: bytes) -> bool:
    try:
        public.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def test_both_verifiers_accept_what_gateway_keys_sign_and_refuse_a_tampered_message_signature_or_key() -> None:
    keys = [Ed25519PrivateKey.generate() for _ in range(40)]
    for n, key in enumerate(keys):
        data = bytes(range(n % 256)) * (n + 1)
        signature = key.sign(data)
        other = keys[n - 1]
        assert acceptable_key(raw_public_key(key))
        for signer, mine in ((key, True), (other, False)):
            public, check = signer.public_key(), device_key(raw_public_key(signer))
            tampered_data = bytes([data[0] ^ 1]) + data[1:] if data else b"\x00"
            tampered_signature = signature[:10] + bytes([signature[10] ^ 0x40]) + signature[11:]
            for signed, sig, expected in ((data, signature, mine), (tampered_data, signature, False), (data, tampered_signature, False)):
                assert _cryptography_verifies(public, sig, signed) is expected
                assert check.verifies(sig, signed) is expected


def test_a_sealed_batch_verifies_alike_under_both_and_a_tampered_one_is_refused_alike() -> None:
    gateway = SimGateway("pole-0042")
    sealed = gateway.batch(1)
    public = gateway.private_key.public_key()
    check = device_key(raw_public_key(gateway.private_key))
    assert check.key_id == key_id(public)
    assert verify_sealed(sealed, public) == verify_sealed(sealed, check)
    envelope = read_envelope(sealed, limit=len(sealed))
    at = sealed.rindex(envelope.payload)
    payload_tampered = sealed[:at] + bytes([sealed[at] ^ 1]) + sealed[at + 1 :]
    signature_tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    # Another key under the batch's key id: the key id check passes, the signature check refuses.
    stranger = Ed25519PrivateKey.generate()
    wrong = (stranger.public_key(), DeviceKeyCheck(raw_public_key(stranger), check.key_id))
    for data, keys in ((payload_tampered, (public, check)), (signature_tampered, (public, check)), (sealed, wrong)):
        details = []
        for key in keys:
            with pytest.raises(ProtocolError) as refused:
                verify_sealed(data, key)
            details.append((refused.value.reason, refused.value.detail.split(" (")[0]))
        assert [reason for reason, _ in details] == ["bad_signature"] * 2
        assert keys is wrong or details[0] == details[1]


def test_libsodium_refuses_what_openssl_takes_from_a_small_order_key_and_an_unreduced_signature() -> None:
    # Under the identity as public key, R = S*B is a "signature" of any message, which OpenSSL accepts.
    s = (123456789).to_bytes(32, "little")
    forged = crypto_scalarmult_ed25519_base_noclamp(s) + s
    assert _cryptography_verifies(Ed25519PublicKey.from_public_bytes(IDENTITY), forged, b"any message")
    assert not device_key(IDENTITY).verifies(forged, b"any message")
    # A gateway's signature with L added to its S: the same equation, not the canonical encoding.
    key = Ed25519PrivateKey.generate()
    signature = key.sign(b"readings")
    unreduced = signature[:32] + (int.from_bytes(signature[32:], "little") + L).to_bytes(32, "little")
    assert not device_key(raw_public_key(key)).verifies(unreduced, b"readings")
    assert device_key(raw_public_key(key)).verifies(signature, b"readings")
    assert not device_key(raw_public_key(key)).verifies(signature[:63], b"readings")


@pytest.mark.parametrize("raw", [IDENTITY, ORDER_FOUR, NOT_CANONICAL], ids=["identity", "order-4", "not-canonical"])
async def test_enrolment_refuses_a_key_libsodium_would_refuse(running_hub: RunningHub, http: aiohttp.ClientSession, raw: bytes) -> None:
    assert not acceptable_key(raw)
    Ed25519PublicKey.from_public_bytes(raw)  # cryptography takes it: only the hub's own check keeps it out
    body = SimGateway("pole-0042").enrol_body(await running_hub.create_token())
    body["public_key"] = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    async with http.post(f"{running_hub.url}/oxp/v1/enrol", json=body) as resp:
        answer = await resp.json()
        assert (resp.status, answer["error"]) == (400, "malformed")
        assert "field 'public_key'" in answer["detail"] and "small-order" in answer["detail"]
    assert await running_hub.store.devices() == []
    good = SimGateway("pole-0042")
    async with http.post(f"{running_hub.url}/oxp/v1/enrol", json=good.enrol_body(await running_hub.create_token())) as resp:
        assert resp.status == 201

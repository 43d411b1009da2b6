"""The OXP/2 envelope: batches and status reports as COSE_Sign1 messages (RFC 9052) signed with Ed25519."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.protocol.codec import MAX_READINGS, decode_body, decode_payload, encode_payload
from edge.protocol.compression import CODECS, decompress, labelled, named
from edge.protocol.errors import ProtocolError, show
from edge.protocol.keys import key_id
from edge.protocol.preauth import ALG, COSE_SIGN1_TAG, EDDSA, KID, MESSAGE_TYPES, OXP_BATCH, OXP_STATUS, Envelope, read_envelope
from edge.protocol.types import DEVICE_ID_RE, DEVICE_ID_RULE, Channel, Reading

__all__ = [
    "OXP_VERSION",
    "MEDIA_TYPE",
    "MAX_BATCH_BYTES",
    "MAX_STATUS_BYTES",
    "BatchHeader",
    "Batch",
    "BatchTooLarge",
    "seal_batch",
    "open_batch",
    "verify_batch",
    "verify_sealed",
    "verify_envelope",
    "peek_header",
    "decode_unverified",
    "seal_status",
    "open_status",
    "signature_verifies",
]

OXP_VERSION = 2
MEDIA_TYPE = 'application/cose; cose-type="cose-sign1"'
MAX_BATCH_BYTES = 1024 * 1024
MAX_STATUS_BYTES = 64 * 1024

# Labels inside the OXP header map.
H_VERSION, H_DEVICE, H_BOOT, H_SEQ, H_POLICY, H_CODEC, H_CREATED, H_COUNTERS = range(8)
# Counters every gateway sends travel under small integer labels (a batch is sent thousands of
# times a day); any other counter name travels as text.
COUNTER_LABELS = {
    "readings_dropped": 0,
    "batches_dropped": 1,
    "unclean_stops": 2,
    "readings_quarantined": 3,
    "batches_quarantined": 4,
    "readings_unsealable": 5,
}
COUNTER_NAMES = {label: name for name, label in COUNTER_LABELS.items()}
COUNTER_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
UINT64_MAX = (1 << 64) - 1


if TYPE_CHECKING:
    # Types only, so the gateway, which imports this module, makes no Protocol class at start (its memory is at its limit).

    class KeyCheck(Protocol):
        """A device's public key as a receiver holds it to check signatures: its key id, and a check of a signature.

        What the functions here verify with, besides cryptography's Ed25519PublicKey (the gateway's): the hub
        checks with libsodium (hub.signatures), so this module does not import it."""

        @property
        def key_id(self) -> bytes:
            """The key's 8-byte key id (keys.key_id)."""
            ...

        def verifies(self, signature: bytes, data: bytes) -> bool:
            """Whether ``signature`` is this key's Ed25519 signature of ``data``."""
            ...

    PublicKey = Ed25519PublicKey | KeyCheck


class BatchTooLarge(ValueError):
    """A sealed batch would exceed MAX_BATCH_BYTES; seal fewer readings per batch."""


def _uint(name: str, value: object) -> None:
    if type(value) is not int or not 0 <= value <= UINT64_MAX:
        raise ValueError(f"batch header {name} = {show(value)}: expected an integer from 0 to 2**64-1")


@dataclass(frozen=True, slots=True)
class BatchHeader:
    """What a batch says about itself: signed, and readable without decompressing the payload.

    (key_id, boot_epoch, seq) identifies the batch; ``counters`` carry loss
    upstream (e.g. ``readings_dropped``, ``unclean_stops``).
    """

    device_id: str
    key_id: bytes
    boot_epoch: int
    seq: int
    policy_digest: bytes
    codec: str
    created_ms: int
    counters: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if type(self.device_id) is not str or not DEVICE_ID_RE.match(self.device_id):
            raise ValueError(
                f"batch header device_id = {show(self.device_id)}: expected {DEVICE_ID_RULE}"
                " (not starting or ending with '-')"
            )
        if type(self.key_id) is not bytes or len(self.key_id) != 8:
            raise ValueError(f"batch header key_id = {show(self.key_id)}: expected 8 bytes (see key_id())")
        _uint("boot_epoch", self.boot_epoch)
        _uint("seq", self.seq)
        _uint("created_ms", self.created_ms)
        if type(self.policy_digest) is not bytes or len(self.policy_digest) > 64:
            raise ValueError(f"batch header policy_digest = {show(self.policy_digest)}: expected at most 64 bytes")
        if self.codec not in CODECS:
            raise ValueError(f"batch header codec = {show(self.codec)}: expected one of {', '.join(CODECS)}")
        for name, count in self.counters.items():
            if type(name) is not str or not COUNTER_RE.match(name):
                raise ValueError(f"batch header counter name {show(name)}: expected lowercase letters, digits and '_'")
            _uint(f"counters[{show(name)}]", count)

    @property
    def identity(self) -> tuple[bytes, int, int]:
        """(key_id, boot_epoch, seq): what the hub deduplicates on and what its ack names."""
        return (self.key_id, self.boot_epoch, self.seq)


@dataclass(frozen=True, slots=True)
class Batch:
    """A verified, decoded batch: its header, its channels and its readings (grouped per channel)."""

    header: BatchHeader
    channels: tuple[Channel, ...]
    readings: tuple[Reading, ...]


def _sig_structure(protected: bytes, payload: bytes) -> bytes:
    # RFC 9052 §4.4: the bytes signed are the CBOR array ["Signature1", protected, external_aad, payload].
    return cbor2.dumps(["Signature1", protected, b"", payload])


def _sign(protected_map: Mapping[int, Any], payload: bytes, private_key: Ed25519PrivateKey) -> bytes:
    protected = cbor2.dumps(protected_map, canonical=True)
    signature = private_key.sign(_sig_structure(protected, payload))
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [protected, {}, payload, signature]))


def seal_batch(
    header: BatchHeader,
    channels: Sequence[Channel],
    readings: Iterable[Reading],
    private_key: Ed25519PrivateKey,
) -> bytes:
    """Encode, compress and sign one batch; the bytes are stored and sent unchanged from then on."""
    own_id = key_id(private_key)
    if header.key_id != own_id:
        raise ValueError(
            f"batch header key_id {header.key_id.hex()} is not the id of the signing key ({own_id.hex()})"
        )
    if not isinstance(readings, Sequence):
        readings = tuple(readings)
    if len(readings) > MAX_READINGS:
        raise BatchTooLarge(f"{len(readings)} readings, over the OXP/2 limit of {MAX_READINGS} per batch; seal fewer readings")
    payload = encode_payload(channels, readings, codec=header.codec)
    oxp = {
        H_VERSION: OXP_VERSION,
        H_DEVICE: header.device_id,
        H_BOOT: header.boot_epoch,
        H_SEQ: header.seq,
        H_POLICY: header.policy_digest,
        H_CODEC: named(header.codec).label,
        H_CREATED: header.created_ms,
    }
    if header.counters:  # absent means no counters: two bytes saved on every batch of a healthy device
        oxp[H_COUNTERS] = {COUNTER_LABELS.get(name, name): count for name, count in header.counters.items()}
    sealed = _sign({ALG: EDDSA, KID: header.key_id, OXP_BATCH: oxp}, payload, private_key)
    if len(sealed) > MAX_BATCH_BYTES:
        raise BatchTooLarge(
            f"sealed batch is {len(sealed)} bytes, over the OXP/2 limit of {MAX_BATCH_BYTES}; seal fewer readings"
        )
    return sealed


def _parse(data: bytes, *, limit: int, expected: int) -> Envelope:
    # The strict reader, never a general CBOR decoder: these bytes are not yet authenticated.
    return _expect(read_envelope(data, limit=limit), expected)


def _expect(message: Envelope, expected: int) -> Envelope:
    """``message`` if it is of the ``expected`` type and OXP version; raises ProtocolError."""
    if message.message_type != expected:
        raise ProtocolError("wrong_type", f"message is a {MESSAGE_TYPES[message.message_type]}, expected a {MESSAGE_TYPES[expected]}")
    oxp = message.header[expected]
    if not isinstance(oxp, dict):
        raise ProtocolError("malformed", f"OXP header (label {expected}) is not a map")
    if type(oxp.get(H_VERSION)) is not int or oxp[H_VERSION] != OXP_VERSION:
        raise ProtocolError("unsupported_version", f"OXP version {show(oxp.get(H_VERSION))}: this implementation speaks {OXP_VERSION}")
    return message


def _verify(message: Envelope, public_key: PublicKey) -> None:
    expected = key_id(public_key) if isinstance(public_key, Ed25519PublicKey) else public_key.key_id
    kid = message.header[KID]
    if kid != expected:
        raise ProtocolError(
            "bad_signature", f"message is signed by key id {kid.hex()}, not by the given key (key id {expected.hex()})"
        )
    if not _verifies(public_key, message.signature, _sig_structure(message.protected, message.payload)):
        raise ProtocolError("bad_signature", f"signature does not verify with key id {expected.hex()}")


def _verifies(public_key: PublicKey, signature: bytes, data: bytes) -> bool:
    if not isinstance(public_key, Ed25519PublicKey):
        return public_key.verifies(signature, data)
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        return False
    return True


def _batch_header(message: Envelope) -> BatchHeader:
    oxp = message.header[OXP_BATCH]
    label = oxp.get(H_CODEC)
    if type(label) is not int:
        raise ProtocolError("malformed", f"batch header codec {show(label)} is not an integer")
    codec = labelled(label).name
    counters = oxp.get(H_COUNTERS, {})
    try:
        return BatchHeader(
            device_id=oxp.get(H_DEVICE),
            key_id=message.header[KID],
            boot_epoch=oxp.get(H_BOOT),
            seq=oxp.get(H_SEQ),
            policy_digest=oxp.get(H_POLICY),
            codec=codec,
            created_ms=oxp.get(H_CREATED),
            counters=_counter_names(counters),
        )
    except (ValueError, TypeError) as exc:
        raise ProtocolError("malformed", str(exc)) from None


def _counter_names(counters: object) -> dict[str, int]:
    if not isinstance(counters, dict):
        raise ValueError("batch header counters is not a map")
    # An integer label this version does not know keeps a readable name, so newer senders still decode.
    return {
        (COUNTER_NAMES.get(label, f"counter_{label}") if type(label) is int and label >= 0 else label): count
        for label, count in counters.items()
    }


def peek_header(data: bytes) -> BatchHeader:
    """The header of a batch WITHOUT verifying its signature: use it only to find the key to verify with."""
    return _batch_header(_parse(data, limit=MAX_BATCH_BYTES, expected=OXP_BATCH))


def verify_sealed(data: bytes, public_key: PublicKey) -> tuple[BatchHeader, bytes]:
    """Verify a sealed batch with the device's public key; its header and its payload as sent, still
    compressed (``decompress`` it with the header's codec); raises ProtocolError."""
    return verify_envelope(_parse(data, limit=MAX_BATCH_BYTES, expected=OXP_BATCH), public_key)


def verify_envelope(message: Envelope, public_key: PublicKey) -> tuple[BatchHeader, bytes]:
    """:func:`verify_sealed` for a batch already read with ``read_envelope(data, limit=MAX_BATCH_BYTES)``
    (a receiver reads it once to find the key): the same checks, in the same order, without reading
    the bytes again; raises ProtocolError."""
    _expect(message, OXP_BATCH)
    _verify(message, public_key)
    return _batch_header(message), message.payload


def verify_batch(data: bytes, public_key: PublicKey) -> tuple[BatchHeader, bytes]:
    """Verify a sealed batch with the device's public key; its header and decompressed body,
    not yet decoded (weigh it with ``declared_readings``, then ``decode_body``); raises ProtocolError."""
    header, payload = verify_sealed(data, public_key)
    return header, decompress(payload, header.codec)


def signature_verifies(data: bytes | Envelope, public_key: PublicKey) -> bool:
    """Whether ``data`` (or the envelope read from it) is a batch signed by ``public_key``, whatever its
    header or payload hold: a receiver tells a bad batch the device signed from one anybody could have sent."""
    try:
        message = _expect(data, OXP_BATCH) if isinstance(data, Envelope) else _parse(data, limit=MAX_BATCH_BYTES, expected=OXP_BATCH)
        _verify(message, public_key)
    except ProtocolError:
        return False
    return True


def open_batch(data: bytes, public_key: PublicKey) -> Batch:
    """Verify a sealed batch with the device's public key, then decode it; raises ProtocolError."""
    header, body = verify_batch(data, public_key)
    channels, readings = decode_body(body)
    return Batch(header, channels, readings)


def decode_unverified(data: bytes) -> Batch:
    """Decode a batch WITHOUT verifying its signature: for inspection tools only, never for accepting data."""
    message = _parse(data, limit=MAX_BATCH_BYTES, expected=OXP_BATCH)
    header = _batch_header(message)
    channels, readings = decode_payload(message.payload, codec=header.codec)
    return Batch(header, channels, readings)


def seal_status(report: Mapping[str, Any], *, device_id: str, private_key: Ed25519PrivateKey) -> bytes:
    """Sign a status report (a CBOR map; its ``device_id`` is set to ``device_id``)."""
    if not DEVICE_ID_RE.match(device_id):
        raise ValueError(f"device_id = {device_id!r}: expected lowercase letters, digits and '-'")
    if report.get("device_id", device_id) != device_id:
        raise ValueError(f"status report device_id {report['device_id']!r} differs from device_id {device_id!r}")
    body = dict(report, device_id=device_id)
    try:
        payload = cbor2.dumps(body, canonical=True)
    except cbor2.CBOREncodeError as exc:
        raise ValueError(f"status report cannot be encoded as CBOR: {exc}") from None
    protected = {
        ALG: EDDSA,
        KID: key_id(private_key),
        OXP_STATUS: {H_VERSION: OXP_VERSION, H_DEVICE: device_id},
    }
    sealed = _sign(protected, payload, private_key)
    if len(sealed) > MAX_STATUS_BYTES:
        raise ValueError(f"status report is {len(sealed)} bytes, over the OXP/2 limit of {MAX_STATUS_BYTES}")
    return sealed


def open_status(data: bytes, public_key: PublicKey) -> dict[str, Any]:
    """Verify a signed status-type message (a status report, §7, or a transparency notice, §7.3) and return its map; raises ProtocolError.

    Only the map's shape and its device_id are checked here; what a report or notice must hold is the receiver's schema.
    """
    message = _parse(data, limit=MAX_STATUS_BYTES, expected=OXP_STATUS)
    _verify(message, public_key)
    try:
        report = cbor2.loads(message.payload)
    except (cbor2.CBORDecodeError, RecursionError) as exc:
        raise ProtocolError("malformed", f"status report is not CBOR ({exc})") from None
    if not isinstance(report, dict):
        raise ProtocolError("malformed", "status report is not a map")
    device_id = message.header[OXP_STATUS].get(H_DEVICE)
    if report.get("device_id") != device_id:
        raise ProtocolError("malformed", f"status report device_id {show(report.get('device_id'))} differs from its header's {show(device_id)}")
    return report

"""The OXP/2 envelope: batches and status reports as COSE_Sign1 messages (RFC 9052) signed with Ed25519."""

from __future__ import annotations

import io
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.protocol.codec import CODECS, MAX_READINGS, decode_payload, encode_payload
from edge.protocol.errors import ProtocolError, show
from edge.protocol.keys import key_id
from edge.types import Channel, Reading

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
    "peek_header",
    "decode_unverified",
    "seal_status",
    "open_status",
]

OXP_VERSION = 2
MEDIA_TYPE = 'application/cose; cose-type="cose-sign1"'
MAX_BATCH_BYTES = 1024 * 1024
MAX_STATUS_BYTES = 64 * 1024

COSE_SIGN1_TAG = 18
# COSE header labels (RFC 9052 §3.1), and the private-use labels (< -65536) holding the OXP
# header: which of the two is present says whether the message is a batch or a status report.
ALG, CRIT, KID = 1, 2, 4
OXP_BATCH = -65537
OXP_STATUS = -65538
MESSAGE_TYPES = {OXP_BATCH: "batch", OXP_STATUS: "status report"}
EDDSA, ED25519 = -8, -19
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
# The codec travels as a small integer (docs/protocol.md §6.1).
CODEC_LABELS = {"zstd": 1, "deflate": 2}
CODEC_NAMES = {label: name for name, label in CODEC_LABELS.items()}

DEVICE_ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
COUNTER_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
UINT64_MAX = (1 << 64) - 1
SIGNATURE_BYTES = 64


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
                f"batch header device_id = {show(self.device_id)}: expected 1-64 lowercase letters, digits and '-'"
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


def _sign(protected_map: dict, payload: bytes, private_key: Ed25519PrivateKey) -> bytes:
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
        H_CODEC: CODEC_LABELS[header.codec],
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


@dataclass(frozen=True, slots=True)
class _Message:
    protected: bytes
    header: dict
    payload: bytes
    signature: bytes


_MAP_NESTING = 8  # protected header -> OXP header -> counters: three levels are used


def _protected_map(protected: bytes) -> object:
    """The protected header decoded strictly: a label given twice in any map, or bytes after
    the header, make it malformed (RFC 9052 §3; cbor2 alone keeps the last duplicate)."""
    stream = io.BytesIO(protected)
    decoder = cbor2.CBORDecoder(stream)

    def item(depth: int) -> object:
        at = stream.tell()
        if at >= len(protected):
            raise cbor2.CBORDecodeEOF("the protected header ends inside a map")
        initial = protected[at]
        if initial >> 5 != 5:  # not a map: cbor2 reads it whole
            return decoder.decode()
        if depth >= _MAP_NESTING:
            raise ProtocolError("malformed", f"protected header nests maps more than {_MAP_NESTING} deep")
        stream.seek(at + 1)
        extra = initial & 0x1F
        if extra < 24:
            count: int | None = extra
        elif extra <= 27:
            width = 1 << (extra - 24)
            count = int.from_bytes(stream.read(width), "big")
        elif extra == 31:
            count = None  # indefinite length, ended by a break byte
        else:
            raise ProtocolError("malformed", "protected header has a map with a reserved length encoding")
        out: dict[object, object] = {}
        index = 0
        while count is None or index < count:
            if count is None and protected[stream.tell() : stream.tell() + 1] == b"\xff":
                stream.seek(stream.tell() + 1)
                break
            key = item(depth + 1)
            try:
                duplicate = key in out
            except TypeError:
                raise ProtocolError("malformed", f"protected header has a label of type {type(key).__name__}") from None
            if duplicate:
                raise ProtocolError("malformed", f"protected header gives label {show(key)} twice")
            out[key] = item(depth + 1)
            index += 1
        return out

    try:
        header = item(0)
    except RecursionError:
        raise ProtocolError("malformed", "protected header nests too deeply") from None
    if stream.tell() != len(protected):
        raise ProtocolError("malformed", f"{len(protected) - stream.tell()} bytes follow the protected header's map")
    return header


def _parse(data: bytes, *, limit: int, expected: int) -> _Message:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) > limit:
        raise ProtocolError("too_large", f"message is {len(data)} bytes, over the OXP/2 limit of {limit}")
    if not data:
        raise ProtocolError("truncated", "message is empty")
    stream = io.BytesIO(data)
    try:
        outer = cbor2.CBORDecoder(stream).decode()
    except cbor2.CBORDecodeEOF:
        raise ProtocolError("truncated", f"message ends inside a CBOR item (only {len(data)} bytes)") from None
    except (cbor2.CBORDecodeError, RecursionError) as exc:
        raise ProtocolError("malformed", f"message is not CBOR ({exc})") from None
    if stream.tell() != len(data):
        raise ProtocolError("malformed", f"{len(data) - stream.tell()} bytes follow the COSE_Sign1 message")
    if not (isinstance(outer, cbor2.CBORTag) and outer.tag == COSE_SIGN1_TAG):
        raise ProtocolError("malformed", "message is not a tagged COSE_Sign1 (CBOR tag 18)")
    parts = outer.value
    if not (isinstance(parts, (list, tuple)) and len(parts) == 4):
        raise ProtocolError("malformed", "COSE_Sign1 is not an array of 4 items")
    protected, unprotected, payload, signature = parts
    if not (isinstance(protected, bytes) and isinstance(unprotected, Mapping) and isinstance(payload, bytes)):
        raise ProtocolError("malformed", "COSE_Sign1 items are not [bstr, map, bstr, bstr]")
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        raise ProtocolError("malformed", f"signature is not {SIGNATURE_BYTES} bytes")
    try:
        header = _protected_map(protected)
    except cbor2.CBORDecodeError as exc:
        raise ProtocolError("malformed", f"protected header is not CBOR ({exc})") from None
    if not isinstance(header, dict):
        raise ProtocolError("malformed", "protected header is not a map")
    if type(header.get(ALG)) is not int or header[ALG] not in (EDDSA, ED25519):
        raise ProtocolError("unsupported_algorithm", f"alg {show(header.get(ALG))}: OXP/2 uses EdDSA (-8) or Ed25519 (-19)")
    kid = header.get(KID)
    if not isinstance(kid, bytes) or len(kid) != 8:
        raise ProtocolError("malformed", "protected header kid (label 4) is not 8 bytes")
    if CRIT in header:
        raise ProtocolError("malformed", "protected header has crit (label 2); OXP/2 messages carry none")
    present = [label for label in MESSAGE_TYPES if label in header]
    if len(present) != 1:
        raise ProtocolError("malformed", f"protected header needs exactly one OXP header map (label {OXP_BATCH} or {OXP_STATUS})")
    if present[0] != expected:
        raise ProtocolError("wrong_type", f"message is a {MESSAGE_TYPES[present[0]]}, expected a {MESSAGE_TYPES[expected]}")
    oxp = header[expected]
    if not isinstance(oxp, dict):
        raise ProtocolError("malformed", f"OXP header (label {expected}) is not a map")
    if type(oxp.get(H_VERSION)) is not int or oxp[H_VERSION] != OXP_VERSION:
        raise ProtocolError("unsupported_version", f"OXP version {show(oxp.get(H_VERSION))}: this implementation speaks {OXP_VERSION}")
    return _Message(protected, header, payload, signature)


def _verify(message: _Message, public_key: Ed25519PublicKey) -> None:
    expected = key_id(public_key)
    kid = message.header[KID]
    if kid != expected:
        raise ProtocolError(
            "bad_signature", f"message is signed by key id {kid.hex()}, not by the given key (key id {expected.hex()})"
        )
    try:
        public_key.verify(message.signature, _sig_structure(message.protected, message.payload))
    except InvalidSignature:
        raise ProtocolError("bad_signature", f"signature does not verify with key id {expected.hex()}") from None


def _batch_header(message: _Message) -> BatchHeader:
    oxp = message.header[OXP_BATCH]
    label = oxp.get(H_CODEC)
    if type(label) is not int:
        raise ProtocolError("malformed", f"batch header codec {show(label)} is not an integer")
    if label not in CODEC_NAMES:
        raise ProtocolError(
            "unsupported_codec", f"codec {show(label)}: this implementation knows 1 (zstd) and 2 (deflate)"
        )
    codec = CODEC_NAMES[label]
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


def _counter_names(counters: object) -> dict:
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


def open_batch(data: bytes, public_key: Ed25519PublicKey) -> Batch:
    """Verify a sealed batch with the device's public key, then decode it; raises ProtocolError."""
    message = _parse(data, limit=MAX_BATCH_BYTES, expected=OXP_BATCH)
    _verify(message, public_key)
    header = _batch_header(message)
    channels, readings = decode_payload(message.payload, codec=header.codec)
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


def open_status(data: bytes, public_key: Ed25519PublicKey) -> dict:
    """Verify a signed status report and return its map; raises ProtocolError."""
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

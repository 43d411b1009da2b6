"""The open exchange protocol (OXP/2): sealing and opening signed batches and status reports.

Pure functions with no I/O and no asyncio (except the key-file helpers), shared by
the gateway and the hub; docs/protocol.md is the normative specification.
"""

from edge.protocol.codec import MAX_READINGS, declared_readings, decode_body
from edge.protocol.compression import CODECS, MAX_PAYLOAD_BYTES, ZSTD_LEVEL, Codec
from edge.protocol.envelope import (
    MAX_BATCH_BYTES,
    MAX_STATUS_BYTES,
    MEDIA_TYPE,
    OXP_VERSION,
    Batch,
    BatchHeader,
    BatchTooLarge,
    decode_unverified,
    open_batch,
    open_status,
    peek_header,
    seal_batch,
    seal_status,
    signature_verifies,
    verify_batch,
    verify_sealed,
)
from edge.protocol.errors import ProtocolError
from edge.protocol.keys import (
    PRIVATE_KEY_FILE,
    PUBLIC_KEY_FILE,
    KeyFileError,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
    raw_public_key,
    write_keypair,
)
from edge.protocol.preauth import MAX_PROTECTED_BYTES, Envelope, read_envelope
from edge.protocol.reasons import REASONS, Answer, Reason, Status
from edge.protocol.senml import senml_cbor, senml_json, to_senml
from edge.protocol.types import DEVICE_ID_RE, DEVICE_ID_RULE

__all__ = [
    "CODECS",
    "DEVICE_ID_RE",
    "DEVICE_ID_RULE",
    "MAX_BATCH_BYTES",
    "MAX_PAYLOAD_BYTES",
    "MAX_PROTECTED_BYTES",
    "MAX_READINGS",
    "MAX_STATUS_BYTES",
    "MEDIA_TYPE",
    "OXP_VERSION",
    "PRIVATE_KEY_FILE",
    "PUBLIC_KEY_FILE",
    "REASONS",
    "ZSTD_LEVEL",
    "Answer",
    "Batch",
    "BatchHeader",
    "BatchTooLarge",
    "Codec",
    "Envelope",
    "KeyFileError",
    "ProtocolError",
    "Reason",
    "Status",
    "decode_body",
    "declared_readings",
    "decode_unverified",
    "generate_keypair",
    "key_id",
    "load_private_key",
    "load_public_key",
    "open_batch",
    "open_status",
    "peek_header",
    "raw_public_key",
    "read_envelope",
    "seal_batch",
    "seal_status",
    "signature_verifies",
    "senml_cbor",
    "senml_json",
    "to_senml",
    "verify_batch",
    "verify_sealed",
    "write_keypair",
]

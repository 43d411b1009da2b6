"""The open exchange protocol (OXP/2): sealing and opening signed batches and status reports.

Pure functions with no I/O and no asyncio (except the key-file helpers), shared by
the gateway and the hub; docs/protocol.md is the normative specification.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

# Each name is imported from its module when first asked for (PEP 562), so a program that needs one part (a driver
# its Channel type, the gateway its codec) does not load the SenML view, the hub-trust rules or the key-file writer
# with it (issue 17: every module imported is resident for the gateway's life).
_HOME = {
    "CODECS": "edge.protocol.compression",
    "DEVICE_ID_RE": "edge.protocol.types",
    "DEVICE_ID_RULE": "edge.protocol.types",
    "MAX_BATCH_BYTES": "edge.protocol.envelope",
    "MAX_PAYLOAD_BYTES": "edge.protocol.compression",
    "MAX_PROTECTED_BYTES": "edge.protocol.preauth",
    "MAX_READINGS": "edge.protocol.codec",
    "MAX_STATUS_BYTES": "edge.protocol.envelope",
    "MEDIA_TYPE": "edge.protocol.envelope",
    "OXP_VERSION": "edge.protocol.envelope",
    "PRIVATE_KEY_FILE": "edge.protocol.keys",
    "PUBLIC_KEY_FILE": "edge.protocol.keys",
    "REASONS": "edge.protocol.reasons",
    "ZSTD_LEVEL": "edge.protocol.compression",
    "Answer": "edge.protocol.reasons",
    "Batch": "edge.protocol.envelope",
    "BatchHeader": "edge.protocol.envelope",
    "BatchTooLarge": "edge.protocol.envelope",
    "Codec": "edge.protocol.compression",
    "Envelope": "edge.protocol.preauth",
    "KeyFileError": "edge.protocol.keys",
    "ProtocolError": "edge.protocol.errors",
    "Reason": "edge.protocol.reasons",
    "Status": "edge.protocol.reasons",
    "decode_body": "edge.protocol.codec",
    "declared_readings": "edge.protocol.codec",
    "decode_unverified": "edge.protocol.envelope",
    "generate_keypair": "edge.protocol.keys",
    "key_id": "edge.protocol.keys",
    "load_private_key": "edge.protocol.keys",
    "load_public_key": "edge.protocol.keys",
    "open_batch": "edge.protocol.envelope",
    "open_status": "edge.protocol.envelope",
    "peek_header": "edge.protocol.envelope",
    "raw_public_key": "edge.protocol.keys",
    "read_envelope": "edge.protocol.preauth",
    "seal_batch": "edge.protocol.envelope",
    "seal_status": "edge.protocol.envelope",
    "signature_verifies": "edge.protocol.envelope",
    "senml_cbor": "edge.protocol.senml",
    "senml_json": "edge.protocol.senml",
    "to_senml": "edge.protocol.senml",
    "verify_batch": "edge.protocol.envelope",
    "verify_sealed": "edge.protocol.envelope",
    "write_keypair": "edge.protocol.keys",
}


# edge.util.lazy's lazy_names, written out: edge.protocol imports nothing of ours outside itself (tests/guardrails).
def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    __import__(home)  # not importlib.import_module: `python -X importtime` (tests/guardrails) sees only imports made this way
    value = getattr(sys.modules[home], name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])

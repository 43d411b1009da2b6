"""The one exception a receiver of OXP bytes sees, with a short machine-readable reason code."""

from __future__ import annotations

__all__ = ["ProtocolError", "REASONS"]

# Every reason code a decoder raises, with what it means; docs/protocol.md lists the same table.
REASONS: dict[str, str] = {
    "truncated": "the bytes end before the structure they started is complete",
    "malformed": "the bytes are not a well-formed OXP/2 message",
    "bad_signature": "the signature does not verify with the given public key",
    "unsupported_version": "the message declares an OXP version this implementation does not speak",
    "unsupported_algorithm": "the COSE algorithm is not EdDSA (-8) or Ed25519 (-19)",
    "unsupported_codec": "the payload codec is not one this implementation knows",
    "wrong_type": "the message is a valid OXP message of another type (e.g. a status report, not a batch)",
    "too_large": "the message, or its decompressed payload, exceeds the size limits of OXP/2",
}


class ProtocolError(ValueError):
    """Bytes received are not a valid OXP message; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown ProtocolError reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail

"""Every code an OXP receiver answers with, in one place: why bytes are invalid (§4.3) and why a hub refuses (§8.2, §9).

Two tables, because they answer different questions. :class:`Reason` says what is wrong with a
message (the reference raises it as ``ProtocolError.reason``); :class:`Answer` is the error code a
hub sends back, which tells the sender what to do next, and several reasons share one answer
(a ``truncated`` batch is answered ``malformed``). Each answer has one :class:`Status`: the
class of refusal, whose value is the HTTP status §8 carries it with; another wire maps the
same class to its own form. Both are ``str`` enums, so a member is its code wherever text is
expected (JSON, logs, comparisons with what a peer sent).
"""

from __future__ import annotations

import enum

__all__ = ["Answer", "Reason", "REASONS", "Status"]


class Reason(enum.StrEnum):
    """Why bytes received are not a valid OXP message (§4.3); where several apply, the first check's."""

    TRUNCATED = "truncated"
    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNSUPPORTED_ALGORITHM = "unsupported_algorithm"
    UNSUPPORTED_CODEC = "unsupported_codec"
    WRONG_TYPE = "wrong_type"
    TOO_LARGE = "too_large"


# What each reason means; docs/protocol.md lists the same table.
REASONS: dict[str, str] = {
    Reason.TRUNCATED: "the bytes end before the structure they started is complete",
    Reason.MALFORMED: "the bytes are not a well-formed OXP/2 message",
    Reason.BAD_SIGNATURE: "the signature does not verify with the given public key",
    Reason.UNSUPPORTED_VERSION: "the message declares an OXP version this implementation does not speak",
    Reason.UNSUPPORTED_ALGORITHM: "the COSE algorithm is not EdDSA (-8) or Ed25519 (-19)",
    Reason.UNSUPPORTED_CODEC: "the payload codec is not one this implementation knows",
    Reason.WRONG_TYPE: "the message is a valid OXP message of another type (e.g. a status report, not a batch)",
    Reason.TOO_LARGE: "the message, or its decompressed payload, exceeds the size limits of OXP/2",
}


class Status(enum.IntEnum):
    """The class of a refusal, which decides what the sender does next (§8.2); the value is its HTTP status."""

    INVALID = 400  # never accepted as sent: set the message aside
    UNAUTHENTICATED = 401  # a signature or an enrolment token that does not hold
    FORBIDDEN = 403  # the key is not (or no longer) allowed to send: an operator must act
    CONFLICT = 409  # the hub holds something newer or different
    TOO_LARGE = 413
    UNSUPPORTED_MEDIA_TYPE = 415
    SLOW_DOWN = 429  # retry the same message after Retry-After
    UNAVAILABLE = 503  # retry the same message after Retry-After


class Answer(enum.StrEnum):
    """The error code of a hub's refusal (§8.2, §9), each with its :class:`Status`."""

    MALFORMED = "malformed"
    BAD_SIGNATURE = "bad_signature"
    BAD_TOKEN = "bad_token"
    EXPIRED_TOKEN = "expired_token"
    USED_TOKEN = "used_token"
    UNKNOWN_DEVICE = "unknown_device"
    REVOKED = "revoked"
    STALE = "stale"
    CONFLICT = "conflict"
    TOO_LARGE = "too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    RATE_LIMITED = "rate_limited"
    READINGS_BUDGET = "readings_budget"
    UNAVAILABLE = "unavailable"
    BUSY = "busy"

    @property
    def status(self) -> Status:
        return _STATUS[self]

    @classmethod
    def of(cls, reason: Reason | str) -> Answer:
        """The answer to a message refused for ``reason`` (§8.2: every other reason is answered malformed)."""
        if reason == Reason.TOO_LARGE:
            return cls.TOO_LARGE
        if reason == Reason.BAD_SIGNATURE:
            return cls.BAD_SIGNATURE
        return cls.MALFORMED


_STATUS = {
    Answer.MALFORMED: Status.INVALID,
    Answer.BAD_SIGNATURE: Status.UNAUTHENTICATED,
    Answer.BAD_TOKEN: Status.UNAUTHENTICATED,
    Answer.EXPIRED_TOKEN: Status.UNAUTHENTICATED,
    Answer.USED_TOKEN: Status.UNAUTHENTICATED,
    Answer.UNKNOWN_DEVICE: Status.FORBIDDEN,
    Answer.REVOKED: Status.FORBIDDEN,
    Answer.STALE: Status.CONFLICT,
    Answer.CONFLICT: Status.CONFLICT,
    Answer.TOO_LARGE: Status.TOO_LARGE,
    Answer.UNSUPPORTED_MEDIA_TYPE: Status.UNSUPPORTED_MEDIA_TYPE,
    Answer.RATE_LIMITED: Status.SLOW_DOWN,
    Answer.READINGS_BUDGET: Status.SLOW_DOWN,
    Answer.UNAVAILABLE: Status.UNAVAILABLE,
    Answer.BUSY: Status.UNAVAILABLE,
}

"""The one exception a receiver of OXP bytes sees, with a short machine-readable reason code."""

from __future__ import annotations

import reprlib

from edge.protocol.reasons import REASONS, Reason

__all__ = ["ProtocolError", "REASONS", "MAX_DETAIL_CHARS", "show"]

# A detail goes back to the sender and into logs: it never grows with the message it describes.
MAX_DETAIL_CHARS = 500


class _Short(reprlib.Repr):
    """repr() of a decoded item, bounded in size and safe for any item a peer can send.

    Python refuses to print an int of more than 4300 digits (ValueError), and the repr of a
    megabyte byte string or of an unfamiliar object (a CBOR tag) is as large as the item:
    neither may decide what a decoder raises or how much memory its message takes.
    """

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxstring = self.maxother = 60
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = self.maxfrozenset = 6

    def repr_int(self, x: int, level: int) -> str:
        return repr(x) if x.bit_length() <= 128 else f"<{x.bit_length()}-bit integer>"

    def repr_bytes(self, x: bytes, level: int) -> str:
        return repr(x) if len(x) <= 24 else f"{x[:16]!r}...<{len(x)} bytes>"

    def repr_str(self, x: str, level: int) -> str:
        return super().repr_str(x[: self.maxstring + 1], level)

    def repr_instance(self, x: object, level: int) -> str:
        return f"<{type(x).__name__}>"


_short = _Short()


def show(item: object) -> str:
    """A short, always-printable repr of ``item`` for error details (never raises)."""
    if type(item) in (bool, float) or item is None:
        return repr(item)
    try:
        return _short.repr(item)
    except Exception:  # a description must never fail
        return f"<{type(item).__name__}>"


class ProtocolError(ValueError):
    """Bytes received are not a valid OXP message; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: Reason | str, detail: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown ProtocolError reason {reason!r}")
        if len(detail) > MAX_DETAIL_CHARS:
            detail = detail[: MAX_DETAIL_CHARS - 1] + "…"
        super().__init__(f"{reason}: {detail}")
        self.reason = Reason(reason)
        self.detail = detail

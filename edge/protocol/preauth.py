"""The strict reader of a COSE_Sign1 envelope before its signature is checked: only what picks the key.

A receiver must read a message's key id before it can verify anything, so these bytes come
from anyone. A general CBOR decoder does more work than their size suggests: semantic tags
build bignums and fractions of huge integers (tag 30 held a hub's event loop 7.9 s per
800 KB), and a map of big integers with colliding hashes costs quadratic time. This reader
does only what the envelope needs and refuses the rest, after reading each byte at most once:

- the top item is tag 18 and nothing else is tagged (no bignums, fractions, dates, regexes);
- the COSE_Sign1 array has 4 items: a protected header byte string of at most
  :data:`MAX_PROTECTED_BYTES`, an unprotected map within the same bounds, the payload (a byte
  string read by its length only, never parsed) and a 64-byte signature;
- the protected header (and the unprotected map) nest at most :data:`MAX_NESTING` levels and
  hold at most :data:`MAX_HEADER_ITEMS` items, map keys are integers or text and appear once.

Any well-formed encoding is accepted (integers that are not in preferred form, indefinite
lengths), as the specification allows. Integers are within 64 bits by construction: without
tags CBOR has no other kind.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from edge.protocol.errors import ProtocolError, show

__all__ = [
    "ALG",
    "CRIT",
    "KID",
    "EDDSA",
    "ED25519",
    "OXP_BATCH",
    "OXP_STATUS",
    "OXP_RELEASE",
    "MESSAGE_TYPES",
    "COSE_SIGN1_TAG",
    "SIGNATURE_BYTES",
    "MAX_PROTECTED_BYTES",
    "MAX_HEADER_ITEMS",
    "MAX_NESTING",
    "Envelope",
    "read_envelope",
]

COSE_SIGN1_TAG = 18
# COSE header labels (RFC 9052 §3.1), and the private-use labels (< -65536) holding the OXP
# header: which of the two is present says whether the message is a batch or a status report.
ALG, CRIT, KID = 1, 2, 4
OXP_BATCH = -65537
OXP_STATUS = -65538
OXP_RELEASE = -65539  # a release manifest (docs/updates.md), signed by the city's release key
MESSAGE_TYPES = {OXP_BATCH: "batch", OXP_STATUS: "status report", OXP_RELEASE: "release manifest"}
EDDSA, ED25519 = -8, -19
SIGNATURE_BYTES = 64

# A batch's protected header is under 200 bytes with every counter a gateway keeps; 4 KiB
# leaves room for counters a newer gateway adds.
MAX_PROTECTED_BYTES = 4096
MAX_HEADER_ITEMS = 512
MAX_NESTING = 8  # protected header -> OXP header -> counters: three levels are used

_BREAK = object()
_SIMPLE = {20: False, 21: True, 22: None}
_FLOATS = {25: ">e", 26: ">f", 27: ">d"}


@dataclass(frozen=True, slots=True)
class Envelope:
    """A COSE_Sign1 message read but NOT verified: ``header`` is the decoded protected header."""

    protected: bytes
    header: dict[int | str, Any]
    payload: bytes
    signature: bytes

    @property
    def kid(self) -> bytes:
        """The key id (label 4) the message says it is signed with: only for finding the key."""
        kid = self.header[KID]
        assert isinstance(kid, bytes)  # read_envelope refuses a message without an 8-byte kid
        return kid

    @property
    def message_type(self) -> int:
        """:data:`OXP_BATCH` or :data:`OXP_STATUS`."""
        return next(label for label in MESSAGE_TYPES if label in self.header)


class _Reader:
    """CBOR items from ``data[pos:end]``, each byte read once; ``what`` names the part in errors."""

    def __init__(self, data: bytes, pos: int, end: int, what: str) -> None:
        self.data, self.pos, self.end, self.what = data, pos, end, what
        self.items = 0

    def _take(self, size: int) -> bytes:
        if size > self.end - self.pos:
            raise ProtocolError("truncated", f"{self.what} ends inside a CBOR item")
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def head(self) -> tuple[int, int, int | None]:
        """(major type, additional info, argument); the argument is None for an indefinite length."""
        initial = self._take(1)[0]
        major, info = initial >> 5, initial & 0x1F
        if info < 24:
            return major, info, info
        if info <= 27:
            return major, info, int.from_bytes(self._take(1 << (info - 24)), "big")
        if info == 31 and major in (2, 3, 4, 5, 7):
            return major, info, None
        raise ProtocolError("malformed", f"{self.what} has a CBOR item with a reserved length encoding")

    def _string(self, major: int, length: int | None) -> bytes:
        if length is not None:
            return self._take(length)
        chunks: list[bytes] = []
        while True:
            chunk_major, _, chunk_length = self.head()
            if chunk_major == 7 and chunk_length is None:
                return b"".join(chunks)
            if chunk_major != major or chunk_length is None:
                raise ProtocolError("malformed", f"{self.what} has a bad chunk in an indefinite-length string")
            chunks.append(self._take(chunk_length))

    def _count(self, count: int | None) -> None:
        # Every item takes at least one byte: a declared count beyond the bytes left is cut off.
        if count is not None and count > self.end - self.pos:
            raise ProtocolError("truncated", f"{self.what} declares {count} items in {self.end - self.pos} bytes")

    def _more(self, count: int | None, index: int) -> bool:
        if count is not None:
            return index < count
        if self.pos < self.end and self.data[self.pos] == 0xFF:
            self.pos += 1
            return False
        return True

    def bytestring(self) -> bytes:
        major, _, length = self.head()
        if major != 2:
            raise ProtocolError("malformed", f"{self.what} is not a byte string")
        return self._string(2, length)

    def value(self, depth: int) -> object:
        """One CBOR item as a Python value, within the item and nesting limits."""
        self.items += 1
        if self.items > MAX_HEADER_ITEMS:
            raise ProtocolError("malformed", f"{self.what} holds more than {MAX_HEADER_ITEMS} CBOR items")
        major, info, arg = self.head()
        if major in (0, 1):
            assert arg is not None  # head() gives no indefinite length to integers
            return arg if major == 0 else -1 - arg
        if major == 2:
            return self._string(2, arg)
        if major == 3:
            try:
                return self._string(3, arg).decode("utf-8")
            except UnicodeDecodeError:
                raise ProtocolError("malformed", f"{self.what} has a text string that is not UTF-8") from None
        if major == 6:
            raise ProtocolError("malformed", f"{self.what} has CBOR tag {arg}; OXP/2 headers carry no tags")
        if major == 7:
            return self._simple(info, arg)
        if depth >= MAX_NESTING:
            raise ProtocolError("malformed", f"{self.what} nests arrays and maps more than {MAX_NESTING} deep")
        self._count(arg)
        if major == 4:
            items, index = [], 0
            while self._more(arg, index):
                items.append(self.value(depth + 1))
                index += 1
            return items
        out: dict[object, object] = {}
        index = 0
        while self._more(arg, index):
            key = self.value(depth + 1)
            if type(key) not in (int, str):
                raise ProtocolError("malformed", f"{self.what} has a label of type {type(key).__name__}; expected an integer or text")
            if key in out:
                raise ProtocolError("malformed", f"{self.what} gives label {show(key)} twice")
            out[key] = self.value(depth + 1)
            index += 1
        return out

    def _simple(self, info: int, arg: int | None) -> object:
        if info in _SIMPLE:
            return _SIMPLE[info]
        if info in _FLOATS and arg is not None:
            return struct.unpack(_FLOATS[info], arg.to_bytes(struct.calcsize(_FLOATS[info]), "big"))[0]
        if arg is None:
            raise ProtocolError("malformed", f"{self.what} has a CBOR break outside an indefinite-length item")
        raise ProtocolError("malformed", f"{self.what} has the CBOR simple value {arg}; expected false, true, null or a float")


def _cose_head(reader: _Reader) -> int | None:
    major, _, arg = reader.head()
    if major != 6 or arg != COSE_SIGN1_TAG:
        raise ProtocolError("malformed", "message is not a tagged COSE_Sign1 (CBOR tag 18)")
    major, _, count = reader.head()
    if major != 4 or count not in (4, None):
        raise ProtocolError("malformed", "COSE_Sign1 is not an array of 4 items")
    return count


def _protected_map(data: bytes) -> dict[int | str, Any]:
    reader = _Reader(data, 0, len(data), "protected header")
    header = reader.value(0)
    if not isinstance(header, dict):
        raise ProtocolError("malformed", "protected header is not a map")
    if reader.pos != len(data):
        raise ProtocolError("malformed", f"{len(data) - reader.pos} bytes follow the protected header's map")
    return header


def read_envelope(data: bytes, *, limit: int) -> Envelope:
    """Read a COSE_Sign1 message of at most ``limit`` bytes WITHOUT verifying it; raises ProtocolError.

    Checks what picking the key needs: the envelope's shape, the algorithm, an 8-byte key id,
    no ``crit``, exactly one OXP header map (batch or status report). Reads each byte of
    ``data`` at most once and refuses before reading more than ``limit``.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, got {type(data).__name__}")
    if len(data) > limit:
        raise ProtocolError("too_large", f"message is {len(data)} bytes, over the OXP/2 limit of {limit}")
    data = bytes(data)
    if not data:
        raise ProtocolError("truncated", "message is empty")
    reader = _Reader(data, 0, len(data), "COSE_Sign1 message")
    count = _cose_head(reader)
    reader.what = "protected header"
    protected = reader.bytestring()
    if len(protected) > MAX_PROTECTED_BYTES:
        raise ProtocolError("too_large", f"protected header is {len(protected)} bytes, over the limit of {MAX_PROTECTED_BYTES}")
    reader.what = "unprotected header"
    start = reader.pos
    reader.items = 0
    if not isinstance(reader.value(0), dict):
        raise ProtocolError("malformed", "COSE_Sign1 items are not [bstr, map, bstr, bstr]")
    if reader.pos - start > MAX_PROTECTED_BYTES:
        raise ProtocolError("too_large", f"unprotected header is over the limit of {MAX_PROTECTED_BYTES} bytes")
    reader.what = "payload"
    payload = reader.bytestring()
    reader.what = "signature"
    signature = reader.bytestring()
    if count is None:
        reader.what = "COSE_Sign1 message"
        if reader.pos >= len(data) or data[reader.pos] != 0xFF:
            raise ProtocolError("malformed", "COSE_Sign1 is not an array of 4 items")
        reader.pos += 1
    if reader.pos != len(data):
        raise ProtocolError("malformed", f"{len(data) - reader.pos} bytes follow the COSE_Sign1 message")
    if len(signature) != SIGNATURE_BYTES:
        raise ProtocolError("malformed", f"signature is not {SIGNATURE_BYTES} bytes")
    header = _protected_map(protected)
    if type(header.get(ALG)) is not int or header[ALG] not in (EDDSA, ED25519):
        raise ProtocolError("unsupported_algorithm", f"alg {show(header.get(ALG))}: OXP/2 uses EdDSA (-8) or Ed25519 (-19)")
    kid = header.get(KID)
    if not isinstance(kid, bytes) or len(kid) != 8:
        raise ProtocolError("malformed", "protected header kid (label 4) is not 8 bytes")
    if CRIT in header:
        raise ProtocolError("malformed", "protected header has crit (label 2); OXP/2 messages carry none")
    if sum(label in header for label in MESSAGE_TYPES) != 1:
        raise ProtocolError("malformed", f"protected header needs exactly one OXP header map (label {OXP_BATCH}, {OXP_STATUS} or {OXP_RELEASE})")
    return Envelope(protected, header, payload, signature)

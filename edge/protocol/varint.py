"""Columns of LEB128 varints and zigzag-mapped signed integers, the building block of the OXP payload."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import accumulate, pairwise

from edge.protocol.errors import ProtocolError

__all__ = [
    "pack_uvarints",
    "unpack_uvarints",
    "zigzag",
    "unzigzag",
    "delta",
    "delta_of_delta",
    "delta_of_steps",
    "undelta",
    "undelta_of_delta",
    "wrap64",
    "INT64_MIN",
    "INT64_MAX",
]

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1


def pack_uvarints(values: list[int]) -> bytes:
    """Unsigned LEB128 of each value (least significant 7-bit group first), concatenated."""
    if not values:
        return b""
    top = max(values)
    if top < 0x80:
        return bytes(values)
    # Batches are dominated by small deltas (one or two bytes), written here without a call per value.  A table of
    # the 16,384 one- and two-byte encodings was ~2x faster on the two-byte values but held 0.8 MiB for the life of
    # every gateway (issue 17), for a few microseconds per sealed column.
    out: list[int] = []
    append = out.append
    if top < 1 << 14:
        for v in values:
            if v >= 0x80:
                append((v & 0x7F) | 0x80)
                v >>= 7
            append(v)
        return bytes(out)
    for v in values:
        while v >= 0x80:
            append((v & 0x7F) | 0x80)
            v >>= 7
        append(v)
    return bytes(out)


def _named(what: str | Callable[[], str]) -> str:
    return what if isinstance(what, str) else what()


def unpack_uvarints(data: bytes, count: int, *, what: str | Callable[[], str]) -> list[int]:
    """Exactly ``count`` unsigned varints from ``data``; anything else is a ProtocolError naming ``what``.

    ``what`` may be a function giving the name, so a caller decoding thousands of columns builds the text only on error.
    """
    if len(data) == count and (not data or max(data) < 0x80):
        return list(data)
    out: list[int] = []
    append = out.append
    value = 0
    shift = 0
    for byte in data:
        if byte < 0x80:
            if shift == 63 and byte > 1:
                raise ProtocolError("malformed", f"{_named(what)}: varint of 2**64 or more")
            append(value | (byte << shift))
            value = 0
            shift = 0
        else:
            value |= (byte & 0x7F) << shift
            shift += 7
            if shift > 63:
                raise ProtocolError("malformed", f"{_named(what)}: varint longer than 10 bytes")
    if shift:
        raise ProtocolError("malformed", f"{_named(what)}: last varint is cut off")
    if len(out) != count:
        raise ProtocolError("malformed", f"{_named(what)}: holds {len(out)} values, the series declares {count}")
    return out


def zigzag(values: list[int]) -> list[int]:
    """Map signed 64-bit integers to unsigned: 0, -1, 1, -2 ... become 0, 1, 2, 3 ..."""
    return [(v << 1) ^ (v >> 63) for v in values]


def unzigzag(values: list[int]) -> list[int]:
    """Inverse of :func:`zigzag`."""
    return [(z >> 1) ^ -(z & 1) for z in values]


def wrap64(values: list[int]) -> list[int]:
    """The values in signed 64-bit two's-complement arithmetic (reduced modulo 2**64 into int64)."""
    if values and (max(values) > INT64_MAX or min(values) < INT64_MIN):
        return [((v + (1 << 63)) & 0xFFFF_FFFF_FFFF_FFFF) - (1 << 63) for v in values]
    return values


def _small(values: Sequence[int]) -> bool:
    # Within +-2**61 no difference or difference of differences can leave int64: skip wrapping.
    return not values or (-_SAFE < min(values) and max(values) < _SAFE)


_SAFE = 1 << 61


def delta(values: Sequence[int]) -> list[int]:
    """First value, then differences between neighbours, wrapping at 64 bits."""
    if not values:
        return []
    steps = [values[0], *[b - a for a, b in pairwise(values)]]
    return steps if _small(values) else wrap64(steps)


def undelta(values: list[int]) -> list[int]:
    """Inverse of :func:`delta`."""
    return wrap64(list(accumulate(values)))


def delta_of_delta(values: list[int]) -> list[int]:
    """First value, first difference, then differences between consecutive differences, wrapping at 64 bits."""
    if len(values) < 2:
        return wrap64(list(values))
    if _small(values):
        steps = [b - a for a, b in pairwise(values)]
        return [values[0], steps[0], *[b - a for a, b in pairwise(steps)]]
    steps = wrap64([b - a for a, b in pairwise(values)])
    return wrap64([values[0], steps[0], *[b - a for a, b in pairwise(steps)]])


def delta_of_steps(steps: list[int]) -> list[int]:
    """delta_of_delta(values) computed from delta(values), saving a pass when both are needed."""
    if len(steps) < 2:
        return list(steps)
    return [steps[0], *delta(steps[1:])]


def undelta_of_delta(values: list[int]) -> list[int]:
    """Inverse of :func:`delta_of_delta`."""
    if len(values) < 2:
        return list(values)
    return wrap64(list(accumulate([values[0], *wrap64(list(accumulate(values[1:])))])))

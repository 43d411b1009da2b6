"""LEB128 columns: pack_uvarints against the definition (RFC-free: 7 bits a byte, least significant first, high bit = more)."""

from __future__ import annotations

import random

import pytest

from edge.protocol.errors import ProtocolError
from edge.protocol.varint import pack_uvarints, unpack_uvarints


def _leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


EDGES = [0, 1, 0x7F, 0x80, 0x81, 0x3FFF, 0x4000, 0x4001, 0x1F_FFFF, 0x20_0000, 2**32 - 1, 2**63 - 1, 2**63, 2**64 - 1]


@pytest.mark.parametrize("top", [0x7F, 0x3FFF, 2**64 - 1])
def test_packed_columns_are_the_concatenated_leb128_of_each_value_and_unpack_to_them(top: int) -> None:
    rng = random.Random(top)
    columns = [[], [v for v in EDGES if v <= top], *([rng.choice([rng.randrange(0x80), rng.randrange(top + 1)]) for _ in range(rng.randrange(1, 300))]
                                                     for _ in range(200))]
    for values in columns:
        packed = pack_uvarints(values)
        assert packed == b"".join(_leb128(v) for v in values)
        assert unpack_uvarints(packed, len(values), what="column") == values


def test_a_negative_value_is_refused_not_written() -> None:
    with pytest.raises(ValueError):
        pack_uvarints([0x80, -1])
    with pytest.raises(ValueError):
        pack_uvarints([2**20, -1])


def test_a_cut_off_column_is_malformed() -> None:
    with pytest.raises(ProtocolError, match="cut off"):
        unpack_uvarints(pack_uvarints([0x4000])[:-1], 1, what="column")

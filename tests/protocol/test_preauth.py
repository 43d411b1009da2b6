"""The strict envelope reader: what a receiver reads before verifying, and how little it reads of hostile bytes."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import cbor2
import pytest

from edge.protocol import MAX_BATCH_BYTES, MAX_PROTECTED_BYTES, ProtocolError, generate_keypair, key_id, preauth, read_envelope, seal_status
from edge.protocol.preauth import OXP_BATCH, OXP_STATUS

VECTORS = Path(__file__).resolve().parents[2] / "docs" / "protocol" / "vectors"
KID = bytes(range(8))
SIGNATURE = bytes(64)


@pytest.fixture
def bytes_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of every read the reader makes from its input (a spy on the real reader)."""
    sizes: list[int] = []
    take = preauth._Reader._take

    def counted(self: preauth._Reader, size: int) -> bytes:
        sizes.append(size)
        return take(self, size)

    monkeypatch.setattr(preauth._Reader, "_take", counted)
    return sizes


def cose(protected: bytes, unprotected: object = None, payload: bytes = b"", signature: bytes = SIGNATURE) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {} if unprotected is None else unprotected, payload, signature]))


def header(**extra: object) -> bytes:
    return cbor2.dumps({1: -8, 4: KID, OXP_BATCH: {0: 2}, **{int(k[1:]): v for k, v in extra.items()}})


def refused(data: bytes, reason: str, *, limit: int = MAX_BATCH_BYTES) -> ProtocolError:
    with pytest.raises(ProtocolError) as err:
        read_envelope(data, limit=limit)
    assert err.value.reason == reason, err.value.detail
    return err.value


def colliding_bignum_keys(size: int) -> bytes:
    """A CBOR map of big integers (tag 2) whose hashes collide: n * 2**61-1 + 5 hash alike in CPython."""
    item = 0
    keys: list[bytes] = []
    while sum(map(len, keys)) < size:
        item += 1
        keys.append(cbor2.dumps(cbor2.CBORTag(2, (item * (2**61 - 1) * 2**600 + 5).to_bytes(100, "big"))) + b"\x00")
    return bytes([0xBA]) + len(keys).to_bytes(4, "big") + b"".join(keys)


# --- what it reads -----------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in VECTORS.glob("*.json")))
def test_every_vector_message_gives_its_key_id_and_type(name: str) -> None:
    expected = json.loads((VECTORS / name).read_text()).get("expected", {})
    for field, label in (("batch_hex", OXP_BATCH), ("status_hex", OXP_STATUS)):
        if field in expected:
            envelope = read_envelope(bytes.fromhex(expected[field]), limit=MAX_BATCH_BYTES)
            assert envelope.message_type == label
            assert envelope.kid == cbor2.loads(envelope.protected)[4]


def test_a_status_report_is_read_with_its_key_id() -> None:
    key = generate_keypair()
    envelope = read_envelope(seal_status({"ts_ms": 1}, device_id="pole-1", private_key=key), limit=65536)
    assert (envelope.kid, envelope.message_type) == (key_id(key), OXP_STATUS)


def test_the_payload_is_read_by_its_length_only(bytes_read: list[int]) -> None:
    # A payload of tag-30 fractions would hold a general decoder for seconds; here it is one read.
    payload = cbor2.dumps([cbor2.CBORTag(30, [3**4000, 7**3000])] * 50)
    envelope = read_envelope(cose(header(), payload=payload), limit=MAX_BATCH_BYTES)
    assert envelope.payload == payload and len(payload) in bytes_read


def test_any_well_formed_encoding_is_read_indefinite_lengths_and_long_integers_included() -> None:
    protected = header()
    # The same message with the array, the unprotected map and the payload in indefinite form,
    # and the tag's number in a one-byte argument instead of the initial byte.
    data = b"\xd8\x12\x9f" + cbor2.dumps(protected) + b"\xbf\xff" + b"\x5f\x42ab\x41c\xff" + cbor2.dumps(SIGNATURE) + b"\xff"
    envelope = read_envelope(data, limit=MAX_BATCH_BYTES)
    assert (envelope.kid, envelope.payload) == (KID, b"abc")
    long_kid = b"\xa3\x01\x27\x04\x48" + KID + b"\x3a\x00\x01\x00\x00\xa1\x00\x1b" + (2).to_bytes(8, "big")
    assert read_envelope(cose(long_kid), limit=MAX_BATCH_BYTES).header[OXP_BATCH] == {0: 2}


# --- what it refuses, and how little it reads ----------------------------------------------


def test_a_megabyte_of_colliding_bignum_keys_in_the_protected_header_is_too_large_after_reading_its_length(bytes_read: list[int]) -> None:
    data = cose(colliding_bignum_keys(1 << 20))
    assert len(data) > 1 << 20
    err = refused(data, "too_large", limit=2 << 20)
    assert str(MAX_PROTECTED_BYTES) in err.detail
    # The tag, the array head and the byte string's head are read; the string itself is a slice.
    assert len(bytes_read) <= 6 and sum(bytes_read) <= len(data)


def test_colliding_bignum_keys_in_the_unprotected_map_are_malformed_at_the_first_key(bytes_read: list[int]) -> None:
    data = b"\xd2\x84" + cbor2.dumps(header()) + colliding_bignum_keys(1 << 20) + cbor2.dumps(b"") + cbor2.dumps(SIGNATURE)
    err = refused(data, "malformed", limit=2 << 20)
    assert "tag 2" in err.detail
    assert sum(bytes_read) < 64


def test_a_tag_30_rational_of_huge_integers_is_malformed_without_building_it(bytes_read: list[int]) -> None:
    rational = cbor2.CBORTag(30, [3**2000, 7**1500])
    protected = cbor2.dumps({1: -8, 4: KID, OXP_BATCH: {0: 2, 9: rational}})
    err = refused(cose(protected), "malformed")
    assert "tag 30" in err.detail
    # The header and the signature are each taken as one slice; the header is then read up to the tag.
    assert len(protected) in bytes_read and sum(bytes_read) - len(protected) - len(SIGNATURE) < 64


@pytest.mark.parametrize(
    ("what", "item"),
    [
        ("bignum", cbor2.CBORTag(2, b"\x01" * 40)),
        ("negative bignum", cbor2.CBORTag(3, b"\x01" * 40)),
        ("decimal fraction", cbor2.CBORTag(4, [-2, 12345])),
        ("date", cbor2.CBORTag(0, "2026-01-01T00:00:00Z")),
        ("epoch date", cbor2.CBORTag(1, 1767225600)),
        ("regex", cbor2.CBORTag(35, "a*")),
        ("nested COSE tag", cbor2.CBORTag(18, [])),
    ],
)
def test_no_semantic_tag_is_read_in_a_header(what: str, item: object) -> None:
    refused(cose(cbor2.dumps({1: -8, 4: KID, OXP_BATCH: {0: 2, 9: item}})), "malformed")
    refused(cose(header(), unprotected={5: item}), "malformed")


def test_only_tag_18_is_a_message() -> None:
    refused(cbor2.dumps(cbor2.CBORTag(98, [header(), {}, b"", SIGNATURE])), "malformed")
    refused(cbor2.dumps([header(), {}, b"", SIGNATURE]), "malformed")


def test_a_label_given_twice_is_malformed() -> None:
    protected = header()
    twice = bytes([protected[0] + 1]) + protected[1:] + b"\x01\x27"
    assert "twice" in refused(cose(twice), "malformed").detail


def test_nesting_beyond_the_limit_is_malformed() -> None:
    deep: object = 1
    for _ in range(preauth.MAX_NESTING + 1):
        deep = [deep]
    assert "deep" in refused(cose(cbor2.dumps({1: -8, 4: KID, OXP_BATCH: {0: 2, 9: deep}})), "malformed").detail


def test_more_items_than_the_limit_are_malformed() -> None:
    many = list(range(preauth.MAX_HEADER_ITEMS))
    assert "items" in refused(cose(cbor2.dumps({1: -8, 4: KID, OXP_BATCH: {0: 2, 9: many}})), "malformed").detail


def test_a_count_beyond_the_bytes_left_is_truncated_without_allocating() -> None:
    tracemalloc.start()
    try:
        refused(cose(b"\xbb" + (2**60).to_bytes(8, "big")), "truncated")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"\xd2", "truncated"),
        (b"\xd2\x84\x5a\xff\xff\xff\xff", "truncated"),
        (b"\xd2\x83", "malformed"),
        (b"\xd2\x84\xa0", "malformed"),
        (b"\xd2\x84\x1c", "malformed"),
    ],
)
def test_cut_off_and_misshapen_envelopes(data: bytes, reason: str) -> None:
    refused(data, reason)


def test_a_signature_of_another_length_and_bytes_after_the_message_are_malformed() -> None:
    refused(cose(header(), signature=bytes(63)), "malformed")
    assert "follow" in refused(cose(header()) + b"\x00", "malformed").detail


def test_an_unknown_label_type_is_malformed() -> None:
    refused(cose(b"\xa1\x41\x00\x01"), "malformed")


def test_a_message_over_the_limit_is_refused_before_reading(bytes_read: list[int]) -> None:
    refused(cose(header(), payload=bytes(2000)), "too_large", limit=1000)
    assert bytes_read == []


def test_refusing_a_megabyte_takes_memory_independent_of_its_size() -> None:
    data = b"\xd2\x84" + cbor2.dumps(header()) + colliding_bignum_keys(1 << 20) + b"\x40" + cbor2.dumps(SIGNATURE)
    tracemalloc.start()
    try:
        refused(data, "malformed", limit=2 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024

"""Property tests of OXP/2 decoding as the hub uses it: exact round trips, and hostile bytes.

The hub takes bytes from the network: whatever they hold, decode_body, open_batch,
decode_unverified, peek_header and open_status raise ProtocolError and nothing else
(never IndexError, TypeError, OverflowError, a ValueError of Python's own...), and the
memory a message can make them take is bounded by the limits of docs/protocol.md §6.7.
"""

from __future__ import annotations

import math
import struct
import tracemalloc
from collections.abc import Callable
from decimal import Decimal

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge.protocol import (
    MAX_READINGS,
    BatchHeader,
    BatchTooLarge,
    ProtocolError,
    decode_unverified,
    key_id,
    open_batch,
    open_status,
    peek_header,
    seal_batch,
    seal_status,
)
from edge.protocol.codec import decode_body, decode_payload, encode_body, encode_payload
from edge.protocol.compression import compress
from edge.protocol.envelope import H_CODEC, H_VERSION, _sign
from edge.protocol.errors import MAX_DETAIL_CHARS
from edge.protocol.preauth import ALG, EDDSA, KID, OXP_BATCH, OXP_STATUS
from edge.protocol.types import Channel, Kind, Quality, Reading
from edge.protocol.varint import INT64_MAX, INT64_MIN

KEY = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
PUBLIC = KEY.public_key()
KID_BYTES = key_id(KEY)

# -- (1) encode -> decode is exact -------------------------------------------------------------

RESOLUTIONS = [0.25, 1e-7, 0.1, 1.0, 10.0, 2.5, 0.001, 1e-30, 1e30, 5.0]
IDS = ["a/n", "meter-1/voltage_l1", "x", "a/b/c", "gps-1/lat", "d:1/v.mean_5m", "ped-1/mac"]
UNITS = ["", "V", "ug/m3", "furlongs/fortnight"]

int64 = st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
times = st.one_of(
    int64,
    st.sampled_from([INT64_MIN, INT64_MIN + 1, -1, 0, 1, INT64_MAX - 1, INT64_MAX]),
    st.integers(min_value=1_700_000_000_000, max_value=1_700_000_100_000),
)
any_float = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)
edge_floats = st.sampled_from(
    [-0.0, 0.0, math.inf, -math.inf, math.nan, 5e-324, -5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 0.1, 1e-7]
)


def _bits(value: float) -> bytes:
    return struct.pack(">d", value)


@st.composite
def series(draw):
    """(channel, values, how values compare) for one channel of random kind and resolution."""
    cid = draw(st.sampled_from(IDS))
    personal = draw(st.booleans())
    unit = draw(st.sampled_from(UNITS))
    shape = draw(st.sampled_from(["ints", "floats", "mixed", "resolution", "string", "bool"]))
    n = draw(st.integers(min_value=0, max_value=12))
    if shape == "string":
        channel = Channel(cid, unit, Kind.STRING, personal=personal)
        values = draw(st.lists(st.text(max_size=12), min_size=n, max_size=n))
    elif shape == "bool":
        channel = Channel(cid, unit, Kind.BOOL, personal=personal)
        values = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    elif shape == "resolution":
        resolution = draw(st.sampled_from(RESOLUTIONS))
        channel = Channel(cid, unit, resolution=resolution, personal=personal)
        # multiples of the resolution: the decoder gives back k x the exact decimal step
        values = draw(st.lists(st.integers(min_value=-(2**40), max_value=2**40), min_size=n, max_size=n))
    else:
        channel = Channel(cid, unit, personal=personal)
        element = {
            "ints": int64,
            "floats": st.one_of(any_float, edge_floats),
            "mixed": st.one_of(st.integers(min_value=-(2**53), max_value=2**53), any_float, edge_floats),
        }[shape]
        values = draw(st.lists(element, min_size=n, max_size=n))
    return shape, channel, values


@st.composite
def batches(draw):
    """Channels, readings interleaved across channels in any order, and per channel what must come back."""
    chosen = draw(st.lists(series(), min_size=0, max_size=5, unique_by=lambda s: s[1].id))
    channels = tuple(c for _, c, _ in chosen)
    per_channel: dict[str, list[Reading]] = {}
    expected: dict[str, list] = {}
    for shape, channel, values in chosen:
        per_channel[channel.id], expected[channel.id] = [], []
        step = Decimal(repr(channel.resolution)) if channel.resolution is not None else None
        for v in values:
            ts = draw(times)  # any int64, out of order and repeated ones included
            quality = draw(st.one_of(st.none(), st.sampled_from(list(Quality))))
            unit = draw(st.sampled_from(["", channel.unit]))  # "" means the declared unit
            if step is not None:
                sent = v * channel.resolution
                exact = Decimal(v) * step  # e >= 0: the integer; e < 0: the binary64 nearest the decimal
                want = int(exact) if step == step.to_integral_value() else float(exact)
            else:
                sent = want = v
            per_channel[channel.id].append(Reading(channel.id, ts, sent, unit, quality))
            expected[channel.id].append((ts, want, channel.unit, quality, shape))
    # readings of different channels arrive interleaved; within a channel their order is kept
    labels = draw(st.permutations([r.channel for rs in per_channel.values() for r in rs]))
    queues = {cid: iter(rs) for cid, rs in per_channel.items()}
    return channels, [next(queues[cid]) for cid in labels], expected


def _same_value(got, want, shape: str) -> bool:
    if shape in ("string", "bool"):
        return type(got) is type(want) and got == want
    if shape == "ints":
        return type(got) is int and got == want
    if isinstance(got, bool) or not isinstance(got, (int, float)):
        return False
    if shape == "floats":
        # bit-exact: -0.0, NaN payloads, infinities, subnormals (integral values may decode as ints)
        return _bits(float(got)) == _bits(want)
    if isinstance(want, float) and math.isnan(want):
        return isinstance(got, float) and math.isnan(got)
    if got != want:
        return False
    return not (isinstance(want, float) and want == 0) or math.copysign(1.0, got) == math.copysign(1.0, want)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=batches(), codec=st.sampled_from(["zstd", "deflate"]))
def test_encode_then_decode_gives_back_every_reading_exactly(batch, codec) -> None:
    channels, readings, expected = batch
    decoded_channels, decoded = decode_payload(encode_payload(channels, readings, codec=codec), codec=codec)
    assert decoded_channels == channels  # empty series, personal flags, units and resolutions included
    got: dict[str, list[Reading]] = {}
    for r in decoded:
        got.setdefault(r.channel, []).append(r)
    for cid, wanted in expected.items():
        back = got.get(cid, [])
        assert len(back) == len(wanted), cid
        for r, (ts, value, unit, quality, shape) in zip(back, wanted, strict=True):
            assert type(r.ts_ms) is int and r.ts_ms == ts
            assert r.unit == unit and r.quality == quality
            assert _same_value(r.value, value, shape), (cid, shape, r.value, value)


@settings(max_examples=150, deadline=None)
@given(
    resolution=st.sampled_from(RESOLUTIONS),
    steps=st.lists(st.one_of(st.floats(min_value=-(2.0**50), max_value=2.0**50), edge_floats), min_size=1, max_size=20),
)
@example(resolution=0.25, steps=[1.7976931348623157e308])  # v / step overflows: refused, not a TypeError
def test_a_resolution_channel_keeps_every_value_within_half_a_step_and_decoding_is_stable(resolution, steps) -> None:
    # any value, in units of the step (k beyond 64 bits is refused at sealing, tested elsewhere)
    values = [x * resolution if abs(x) < 2.0**50 or not math.isfinite(x) else x for x in steps]
    channel = Channel("a/v", resolution=resolution)
    if any(math.isfinite(v) and abs(v / resolution) >= 2.0**63 for v in values):
        with pytest.raises(ValueError, match="exceeds 64 bits"):  # refused at sealing, never a TypeError
            encode_body((channel,), [Reading("a/v", i, v) for i, v in enumerate(values)])
    values = [v for v in values if not math.isfinite(v) or abs(v / resolution) < 2.0**62]
    readings = [Reading("a/v", i, v) for i, v in enumerate(values)]
    _, once = decode_body(encode_body((channel,), readings))
    _, twice = decode_body(encode_body((channel,), once))
    for sent, got, again in zip(values, once, twice, strict=True):
        if isinstance(sent, float) and math.isnan(sent):
            assert isinstance(got.value, float) and math.isnan(got.value)
            assert isinstance(again.value, float) and math.isnan(again.value)
            continue
        assert got.value == again.value  # a decoded value is already on the grid: re-encoding keeps it
        if math.isinf(sent):
            assert got.value == sent
        elif abs(sent / resolution) < 2**52:
            assert abs(got.value - sent) <= resolution / 2 * (1 + 1e-9) + abs(sent) * 1e-15


# -- (2) hostile bytes raise ProtocolError only ------------------------------------------------

cbor_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**64, -(2**64) - 1, 10**400, -(10**400), 2**63, INT64_MIN - 1]),
    any_float,
    st.text(max_size=8),
    st.binary(max_size=16),
)
cbor_item = st.recursive(
    cbor_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=8),
        st.dictionaries(st.one_of(st.integers(-3, 8), st.text(max_size=3)), inner, max_size=4),
        st.builds(cbor2.CBORTag, st.sampled_from([2, 3, 4, 5, 24, 30, 258, 55799, 18, 1000]), inner),
    ),
    max_leaves=20,
)


def _valid_body() -> list:
    channels = (
        Channel("meter-1/voltage_l1", "V", resolution=0.1),
        Channel("a/f"),
        Channel("a/d"),
        Channel("counter-1/visitor", kind=Kind.STRING, personal=True),
        Channel("door-1/open", kind=Kind.BOOL),
    )
    t = 1_700_000_000_000
    readings = [
        *[Reading("meter-1/voltage_l1", t + i * 1000, 230.0 + i / 10, "V", Quality.SUSPECT if i == 3 else None) for i in range(6)],
        *[Reading("a/f", t + i * 1000, math.pi * i) for i in range(6)],
        *[Reading("a/d", t + i * 1000, i / 4) for i in range(6)],
        Reading("counter-1/visitor", t + 10, "p:1"),
        Reading("counter-1/visitor", t + 5, "p:2"),
        Reading("door-1/open", t, True),
        Reading("door-1/open", t + 7, False, quality=Quality.BAD),
    ]
    return cbor2.loads(encode_body(channels, readings))


VALID_BODY = _valid_body()


def _paths(item, prefix=()):
    yield prefix
    if isinstance(item, list):
        for i, sub in enumerate(item):
            yield from _paths(sub, (*prefix, i))


PATHS = [p for p in _paths(VALID_BODY) if p]


def _replace(doc, path, value):
    if len(path) == 1:
        copy = list(doc)
        copy[path[0]] = value
        return copy
    copy = list(doc)
    copy[path[0]] = _replace(doc[path[0]], path[1:], value)
    return copy


def _decodes_or_protocol_error(call, data) -> None:
    try:
        call(data)
    except ProtocolError as exc:
        assert len(exc.detail) <= MAX_DETAIL_CHARS


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_protocol_error(data) -> None:
    _decodes_or_protocol_error(decode_body, data)
    _decodes_or_protocol_error(lambda d: decode_payload(d, codec="zstd"), data)
    _decodes_or_protocol_error(lambda d: decode_payload(d, codec="deflate"), data)
    _decodes_or_protocol_error(lambda d: open_batch(d, PUBLIC), data)
    _decodes_or_protocol_error(decode_unverified, data)
    _decodes_or_protocol_error(peek_header, data)
    _decodes_or_protocol_error(lambda d: open_status(d, PUBLIC), data)


@settings(max_examples=600, deadline=None)
@given(path=st.sampled_from(PATHS), value=cbor_item)
def test_a_valid_body_with_any_item_replaced_decodes_or_raises_protocol_error(path, value) -> None:
    body = cbor2.dumps(_replace(VALID_BODY, path, value))
    _decodes_or_protocol_error(decode_body, body)


@settings(max_examples=300, deadline=None)
@given(
    path=st.sampled_from(PATHS),
    value=cbor_item,
    codec=st.sampled_from(["zstd", "deflate"]),
    fields=st.dictionaries(st.integers(-2, 9), cbor_item, max_size=4),
)
def test_a_correctly_signed_batch_with_any_content_raises_only_protocol_error(path, value, codec, fields) -> None:
    # Signed with the very key the hub verifies with: what a compromised or buggy device can send.
    payload = compress(cbor2.dumps(_replace(VALID_BODY, path, value)), codec)
    oxp = {H_VERSION: 2, 1: "pole-1", 2: 1, 3: 1, 4: bytes(32), H_CODEC: 1 if codec == "zstd" else 2, 6: 0}
    oxp.update(fields)
    message = _sign({ALG: EDDSA, KID: KID_BYTES, OXP_BATCH: oxp}, payload, KEY)
    for call in (peek_header, decode_unverified, lambda d: open_batch(d, PUBLIC)):
        _decodes_or_protocol_error(call, message)


@settings(max_examples=200, deadline=None)
@given(report=cbor_item, header=st.dictionaries(st.integers(-2, 4), cbor_item, max_size=3))
def test_a_correctly_signed_status_report_with_any_content_raises_only_protocol_error(report, header) -> None:
    message = _sign({ALG: EDDSA, KID: KID_BYTES, OXP_STATUS: {H_VERSION: 2, 1: "pole-1", **header}}, cbor2.dumps(report), KEY)
    _decodes_or_protocol_error(lambda d: open_status(d, PUBLIC), message)


@settings(max_examples=200, deadline=None)
@given(protected=st.dictionaries(st.integers(-65539, 5), cbor_item, max_size=4), payload=st.binary(max_size=40))
def test_any_protected_header_raises_only_protocol_error_before_the_signature_is_checked(protected, payload) -> None:
    message = cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps(protected), {}, payload, bytes(64)]))
    for call in (peek_header, decode_unverified, lambda d: open_batch(d, PUBLIC), lambda d: open_status(d, PUBLIC)):
        _decodes_or_protocol_error(call, message)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_mutated_sealed_batches_raise_only_protocol_error(data) -> None:
    body = bytearray(_sealed())
    for _ in range(data.draw(st.integers(1, 4))):
        spot = data.draw(st.integers(0, len(body) - 1))
        action = data.draw(st.sampled_from(["set", "insert", "delete"]))
        if action == "set":
            body[spot] = data.draw(st.integers(0, 255))
        elif action == "insert":
            body[spot:spot] = data.draw(st.binary(min_size=1, max_size=9))
        else:
            del body[spot]
    for call in (peek_header, decode_unverified, lambda d: open_batch(d, PUBLIC)):
        _decodes_or_protocol_error(call, bytes(body))


_SEALED: list[bytes] = []


def _sealed() -> bytes:
    if not _SEALED:
        header = BatchHeader("pole-1", KID_BYTES, 1, 1, bytes(32), "zstd", 0, {"readings_dropped": 1})
        channels, readings = decode_body(cbor2.dumps(VALID_BODY))
        _SEALED.append(seal_batch(header, channels, readings, KEY))
    return _SEALED[0]


# -- bombs: refused quickly, with little memory -------------------------------------------------


def _refused(body: bytes, reason: str | None = None, *, max_mib: float = 40.0) -> ProtocolError:
    tracemalloc.start()
    try:
        with pytest.raises(ProtocolError) as err:
            decode_body(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < max_mib * 2**20, f"decoding took {peak / 2**20:.0f} MiB"
    assert len(err.value.detail) <= MAX_DETAIL_CHARS
    if reason is not None:
        assert err.value.reason == reason
    return err.value


def _series(name, count, times, values, head=0, unit=0, resolution=None):
    return [head, name, unit, resolution, count, times, values]


def test_a_varint_column_declaring_2_to_the_60_readings_is_malformed_without_allocating() -> None:
    _refused(cbor2.dumps([0, ["a"], [_series("x", 2**60, b"\x00" * 10, [2, 0, b"\x00" * 10])]]))


def test_more_readings_than_a_batch_may_hold_are_refused_before_any_column_is_decoded() -> None:
    # 30 series of 20 million bool readings sharing one time column: 32 MiB decompressed is not
    # the bound, 600 million readings would be tens of gigabytes once decoded.
    n = 20_000_000
    series = [_series("b0", n, b"\x00" * n, [6, bytes(n // 8)], head=2)]
    series += [_series(f"b{i}", n, 0, [6, bytes(n // 8)], head=2) for i in range(1, 3)]
    body = cbor2.dumps([0, ["a"], series])
    assert _refused(body, "too_large", max_mib=len(body) / 2**20 * 3 + 40).reason == "too_large"
    # a batch at the limit still decodes
    n = MAX_READINGS
    _, readings = decode_body(cbor2.dumps([0, ["a"], [_series("b", n, b"\x00" * n, [6, bytes(n // 8)], head=2)]]))
    assert len(readings) == MAX_READINGS


def test_a_huge_base_time_is_malformed_not_a_bignum_per_reading() -> None:
    err = _refused(cbor2.dumps([2**200_000, ["a"], [_series("x", 1000, b"\x00" * 1000, [2, 0, b"\x00" * 1000])]]))
    assert "base time" in err.detail


@pytest.mark.parametrize("resolution", [[10**400, -1], [10**400, 2], [2**64, 0]])
def test_a_resolution_mantissa_beyond_64_bits_is_malformed_not_an_overflow_error(resolution) -> None:
    _refused(cbor2.dumps([0, ["a"], [_series("x", 1, b"\x00", [0, b"\x00"], resolution=resolution)]]), "malformed")


@pytest.mark.parametrize("unit", [1.0, True])
def test_a_time_unit_must_be_an_integer_so_times_stay_integers(unit) -> None:
    _refused(cbor2.dumps([0, ["a"], [_series("x", 1, [unit, b"\x02"], [2, 0, b"\x00"])]]), "malformed")


def test_a_huge_byte_string_length_prefix_is_truncated_not_allocated() -> None:
    _refused(b"\x83\x00\x80\x5b" + (2**60).to_bytes(8, "big") + b"\x00", "truncated")


@pytest.mark.parametrize("opener", [b"\x81", b"\xa1\x00", b"\xc2\x81"])
def test_deeply_nested_cbor_is_malformed_not_a_recursion_error(opener) -> None:
    _refused(opener * 100_000 + b"\x00", "malformed")
    deep = opener * 100_000 + b"\x00"
    for call in (peek_header, decode_unverified, lambda d: open_status(d, PUBLIC)):
        with pytest.raises(ProtocolError):
            call(cbor2.dumps(cbor2.CBORTag(18, [deep, {}, b"", bytes(64)])))
    with pytest.raises(ProtocolError):
        open_status(_sign({ALG: EDDSA, KID: KID_BYTES, OXP_STATUS: {H_VERSION: 2, 1: "pole-1"}}, deep, KEY), PUBLIC)


@pytest.mark.parametrize("where", ["head", "encoding", "name", "alg", "version", "codec", "seq", "status"])
def test_an_integer_too_long_to_print_still_gives_a_short_protocol_error(where) -> None:
    big = 10**5000  # Python refuses to turn an int of over 4300 digits into text
    if where in ("head", "encoding", "name"):
        series = _series("x", 1, b"\x00", [2, 0, b"\x00"])
        series[{"head": 0, "encoding": 6, "name": 1}[where]] = [big] if where == "encoding" else big
        _refused(cbor2.dumps([0, ["a"], [series]]), "malformed")
        return
    oxp = {H_VERSION: 2, 1: "pole-1", 2: 1, 3: 1, 4: bytes(32), H_CODEC: 1, 6: 0}
    protected = {ALG: EDDSA, KID: KID_BYTES, OXP_BATCH: oxp}
    if where == "alg":
        protected[ALG] = big
    elif where == "version":
        oxp[H_VERSION] = big
    elif where == "codec":
        oxp[H_CODEC] = big
    elif where == "seq":
        oxp[3] = big
    if where == "status":
        message = _sign({ALG: EDDSA, KID: KID_BYTES, OXP_STATUS: {H_VERSION: 2, 1: "pole-1"}}, cbor2.dumps({"device_id": big}), KEY)
        calls: list[Callable[[bytes], object]] = [lambda d: open_status(d, PUBLIC)]
    else:
        message = _sign(protected, compress(cbor2.dumps(VALID_BODY), "zstd"), KEY)
        calls = [peek_header, decode_unverified, lambda d: open_batch(d, PUBLIC)]
    for call in calls:
        with pytest.raises(ProtocolError) as err:
            call(message)
        assert len(err.value.detail) <= MAX_DETAIL_CHARS


def test_the_detail_of_an_error_never_grows_with_the_message() -> None:
    # The detail goes back to the sender in the hub's answer and into its log.
    series = _series("x", 1, b"\x00", [2, 0, b"\x00"])
    series[0] = list(range(300_000))
    err = _refused(cbor2.dumps([0, ["a"], [series]]), "malformed")
    assert len(err.detail) < 200


def test_sealing_more_readings_than_a_batch_may_hold_raises_batch_too_large() -> None:
    header = BatchHeader("pole-1", KID_BYTES, 1, 1, bytes(32), "zstd", 0)
    channel = Channel("a/b", kind=Kind.BOOL)
    readings = [Reading("a/b", 0, False)] * (MAX_READINGS + 1)
    with pytest.raises(BatchTooLarge, match="readings"):
        seal_batch(header, (channel,), readings, KEY)
    with pytest.raises(BatchTooLarge, match="readings"):
        seal_batch(header, (channel,), iter(readings), KEY)


def test_a_status_report_round_trips_with_unicode_and_edge_integers() -> None:
    report = {"errors": ["ünïcødé ✓", ""], "ts_ms": 2**64 - 1, "n": INT64_MIN}
    assert open_status(seal_status(report, device_id="pole-1", private_key=KEY), PUBLIC) == {**report, "device_id": "pole-1"}

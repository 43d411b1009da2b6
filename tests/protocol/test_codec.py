"""The OXP/2 payload codec: lossless round trips at declared resolutions, and clear refusals."""

from __future__ import annotations

import math

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.protocol.codec import (
    ENC_DEC_DELTA,
    ENC_DEC_DOD,
    ENC_FLOAT,
    decode_payload,
    encode_body,
    encode_payload,
    resolution_parts,
)
from edge.protocol.errors import ProtocolError
from edge.protocol.types import Channel, Kind, Quality, Reading


def roundtrip(channels, readings, codec="zstd"):
    return decode_payload(encode_payload(channels, readings, codec=codec), codec=codec)


def by_channel(readings):
    return sorted(readings, key=lambda r: r.channel)


@pytest.mark.parametrize("codec", ["zstd", "deflate"])
def test_every_kind_round_trips_with_times_values_and_quality(channels, readings, codec):
    decoded_channels, decoded = roundtrip(channels, readings, codec)
    assert decoded_channels == channels
    expected = [Reading(r.channel, r.ts_ms, r.value, next(c.unit for c in channels if c.id == r.channel), r.quality) for r in readings]
    assert sorted(decoded, key=lambda r: (r.channel, r.ts_ms)) == sorted(expected, key=lambda r: (r.channel, r.ts_ms))


def test_readings_keep_their_order_within_a_channel_even_when_time_goes_backwards():
    ch = (Channel("a/x", resolution=1.0),)
    times = [5_000, 3_000, 9_000, 9_000, 1]
    _, decoded = roundtrip(ch, [Reading("a/x", t, i) for i, t in enumerate(times)])
    assert [r.ts_ms for r in decoded] == times


def test_values_are_quantized_to_the_declared_resolution():
    ch = (Channel("pm-1/pm10", resolution=0.5),)
    _, decoded = roundtrip(ch, [Reading("pm-1/pm10", 0, 12.26), Reading("pm-1/pm10", 1, 12.24)])
    assert [r.value for r in decoded] == [12.5, 12.0]


def test_decoded_values_equal_the_shortest_decimal_at_the_resolution():
    ch = (Channel("m/e", resolution=0.001),)
    values = [0.1 + 0.2, 1234.567, -0.003, 0.0]
    _, decoded = roundtrip(ch, [Reading("m/e", i, v) for i, v in enumerate(values)])
    assert [r.value for r in decoded] == [0.3, 1234.567, -0.003, 0.0]


def test_float_channel_without_resolution_travels_as_exact_decimal_when_it_can():
    ch = (Channel("gps-1/lon"),)
    values = [-79.3957, -79.39571, -79.39569]
    body = cbor2.loads(encode_body(ch, [Reading("gps-1/lon", i, v) for i, v in enumerate(values)]))
    assert body[2][0][6][0] in (ENC_DEC_DELTA, ENC_DEC_DOD) and body[2][0][6][1] == -5
    _, decoded = roundtrip(ch, [Reading("gps-1/lon", i, v) for i, v in enumerate(values)])
    assert [r.value for r in decoded] == values


def test_float_channel_with_many_digits_falls_back_to_binary64_bit_exact():
    ch = (Channel("x/y"),)
    values = [math.pi, -math.e, 1e300, 5e-324, float("inf"), -0.0]
    body = cbor2.loads(encode_body(ch, [Reading("x/y", i, v) for i, v in enumerate(values)]))
    assert body[2][0][6][0] == ENC_FLOAT
    _, decoded = roundtrip(ch, [Reading("x/y", i, v) for i, v in enumerate(values)])
    assert [r.value for r in decoded] == values
    assert math.copysign(1, decoded[-1].value) == -1


def test_nan_survives_in_a_resolution_channel():
    ch = (Channel("t/c", resolution=0.1),)
    _, decoded = roundtrip(ch, [Reading("t/c", 0, 21.04), Reading("t/c", 1, float("nan"))])
    assert decoded[0].value == 21.0 and math.isnan(decoded[1].value)


def test_large_integers_round_trip_exactly():
    ch = (Channel("m/energy", "Wh"),)
    values = [2**62, -(2**63), 0, 2**63 - 1]
    _, decoded = roundtrip(ch, [Reading("m/energy", i, v) for i, v in enumerate(values)])
    assert [r.value for r in decoded] == values
    assert all(type(r.value) is int for r in decoded)


def test_integer_beyond_64_bits_is_refused_naming_the_channel():
    with pytest.raises(ValueError, match="m/energy"):
        encode_payload((Channel("m/energy"),), [Reading("m/energy", 0, 2**64)], codec="zstd")


def test_integers_mixed_with_integral_floats_stay_exact_integers():
    ch = (Channel("m/n"),)
    _, decoded = roundtrip(ch, [Reading("m/n", 0, 2**53 + 1), Reading("m/n", 1, 7.0)])
    assert [r.value for r in decoded] == [2**53 + 1, 7]


def test_huge_integers_mixed_with_fractions_are_refused_rather_than_rounded():
    with pytest.raises(ValueError, match="'m/n'.*declare a resolution"):
        encode_payload((Channel("m/n"),), [Reading("m/n", 0, 2**53 + 1), Reading("m/n", 1, 0.123456789012)], codec="zstd")


def test_value_of_the_wrong_kind_is_refused_naming_channel_and_value():
    with pytest.raises(ValueError, match=r"'m/v'.*'high'.*number"):
        encode_payload((Channel("m/v"),), [Reading("m/v", 0, "high")], codec="zstd")
    with pytest.raises(ValueError, match=r"'d/o'.*1.*true or false"):
        encode_payload((Channel("d/o", kind=Kind.BOOL),), [Reading("d/o", 0, 1)], codec="zstd")


def test_reading_of_an_undeclared_channel_is_refused():
    with pytest.raises(ValueError, match="'b/c'.*not among"):
        encode_payload((Channel("a/b"),), [Reading("b/c", 0, 1)], codec="zstd")


def test_reading_unit_that_contradicts_the_channel_is_refused():
    with pytest.raises(ValueError, match="'kW'.*'W'"):
        encode_payload((Channel("m/p", "W"),), [Reading("m/p", 0, 1, "kW")], codec="zstd")


def test_unknown_codec_is_refused_when_encoding_and_decoding():
    with pytest.raises(ValueError, match="lz4"):
        encode_payload((), [], codec="lz4")
    with pytest.raises(ProtocolError) as err:
        decode_payload(b"\x00", codec="lz4")
    assert err.value.reason == "unsupported_codec"


def test_smooth_series_use_delta_of_delta_and_noisy_ones_plain_delta():
    from edge.protocol.codec import ENC_RES_DELTA, ENC_RES_DOD

    ch = (Channel("m/energy", "Wh", resolution=1.0), Channel("m/volts", "V", resolution=0.1))
    readings = [Reading("m/energy", i, 1000 + 37 * i) for i in range(20)]
    readings += [Reading("m/volts", i, 230 + (0.3 if i % 2 else -0.2)) for i in range(20)]
    series = cbor2.loads(encode_body(ch, readings))[2]
    assert [s[6][0] for s in series] == [ENC_RES_DOD, ENC_RES_DELTA]
    _, decoded = roundtrip(ch, readings)
    assert [r.value for r in decoded][:3] == [1000, 1037, 1074]


def test_series_with_identical_times_share_one_time_column():
    ch = (Channel("m/a"), Channel("m/b"))
    readings = [Reading(c.id, 1000 * i + (i % 3), i) for i in range(10) for c in ch]
    series = cbor2.loads(encode_body(ch, readings))[2]
    assert isinstance(series[0][5], bytes) and series[1][5] == 0
    _, decoded = roundtrip(ch, readings)
    assert [r.ts_ms for r in decoded if r.channel == "m/b"] == [1000 * i + (i % 3) for i in range(10)]


def test_times_in_whole_seconds_are_stored_in_seconds():
    ch = (Channel("pm-1/pm10", resolution=0.1),)
    times = [1_767_225_600_000 + s * 1000 for s in (0, 148, 297, 463, 611)]
    readings = [Reading("pm-1/pm10", t, 5.0) for t in times]
    series = cbor2.loads(encode_body(ch, readings))[2]
    assert series[0][5][0] == 3
    assert len(series[0][5][1]) == 6  # one byte a reading, two for the first step of 148 s
    assert [r.ts_ms for r in roundtrip(ch, readings)[1]] == times


def test_a_time_unit_other_than_10_100_or_1000_ms_is_malformed():
    from edge.protocol.codec import decode_body

    body = cbor2.dumps([0, ["a"], [[0, "b", "", None, 1, [4, b"\x00"], [2, 0, b"\x00"]]]])
    with pytest.raises(ProtocolError, match="times"):
        decode_body(body)


def test_a_channel_appearing_twice_is_malformed():
    from edge.protocol.codec import decode_body

    series = [0, "b", "", None, 1, b"\x00", [2, 0, b"\x00"]]
    with pytest.raises(ProtocolError, match="twice"):
        decode_body(cbor2.dumps([0, ["a"], [series, series]]))


def test_a_time_reference_to_a_later_series_is_malformed():
    body = cbor2.dumps([0, ["a"], [[0, "b", "", None, 1, 1, [2, 0, b"\x00"]], [0, "c", "", None, 1, b"\x00", [2, 0, b"\x00"]]]])
    from edge.protocol.codec import decode_body

    with pytest.raises(ProtocolError, match="times"):
        decode_body(body)


def test_resolution_is_carried_as_an_exact_decimal():
    assert resolution_parts(0.1) == (1, -1)
    assert resolution_parts(0.25) == (25, -2)
    assert resolution_parts(100.0) == (1, 2)
    assert resolution_parts(1e-7) == (1, -7)


def test_empty_batch_round_trips():
    assert roundtrip((), []) == ((), ())


def test_decompression_bomb_is_refused_as_too_large():
    import zstandard

    bomb = zstandard.ZstdCompressor().compress(b"\x00" * (33 * 1024 * 1024))
    with pytest.raises(ProtocolError) as err:
        decode_payload(bomb, codec="zstd")
    assert err.value.reason == "too_large"


def test_garbage_payload_is_malformed_not_a_crash():
    with pytest.raises(ProtocolError) as err:
        decode_payload(b"not zstd at all", codec="zstd")
    assert err.value.reason == "malformed"


number = st.one_of(
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False),
)


@settings(max_examples=150, deadline=None)
@given(
    times=st.lists(st.integers(min_value=0, max_value=2**45), min_size=0, max_size=40),
    data=st.data(),
)
def test_any_numbers_strings_and_bools_round_trip(times, data):
    ch = (Channel("a/n"), Channel("a/s", kind=Kind.STRING), Channel("a/b", kind=Kind.BOOL))
    readings = []
    for t in times:
        which = data.draw(st.sampled_from(ch))
        value = {
            Kind.NUMBER: number,
            Kind.STRING: st.text(max_size=8),
            Kind.BOOL: st.booleans(),
        }[which.kind]
        quality = data.draw(st.one_of(st.none(), st.sampled_from(list(Quality))))
        readings.append(Reading(which.id, t, data.draw(value), "", quality))
    decoded_channels, decoded = roundtrip(ch, readings)
    assert decoded_channels == ch
    assert by_channel(decoded) == by_channel(readings)
    for a, b in zip(by_channel(decoded), by_channel(readings), strict=True):
        if type(b.value) is float:
            assert math.copysign(1.0, a.value) == math.copysign(1.0, b.value)


def test_corrupted_bodies_raise_protocol_error_and_nothing_else():
    import random

    from edge.protocol.codec import decode_body
    from edge.protocol.vectors import _every_kind, _reference_station

    rng = random.Random(5)
    bodies = [encode_body(*make()[1:]) for make in (_every_kind, _reference_station)]
    for _ in range(3000):
        body = bytearray(rng.choice(bodies))
        for _ in range(rng.randint(1, 3)):
            spot = rng.randrange(len(body))
            body[spot] = rng.randrange(256)
        try:
            decode_body(bytes(body))
        except ProtocolError:
            pass


# A frame that declares 0 bytes of content decodes to b"" in zstd without its blocks being read;
# finding where such a frame ends must stop at the end of the data, not walk on past it forever.
_CUT_OFF_ZSTD = {
    "block header cut off": "28b52ffd20006e16",
    "one byte after the frame header": "28b52ffd200001",
    "last raw block longer than the data": "28b52ffd2000" + (1000 << 3 | 1).to_bytes(3, "little").hex() + "00",
    "checksum cut off": "28b52ffd2400" + (0 << 3 | 1).to_bytes(3, "little").hex() + "aabb",
    "block of the reserved type": "28b52ffd2000" + (3 << 1 | 1).to_bytes(3, "little").hex(),
}


@pytest.mark.parametrize("name", sorted(_CUT_OFF_ZSTD))
def test_a_zstd_frame_that_zstd_accepts_but_that_is_cut_off_is_malformed_and_never_hangs(name):
    import subprocess
    import sys

    # In a child process: before the fix this looped forever, and a test must fail, not hang.
    script = (
        "import sys\n"
        "from edge.protocol.compression import decompress\n"
        "from edge.protocol.errors import ProtocolError\n"
        "try:\n"
        f"    decompress(bytes.fromhex({_CUT_OFF_ZSTD[name]!r}), 'zstd')\n"
        "except ProtocolError as exc:\n"
        "    print(exc.reason, '|', exc.detail)\n"
        "else:\n"
        "    print('accepted')\n"
    )
    try:
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"decompress never returned on a zstd frame with its {name}")
    assert done.returncode == 0, done.stderr
    reason, detail = done.stdout.strip().split(" | ")
    assert reason == "malformed"
    assert detail in ("zstd frame ends inside its blocks", "zstd block of the reserved type")


def _decoded_or_refused(body):
    from edge.protocol.codec import decode_body

    try:
        return repr(decode_body(body))  # repr: a NaN value equals itself
    except ProtocolError as exc:
        return (exc.reason, exc.detail)


def test_a_channel_remembered_from_earlier_batches_decodes_and_refuses_exactly_as_a_new_one():
    """decode_body keeps the Channels it made, by what each series says of its channel: with them remembered or not,
    every body (pristine or corrupted) gives the same channels and readings, or the same refusal."""
    import random

    from edge.protocol.codec import _CHANNELS
    from edge.protocol.vectors import _every_kind, _reference_station

    rng = random.Random(7)
    bodies = [encode_body(*make()[1:]) for make in (_every_kind, _reference_station)]
    # A unit or resolution that equals a remembered one in Python (True == 1, 1.0 == 1) but is refused, and counts and
    # qualities of the wrong type under a remembered channel.
    odd = [
        [0, ["a"], [[0, "b", 1, -1, 1, b"\x00", [0, b"\x02"]]]],
        [0, ["a"], [[0, "b", True, -1, 1, b"\x00", [0, b"\x02"]]]],
        [0, ["a"], [[0, "b", 1.0, -1, 1, b"\x00", [0, b"\x02"]]]],
        [0, ["a"], [[0, "b", 1, True, 1, b"\x00", [0, b"\x02"]]]],
        [0, ["a"], [[0, "b", 1, -1.0, 1, b"\x00", [0, b"\x02"]]]],
        [0, ["a"], [[0, "b", 1, -1, -1, b"\x00", [0, b"\x02"]]]],
        [0, ["a"], [[0, "b", 1, -1, 1.0, b"\x00", [0, b"\x02"]]]],
        [0, ["a"], [[0, "b", 1, -1, 1, b"\x00", [0, b"\x02"], "x"]]],
        [0, ["a"], [[0, "b", 1, -1, 1, b"\x00", [0, b"\x02"]], [0, "b", 1, -1, 1, 0, [0, b"\x02"]]]],
        [0, ["a"], [[4, "b", 1, -1, 1, b"\x00", [0, b"\x02"]]]],
    ]
    cases = [cbor2.dumps(doc) for doc in odd] + bodies
    for _ in range(1500):
        corrupted = bytearray(rng.choice(bodies))
        for _ in range(rng.randint(1, 3)):
            corrupted[rng.randrange(len(corrupted))] = rng.randrange(256)
        cases.append(bytes(corrupted))
    for body in cases:
        _CHANNELS.clear()
        new = _decoded_or_refused(body)
        for known in [*bodies, *(cbor2.dumps(doc) for doc in odd)]:
            _decoded_or_refused(known)
        assert _decoded_or_refused(body) == new
        assert _decoded_or_refused(body) == new
    assert _decoded_or_refused(cases[0]) != _decoded_or_refused(cases[1])  # True is not the unit code 1


def test_a_body_weighed_once_declares_and_decodes_as_declared_readings_and_decode_body_do():
    """A receiver reads a body's CBOR once (weigh_body, then decode_weighed): the same count, the same channels and
    readings, the same refusal at the same step, for pristine and corrupted bodies."""
    import random

    from edge.protocol.codec import declared_readings, decode_weighed, weigh_body
    from edge.protocol.vectors import _every_kind, _reference_station

    def twice(body):
        try:
            declared = declared_readings(body)
        except ProtocolError as exc:
            return ("weigh", exc.reason, exc.detail)
        return (declared, _decoded_or_refused(body))

    def once(body):
        try:
            document, declared = weigh_body(body)
        except ProtocolError as exc:
            return ("weigh", exc.reason, exc.detail)
        decoded: object
        try:
            decoded = repr(decode_weighed(document))
        except ProtocolError as exc:
            decoded = (exc.reason, exc.detail)
        return (declared, decoded)

    rng = random.Random(11)
    bodies = [encode_body(*make()[1:]) for make in (_every_kind, _reference_station)]
    cases = [*bodies, b"", b"\x83", cbor2.dumps([0, ["a"], 5]), cbor2.dumps([1.5, [], []]), cbor2.dumps({"a": 1})]
    for _ in range(1500):
        corrupted = bytearray(rng.choice(bodies))
        for _ in range(rng.randint(1, 3)):
            corrupted[rng.randrange(len(corrupted))] = rng.randrange(256)
        cases.append(bytes(corrupted))
    outcomes = [once(body) for body in cases]
    assert outcomes == [twice(body) for body in cases]
    assert {type(o[0]) for o in outcomes} == {int, str} and any(type(o[1]) is tuple for o in outcomes if type(o[0]) is int)

"""OXP/2 channel table: device prefixes, unit codes, the static dictionary and the codec label."""

import cbor2
import pytest

from edge.protocol import ProtocolError, open_batch, seal_batch
from edge.protocol.codec import decode_body, encode_body
from edge.protocol.compression import compress
from edge.protocol.dictionary import DICTIONARY, DICTIONARY_SHA256, UNIT_CODES, UNITS, build_dictionary
from edge.protocol.types import Channel, Kind, Reading


def test_channels_of_one_device_share_one_device_prefix():
    channels = (Channel("meter-1/voltage_l1", "V"), Channel("meter-1/current_l1", "A"), Channel("pm-1/pm10", "ug/m3"))
    readings = [Reading(c.id, 1000, 1) for c in channels]
    t0, devices, series = cbor2.loads(encode_body(channels, readings))
    assert devices == ["meter-1", "pm-1"]
    assert [(s[0] >> 3, s[1]) for s in series] == [(0, "voltage_l1"), (0, "current_l1"), (1, "pm10")]


def test_a_channel_id_without_a_device_part_round_trips():
    channels = (Channel("outside", "Cel"), Channel("a/b/c", "Cel"))
    readings = [Reading("outside", 5, 1), Reading("a/b/c", 5, 2)]
    decoded_channels, decoded = decode_body(encode_body(channels, readings))
    assert [c.id for c in decoded_channels] == ["outside", "a/b/c"]
    assert [(r.channel, r.value) for r in decoded] == [("outside", 1), ("a/b/c", 2)]


def test_a_registered_unit_travels_as_its_code_and_any_other_as_text():
    channels = (Channel("th-1/temperature", "Cel"), Channel("th-1/odd", "furlong/fortnight"))
    readings = [Reading("th-1/temperature", 0, 1), Reading("th-1/odd", 0, 2)]
    series = cbor2.loads(encode_body(channels, readings))[2]
    assert series[0][2] == UNIT_CODES["Cel"] and series[1][2] == "furlong/fortnight"
    decoded_channels, _ = decode_body(encode_body(channels, readings))
    assert [c.unit for c in decoded_channels] == ["Cel", "furlong/fortnight"]


def test_kind_and_personal_flag_share_the_head_with_the_device_index():
    channels = (Channel("a/x"), Channel("b/visitor", kind=Kind.STRING, personal=True))
    readings = [Reading("a/x", 0, 1), Reading("b/visitor", 0, "p1")]
    series = cbor2.loads(encode_body(channels, readings))[2]
    assert [s[0] for s in series] == [0, 8 + 1 + 4]
    decoded_channels, _ = decode_body(encode_body(channels, readings))
    assert decoded_channels[1].kind is Kind.STRING and decoded_channels[1].personal


def test_a_series_naming_a_device_beyond_the_list_is_malformed():
    body = cbor2.dumps([0, ["a"], [[8, "b", 0, None, 1, b"\x00", [2, 0, b"\x00"]]]])
    with pytest.raises(ProtocolError, match="names no listed device"):
        decode_body(body)


def test_a_unit_code_outside_the_registry_is_malformed():
    body = cbor2.dumps([0, ["a"], [[0, "b", len(UNITS), None, 1, b"\x00", [2, 0, b"\x00"]]]])
    with pytest.raises(ProtocolError, match="unit"):
        decode_body(body)


def test_unit_codes_are_unique_and_zero_means_no_unit():
    assert UNITS[0] == "" and len(set(UNITS)) == len(UNITS)


def test_the_dictionary_is_rebuilt_from_its_lists_to_the_published_digest():
    assert build_dictionary() == DICTIONARY
    assert DICTIONARY_SHA256 == "e8100e1a81312b02739cea9df2345469a9274b90e07ed8eb44b1b4c64270ae2b"


def test_the_dictionary_makes_the_first_batch_of_common_channels_smaller():
    import zstandard

    channels = tuple(Channel(f"weather-1/{n}", u, resolution=0.1) for n, u in
                     [("temperature", "Cel"), ("humidity", "%RH"), ("wind_speed", "m/s"), ("wind_direction", "deg")])
    body = encode_body(channels, [Reading(c.id, 0, 1.0) for c in channels])
    without = zstandard.ZstdCompressor(level=9).compress(body)
    assert len(compress(body, "zstd")) < len(without) - 20


def test_both_codecs_round_trip_through_the_dictionary(device_key, header):
    from dataclasses import replace

    channels = (Channel("weather-1/temperature", "Cel", resolution=0.1),)
    readings = [Reading("weather-1/temperature", 60_000 * i, 20.0 + i / 10, "Cel") for i in range(10)]
    for codec in ("zstd", "deflate"):
        opened = open_batch(seal_batch(replace(header, codec=codec), channels, readings, device_key), device_key.public_key())
        assert opened.header.codec == codec
        assert [r.value for r in opened.readings] == [r.value for r in readings]


def test_the_codec_travels_as_a_small_integer_and_empty_counters_are_left_out(device_key, header):
    from dataclasses import replace

    sealed = seal_batch(replace(header, counters={}), (), [], device_key)
    oxp = cbor2.loads(cbor2.loads(sealed).value[0])[-65537]
    assert oxp[5] == 1 and 7 not in oxp
    assert open_batch(sealed, device_key.public_key()).header.counters == {}


def test_the_spec_appendix_publishes_these_dictionary_bytes_and_unit_codes():
    import base64
    from pathlib import Path

    spec = (Path(__file__).resolve().parents[2] / "docs" / "protocol.md").read_text(encoding="utf-8")
    appendix = spec[spec.index("## Appendix B"):spec.index("## Appendix C")]
    published = "".join(appendix.split("```")[1].split())
    assert base64.b64decode(published) == DICTIONARY
    assert DICTIONARY_SHA256 in appendix and f"**{len(DICTIONARY)} bytes**" in appendix
    units = spec[spec.index("## Appendix A"):spec.index("## Appendix B")]
    for code, unit in enumerate(UNITS[1:], start=1):
        assert f"| {code} `{unit}` |" in units


def test_a_deflate_payload_names_the_dictionary_by_its_adler32():
    import zlib

    payload = compress(encode_body((), []), "deflate")
    assert payload[1] & 0x20  # FDICT
    assert payload[2:6] == zlib.adler32(DICTIONARY).to_bytes(4, "big")

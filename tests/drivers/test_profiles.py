"""Modbus profiles: shipped profiles load, data types decode per word and byte order, errors name file, register and problem."""

from __future__ import annotations

import random
import struct

import pytest

from drivers.modbus.planner import plan_reads
from drivers.modbus.profile import BlockDecoder, ProfileError, Register, load_profile, parse_profile, shipped_profiles
from edge.protocol.types import Channel, Kind

HEAD = '[profile]\nname = "test"\n'


def profile(registers: str, head: str = HEAD) -> str:
    return head + registers


def test_the_contract_profiles_ship():
    assert {"eastron-sdm630", "eastron-sdm120", "hilsim-weather", "hilsim-water-level"} <= set(shipped_profiles())


@pytest.mark.parametrize("name", sorted(shipped_profiles()))
def test_every_shipped_profile_loads_with_valid_channels_and_senml_units(name):
    p = load_profile(name)
    assert p.name == name
    units = {"V", "A", "W", "VA", "var", "/", "Hz", "kWh", "kvarh", "deg", "Cel", "%RH", "hPa", "m/s", "mm", "m",
             "count", ""}
    for reg in p.registers:
        Channel(f"dev/{reg.channel}", unit=reg.unit, kind=reg.kind, resolution=reg.resolution)
        assert reg.unit in units, f"{name}: {reg.channel} has unit {reg.unit!r}"


def test_sdm630_voltage_is_a_big_endian_float32_at_input_address_0():
    reg = next(r for r in load_profile("eastron-sdm630").registers if r.channel == "voltage_l1")
    assert (reg.function, reg.address, reg.type, reg.unit) == ("input", 0, "float32", "V")
    hi, lo = struct.unpack(">HH", struct.pack(">f", 231.25))
    assert reg.decode([hi, lo]) == 231.25


@pytest.mark.parametrize(("word_order", "byte_order", "words"), [
    ("big", "big", [0x1234, 0x5678]),
    ("little", "big", [0x5678, 0x1234]),
    ("big", "little", [0x3412, 0x7856]),
    ("little", "little", [0x7856, 0x3412]),
])
def test_uint32_decodes_in_every_word_and_byte_order(word_order, byte_order, words):
    reg = Register("x", "holding", 0, "uint32", word_order=word_order, byte_order=byte_order)
    assert reg.decode(words) == 0x12345678


def test_scale_and_offset_turn_raw_integers_into_engineering_units():
    reg = Register("t", "holding", 0, "int16", scale=0.1, offset=-40.0)
    assert reg.decode([0xFF9C]) == pytest.approx(-50.0)  # raw -100


def test_int64_and_float64_take_four_registers():
    words = list(struct.unpack(">HHHH", struct.pack(">q", -5)))
    assert Register("a", "holding", 0, "int64").decode(words) == -5
    assert Register("a", "holding", 0, "float64").count == 4


def test_a_bit_of_a_status_register_is_a_bool_channel_and_a_bit_range_an_integer():
    fault = Register("fault", "holding", 8, "uint16", bit=1)
    assert fault.kind is Kind.BOOL
    assert fault.decode([0b10]) is True
    assert Register("mode", "holding", 8, "uint16", bits=(4, 3)).decode([0b1010000]) == 5


def test_strings_read_ascii_up_to_the_first_nul():
    reg = Register("serial", "holding", 0, "string", length=3)
    assert reg.decode([0x4142, 0x4300, 0]) == "ABC"
    assert reg.kind is Kind.STRING


def test_a_nan_float_is_no_value_rather_than_a_reading():
    hi, lo = struct.unpack(">HH", struct.pack(">f", float("nan")))
    assert Register("x", "input", 0, "float32").decode([hi, lo]) is None


def test_an_error_names_the_file_the_register_and_the_problem():
    text = profile('[[registers]]\nchannel = "voltage"\nfunction = "input"\naddress = 0\ntype = "flaot32"\n')
    with pytest.raises(ProfileError) as err:
        parse_profile(text, source="meters/acme.toml")
    assert str(err.value) == (
        "meters/acme.toml: registers[0] (channel 'voltage').type = 'flaot32': expected one of "
        "int16, uint16, int32, uint32, int64, uint64, float32, float64, string, bool"
    )


def test_an_unknown_key_suggests_the_right_one():
    text = profile('[[registers]]\nchannel = "v"\nfunction = "input"\naddress = 0\ntype = "uint16"\nscael = 2\n')
    with pytest.raises(ProfileError, match=r"x.toml: registers\[0\] \(channel 'v'\).scael: unknown key; did you mean 'scale'\?"):
        parse_profile(text, source="x.toml")


def test_an_address_must_be_a_protocol_address():
    text = profile('[[registers]]\nchannel = "v"\nfunction = "input"\naddress = 70000\ntype = "uint16"\n')
    with pytest.raises(ProfileError, match=r"address = 70000: expected a 0-based protocol address 0..65535"):
        parse_profile(text, source="x.toml")


def test_a_register_inside_an_unreadable_range_is_rejected():
    text = profile('[[unreadable]]\nfunction = "holding"\nfirst = 10\nlast = 20\n'
                   '[[registers]]\nchannel = "v"\nfunction = "holding"\naddress = 19\ntype = "uint32"\n')
    with pytest.raises(ProfileError, match=r"registers\[0\] \(channel 'v'\).address = 19: overlaps unreadable holding addresses 10..20"):
        parse_profile(text, source="x.toml")


def test_a_coil_must_be_bool_and_a_register_must_not_be():
    text = profile('[[registers]]\nchannel = "relay"\nfunction = "coil"\naddress = 0\ntype = "uint16"\n')
    with pytest.raises(ProfileError, match=r"type = 'uint16': a coil value must be bool"):
        parse_profile(text, source="x.toml")


def test_two_registers_may_not_share_a_channel_name():
    reg = '[[registers]]\nchannel = "v"\nfunction = "input"\naddress = {}\ntype = "uint16"\n'
    with pytest.raises(ProfileError, match=r"registers\[1\] \(channel 'v'\).channel: already used by registers\[0\]"):
        parse_profile(profile(reg.format(0) + reg.format(1)), source="x.toml")


def test_a_toml_syntax_error_names_the_file():
    with pytest.raises(ProfileError, match=r"^x.toml: .*line 2"):
        parse_profile('[profile]\nname = \n', source="x.toml")


def test_an_unknown_profile_name_lists_the_shipped_ones_and_suggests_one():
    with pytest.raises(ProfileError, match=r"'eastron-sdm603': not a shipped profile .*did you mean 'eastron-sdm630'\?"):
        load_profile("eastron-sdm603")


def test_a_profile_loads_from_a_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text(profile('[[registers]]\nchannel = "v"\nfunction = "holding"\naddress = 3\ntype = "int16"\n'))
    assert load_profile(str(path)).registers[0].address == 3


@pytest.mark.parametrize(("line", "message"), [
    ("scale = nan", r"registers\[0\] \(channel 'v'\).scale = nan: expected a finite number other than 0"),
    ("scale = 0", r"registers\[0\] \(channel 'v'\).scale = 0.0: expected a finite number other than 0"),
    ("offset = inf", r"registers\[0\] \(channel 'v'\).offset = inf: expected a finite number"),
    ("resolution = inf", r"registers\[0\] \(channel 'v'\).resolution = inf: expected a step > 0"),
    ("missing = 0x10000", r"registers\[0\] \(channel 'v'\).missing = 65536: expected the raw value .* "
                          r"\(-32768..65535 for uint16\)"),
    ("missing = []", r"registers\[0\] \(channel 'v'\).missing = \[\]: expected the raw value"),
    ("missing = 1.5", r"registers\[0\] \(channel 'v'\).missing = 1.5: expected the raw value"),
])
def test_a_value_that_cannot_scale_or_mark_a_reading_is_rejected_naming_field_and_value(line, message):
    text = profile(f'[[registers]]\nchannel = "v"\nfunction = "holding"\naddress = 0\ntype = "uint16"\n{line}\n')
    with pytest.raises(ProfileError, match="^x.toml: " + message):
        parse_profile(text, source="x.toml")


def test_missing_is_for_integer_registers_only():
    text = profile('[[registers]]\nchannel = "v"\nfunction = "input"\naddress = 0\ntype = "float32"\nmissing = 0\n')
    with pytest.raises(ProfileError, match=r"missing = 0: expected .* on an integer register"):
        parse_profile(text, source="x.toml")


def test_a_value_may_not_run_past_the_last_address():
    text = profile('[[registers]]\nchannel = "v"\nfunction = "input"\naddress = 65535\ntype = "uint32"\n')
    with pytest.raises(ProfileError, match=r"address = 65535: a uint32 occupies 2 addresses, so it must start at "
                                           r"65534 or below"):
        parse_profile(text, source="x.toml")


def test_a_signed_sentinel_and_its_unsigned_spelling_are_the_same_raw_value():
    text = profile('[[registers]]\nchannel = "t"\nfunction = "holding"\naddress = 0\ntype = "int16"\nmissing = -1\n')
    reg = parse_profile(text, source="x.toml").registers[0]
    assert reg.decode([0xFFFF]) is None and reg.decode([0xFFFE]) == -2


def test_a_float64_that_overflows_when_scaled_is_no_value():
    words = list(struct.unpack(">HHHH", struct.pack(">d", 1e308)))
    assert Register("e", "holding", 0, "float64", scale=10.0).decode(words) is None


@pytest.mark.parametrize("name", sorted(shipped_profiles()))
def test_a_whole_request_decoded_in_one_block_gives_what_each_register_gives(name):
    p = load_profile(name)
    rng = random.Random(name)
    nan = list(struct.unpack(">2H", struct.pack(">f", float("nan"))))
    for req in plan_reads(p.spans(), max_gap=p.max_gap, unreadable=p.unreadable):
        regs = [(r, r.address - req.address) for r in p.registers if req.holds(r.function, r.address, r.count)]
        block = BlockDecoder.build(regs, req.count)
        if block is None:
            assert not all(r.plain for r, _ in regs) or req.function in ("coil", "discrete")
            continue
        for _ in range(50):
            words = [rng.randrange(65536) for _ in range(req.count)]
            for reg, start in regs[::3]:  # NaN where a float32 is: no value either way
                if reg.type == "float32":
                    words[start:start + 2] = nan
            assert block.decode(words) == [r.decode(words[s:s + r.count]) for r, s in regs]


def test_a_block_decodes_scaled_integers_floats_and_gaps_as_each_register_does():
    p = parse_profile(profile("""
[[registers]]
channel = "a"
function = "holding"
address = 0
type = "int16"
scale = 0.1
[[registers]]
channel = "b"
function = "holding"
address = 3
type = "float32"
[[registers]]
channel = "c"
function = "holding"
address = 6
type = "uint32"
offset = -40.0
"""), source="test.toml")
    regs = [(r, r.address) for r in p.registers]
    block = BlockDecoder.build(regs, 9)  # a word past the last register too
    assert block is not None
    inf = list(struct.unpack(">2H", struct.pack(">f", float("inf"))))
    for words in ([65535, 9, 9, *struct.unpack(">2H", struct.pack(">f", 1.5)), 9, 0, 100, 7],
                  [1, 0, 0, *inf, 0, 1, 0, 7]):
        assert block.decode(words) == [r.decode(words[s:s + r.count]) for r, s in regs]
    assert block.decode([65535, 9, 9, *struct.unpack(">2H", struct.pack(">f", 1.5)), 9, 0, 100, 7]) == [-0.1, 1.5, 60.0]


def test_registers_a_block_cannot_read_are_left_to_their_own_decode():
    p = parse_profile(profile("""
[[registers]]
channel = "a"
function = "holding"
address = 0
type = "uint32"
word_order = "little"
"""), source="test.toml")
    assert BlockDecoder.build([(p.registers[0], 0)], 2) is None

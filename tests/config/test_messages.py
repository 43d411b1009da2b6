"""Each problem in a config file is one line naming the file, the key path, the value and what would be accepted."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from edge.config import ConfigError, load_config
from tests.config.conftest import GATEWAY
from tests.config.drivers import lookup

Problems = Callable[[str], list[str]]

THREE_DEVICES = (
    GATEWAY
    + """
[[devices]]
name = "clock-1"
driver = "uptime"

[[devices]]
name = "clock-2"
driver = "uptime"

[[devices]]
name = "clock-3"
driver = "uptime"
poll_interval = "fast"
"""
)


def test_a_bad_duration_names_file_key_value_and_what_is_expected(problems: Problems) -> None:
    assert problems(THREE_DEVICES) == [
        'gateway.toml: devices[2].poll_interval = "fast": expected a duration like "10s"'
    ]


def test_a_number_where_a_duration_belongs_is_refused_not_guessed(problems: Problems) -> None:
    text = GATEWAY + '[[devices]]\nname = "clock-1"\ndriver = "uptime"\npoll_interval = 10\n'
    assert problems(text) == ['gateway.toml: devices[0].poll_interval = 10: expected a duration like "10s"']


def test_a_misspelt_key_suggests_the_key_it_resembles(problems: Problems) -> None:
    text = GATEWAY + '[[devices]]\nname = "clock-1"\ndriver = "uptime"\npol_interval = "10s"\n'
    assert problems(text) == ['gateway.toml: devices[0].pol_interval: unknown key; did you mean "poll_interval"?']


def test_a_misspelt_section_suggests_the_section_it_resembles(problems: Problems) -> None:
    assert problems(GATEWAY + '[uplnk]\nhub = ""\n') == ['gateway.toml: uplnk: unknown key; did you mean "uplink"?']


def test_an_unknown_key_like_no_other_lists_the_keys_that_belong(problems: Problems) -> None:
    assert problems(GATEWAY + "[spool]\ncolour = 3\n") == [
        "gateway.toml: spool.colour: unknown key; known keys here: max_size, when_full"
    ]


def test_a_missing_gateway_id_says_what_an_id_looks_like(problems: Problems) -> None:
    assert problems('[gateway]\nsite = "King St W"\n') == [
        'gateway.toml: gateway.id: missing; expected a device id like "pole-0042"'
    ]


def test_a_file_without_a_gateway_table_says_what_to_add(problems: Problems) -> None:
    assert problems("") == ['gateway.toml: gateway: missing; expected a [gateway] table with an id like "pole-0042"']


def test_a_gateway_id_outside_the_allowed_characters_says_which_are_allowed(problems: Problems) -> None:
    assert problems('[gateway]\nid = "Pole_42"\n') == [
        'gateway.toml: gateway.id = "Pole_42": expected a device id like "pole-0042"'
        " (lowercase letters, digits and '-', at most 63)"
    ]


def test_a_value_outside_a_choice_lists_the_choices(problems: Problems) -> None:
    text = GATEWAY + '[[buses]]\nname = "rs485-1"\ntype = "modbus_rtu"\nport = "/dev/ttyUSB0"\n'
    assert problems(text) == [
        'gateway.toml: buses[0].type = "modbus_rtu": expected one of "serial", "modbus-rtu", "modbus-tcp",'
        ' "modbus-rtu-over-tcp"'
    ]


def test_a_number_out_of_range_gives_the_range(problems: Problems) -> None:
    assert problems(GATEWAY + "latitude = 143.6\nlongitude = -79.3957\n") == [
        "gateway.toml: gateway.latitude = 143.6: expected a number from -90 to 90"
    ]


def test_true_is_not_a_number(problems: Problems) -> None:
    assert problems(GATEWAY + "[batch]\nmax_readings = true\n") == [
        "gateway.toml: batch.max_readings = true: expected a whole number from 1 to 1000000"
    ]


def test_a_string_is_not_a_boolean(problems: Problems) -> None:
    assert problems(GATEWAY + '[local_api]\nenabled = "yes"\n') == [
        'gateway.toml: local_api.enabled = "yes": expected true or false'
    ]


def test_a_bad_size_says_what_a_size_looks_like(problems: Problems) -> None:
    assert problems(GATEWAY + '[spool]\nmax_size = "lots"\n') == [
        'gateway.toml: spool.max_size = "lots": expected a size like "200MB"'
    ]


def test_a_size_below_the_minimum_gives_the_minimum(problems: Problems) -> None:
    assert problems(GATEWAY + '[spool]\nmax_size = "64KB"\n') == [
        'gateway.toml: spool.max_size = "64KB": expected a size of at least "1MB"'
    ]


def test_a_bad_listen_address_shows_a_good_one(problems: Problems) -> None:
    assert problems(GATEWAY + '[local_api]\nlisten = "8080"\n') == [
        'gateway.toml: local_api.listen = "8080": expected an address like "127.0.0.1:8080"'
    ]


def test_a_hub_that_is_not_an_http_url_is_refused(problems: Problems) -> None:
    assert problems(GATEWAY + '[uplink]\nhub = "hub.example.org"\n') == [
        'gateway.toml: uplink.hub = "hub.example.org": expected an http/https URL like "https://hub.example.org/" or ""'
    ]


def test_a_missing_policy_file_is_named_with_where_it_was_looked_for(problems: Problems, config_dir: Path) -> None:
    assert problems(GATEWAY + '[privacy]\npolicy = "policies/city.toml"\n') == [
        f'gateway.toml: privacy.policy = "policies/city.toml": no such file: {config_dir / "policies/city.toml"}'
    ]


def test_a_table_where_an_array_of_tables_belongs_shows_the_right_syntax(problems: Problems) -> None:
    text = GATEWAY + '[devices]\nname = "clock-1"\n'
    assert problems(text) == [
        'gateway.toml: devices = { name = "clock-1" }: expected an array of tables written [[devices]]'
    ]


def test_a_toml_syntax_error_gives_line_and_column(problems: Problems) -> None:
    assert problems('[gateway]\nid = "pole-0042"\nsite = King St W\n') == [
        "gateway.toml: line 3, column 8: Invalid value (not valid TOML)"
    ]


def test_every_problem_is_reported_not_just_the_first(problems: Problems) -> None:
    text = """\
[gateway]
id = "Pole 42"
log_level = "verbose"

[[buses]]
name = "rs485-1"
type = "modbus-rtu"
baudrate = "9600"

[[devices]]
name = "meter-1"
driver = "meter"
bus = "rs485-1"
address = 0
poll_interval = "fast"

[devices.options]
profile = "eastron-sdm630"

[spool]
when_full = "drop_newest"

[batch]
codec = "gzip"
spn = "5m"
"""
    assert problems(text) == [
        'gateway.toml: gateway.id = "Pole 42": expected a device id like "pole-0042"'
        " (lowercase letters, digits and '-', at most 63)",
        'gateway.toml: gateway.log_level = "verbose": expected one of "debug", "info", "warning", "error"',
        'gateway.toml: buses[0].baudrate = "9600": expected a whole number from 50 to 4000000',
        'gateway.toml: buses[0].port: missing; a "modbus-rtu" bus needs a serial port like "/dev/ttyUSB0"',
        "gateway.toml: devices[0].address = 0: expected a Modbus unit id from 1 to 247",
        'gateway.toml: devices[0].poll_interval = "fast": expected a duration like "10s"',
        'gateway.toml: batch.spn: unknown key; did you mean "span"?',
        'gateway.toml: batch.codec = "gzip": expected one of "zstd", "deflate"',
        'gateway.toml: spool.when_full = "drop_newest": expected one of "drop_oldest", "refuse_newest"',
    ]


def test_the_error_text_is_every_problem_one_per_line(config_dir: Path) -> None:
    (config_dir / "gateway.toml").write_text('[gateway]\nid = "pole-0042"\nsite = 5\n[batch]\ncodec = "gzip"\n')
    with pytest.raises(ConfigError) as caught:
        load_config("gateway.toml", driver_lookup=lookup)
    assert str(caught.value) == "\n".join(caught.value.problems)
    assert len(caught.value.problems) == 2


def test_a_file_that_is_not_there_is_named(config_dir: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("gateway.tml", driver_lookup=lookup)
    assert caught.value.problems == ["gateway.tml: no such file"]


def test_a_file_that_is_not_utf8_says_where(config_dir: Path) -> None:
    (config_dir / "gateway.toml").write_bytes(b'[gateway]\nid = "caf\xe9"\n')
    with pytest.raises(ConfigError) as caught:
        load_config("gateway.toml", driver_lookup=lookup)
    assert caught.value.problems == ["gateway.toml: line 2, column 10: not UTF-8 text; save the file as UTF-8"]


def test_messages_name_the_file_the_way_the_user_gave_it(config_dir: Path) -> None:
    (config_dir / "site").mkdir()
    (config_dir / "site/policy.toml").write_text("")
    (config_dir / "site/gateway.toml").write_text('[gateway]\nid = "pole-0042"\n[batch]\ncodec = "gzip"\n')
    with pytest.raises(ConfigError) as caught:
        load_config("site/gateway.toml", driver_lookup=lookup)
    assert caught.value.problems == ['site/gateway.toml: batch.codec = "gzip": expected one of "zstd", "deflate"']


def test_a_multi_line_value_is_shown_on_one_line(problems: Problems) -> None:
    assert problems('[gateway]\nid = """pole\n0042"""\n') == [
        'gateway.toml: gateway.id = "pole\\n0042": expected a device id like "pole-0042"'
        " (lowercase letters, digits and '-', at most 63)"
    ]


def test_a_long_value_is_shortened_in_the_message(problems: Problems) -> None:
    [message] = problems(GATEWAY + f"[batch]\ncodec = {'x' * 200!r}\n")
    assert message == f'gateway.toml: batch.codec = "{"x" * 78}…: expected one of "zstd", "deflate"'

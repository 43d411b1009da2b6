"""Rules across keys: buses and devices fit together, drivers are installed and get options they accept."""

from __future__ import annotations

from collections.abc import Callable

from edge.config import GatewayConfig
from tests.config.conftest import GATEWAY
from tests.config.drivers import Meter

Problems = Callable[[str], list[str]]
Load = Callable[[str], GatewayConfig]

RTU = """
[[buses]]
name = "rs485-1"
type = "modbus-rtu"
port = "/dev/ttyUSB0"
"""
SERIAL = """
[[buses]]
name = "ttyAMA0"
type = "serial"
port = "/dev/ttyAMA0"
"""
TCP = """
[[buses]]
name = "plc"
type = "modbus-tcp"
host = "192.168.1.20"
"""


def meter(name: str, *, bus: str = "rs485-1", address: int = 1, extra: str = "") -> str:
    return (
        f'\n[[devices]]\nname = "{name}"\ndriver = "meter"\nbus = "{bus}"\naddress = {address}\n{extra}'
        '[devices.options]\nprofile = "sdm630"\n'
    )


def dust(name: str, *, bus: str = "ttyAMA0", extra: str = "") -> str:
    return f'\n[[devices]]\nname = "{name}"\ndriver = "dust"\nbus = "{bus}"\n{extra}'


def test_a_valid_config_with_every_kind_of_bus_loads(load: Load) -> None:
    cfg = load(GATEWAY + RTU + SERIAL + TCP + meter("meter-1") + meter("plc-1", bus="plc") + dust("pm-1"))
    assert [d.name for d in cfg.devices] == ["meter-1", "plc-1", "pm-1"]
    assert [b.type for b in cfg.buses] == ["modbus-rtu", "serial", "modbus-tcp"]


def test_two_buses_with_one_name_are_refused(problems: Problems) -> None:
    assert problems(GATEWAY + RTU + RTU) == [
        'gateway.toml: buses[1].name = "rs485-1": already the name of buses[0]; names must be unique'
    ]


def test_two_devices_with_one_name_are_refused(problems: Problems) -> None:
    assert problems(GATEWAY + RTU + meter("meter-1", address=1) + meter("meter-1", address=2)) == [
        'gateway.toml: devices[1].name = "meter-1": already the name of devices[0]; names must be unique'
    ]


def test_a_device_name_must_work_as_a_channel_id_prefix(problems: Problems) -> None:
    assert problems(GATEWAY + RTU + meter("meter/1")) == [
        'gateway.toml: devices[0].name = "meter/1": expected a device name like "meter-1"'
        " (letters, digits, '_', '.', ':' and '-', starting with a letter or digit)"
    ]


def test_a_device_on_an_undefined_bus_gets_the_closest_bus_suggested(problems: Problems) -> None:
    assert problems(GATEWAY + RTU + meter("meter-1", bus="rs485-2")) == [
        'gateway.toml: devices[0].bus = "rs485-2": no such bus; did you mean "rs485-1"?'
    ]


def test_a_device_on_a_bus_like_no_other_lists_the_defined_buses(problems: Problems) -> None:
    assert problems(GATEWAY + RTU + TCP + meter("meter-1", bus="north")) == [
        'gateway.toml: devices[0].bus = "north": no such bus; defined buses: "rs485-1", "plc"'
    ]


def test_a_device_on_a_bus_when_none_are_defined_says_to_add_one(problems: Problems) -> None:
    assert problems(GATEWAY + meter("meter-1")) == [
        'gateway.toml: devices[0].bus = "rs485-1": no such bus; no buses are defined (add a [[buses]] table)'
    ]


def test_a_serial_line_bus_needs_its_port(problems: Problems) -> None:
    assert problems(GATEWAY + '[[buses]]\nname = "ttyS0"\ntype = "serial"\n') == [
        'gateway.toml: buses[0].port: missing; a "serial" bus needs a serial port like "/dev/ttyUSB0"'
    ]


def test_a_modbus_tcp_bus_needs_its_host(problems: Problems) -> None:
    assert problems(GATEWAY + '[[buses]]\nname = "plc"\ntype = "modbus-tcp"\ntcp_port = 5020\n') == [
        'gateway.toml: buses[0].host: missing; a "modbus-tcp" bus needs a host like "192.168.1.20"'
    ]


def test_a_serial_port_on_a_tcp_bus_is_pointed_out(problems: Problems) -> None:
    assert problems(GATEWAY + TCP + 'port = "/dev/ttyUSB0"\n') == [
        'gateway.toml: buses[0].port = "/dev/ttyUSB0": only "serial" and "modbus-rtu" buses have a serial port;'
        ' a "modbus-tcp" bus uses host and tcp_port'
    ]


def test_an_uninstalled_driver_is_named_with_a_suggestion_and_the_installed_ones(problems: Problems) -> None:
    text = GATEWAY + SERIAL + '\n[[devices]]\nname = "pm-1"\ndriver = "dsut"\nbus = "ttyAMA0"\n'
    assert problems(text) == [
        'gateway.toml: devices[0].driver = "dsut": no such driver is installed; did you mean "dust"?'
        ' installed drivers: "dust", "meter", "uptime"'
    ]


def test_a_modbus_driver_needs_a_modbus_bus(problems: Problems) -> None:
    assert problems(GATEWAY + SERIAL + meter("meter-1", bus="ttyAMA0")) == [
        'gateway.toml: devices[0].bus = "ttyAMA0": driver "meter" needs a "modbus-rtu", "modbus-tcp" or "modbus-rtu-over-tcp"'
        ' bus, but this is a "serial" bus'
    ]


def test_a_serial_driver_needs_a_serial_bus(problems: Problems) -> None:
    assert problems(GATEWAY + RTU + dust("pm-1", bus="rs485-1")) == [
        'gateway.toml: devices[0].bus = "rs485-1": driver "dust" needs a "serial" bus, but this is a "modbus-rtu" bus'
    ]


def test_a_driver_that_needs_a_bus_without_one_says_which_kind(problems: Problems) -> None:
    assert problems(GATEWAY + '\n[[devices]]\nname = "pm-1"\ndriver = "dust"\n') == [
        'gateway.toml: devices[0].bus: missing; driver "dust" needs a "serial" bus'
    ]


def test_a_driver_without_a_transport_takes_no_bus(problems: Problems) -> None:
    assert problems(GATEWAY + SERIAL + '\n[[devices]]\nname = "up"\ndriver = "uptime"\nbus = "ttyAMA0"\n') == [
        'gateway.toml: devices[0].bus = "ttyAMA0": driver "uptime" does not use a bus; remove this key'
    ]


def test_a_modbus_device_needs_an_address(problems: Problems) -> None:
    text = (
        GATEWAY
        + RTU
        + '\n[[devices]]\nname = "m"\ndriver = "meter"\nbus = "rs485-1"\n[devices.options]\nprofile = "x"\n'
    )
    assert problems(text) == [
        'gateway.toml: devices[0].address: missing; driver "meter" needs a Modbus unit id from 1 to 247'
    ]


def test_an_address_on_a_device_that_is_not_modbus_is_pointed_out(problems: Problems) -> None:
    assert problems(GATEWAY + SERIAL + dust("pm-1", extra="address = 3\n")) == [
        'gateway.toml: devices[0].address = 3: only Modbus devices have an address; driver "dust" is not one'
    ]


def test_two_devices_at_one_address_on_one_bus_are_refused(problems: Problems) -> None:
    assert problems(GATEWAY + RTU + meter("meter-1", address=7) + meter("meter-2", address=7)) == [
        'gateway.toml: devices[1].address = 7: already used on bus "rs485-1" by devices[0]'
    ]


def test_one_address_on_two_different_buses_is_fine(load: Load) -> None:
    cfg = load(GATEWAY + RTU + TCP + meter("meter-1", address=7) + meter("plc-1", bus="plc", address=7))
    assert [(d.bus, d.address) for d in cfg.devices] == [("rs485-1", 7), ("plc", 7)]


def test_a_disabled_device_does_not_occupy_its_address(load: Load) -> None:
    cfg = load(GATEWAY + RTU + meter("old", address=7, extra="enabled = false\n") + meter("new", address=7))
    assert [d.enabled for d in cfg.devices] == [False, True]


def test_a_serial_bus_carries_one_device(problems: Problems) -> None:
    assert problems(GATEWAY + SERIAL + dust("pm-1") + dust("pm-2")) == [
        'gateway.toml: devices[1].bus = "ttyAMA0": serial bus already carries devices[0];'
        " a serial bus carries one device (use enabled = false for spares)"
    ]


def test_a_bad_driver_option_is_reported_with_what_the_driver_accepts(problems: Problems) -> None:
    assert problems(GATEWAY + SERIAL + dust("pm-1", extra='[devices.options]\nmode = "turbo"\n')) == [
        "gateway.toml: devices[0].options.mode = \"turbo\": expected one of 'active', 'query'"
    ]


def test_every_bad_driver_option_is_reported(problems: Problems) -> None:
    text = GATEWAY + SERIAL + dust("pm-1", extra='[devices.options]\nmode = "turbo"\nwarmup = "30s"\nmod = 1\n')
    assert problems(text) == [
        'gateway.toml: devices[0].options.mod: unknown key; did you mean "mode"?',
        "gateway.toml: devices[0].options.mode = \"turbo\": expected one of 'active', 'query'",
        'gateway.toml: devices[0].options.warmup = "30s": expected an integer',
    ]


def test_a_missing_required_driver_option_is_reported(problems: Problems) -> None:
    text = GATEWAY + RTU + '\n[[devices]]\nname = "m"\ndriver = "meter"\nbus = "rs485-1"\naddress = 1\n'
    assert problems(text) == [
        "gateway.toml: devices[0].options.profile: missing; expected a value (required by driver 'meter')"
    ]


def test_driver_options_come_back_completed_by_the_driver(load: Load) -> None:
    cfg = load(GATEWAY + SERIAL + dust("pm-1", extra='[devices.options]\nmode = "query"\n'))
    assert dict(cfg.devices[0].options) == {"mode": "query", "warmup": 30}


def test_an_option_for_a_driver_without_options_says_so(problems: Problems) -> None:
    assert problems(GATEWAY + '[[devices]]\nname = "up"\ndriver = "uptime"\noptions = { every = "1s" }\n') == [
        'gateway.toml: devices[0].options.every: unknown option; driver "uptime" takes no options'
    ]


def test_loaded_options_pass_the_drivers_check_again_unchanged(load: Load) -> None:
    options = load(GATEWAY + RTU + meter("meter-1")).devices[0].options
    assert dict(options) == {"profile": "sdm630", "phases": 3}
    assert Meter.check_options(options) == {"profile": "sdm630", "phases": 3, "calibration": None}


def test_latitude_without_longitude_is_refused(problems: Problems) -> None:
    assert problems(GATEWAY + "latitude = 43.6452\n") == [
        "gateway.toml: gateway.longitude: missing; set both latitude and longitude, or neither"
    ]


def test_a_signed_policy_requirement_needs_the_governance_key(problems: Problems) -> None:
    assert problems(GATEWAY + "[privacy]\nrequire_signed = true\n") == [
        "gateway.toml: privacy.governance_key: missing; require_signed = true needs the governance public key"
    ]


def test_a_ca_bundle_with_a_plain_http_hub_is_pointed_out(problems: Problems, config_dir) -> None:
    (config_dir / "ca.pem").write_text("")
    assert problems(GATEWAY + '[uplink]\nhub = "http://hub.example.org/"\nca = "ca.pem"\n') == [
        f'gateway.toml: uplink.ca = "{config_dir / "ca.pem"}": a CA bundle applies only to an https hub;'
        ' hub is "http://hub.example.org/"'
    ]


def test_a_device_setting_written_below_its_options_table_says_to_move_it(problems: Problems) -> None:
    text = GATEWAY + RTU + meter("meter-1") + 'poll_interval = "5s"\n'
    assert problems(text) == [
        'gateway.toml: devices[0].options.poll_interval: unknown option; "poll_interval" is a device setting:'
        " move it above [devices.options]"
    ]

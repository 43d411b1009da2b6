"""The loaded config is complete (defaults filled, paths resolved) and prints as TOML that loads back equal."""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.config import GatewayConfig, config_digest, effective_toml, load_config, parse_config
from edge.schema import HostPort
from tests.config.conftest import GATEWAY
from tests.config.drivers import lookup

Load = Callable[[str], GatewayConfig]

FULL = """\
[gateway]
id = "pole-0042"
site = "King St W & Spadina Ave"
latitude = 43.6452
longitude = -79.3957
state_dir = "state"
log_level = "debug"

[gateway.log_levels]
ocn.modbus.frames = "warning"
"ocn.driver.meter-1" = "info"

[[buses]]
name = "rs485-1"
type = "modbus-rtu"
port = "/dev/ttyUSB0"
baudrate = 19200
parity = "E"
stopbits = 1.5
timeout = "1m30s"
frame_gap = "1.5ms"

[[buses]]
name = "plc"
type = "modbus-tcp"
host = "::1"
tcp_port = 5020

[[devices]]
name = "meter-1"
driver = "meter"
bus = "rs485-1"
address = 1
poll_interval = "2s500ms"
[devices.options]
profile = "eastron-sdm630"
phases = 1
calibration = "cal/meter-1.toml"

[[devices]]
name = "up"
driver = "uptime"
enabled = false

[privacy]
policy = "policy.toml"

[batch]
span = "1h"
codec = "deflate"

[spool]
max_size = "1GiB"
when_full = "refuse_newest"

[uplink]
hub = "https://hub.example.org/oxp/"
daily_budget = "50MB"
key = "keys/device.key"

[local_api]
listen = "[::1]:8081"
"""


def test_missing_sections_and_keys_take_the_documented_defaults(load: Load) -> None:
    cfg = load(GATEWAY)
    assert (cfg.gateway.site, cfg.gateway.latitude, cfg.gateway.log_level) == ("", None, "info")
    assert cfg.gateway.state_dir == Path("/var/lib/ocn-edge")
    assert (cfg.buses, cfg.devices) == ((), ())
    assert (cfg.batch.span, cfg.batch.flush_interval, cfg.batch.max_readings, cfg.batch.codec) == (
        300.0,
        30.0,
        20000,
        "zstd",
    )
    assert (cfg.spool.max_size, cfg.spool.when_full) == (200_000_000, "drop_oldest")
    assert (cfg.uplink.hub, cfg.uplink.ca, cfg.uplink.timeout, cfg.uplink.daily_budget) == ("", None, 30.0, 0)
    assert cfg.local_api.enabled and cfg.local_api.listen == HostPort("127.0.0.1", 8080)


def test_bus_and_device_defaults_are_filled_in(load: Load) -> None:
    cfg = load(
        GATEWAY + '[[buses]]\nname = "b"\ntype = "modbus-tcp"\nhost = "10.0.0.5"\n'
        '[[devices]]\nname = "m"\ndriver = "meter"\nbus = "b"\naddress = 3\noptions = { profile = "p" }\n'
    )
    bus, device = cfg.buses[0], cfg.devices[0]
    assert (bus.tcp_port, bus.timeout, bus.frame_gap, bus.baudrate, bus.parity, bus.bytesize) == (
        502,
        0.5,
        0.0,
        9600,
        "N",
        8,
    )
    assert (device.poll_interval, device.enabled) == (10.0, True)


@pytest.mark.parametrize(("bus", "gap"), [
    ('type = "modbus-tcp"\nhost = "10.0.0.5"\n', 0.0),  # MBAP frames carry their length
    ('type = "modbus-rtu-over-tcp"\nhost = "10.0.0.5"\n', 0.005),  # a converter's RS-485 line is a serial line
    ('type = "modbus-rtu"\nport = "/dev/ttyUSB0"\n', 0.005),
    ('type = "modbus-tcp"\nhost = "10.0.0.5"\nframe_gap = "20ms"\n', 0.02),  # a slow device's gap, as set
])
def test_the_frame_gap_defaults_by_bus_type_and_a_set_one_stands(load: Load, bus: str, gap: float) -> None:
    cfg = load(GATEWAY + '[[buses]]\nname = "b"\n' + bus)
    assert cfg.buses[0].frame_gap == gap
    assert parse_config(effective_toml(cfg), path="gateway.toml", driver_lookup=lookup) == cfg  # printed as set


def test_relative_paths_resolve_next_to_the_config_file_not_the_working_directory(config_dir: Path) -> None:
    site = config_dir / "site"
    site.mkdir()
    (site / "policy.toml").write_text("")
    (site / "gateway.toml").write_text(GATEWAY + 'state_dir = "state"\n')
    cfg = load_config(str(site / "gateway.toml"), driver_lookup=lookup)
    assert cfg.gateway.state_dir == site / "state"
    assert cfg.privacy.policy == site / "policy.toml"


def test_the_device_key_defaults_to_the_state_directory(load: Load, config_dir: Path) -> None:
    cfg = load(GATEWAY + 'state_dir = "/srv/ocn"\n')
    assert cfg.uplink.key == Path("/srv/ocn/device.key")


def test_the_config_is_frozen(load: Load) -> None:
    cfg = load(
        GATEWAY + '[[buses]]\nname = "b"\ntype = "serial"\nport = "/dev/ttyS0"\n'
        '[[devices]]\nname = "d"\ndriver = "dust"\nbus = "b"\n'
    )
    def set_option() -> None:
        options: Any = cfg.devices[0].options  # typed read-only; this checks it is at run time too
        options["mode"] = "x"

    for change in (lambda: setattr(cfg.batch, "span", 1.0), set_option):
        try:
            change()
        except (AttributeError, TypeError):
            continue
        raise AssertionError("a loaded config could be changed")


def test_the_effective_config_loads_back_to_the_same_config(load: Load, config_dir: Path) -> None:
    cfg = load(FULL)
    again = parse_config(effective_toml(cfg), path="gateway.toml", driver_lookup=lookup)
    assert again == cfg


def test_the_effective_config_loads_back_the_same_from_any_directory(load: Load) -> None:
    cfg = load(GATEWAY)
    elsewhere = Path("/elsewhere/gateway.toml")
    assert parse_config(effective_toml(cfg), path=elsewhere, driver_lookup=lookup) == dataclasses.replace(
        cfg, path=elsewhere
    )


def test_the_effective_config_shows_every_key_with_human_units(load: Load, config_dir: Path) -> None:
    document = tomllib.loads(effective_toml(load(FULL)))
    assert document["buses"][0]["timeout"] == "1m30s"
    assert document["buses"][0]["frame_gap"] == "0.0015s"
    assert document["devices"][0]["poll_interval"] == "2s500ms"
    assert document["devices"][0]["options"] == {
        "profile": "eastron-sdm630",
        "phases": 1,
        "calibration": str(config_dir / "cal/meter-1.toml"),
    }
    assert document["spool"]["max_size"] == "1GiB"
    assert document["uplink"]["key"] == str(config_dir / "keys/device.key")
    assert document["uplink"]["ca"] == ""
    assert document["local_api"]["listen"] == "[::1]:8081"
    assert document["privacy"] == {
        "policy": str(config_dir / "policy.toml"),
        "require_signed": False,
        "governance_key": "",
    }


def test_the_effective_config_leaves_out_line_settings_a_bus_type_does_not_use(load: Load, config_dir: Path) -> None:
    buses = tomllib.loads(effective_toml(load(FULL)))["buses"]
    assert buses[0] == {
        "name": "rs485-1",
        "type": "modbus-rtu",
        "port": "/dev/ttyUSB0",
        "baudrate": 19200,
        "parity": "E",
        "stopbits": 1.5,
        "bytesize": 8,
        "timeout": "1m30s",
        "frame_gap": "0.0015s",
    }
    assert buses[1] == {
        "name": "plc",
        "type": "modbus-tcp",
        "host": "::1",
        "tcp_port": 5020,
        "timeout": "500ms",
        "frame_gap": "0s",  # Modbus TCP frames carry their length: no silence is needed between them
    }


def test_a_setting_the_bus_type_ignores_is_still_printed_when_it_was_changed(load: Load) -> None:
    cfg = load(GATEWAY + '[[buses]]\nname = "plc"\ntype = "modbus-tcp"\nhost = "10.0.0.5"\nbaudrate = 19200\n')
    assert tomllib.loads(effective_toml(cfg))["buses"][0]["baudrate"] == 19200
    assert parse_config(effective_toml(cfg), path="gateway.toml", driver_lookup=lookup) == cfg


def test_the_config_digest_changes_with_any_setting(load: Load) -> None:
    first = config_digest(load(GATEWAY))
    assert config_digest(load(GATEWAY)) == first
    assert config_digest(load(GATEWAY + '[batch]\nspan = "10m"\n')) != first
    assert len(first) == 32


def test_the_config_carries_its_digest_for_status_reports(load: Load) -> None:
    cfg = load(GATEWAY)
    assert cfg.digest == config_digest(cfg)


def test_a_bus_is_found_by_name(load: Load) -> None:
    cfg = load(GATEWAY + '[[buses]]\nname = "b"\ntype = "serial"\nport = "/dev/ttyS0"\n')
    assert (cfg.bus_named("b"), cfg.bus_named("c")) == (cfg.buses[0], None)


def test_a_path_option_of_a_driver_resolves_next_to_the_config_file(load: Load, config_dir: Path) -> None:
    assert load(FULL).devices[0].options["calibration"] == config_dir / "cal/meter-1.toml"


def test_the_local_api_address_keeps_its_text_and_gives_host_and_port(load: Load) -> None:
    listen = load(FULL).local_api.listen
    assert (listen, listen.host, listen.port) == ("[::1]:8081", "::1", 8081)

"""[gateway] log_levels and ``ocn-edge run --log-level NAME=LEVEL``: one logger's level apart from the gateway's."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge.cli import main
from edge.config import GatewayConfig, config_digest, only_log_levels_differ
from edge.logs import LOGGERS, apply_levels, pin_levels
from edge.protocol.desired import dotted_log_levels, merge_tables
from hub.fleet import check_desired
from tests.config.conftest import GATEWAY

DEVICE = '[[buses]]\nname = "b"\ntype = "serial"\nport = "/dev/ttyS0"\n[[devices]]\nname = "pm-1"\ndriver = "dust"\nbus = "b"\n'


def test_a_name_written_bare_or_quoted_is_the_loggers_name(load: Callable[[str], GatewayConfig]) -> None:
    cfg = load(GATEWAY + '[gateway.log_levels]\nocn.bus = "debug"\n"ocn.modbus.frames" = "info"\n"ocn.driver.pm-1" = "warning"\n' + DEVICE)
    assert dict(cfg.gateway.log_levels) == {"ocn.bus": "debug", "ocn.modbus.frames": "info", "ocn.driver.pm-1": "warning"}
    inline = load(GATEWAY + 'log_levels = { "ocn.bus" = "debug", ocn.driver = "error" }\n')
    assert dict(inline.gateway.log_levels) == {"ocn.bus": "debug", "ocn.driver": "error"}
    assert dict(load(GATEWAY).gateway.log_levels) == {}


def test_a_misspelt_logger_a_wrong_level_and_another_devices_driver_are_named(problems: Callable[[str], list[str]]) -> None:
    assert problems(GATEWAY + '[gateway.log_levels]\nocn.buss = "debug"\nocn.uplink = "verbose"\nbus = "debug"\nhub = "debug"\n') == [
        'gateway.toml: gateway.log_levels."ocn.buss": not one of the gateway\'s loggers; did you mean "ocn.bus"? '
        "(a device's driver: ocn.driver.<device name>)",
        'gateway.toml: gateway.log_levels."ocn.uplink" = "verbose": expected one of "debug", "info", "warning", "error"',
        'gateway.toml: gateway.log_levels."bus": not one of the gateway\'s loggers; did you mean "ocn.bus"? '
        "(a device's driver: ocn.driver.<device name>)",
        'gateway.toml: gateway.log_levels."hub": not one of the gateway\'s loggers; the gateway\'s loggers are '
        + ", ".join(LOGGERS) + " (a device's driver: ocn.driver.<device name>)",
    ]
    assert problems(GATEWAY + '[gateway.log_levels]\n"ocn.driver.pm-2" = "debug"\n' + DEVICE) == [
        'gateway.toml: gateway.log_levels."ocn.driver.pm-2": no device named "pm-2" in [[devices]]; did you mean "ocn.driver.pm-1"?'
    ]
    assert problems(GATEWAY + 'log_levels = "debug"\n') == [
        'gateway.toml: gateway.log_levels = "debug": expected a table of logger names and levels like { "ocn.bus" = "debug" }'
    ]


@pytest.fixture
def levels() -> Iterator[None]:
    """The root logger's level and the gateway's loggers' as they were, after the test."""
    names = ["", *LOGGERS, "ocn.driver.pm-1"]
    before = {name: logging.getLogger(name).level for name in names}
    yield
    pin_levels(None, {})
    apply_levels("info", {})
    for name, level in before.items():
        logging.getLogger(name).setLevel(level)


@pytest.mark.usefixtures("levels")
def test_levels_apply_to_a_logger_and_those_under_it_and_a_reload_takes_back_what_it_no_longer_names() -> None:
    apply_levels("info", {"ocn.bus": "debug", "ocn.driver": "error"})
    assert logging.getLogger().level == logging.INFO
    assert logging.getLogger("ocn.bus").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("ocn.modbus.frames").isEnabledFor(logging.DEBUG)
    assert not logging.getLogger("ocn.driver.pm-1").isEnabledFor(logging.WARNING)  # under ocn.driver
    apply_levels("warning", {"ocn.driver": "debug"})  # the hub's desired config changed them
    assert logging.getLogger("ocn.bus").level == logging.NOTSET and not logging.getLogger("ocn.bus").isEnabledFor(logging.INFO)
    assert logging.getLogger("ocn.driver.pm-1").isEnabledFor(logging.DEBUG)


@pytest.mark.usefixtures("levels")
def test_the_command_lines_levels_hold_over_the_configs_also_after_a_reload() -> None:
    pin_levels("debug", {"ocn.uplink": "error"})
    apply_levels("info", {"ocn.uplink": "debug", "ocn.bus": "warning"})
    assert logging.getLogger().level == logging.DEBUG
    assert logging.getLogger("ocn.uplink").level == logging.ERROR
    assert logging.getLogger("ocn.bus").level == logging.WARNING
    apply_levels("error", {})
    assert (logging.getLogger().level, logging.getLogger("ocn.uplink").level) == (logging.DEBUG, logging.ERROR)
    assert logging.getLogger("ocn.bus").level == logging.NOTSET


@pytest.mark.parametrize(("given", "said"), [
    ("ocn.buss=debug", "'ocn.buss=debug': ocn.buss is not one of the gateway's loggers; did you mean \"ocn.bus\"?"),
    ("ocn.bus=loud", "'ocn.bus=loud': the level is one of debug, info, warning, error"),
    ("verbose", "'verbose': the level is one of debug, info, warning, error"),
])
def test_the_command_line_refuses_a_logger_or_level_it_does_not_know(given: str, said: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["run", "gateway.toml", "--log-level", given])
    assert exited.value.code == 2
    assert said in capsys.readouterr().err


def test_the_command_line_refuses_the_driver_logger_of_a_device_the_config_lacks(config_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (config_dir / "gateway.toml").write_text(GATEWAY + f'state_dir = "{config_dir / "state"}"\n')
    assert main(["run", "gateway.toml", "--log-level", "ocn.driver.pm-1=debug"]) == 2
    err = capsys.readouterr().err
    assert re.search(r"ocn-edge run: --log-level ocn\.driver\.pm-1=debug: no device named 'pm-1' in gateway\.toml", err), err


def test_a_name_set_twice_is_refused_and_the_same_levels_in_any_order_give_one_digest(
        load: Callable[[str], GatewayConfig], problems: Callable[[str], list[str]]) -> None:
    assert problems(GATEWAY + 'log_levels = { "ocn.bus" = "debug", ocn.bus = "info" }\n') == [
        'gateway.toml: gateway.log_levels."ocn.bus": set twice (written once bare, once quoted?); set it once'
    ]
    one = load(GATEWAY + 'log_levels = { "ocn.bus" = "debug", "ocn.uplink" = "error" }\n')
    other = load(GATEWAY + 'log_levels = { "ocn.uplink" = "error", "ocn.bus" = "debug" }\n')
    assert one == other and config_digest(one) == config_digest(other)


def test_the_hub_stores_a_loggers_name_whole_so_a_devices_level_replaces_its_fleets() -> None:
    fleet = check_desired({"config": {"gateway": {"log_levels": {"ocn": {"bus": "debug", "modbus": {"frames": "info"}}}}}})
    device = check_desired({"config": {"gateway": {"log_levels": {"ocn.bus": "error"}}}})
    assert fleet["config"]["gateway"]["log_levels"] == {"ocn.bus": "debug", "ocn.modbus.frames": "info"}
    merged = merge_tables(fleet["config"], device["config"])
    assert merged["gateway"]["log_levels"] == {"ocn.bus": "error", "ocn.modbus.frames": "info"}
    # A gateway lays a document in the nested form (an older hub's) over its file's whole names the same way.
    assert dotted_log_levels({"gateway": {"id": "x", "log_levels": {"ocn": {"bus": "error"}}}}) == {
        "gateway": {"id": "x", "log_levels": {"ocn.bus": "error"}}}
    assert dotted_log_levels({"batch": {"span": "1m"}}) == {"batch": {"span": "1m"}}


def test_only_the_log_levels_differ_when_nothing_else_does(load: Callable[[str], GatewayConfig]) -> None:
    plain = load(GATEWAY)
    assert only_log_levels_differ(plain, load(GATEWAY + 'log_levels = { "ocn.bus" = "debug" }\n'))
    assert only_log_levels_differ(plain, load(GATEWAY + 'log_level = "debug"\n'))
    assert not only_log_levels_differ(plain, load(GATEWAY))  # nothing differs
    assert not only_log_levels_differ(plain, load(GATEWAY + 'log_level = "debug"\n[batch]\nmax_readings = 7\n'))
    assert not only_log_levels_differ(plain, load(GATEWAY + 'site = "elsewhere"\nlog_level = "debug"\n'))

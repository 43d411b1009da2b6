"""examples/gateway.toml, the file technicians start from, stays valid against the installed drivers."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from drivers.registry import load_driver
from edge.cli import main
from edge.config import effective_toml, gateway_schema, load_config, parse_config
from edge.schema import ArrayOf, Table

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gateway.toml"  # a link to edge/examples/


def test_the_example_config_loads_with_the_installed_drivers() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.gateway.id == "pole-0042"
    assert {d.driver for d in cfg.devices} == {"modbus", "sds011", "pedestrian-counter"}
    assert [d.name for d in cfg.devices if not d.enabled] == ["weather-1"]


def test_the_example_config_sets_every_key_so_a_technician_sees_them_all() -> None:
    document = tomllib.loads(EXAMPLE.read_text())
    for section, spec in gateway_schema().fields.items():
        if isinstance(spec.type, ArrayOf):
            written = set().union(*(item.keys() for item in document[section]))
            assert written == set(spec.type.item.fields), section
        else:
            assert isinstance(spec.type, Table)
            assert set(document[section]) == set(spec.type.fields), section


def test_the_example_config_round_trips_through_its_effective_form() -> None:
    cfg = load_config(EXAMPLE)
    assert parse_config(effective_toml(cfg), path=EXAMPLE) == cfg


def test_every_device_of_the_example_gets_options_its_driver_accepts_at_start_up() -> None:
    # The runtime hands each device's options to its driver's check_options again when it starts.
    for device in load_config(EXAMPLE).devices:
        completed = load_driver(device.driver).check_options(device.options)
        assert {k: v for k, v in completed.items() if v is not None} == device.options, device.name


def test_the_example_config_passes_ocn_edge_check_policy_included(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--quiet", str(EXAMPLE)]) == 0, capsys.readouterr().err

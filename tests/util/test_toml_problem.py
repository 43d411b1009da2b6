"""Every file read as TOML says a syntax error the same way: the file, then the line and column, then what is wrong."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from drivers.modbus.profile import ProfileError, parse_profile
from edge.config import ConfigError, parse_config
from edge.privacy.policy import PolicyError, parse_policy
from edge.util.files import toml_problem
from hilsim.scenario import ScenarioError, load_scenario
from hub.cli import _read_document

BROKEN = '[gateway]\nid = "pole-1"\nsite = King St W\n'  # a bare string on line 3, column 8
SAID = "line 3, column 8: Invalid value (not valid TOML)"


def _config(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_config(path.read_text(), path=path)
    return caught.value.problems[0]


def _policy(path: Path) -> str:
    with pytest.raises(PolicyError) as caught:
        parse_policy(path.read_text(), path=str(path))
    return caught.value.problems[0]


def _profile(path: Path) -> str:
    with pytest.raises(ProfileError) as caught:
        parse_profile(path.read_text(), source=str(path))
    return str(caught.value)


def _scenario(path: Path) -> str:
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    return str(caught.value)


def _desired(path: Path) -> str:
    with pytest.raises(ValueError) as caught:
        _read_document(str(path))
    return str(caught.value)


@pytest.mark.parametrize("read, named", [
    (_config, "{path}"), (_policy, "{name}"), (_profile, "{path}"), (_scenario, "{path}"), (_desired, "{path}"),
], ids=["gateway config", "policy", "Modbus profile", "hil-sim scenario", "hub desired document"])
def test_each_reader_says_where_the_syntax_breaks(tmp_path: Path, read: Callable[[Path], str], named: str) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(BROKEN)
    assert read(path) == f"{named.format(path=path, name=path.name)}: {SAID}"


def test_the_end_of_the_file_is_said_so() -> None:
    with pytest.raises(tomllib.TOMLDecodeError) as caught:
        tomllib.loads('[gateway]\nid = "pole-1')
    assert toml_problem("gateway.toml", caught.value) == "gateway.toml: at the end of the file: Unterminated string (not valid TOML)"

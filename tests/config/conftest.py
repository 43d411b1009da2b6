"""Fixtures for config tests: a directory holding gateway.toml and policy.toml, and a loader over test drivers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from edge.config import ConfigError, GatewayConfig, load_config
from tests.config.drivers import lookup

GATEWAY = """\
[gateway]
id = "pole-0042"
"""


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory, holding a policy.toml, so messages name "gateway.toml" as a technician would."""
    (tmp_path / "policy.toml").write_text("# the privacy engineer's format; only its presence matters here\n")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def load(config_dir: Path) -> Callable[[str], GatewayConfig]:
    """Write the text to gateway.toml and load it with the test drivers."""

    def _load(text: str) -> GatewayConfig:
        (config_dir / "gateway.toml").write_text(text)
        return load_config("gateway.toml", driver_lookup=lookup)

    return _load


@pytest.fixture
def problems(load: Callable[[str], GatewayConfig]) -> Callable[[str], list[str]]:
    """Write the text to gateway.toml and return the problems loading it reports (failing if there are none)."""

    def _problems(text: str) -> list[str]:
        with pytest.raises(ConfigError) as caught:
            load(text)
        return caught.value.problems

    return _problems

"""Releases 1.0.0, 2.0.0 and a bad 3.0.0 of OCN Edge itself, for the install tests: real wheels, real bundles, one release key.

Built once per session, offline, by bench/releases (shared with the soak): the dependencies
repacked from this venv, OCN Edge's own wheel built from the working tree and given each version.
3.0.0 carries a defect its probation must catch: its uplink never delivers a batch, so no batch is
ever acknowledged.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.releases import BASE_PYTHON, INSTALL_TOOLS, NEVER_DELIVERS, Releases, build_releases, copy_root
from bench.releases import install_sh as install_root
from tests.helpers.tools import require_tool

__all__ = ["BASE_PYTHON", "Releases", "copy_root", "install_sh"]


@pytest.fixture(scope="session")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Releases:
    root = tmp_path_factory.mktemp("releases")
    return build_releases(root, ("1.0.0", "2.0.0", "3.0.0"), defects={"3.0.0": {"edge/uplink.py": NEVER_DELIVERS}})


@pytest.fixture(scope="session")
def installed_v1(releases: Releases, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with 1.0.0 in slot a from images/install.sh, once a session: copy it with copy_root (install.sh's slots run wherever they are)."""
    root = tmp_path_factory.mktemp("installed") / "root"
    install_sh(root, releases, "1.0.0")
    return root


def install_sh(root: Path, releases: Releases, version: str = "1.0.0") -> None:
    """Install ``version`` into an empty root with images/install.sh, as an image build or a stock Pi gets it."""
    for tool in INSTALL_TOOLS:
        require_tool(tool, package="systemd")
    install_root(root, releases, version)

"""Releases 1.0.0, 2.0.0 and a bad 3.0.0 of OCN Edge itself, for the install tests: real wheels, real bundles, one release key.

Built once per session, offline (tests/update/wheels.py): the dependencies repacked from this venv,
OCN Edge's own wheel built from the working tree and given each version. 3.0.0 carries a defect
its probation must catch: its uplink never delivers a batch, so no batch is ever acknowledged.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge.protocol import load_private_key
from edge.update.bundle import ReleaseSpec, build_bundle
from tests.helpers.tools import require_tool
from tests.update.wheels import build_own_wheel, requirements, reversioned, runtime_wheels, target_folder

REPO = Path(__file__).resolve().parents[2]
INSTALL_SH = REPO / "images" / "install.sh"
# The base interpreter of this venv: what a device's /usr/bin/python3 is to its slots.
BASE_PYTHON = os.path.realpath(sys.executable)
NEVER_DELIVERS = (
    '        """Send one batch until it is acked or quarantined."""\n',
    '        """Send one batch until it is acked or quarantined."""\n        await asyncio.Event().wait()  # 3.0.0\'s defect\n',
)


@dataclass(frozen=True)
class Releases:
    keys: Path  # release.key, release.pub
    wheelhouses: dict[str, Path]  # version -> a wheelhouse with one target folder
    bundles: dict[str, Path]  # version -> its signed bundle

    @property
    def public_key(self) -> Path:
        return self.keys / "release.pub"


@pytest.fixture(scope="session")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Releases:
    root = tmp_path_factory.mktemp("releases")
    own = build_own_wheel(root / "own")
    dependencies = runtime_wheels(root / "dependencies", requirements(own))
    keys = root / "keys"
    done = subprocess.run([sys.executable, "-m", "edge.cli", "release", "keygen", "--out", str(keys)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    key = load_private_key(keys / "release.key")
    wheelhouses: dict[str, Path] = {}
    bundles: dict[str, Path] = {}
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        patches = {"edge/uplink.py": NEVER_DELIVERS} if version == "3.0.0" else None
        wheel = reversioned(own, root / "own" / version, version, patches=patches)
        wheelhouses[version] = root / f"wheelhouse-{version}"
        target_folder(wheelhouses[version], [*dependencies, wheel])
        older = list(bundles.values())  # each release carries deltas of its changed wheels from the ones before
        bundles[version] = build_bundle(wheelhouses[version], root / f"ocn-edge-{version}", ReleaseSpec(version, "1.0.0"), key, delta_from=older)
    shutil.rmtree(root / "own")
    return Releases(keys, wheelhouses, bundles)


@pytest.fixture(scope="session")
def installed_v1(releases: Releases, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with 1.0.0 in slot a from images/install.sh, once a session: copy it with copy_root (install.sh's slots run wherever they are)."""
    root = tmp_path_factory.mktemp("installed") / "root"
    install_sh(root, releases, "1.0.0")
    return root


def copy_root(installed: Path, destination: Path) -> Path:
    """A fresh copy of an installed root, with the gateway's state directory (StateDirectory= would make it)."""
    shutil.copytree(installed, destination, symlinks=True)
    (destination / "var/lib/ocn-edge").mkdir(parents=True, mode=0o700)
    return destination


def install_sh(root: Path, releases: Releases, version: str = "1.0.0") -> None:
    """Install ``version`` into an empty root with images/install.sh, as an image build or a stock Pi gets it."""
    for tool in ("systemctl", "systemd-sysusers", "systemd-tmpfiles"):
        require_tool(tool, package="systemd")
    if not (root / "usr/lib/systemd/system").exists():
        shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    done = subprocess.run(
        [
            "sh",
            str(INSTALL_SH),
            "--root",
            str(root),
            "--wheelhouse",
            str(releases.wheelhouses[version]),
            "--python",
            BASE_PYTHON,
            "--release-key",
            str(releases.public_key),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr

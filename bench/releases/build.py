"""Releases of OCN Edge itself, signed with a release key of their own, and a root with the first one installed.

Built offline from this working tree (bench/releases/wheels.py): the dependencies repacked from
this venv, OCN Edge's own wheel given each version. A release may carry a defect its probation must
catch: ``NEVER_DELIVERS`` makes its uplink never send a batch, so no batch of it is ever
acknowledged. The update tests (tests/update) and the soak (bench/soak) both install, update and
roll back these.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.releases.wheels import build_own_wheel, requirements, reversioned, runtime_wheels, target_folder
from edge.protocol import load_private_key
from edge.update.bundle import ReleaseSpec, build_bundle

__all__ = ["BASE_PYTHON", "INSTALL_TOOLS", "NEVER_DELIVERS", "Patches", "Releases", "build_releases", "copy_root", "install_sh"]

REPO = Path(__file__).resolve().parents[2]
INSTALL_SH = REPO / "images" / "install.sh"
INSTALL_TOOLS = ("systemctl", "systemd-sysusers", "systemd-tmpfiles")  # what images/install.sh runs (package systemd)
# The base interpreter of this venv: what a device's /usr/bin/python3 is to its slots.
BASE_PYTHON = os.path.realpath(sys.executable)
# Anchored on the method's signature, not its docstring (a reworded docstring broke every release).
NEVER_DELIVERS = (
    "    async def _deliver(self, batch: StoredBatch) -> bool:\n",
    "    async def _deliver(self, batch: StoredBatch) -> bool:\n        await asyncio.Event().wait()  # 3.0.0's defect\n",
)
Patches = Mapping[str, tuple[str, str]]  # file in OCN Edge's wheel -> (text, replaced by)


@dataclass(frozen=True)
class Releases:
    keys: Path  # release.key, release.pub
    wheelhouses: dict[str, Path]  # version -> a wheelhouse with one target folder
    bundles: dict[str, Path]  # version -> its signed bundle

    @property
    def public_key(self) -> Path:
        return self.keys / "release.pub"


def build_releases(root: Path, versions: Sequence[str], *, defects: Mapping[str, Patches] | None = None, min_from: str | None = None) -> Releases:
    """Signed bundles of ``versions`` in ``root`` (a new release key in ``root/keys``); each carries deltas of its
    changed wheels from the ones before, as `release build --delta-from` makes them. ``defects``: version ->
    text replaced in OCN Edge's own files for that version only. ``min_from`` defaults to the first version."""
    own = build_own_wheel(root / "own")
    dependencies = runtime_wheels(root / "dependencies", requirements(own))
    keys = root / "keys"
    done = subprocess.run([sys.executable, "-m", "edge.cli", "release", "keygen", "--out", str(keys)], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ocn-edge release keygen: {done.stderr.strip()}")
    key = load_private_key(keys / "release.key")
    wheelhouses: dict[str, Path] = {}
    bundles: dict[str, Path] = {}
    for version in versions:
        patches = (defects or {}).get(version)
        wheel = reversioned(own, root / "own" / version, version, patches=dict(patches) if patches else None)
        wheelhouses[version] = root / f"wheelhouse-{version}"
        target_folder(wheelhouses[version], [*dependencies, wheel])
        older = list(bundles.values())
        spec = ReleaseSpec(version, min_from or versions[0])
        bundles[version] = build_bundle(wheelhouses[version], root / f"ocn-edge-{version}", spec, key, delta_from=older)
    shutil.rmtree(root / "own")
    return Releases(keys, wheelhouses, bundles)


def copy_root(installed: Path, destination: Path) -> Path:
    """A fresh copy of an installed root, with the gateway's state directory (StateDirectory= would make it)."""
    shutil.copytree(installed, destination, symlinks=True)
    (destination / "var/lib/ocn-edge").mkdir(parents=True, mode=0o700)
    return destination


def install_sh(root: Path, releases: Releases, version: str, *, python: str = BASE_PYTHON) -> None:
    """Install ``version`` into an empty root with images/install.sh, as an image build or a stock Pi gets it:
    slot a under ``root/opt/ocn-edge``, the units, the release key in ``root/etc/ocn-edge``."""
    absent = [tool for tool in INSTALL_TOOLS if shutil.which(tool) is None]
    if absent:
        raise RuntimeError(f"images/install.sh needs {', '.join(absent)} (apt-get install systemd)")
    if not (root / "usr/lib/systemd/system").exists():
        shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    command = [
        "sh",
        str(INSTALL_SH),
        "--root",
        str(root),
        "--wheelhouse",
        str(releases.wheelhouses[version]),
        "--python",
        python,
        "--release-key",
        str(releases.public_key),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"images/install.sh exited {done.returncode}: {done.stderr.strip()}")

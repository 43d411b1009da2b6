"""images/install.sh installs OCN Edge offline into a root, the way a Pi's image or a stock Raspberry Pi OS gets it.

CI has no systemd as PID 1 and no containers, so the script installs into a temporary root
(systemd's own units copied in, as on a stock system) and the result is checked from outside
with `systemctl --root` and `systemd-analyze verify --root`. The root is installed twice,
once per session: the second run must leave exactly what the first left.
"""

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.tools import require_tool
from tests.packaging.test_wheelhouse import wheelhouse

__all__ = ["wheelhouse"]  # the offline release the install script installs, a fixture shared with tests/packaging

REPO = Path(__file__).resolve().parents[2]
INSTALL = REPO / "images" / "install.sh"
ENABLED = ("ocn-edge.service", "ocn-edge-enrol.service", "systemd-time-wait-sync.service")

pytestmark = pytest.mark.timeout(600)  # builds two slots (venvs) from the wheelhouse


@dataclass
class Installed:
    root: Path
    first: subprocess.CompletedProcess[str]
    second: subprocess.CompletedProcess[str]
    after_first: dict[str, str]


def _install(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(INSTALL), *args], capture_output=True, text=True, timeout=300)


def _tree(root: Path) -> dict[str, str]:
    """What a second install could change: every path's type, mode, owner, and content or link target."""
    state = {}
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        kind = f"{info.st_mode:o} {info.st_uid}:{info.st_gid}"
        if path.is_symlink():
            kind += f" -> {os.readlink(path)}"
        elif path.is_file() and path.suffix != ".pyc":  # bytecode records its compile time
            kind += " " + hashlib.sha256(path.read_bytes()).hexdigest()
        state[str(path.relative_to(root))] = kind
    return state


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory, wheelhouse: Path) -> Installed:
    for tool in ("systemctl", "systemd-sysusers", "systemd-tmpfiles"):
        require_tool(tool, package="systemd")
    root = tmp_path_factory.mktemp("root")
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    first = _install("--root", str(root), "--wheelhouse", str(wheelhouse))
    after_first = _tree(root)
    second = _install("--root", str(root), "--wheelhouse", str(wheelhouse))
    return Installed(root=root, first=first, second=second, after_first=after_first)


def test_installing_twice_succeeds_and_changes_nothing_the_second_time(installed):
    assert installed.first.returncode == 0, installed.first.stderr
    assert installed.second.returncode == 0, installed.second.stderr
    assert _tree(installed.root) == installed.after_first
    assert not list((installed.root / "opt/ocn-edge").glob(".*")), "no half-built slot or link is left behind"


def test_the_gateway_units_are_enabled_and_the_hub_unit_is_installed_but_not(installed):
    systemctl = require_tool("systemctl", package="systemd")
    for unit in ENABLED:
        state = subprocess.run([systemctl, f"--root={installed.root}", "is-enabled", unit], capture_output=True, text=True)
        assert state.stdout.strip() == "enabled", (unit, state.stdout, state.stderr)
    state = subprocess.run([systemctl, f"--root={installed.root}", "is-enabled", "ocn-hub.service"], capture_output=True, text=True)
    assert state.stdout.strip() == "disabled"


def test_the_installed_units_verify_inside_the_root(installed):
    analyze = require_tool("systemd-analyze", package="systemd")
    units = ["ocn-edge.service", "ocn-edge-enrol.service", "ocn-hub.service"]
    result = subprocess.run([analyze, "verify", f"--root={installed.root}", *units], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_current_slot_runs_ocn_edge(installed):
    current = installed.root / "opt/ocn-edge/current"
    assert os.readlink(current) == "a", "a relative link: the same on the device and seen from outside its root"
    done = subprocess.run([str(current / "bin/ocn-edge"), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ocn-edge ")
    assert str(installed.root) not in (current / "bin/ocn-edge").read_text(), "the slot must not name where it was built"


def test_users_groups_and_the_config_directory(installed):
    etc = installed.root / "etc"
    users = {line.split(":")[0]: line.split(":") for line in (etc / "passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (etc / "group").read_text().splitlines()}
    assert users["ocn-edge"][6] == users["ocn-hub"][6] == "/usr/sbin/nologin"
    assert "ocn-edge" in groups["dialout"][3].split(","), "the gateway reads serial ports as a member of dialout"
    config = (etc / "ocn-edge").stat()
    assert oct(config.st_mode & 0o7777) == "0o770" and config.st_uid == 0
    assert config.st_gid == int(groups["ocn-edge"][2]), "first-boot enrolment deletes the token there as ocn-edge"
    assert (etc / "udev/rules.d/99-ocn-serial.rules").is_file()
    assert (etc / "systemd/journald.conf.d/ocn-edge.conf").is_file()


def test_the_other_slot_is_built_beside_and_becomes_current(installed, wheelhouse, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(installed.root, root, symlinks=True)
    before = (root / "opt/ocn-edge/a/bin/ocn-edge").read_bytes()
    done = _install("--root", str(root), "--wheelhouse", str(wheelhouse), "--slot", "b")
    assert done.returncode == 0, done.stderr
    assert os.readlink(root / "opt/ocn-edge/current") == "b"
    assert (root / "opt/ocn-edge/a/bin/ocn-edge").read_bytes() == before, "the previous slot is left as it was"
    assert subprocess.run([str(root / "opt/ocn-edge/current/bin/ocn-edge"), "--version"], timeout=60).returncode == 0


def test_without_a_wheelhouse_it_says_how_to_build_one_and_writes_nothing(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    done = _install("--root", str(root), "--wheelhouse", str(tmp_path / "missing"))
    assert done.returncode == 2
    assert done.stderr == f'install.sh: no wheelhouse at "{tmp_path / "missing"}": build one with `make wheelhouse` (or pass --wheelhouse DIR)\n'
    assert list(root.iterdir()) == []


def test_a_wheelhouse_without_this_machines_folder_is_refused(tmp_path):
    (tmp_path / "wheelhouse" / "riscv64-cp311").mkdir(parents=True)
    root = tmp_path / "root"
    root.mkdir()
    done = _install("--root", str(root), "--wheelhouse", str(tmp_path / "wheelhouse"))
    assert done.returncode == 2
    assert "folder with a constraints.txt in the wheelhouse" in done.stderr and "make wheelhouse" in done.stderr
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--slot", "c"], 'install.sh: --slot "c": expected a or b'),
    (["--root"], "install.sh: --root needs a directory"),
    (["--frobnicate"], 'install.sh: unknown argument "--frobnicate"'),
])
def test_bad_arguments_are_named(args, message):
    done = _install(*args)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == message

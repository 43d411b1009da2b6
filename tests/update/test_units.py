"""The update units (images/systemd/ocn-edge-update.*, ocn-edge-rollback.service, the gateway's rollback drop-in) are valid and wired as documented."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edge.update.fetch import REQUEST_FILE, update_dir
from tests.helpers.tools import require_tool

UNITS = Path(__file__).resolve().parents[2] / "images" / "systemd"
UPDATE, PATH, ROLLBACK, GATEWAY = "ocn-edge-update.service", "ocn-edge-update.path", "ocn-edge-rollback.service", "ocn-edge.service"
DROP_IN = UNITS / "ocn-edge.service.d" / "rollback.conf"


def directives(path: Path) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key, []).append(value)
    return found


@pytest.fixture(scope="module")
def unit_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """systemd's own units, both slots with the programs the units start, current and previous, and our units."""
    root = tmp_path_factory.mktemp("root")
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for slot in ("a", "b"):
        (root / f"opt/ocn-edge/{slot}/bin").mkdir(parents=True)
        for program in ("ocn-edge", "python"):
            (root / f"opt/ocn-edge/{slot}/bin/{program}").write_text("#!/bin/sh\n")
            (root / f"opt/ocn-edge/{slot}/bin/{program}").chmod(0o755)
    (root / "opt/ocn-edge/current").symlink_to("b")
    (root / "opt/ocn-edge/previous").symlink_to("a")
    shutil.copytree(UNITS, root / "etc/systemd/system")
    return root


@pytest.mark.parametrize("unit", [UPDATE, PATH, ROLLBACK, GATEWAY])
def test_unit_passes_systemd_analyze_verify(unit_root: Path, unit: str) -> None:
    analyze = require_tool("systemd-analyze", package="systemd")
    result = subprocess.run([analyze, "verify", f"--root={unit_root}", unit], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert unit not in result.stderr and "rollback.conf" not in result.stderr, result.stderr


@pytest.mark.parametrize("unit", [UPDATE, ROLLBACK])
def test_the_privileged_units_are_hardened_to_an_exposure_of_2_5_or_less(unit: str) -> None:
    analyze = require_tool("systemd-analyze", package="systemd")
    result = subprocess.run([analyze, "security", "--offline=yes", str(UNITS / unit)], capture_output=True, text=True, timeout=60)
    match = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d+)", result.stdout)
    assert match and float(match[1]) <= 2.5, result.stdout


def test_the_path_unit_watches_the_request_the_gateway_writes_and_starts_the_installer() -> None:
    path = directives(UNITS / PATH)
    assert path["PathExists"] == [str(update_dir(Path("/var/lib/ocn-edge")) / REQUEST_FILE)] and path["Unit"] == [UPDATE]


def test_the_installer_runs_from_the_proven_slot_in_a_sandbox_that_writes_only_the_slots_and_the_gateway_s_state() -> None:
    update = directives(UNITS / UPDATE)
    assert update["Type"] == ["oneshot"] and update["ExecStart"] == ["/opt/ocn-edge/current/bin/python -m edge.update.install"]
    assert update["ProtectSystem"] == ["strict"] and update["ReadWritePaths"] == ["/opt/ocn-edge /var/lib/ocn-edge"]
    assert update["UMask"] == ["0022"]  # the gateway's user must read the slots
    assert update["IPAddressAllow"] == ["localhost"]  # the probation reads the local API; nothing is downloaded here


def test_a_gateway_that_fails_for_good_starts_the_rollback_from_the_previous_slot() -> None:
    drop_in = directives(DROP_IN)
    assert drop_in["OnFailure"] == [ROLLBACK] and int(drop_in["StartLimitBurst"][0]) >= 3
    rollback = directives(UNITS / ROLLBACK)
    assert rollback["ExecStart"] == ["/opt/ocn-edge/previous/bin/python -m edge.update.install --rollback"]
    assert rollback["ConditionPathExists"] == ["/opt/ocn-edge/previous/bin/python"]


def test_install_sh_installs_the_update_units_the_release_key_and_the_wheels_of_the_slot(installed_v1: Path) -> None:
    systemctl = require_tool("systemctl", package="systemd")
    state = subprocess.run([systemctl, f"--root={installed_v1}", "is-enabled", PATH], capture_output=True, text=True)
    assert state.stdout.strip() == "enabled", state.stderr
    for name in (UPDATE, ROLLBACK, "ocn-edge.service.d/rollback.conf"):
        assert (installed_v1 / "etc/systemd/system" / name).is_file()
    assert (installed_v1 / "etc/ocn-edge/release.pub").stat().st_mode & 0o777 == 0o644
    wheels = sorted(p.name for p in (installed_v1 / "opt/ocn-edge/a/release/wheels").glob("*.whl"))
    assert "ocn_edge-1.0.0-py3-none-any.whl" in wheels and len(wheels) > 10

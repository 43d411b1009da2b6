"""`ocn-edge driver new --kind serial`: a serial line driver package that installs, is discovered and passes its tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from drivers.registry import available
from drivers.scaffold import ScaffoldError, scaffold
from edge.cli import main

OCN_EDGE = str(Path(sys.executable).with_name("ocn-edge"))


@pytest.mark.timeout(120)
def test_a_serial_driver_scaffolded_by_driver_new_installs_is_discovered_and_passes_its_tests(tmp_path):
    assert main(["driver", "new", "acme-dust", "--kind", "serial", "--dir", str(tmp_path)]) == 0
    root = tmp_path / "ocn-edge-driver-acme-dust"
    assert 'type = "serial"' in (root / "README.md").read_text()
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-build-isolation", "--no-deps",
                    "--no-index", "--target", str(target), str(root)], check=True, timeout=90, cwd=tmp_path)
    env = {**os.environ, "PYTHONPATH": str(target)}
    listed = subprocess.run([OCN_EDGE, "drivers"], env=env, capture_output=True, text=True, timeout=30)
    assert "acme-dust" in listed.stdout
    assert "acme-dust" not in available(), "the shared environment is untouched"
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=root,
                           env=env, capture_output=True, text=True, timeout=90)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "3 passed" in tests.stdout


def test_an_unknown_kind_names_the_kinds_there_are(tmp_path):
    with pytest.raises(ScaffoldError, match="kind 'can': expected one of 'modbus', 'serial'"):
        scaffold("acme-bus", tmp_path, kind="can")
    assert not any(tmp_path.iterdir())

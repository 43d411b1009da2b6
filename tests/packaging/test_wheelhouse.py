"""The offline release (images/wheelhouse.py, `make wheelhouse`): what a pole installs, with no network.

The dependency wheels come from PyPI once and are kept in ~/.cache/ocn-edge-wheelhouse under
a key of pyproject.toml and the builder; OCN Edge's own wheel is rebuilt from the working tree
every session. Building needs https://pypi.org (skipped without it, failed under OCN_REQUIRE_ALL=1).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.tags import compatible_tags, cpython_tags, platform_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

from tests.helpers.tools import missing

REPO = Path(__file__).resolve().parents[2]
BUILDER = REPO / "images" / "wheelhouse.py"
HOST = f"{platform.machine()}-cp{sys.version_info.major}{sys.version_info.minor}"
DEAD = "http://127.0.0.1:9"  # the discard port: nothing answers, so any network attempt fails at once

pytestmark = pytest.mark.timeout(600)  # the first session builds the wheelhouse from PyPI: about a minute


def _load_builder() -> ModuleType:
    # images/ is a folder of device recipes, not a package: load the builder from its path.
    spec = importlib.util.spec_from_file_location("images_wheelhouse", BUILDER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


wheelhouse_builder = _load_builder()


def _require_pypi() -> None:
    try:  # through the proxy the environment names, as pip goes
        with urllib.request.urlopen(wheelhouse_builder.PYPI + "/cbor2/", timeout=10):
            pass
    except OSError:
        missing(f"needs {wheelhouse_builder.PYPI} to fetch the dependency wheels (pip download)")


def _cache() -> Path:
    key = hashlib.sha256((REPO / "pyproject.toml").read_bytes() + BUILDER.read_bytes()).hexdigest()[:16]
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ocn-edge-wheelhouse" / key


def _build(*args: str) -> None:
    done = subprocess.run([sys.executable, str(BUILDER), *args], capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr


@pytest.fixture(scope="session")
def wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cached = _cache()
    if not (cached / wheelhouse_builder.MANIFEST).is_file():
        _require_pypi()
        fresh = cached.with_name(f"{cached.name}.{os.getpid()}")  # a dotted name: being built, not yet a cache
        try:
            _build(str(fresh))
            fresh.rename(cached)
        except OSError:  # another session cached the same key meanwhile: keep theirs
            pass
        finally:
            shutil.rmtree(fresh, ignore_errors=True)
        for stale in cached.parent.iterdir():  # wheelhouses of an earlier pyproject.toml or builder
            if stale != cached and "." not in stale.name:
                shutil.rmtree(stale, ignore_errors=True)
    out = tmp_path_factory.mktemp("release") / "wheelhouse"
    shutil.copytree(cached, out)
    _build(str(out), "--keep-dependencies")  # OCN Edge's wheel from this working tree, offline
    return out


def _wheels(folder: Path) -> dict[str, str]:
    return {str(canonicalize_name(parse_wheel_filename(w.name)[0])): str(parse_wheel_filename(w.name)[1])
            for w in folder.glob("*.whl")}


def _constraints(folder: Path) -> dict[str, tuple[str, set[str]]]:
    """name -> (version, hashes) from a constraints.txt (continuation lines joined)."""
    text = (folder / "constraints.txt").read_text().replace("\\\n", " ")
    pinned = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        requirement, *options = line.split()
        name, version = requirement.split("==")
        pinned[name] = (version, {option.removeprefix("--hash=sha256:") for option in options})
    return pinned


def test_the_device_tags_are_the_ones_pip_uses_on_this_machine():
    libc, version = platform.libc_ver()
    assert libc == "glibc", "a gateway and CI run on glibc Linux"
    glibc = tuple(int(part) for part in version.split(".")[:2])
    native = [tag for tag in platform_tags() if tag.startswith("manylinux")]
    assert wheelhouse_builder.manylinux_platforms(platform.machine(), glibc) == native


def test_a_pi_accepts_wheels_built_for_glibc_2_28_and_none_newer_than_its_own():
    tags = wheelhouse_builder.manylinux_platforms("aarch64")
    assert {"manylinux_2_36_aarch64", "manylinux_2_28_aarch64", "manylinux_2_17_aarch64", "manylinux2014_aarch64"} <= set(tags)
    assert "manylinux_2_37_aarch64" not in tags and not any("x86_64" in tag for tag in tags)


def test_a_targets_dependencies_follow_its_own_python_not_the_one_building_the_release():
    only_before_3_13 = Requirement('typing_extensions>=4.2; python_version < "3.13"').marker
    assert only_before_3_13 is not None
    needs = {t.name: only_before_3_13.evaluate(t.marker_environment()) for t in wheelhouse_builder.TARGETS}
    assert needs == {"aarch64-cp311": True, "aarch64-cp313": False, "x86_64-cp311": True, "x86_64-cp313": False}


def test_every_target_has_a_wheel_it_can_install_of_every_runtime_dependency_in_one_version(wheelhouse):
    runtime = [Requirement(r) for r in wheelhouse_builder.runtime_requirements()]
    chosen = {}
    for target in wheelhouse_builder.TARGETS:
        folder = wheelhouse / target.name
        supported = set(cpython_tags(target.python, platforms=[*wheelhouse_builder.manylinux_platforms(target.machine)]))
        supported |= set(compatible_tags(target.python, f"cp{target.python[0]}{target.python[1]}", platforms=[]))
        for wheel in folder.glob("*.whl"):
            assert parse_wheel_filename(wheel.name)[3] & supported, f"{target.name} cannot install {wheel.name}"
        chosen[target.name] = _wheels(folder)
        for requirement in runtime:
            version = chosen[target.name].get(canonicalize_name(requirement.name))
            assert version is not None and requirement.specifier.contains(version), (target.name, str(requirement), version)
    assert len({tuple(sorted(versions.items())) for versions in chosen.values()}) == 1, chosen
    assert chosen["aarch64-cp311"]["ocn-edge"] == "0.1.0"


def test_a_pi_gets_the_same_major_versions_as_pip_resolves_natively_here(wheelhouse):
    _require_pypi()
    # PyPI as it stood when the (cached) wheelhouse was resolved: a release since then (cryptography 51 came out
    # after a kept wheelhouse chose 50) is no difference between a Pi and this machine.
    as_of = json.loads((wheelhouse / wheelhouse_builder.MANIFEST).read_text())["resolved_as_of"]
    report = wheelhouse.parent / "native.json"
    subprocess.run([sys.executable, "-m", "pip", "--isolated", "--quiet", "install", "--dry-run", "--ignore-installed",
                    "--only-binary=:all:", "--index-url", wheelhouse_builder.PYPI, "--uploaded-prior-to", as_of,
                    "--report", str(report), *wheelhouse_builder.runtime_requirements()],
                   check=True, capture_output=True, timeout=300)
    native = {str(canonicalize_name(item["metadata"]["name"])): item["metadata"]["version"]
              for item in json.loads(report.read_text())["install"]}

    def majors(versions: dict[str, str]) -> dict[str, str]:
        return {name: version.split(".")[0] for name, version in versions.items() if name != "ocn-edge"}

    for pi in ("aarch64-cp311", "aarch64-cp313"):
        on_the_pi = majors(_wheels(wheelhouse / pi))
        # A target also holds what only another target's Python needs (typing_extensions below 3.13).
        assert {name: on_the_pi.get(name) for name in majors(native)} == majors(native), pi
    # The regression this guards: a manylinux2014-only check resolved cbor2 5, a Pi installs 6 (glibc 2.28 wheels).
    assert _wheels(wheelhouse / "aarch64-cp311")["cbor2"].startswith("6.")


def test_every_wheel_is_pinned_by_its_hash_in_each_targets_constraints(wheelhouse):
    texts = {(wheelhouse / t.name / "constraints.txt").read_text() for t in wheelhouse_builder.TARGETS}
    assert len(texts) == 1, "one constraints file, the same in every folder"
    for target in wheelhouse_builder.TARGETS:
        folder = wheelhouse / target.name
        pinned = _constraints(folder)
        assert set(pinned) == set(_wheels(folder))
        for wheel in folder.glob("*.whl"):
            name = str(canonicalize_name(parse_wheel_filename(wheel.name)[0]))
            version, hashes = pinned[name]
            assert version == _wheels(folder)[name]
            assert hashlib.sha256(wheel.read_bytes()).hexdigest() in hashes, wheel.name


def test_the_same_source_builds_the_same_ocn_edge_wheel(tmp_path):
    source = tmp_path / "source"  # one snapshot of the working tree, which may change while the test runs
    wheelhouse_builder.copy_source(REPO, source)
    first = wheelhouse_builder.build_project_wheel(tmp_path / "first", source)
    second = wheelhouse_builder.build_project_wheel(tmp_path / "second", source)
    assert wheelhouse_builder.sha256(first) == wheelhouse_builder.sha256(second)


def test_reusing_dependency_wheels_resolved_for_other_dependencies_is_refused(tmp_path):
    (tmp_path / "dependencies.json").write_text(json.dumps({"requirements": ["cbor2>=5.6,<6"], "targets": ["aarch64-cp311"]}))
    done = subprocess.run([sys.executable, str(BUILDER), str(tmp_path), "--keep-dependencies"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert re.match(rf"wheelhouse: {re.escape(str(tmp_path))}: its dependency wheels were not resolved for this "
                    r"pyproject.toml's dependencies", done.stderr)
    assert "build again without --keep-dependencies" in done.stderr
    assert "Traceback" not in done.stderr


def _offline_env(home: Path) -> dict[str, str]:
    """An environment in which pip has no index, no config, no cache and any network attempt fails."""
    home.mkdir()
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CONFIG_DIRS": str(home / "etc"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "PIP_CONFIG_FILE": os.devnull,
        "PIP_INDEX_URL": f"{DEAD}/simple",
        "http_proxy": DEAD, "https_proxy": DEAD, "HTTP_PROXY": DEAD, "HTTPS_PROXY": DEAD,
        "no_proxy": "127.0.0.1,localhost", "NO_PROXY": "127.0.0.1,localhost",  # the demo's own hub, on loopback
    }


def test_the_release_installs_with_the_network_off_and_the_demo_loses_nothing(wheelhouse, tmp_path):
    folder = wheelhouse / HOST
    if not folder.is_dir():
        pytest.fail(f"the wheelhouse has no folder for this machine ({HOST}): add it to TARGETS in images/wheelhouse.py")
    env = _offline_env(tmp_path / "home")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120, env=env)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "--no-index", "--find-links", str(folder),
                              "--require-hashes", "-r", str(folder / "constraints.txt")],
                             capture_output=True, text=True, timeout=300, env=env, cwd=env["HOME"])
    assert install.returncode == 0, install.stdout + install.stderr

    listed = subprocess.run([str(venv / "bin" / "python"), "-c",
                             "import json, importlib.metadata as m; print(json.dumps({d.metadata['Name']: d.version "
                             "for d in m.distributions() if d.metadata['Name'] not in ('pip', 'setuptools')}))"],
                            capture_output=True, text=True, timeout=60, env=env, check=True)
    installed = {str(canonicalize_name(name)): version for name, version in json.loads(listed.stdout).items()}
    assert installed == {name: version for name, (version, _) in _constraints(folder).items()}

    demo = subprocess.run([str(venv / "bin" / "ocn-edge"), "demo", "--duration", "6", "--json"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=env["HOME"])
    assert demo.returncode == 0, demo.stderr
    assert "Traceback" not in demo.stderr
    summary = json.loads(demo.stdout.strip().splitlines()[-1])
    assert summary["readings_acknowledged"] > 0
    assert summary["readings_lost"] == 0
    assert summary["duplicates"] == 0


def test_the_builder_resolves_as_pypi_stood_at_the_moment_it_is_given():
    _require_pypi()
    # cryptography 51 was uploaded in December 2026: as of 1 November the newest release was a 50.
    before = wheelhouse_builder.resolve(wheelhouse_builder.TARGETS[0], ["cryptography>=42"], index_url=wheelhouse_builder.PYPI,
                                        as_of="2026-11-01T00:00:00Z", pins={})
    assert before["cryptography"].split(".")[0] == "50", before


def test_an_as_of_that_is_not_a_moment_is_refused_with_an_example():
    done = subprocess.run([sys.executable, str(BUILDER), "--as-of", "last tuesday"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "'last tuesday' is not an ISO 8601 date and time (2026-12-01T00:00:00Z)" in done.stderr
    assert "Traceback" not in done.stderr

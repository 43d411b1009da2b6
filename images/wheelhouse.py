"""Build the offline release: OCN Edge's wheel and every runtime dependency's wheel, per device target, hash-pinned.

`make wheelhouse` runs this. It writes one folder per target (`aarch64-cp311`, `aarch64-cp313`,
`x86_64-cp311`, `x86_64-cp313`, named `uname -m` then the CPython tag) into `dist/wheelhouse/`,
each holding the wheels and a `constraints.txt` of `name==version --hash=sha256:...` lines (the
same file in every folder: each version's hash for every target), so a device installs with no
network:

    pip install --no-index --find-links dist/wheelhouse/aarch64-cp311 \\
        --require-hashes -r dist/wheelhouse/aarch64-cp311/constraints.txt

Every target gets the same versions and the same distributions (a dependency only one Python
needs, such as typing_extensions below 3.13, is in every folder), so what CI tests on x86_64 is
what a pole runs. Each target is resolved with the platform tags pip has on that device
(manylinux_2_36 down to manylinux2014: glibc 2.36, Raspberry Pi OS Bookworm; Trixie's newer
glibc also runs them). pip expands only the legacy manylinux2014 name, not manylinux_2_28: a
resolution given `manylinux2014_aarch64` alone never sees a wheel built for glibc 2.28 (cbor2 6
ships only those) and falls back to an older release a Pi would not install.

Only PyPI is asked (pip runs --isolated, so a workstation's pip.conf extra index or find-links
cannot leak into a release), and only as it stood at one moment: every pip call gets the same
--uploaded-prior-to (the build's start, or --as-of to rebuild an earlier release's choice), and
dependencies.json records it, so what a wheelhouse holds can be resolved again and compared
with, however long it has been kept. The project wheel builds offline from a copy of the source tree,
with fixed timestamps (SOURCE_DATE_EPOCH), so the same source gives the same hash. Run it with
the dev venv (`make wheelhouse`): it needs `packaging`, `setuptools` and `wheel`.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PYPI = "https://pypi.org/simple"
# Raspberry Pi OS Bookworm's glibc: the oldest a gateway runs, so the newest a wheel may need.
DEVICE_GLIBC = (2, 36)
# The oldest glibc each machine's manylinux tags go down to (as in packaging.tags).
OLDEST_GLIBC_MINOR = {"aarch64": 17, "x86_64": 5}
LEGACY_MANYLINUX = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
# What the project wheel is never built from (and what must not land in the copy it is built from).
NOT_SOURCE = {".git", "build", "dist", "var", "tests", ".hypothesis", ".pytest_cache", "__pycache__"}
CONSTRAINTS = "constraints.txt"
MANIFEST = "dependencies.json"
# 1980-01-01, the earliest time a zip entry holds: the wheel's timestamps, unless SOURCE_DATE_EPOCH says otherwise.
ZIP_EPOCH = "315532800"
T = TypeVar("T")


class WheelhouseError(Exception):
    """The wheelhouse cannot be built as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Target:
    """A device a wheelhouse folder installs on: its machine (`uname -m`) and its CPython."""

    machine: str
    python: tuple[int, int]

    @property
    def name(self) -> str:
        return f"{self.machine}-cp{self.python[0]}{self.python[1]}"

    def marker_environment(self) -> dict[str, str]:
        """The PEP 508 marker values that differ between targets (the rest are the same Linux on every device)."""
        version = "{}.{}".format(*self.python)
        return {"python_version": version, "python_full_version": f"{version}.0", "implementation_version": f"{version}.0",
                "implementation_name": "cpython", "platform_python_implementation": "CPython",
                "platform_machine": self.machine, "sys_platform": "linux", "platform_system": "Linux", "os_name": "posix"}

    def pip_options(self) -> list[str]:
        major, minor = self.python
        platforms = [option for tag in manylinux_platforms(self.machine) for option in ("--platform", tag)]
        return ["--only-binary=:all:", *platforms, "--python-version", f"{major}.{minor}",
                "--implementation", "cp", "--abi", f"cp{major}{minor}"]


TARGETS = (Target("aarch64", (3, 11)), Target("aarch64", (3, 13)), Target("x86_64", (3, 11)), Target("x86_64", (3, 13)))


def manylinux_platforms(machine: str, glibc: tuple[int, int] = DEVICE_GLIBC) -> list[str]:
    """The manylinux platform tags pip accepts on a `machine` with this glibc, most specific first."""
    major, newest = glibc
    tags = []
    for minor in range(newest, OLDEST_GLIBC_MINOR[machine] - 1, -1):
        tags.append(f"manylinux_{major}_{minor}_{machine}")
        if minor in LEGACY_MANYLINUX:
            tags.append(f"{LEGACY_MANYLINUX[minor]}_{machine}")
    return tags


def runtime_requirements(pyproject: Path = REPO / "pyproject.toml") -> list[str]:
    """The `dependencies` of pyproject.toml: what a device runs, without the dev and postgres extras."""
    return list(tomllib.loads(pyproject.read_text())["project"]["dependencies"])


def wheel_name_version(wheel: Path) -> tuple[str, str]:
    """The distribution name (PEP 503 form) and version a wheel's file name states."""
    name, version, _, _ = parse_wheel_filename(wheel.name)
    return str(name), str(version)


def as_of_text(moment: datetime.datetime) -> str:
    """The UTC ISO 8601 form (to the second) pip's --uploaded-prior-to takes and dependencies.json records."""
    return moment.astimezone(datetime.UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "--isolated", "--quiet", *args], capture_output=True, text=True)
    if done.returncode != 0:
        if "--uploaded-prior-to" in done.stderr:
            raise WheelhouseError(f"this pip cannot resolve as of a moment (--uploaded-prior-to): upgrade it, "
                                  f"{sys.executable} -m pip install --upgrade pip:\n{done.stderr.strip()}")
        raise WheelhouseError(f"pip {args[0]} failed:\n{done.stderr.strip()}")


def resolve(target: Target, requirements: list[str], *, index_url: str, as_of: str, pins: dict[str, str]) -> dict[str, str]:
    """The distribution versions pip installs for `requirements` on `target` (name -> version), downloading no wheel.

    Only what was uploaded before `as_of` (see `as_of_text`) is considered.

    pip evaluates environment markers for the Python running it, not for --python-version: built
    on 3.13, a cp311 resolution would leave out `typing_extensions; python_version < "3.13"`. Each
    dependency the target's own markers ask for and pip left out is named, and pip resolves again.
    """
    wanted = list(requirements)
    while True:
        installs = _dry_run(target, wanted, index_url=index_url, as_of=as_of, pins=pins)
        resolved: dict[str, str] = {canonicalize_name(item["metadata"]["name"]): item["metadata"]["version"] for item in installs}
        left_out = [str(r) for r in _needed_on(target, installs) if canonicalize_name(r.name) not in resolved]
        if not left_out:
            return resolved
        wanted += left_out


def _dry_run(target: Target, requirements: list[str], *, index_url: str, as_of: str, pins: dict[str, str]) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="ocn-wheelhouse-") as work:
        report = Path(work) / "report.json"
        constraints = Path(work) / "pins.txt"
        constraints.write_text("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))
        _pip("install", "--dry-run", "--ignore-installed", "--index-url", index_url, "--uploaded-prior-to", as_of,
             "--report", str(report), *target.pip_options(), "-c", str(constraints), *requirements)
        return json.loads(report.read_text())["install"]


def _needed_on(target: Target, installs: list[dict]) -> list[Requirement]:
    """The dependencies (markers dropped) that the resolved distributions declare for the target's environment."""
    environment = target.marker_environment()
    needed = []
    for item in installs:
        extras = ["", *item.get("requested_extras", [])]
        for declared in item["metadata"].get("requires_dist", []):
            requirement = Requirement(declared)
            if requirement.marker is None or any(requirement.marker.evaluate({**environment, "extra": e}) for e in extras):
                requirement.marker = None
                needed.append(requirement)
    return needed


def resolve_for_all(targets: tuple[Target, ...], requirements: list[str], *, index_url: str, as_of: str) -> dict[str, str]:
    """One version of each distribution, with a wheel for every target; every target gets what any target needs.

    Each target first resolves on its own. Where they differ (a release without a wheel for one
    target, a dependency only one Python needs), every target is asked for every distribution,
    pinned to the oldest version any target chose, and resolved again.
    """
    chosen = _for_each(targets, lambda target: resolve(target, requirements, index_url=index_url, as_of=as_of, pins={}))
    split = _differences(chosen)
    if split:
        pins = {name: str(min(Version(v) for v in found if v is not None)) for name, found in split.items()}
        everything = sorted({name for resolution in chosen.values() for name in resolution})
        chosen = _for_each(targets, lambda target: resolve(target, [*requirements, *everything], index_url=index_url,
                                                            as_of=as_of, pins=pins))
        if _differences(chosen):
            raise WheelhouseError(
                "the targets need different versions even when pinned to one: "
                + "; ".join(f"{t.name}: " + ", ".join(f"{n} {chosen[t].get(n, 'none')}" for n in sorted(split))
                            for t in targets)
                + "; pin a version that has wheels for every target in pyproject.toml")
    return next(iter(chosen.values()))


def _for_each(targets: tuple[Target, ...], work: Callable[[Target], T]) -> dict[Target, T]:
    """Run `work` for every target at once: each is a pip waiting mostly on PyPI."""
    with ThreadPoolExecutor(max_workers=len(targets)) as pool:
        return dict(zip(targets, pool.map(work, targets), strict=True))


def _differences(chosen: dict[Target, dict[str, str]]) -> dict[str, set[str | None]]:
    """The distributions the targets did not all resolve to one version of (None: a target does not need it)."""
    names = {name for resolution in chosen.values() for name in resolution}
    found = {name: {resolution.get(name) for resolution in chosen.values()} for name in names}
    return {name: versions for name, versions in found.items() if len(versions) > 1}


def download(target: Target, versions: dict[str, str], folder: Path, *, index_url: str, as_of: str) -> None:
    """Put exactly one wheel of each pinned distribution for `target` into `folder` (one uploaded before `as_of`)."""
    folder.mkdir(parents=True, exist_ok=True)
    _pip("download", "--no-deps", "--index-url", index_url, "--uploaded-prior-to", as_of, "--dest", str(folder),
         *target.pip_options(),
         *(f"{name}=={version}" for name, version in sorted(versions.items())))
    found = sorted(wheel_name_version(wheel) for wheel in folder.glob("*.whl"))
    if found != sorted(versions.items()):
        raise WheelhouseError(f"{folder}: expected one wheel each of {sorted(versions.items())}, found {found}")


def copy_source(tree: Path, destination: Path) -> None:
    """Copy what OCN Edge's wheel is built from (no venvs, tests, build output or caches)."""

    def ignore(directory: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n.endswith(".egg-info") or n == "__pycache__" or n.startswith(".venv")}
        return skipped | (NOT_SOURCE & set(names)) if Path(directory) == tree else skipped

    shutil.copytree(tree, destination, symlinks=True, ignore=ignore)


def build_project_wheel(destination: Path, tree: Path = REPO) -> Path:
    """Build OCN Edge's wheel (pure Python) offline, from a copy of the source tree so the tree gets no build/."""
    with tempfile.TemporaryDirectory(prefix="ocn-wheelhouse-") as work:
        source = Path(work) / "source"
        copy_source(tree, source)
        built = Path(work) / "wheel"
        done = subprocess.run([sys.executable, "-m", "pip", "--isolated", "wheel", "--quiet", "--no-deps", "--no-index",
                               "--no-build-isolation", "--wheel-dir", str(built), str(source)],
                              capture_output=True, text=True, env={"SOURCE_DATE_EPOCH": ZIP_EPOCH, **os.environ})
        if done.returncode != 0:
            raise WheelhouseError(f"building the OCN Edge wheel failed (it needs setuptools and wheel, "
                                  f"pip install -e '.[dev]'):\n{done.stderr.strip()}")
        (wheel,) = built.glob("ocn_edge-*.whl")
        destination.mkdir(parents=True, exist_ok=True)
        return Path(shutil.copy2(wheel, destination))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_constraints(out: Path, targets: tuple[Target, ...]) -> None:
    """Write the same constraints.txt into every target folder: each wheel's version and every target's hash of it."""
    hashes: dict[tuple[str, str], set[str]] = defaultdict(set)
    for target in targets:
        for wheel in (out / target.name).glob("*.whl"):
            hashes[wheel_name_version(wheel)].add(sha256(wheel))
    lines = ["# OCN Edge offline release, written by images/wheelhouse.py: every wheel of every target, pinned by hash.",
             "# pip install --no-index --find-links <this folder> --require-hashes -r <this file>"]
    for (name, version), digests in sorted(hashes.items()):
        lines.append(" \\\n    ".join([f"{name}=={version}", *(f"--hash=sha256:{d}" for d in sorted(digests))]))
    text = "\n".join(lines) + "\n"
    for target in targets:
        (out / target.name / CONSTRAINTS).write_text(text)


def build(out: Path, *, targets: tuple[Target, ...] = TARGETS, index_url: str = PYPI, keep_dependencies: bool = False,
          as_of: datetime.datetime | None = None) -> None:
    """Build the wheelhouse in `out`; with keep_dependencies, reuse its dependency wheels and rebuild only ours.

    The dependencies are what PyPI offered just before `as_of` (default: now), recorded in dependencies.json.
    """
    requirements = runtime_requirements()
    manifest: dict[str, object] = {"requirements": requirements, "targets": [t.name for t in targets]}
    if keep_dependencies:
        recorded = json.loads((out / MANIFEST).read_text()) if (out / MANIFEST).is_file() else None
        if recorded is not None:
            recorded.pop("resolved_as_of", None)
        if recorded != manifest:
            raise WheelhouseError(f"{out}: its dependency wheels were not resolved for this pyproject.toml's dependencies "
                                  f"and targets ({recorded} != {manifest}); build again without --keep-dependencies")
        for stale in out.glob("*/ocn_edge-*.whl"):
            stale.unlink()
    else:
        if out.exists():
            shutil.rmtree(out)
        moment = as_of_text(as_of or datetime.datetime.now(datetime.UTC))
        versions = resolve_for_all(targets, requirements, index_url=index_url, as_of=moment)
        _for_each(targets, lambda target: download(target, versions, out / target.name, index_url=index_url,
                                                     as_of=moment))
        manifest["resolved_as_of"] = moment
        (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    with tempfile.TemporaryDirectory(prefix="ocn-wheelhouse-") as work:
        ours = build_project_wheel(Path(work))
        for target in targets:
            shutil.copy2(ours, out / target.name)
    write_constraints(out, targets)


def _moment(text: str) -> datetime.datetime:
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 date and time (2026-12-01T00:00:00Z)") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.UTC)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="images/wheelhouse.py", description=__doc__.split("\n", 1)[0])
    parser.add_argument("out", nargs="?", type=Path, default=REPO / "dist" / "wheelhouse",
                        help="the wheelhouse folder (default: dist/wheelhouse); replaced")
    parser.add_argument("--index-url", default=PYPI, help=f"the package index to resolve from (default: {PYPI})")
    parser.add_argument("--as-of", type=_moment, metavar="DATETIME",
                        help="resolve as PyPI stood then (ISO 8601, e.g. 2026-12-01T00:00:00Z; default: now), "
                             "as dependencies.json records every build's moment")
    parser.add_argument("--keep-dependencies", action="store_true",
                        help="reuse the dependency wheels already in OUT and rebuild only OCN Edge's wheel (no network)")
    args = parser.parse_args(argv)
    try:
        build(args.out, index_url=args.index_url, keep_dependencies=args.keep_dependencies, as_of=args.as_of)
    except WheelhouseError as exc:
        print(f"wheelhouse: {exc}", file=sys.stderr)
        return 1
    for target in TARGETS:
        wheels = sorted((args.out / target.name).glob("*.whl"))
        print(f"{args.out / target.name}: {len(wheels)} wheels")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Build a release bundle from a wheelhouse (`make wheelhouse`) and sign its manifest with the release key.

The bundle is a directory another tool can serve as static files (docs/updates.md): every wheel
once under ``wheels/`` (a pure-Python wheel is shared by every target), one hash-pinned
``targets/<target>/constraints.txt`` per target, and ``manifest.cose``. It is written beside its
final name and renamed into place, so a bundle directory is either whole or absent.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.protocol.release import seal_release
from edge.update.manifest import _TARGET_RE, FORMAT, MANIFEST_FILE, PRODUCT, file_digest, parse_version

__all__ = ["CONSTRAINTS", "BundleError", "ReleaseSpec", "build_bundle", "own_wheel_version"]

CONSTRAINTS = "constraints.txt"
DAY_S = 86_400


class BundleError(Exception):
    """The bundle cannot be built from what was given; the message names the folder, file or option."""


@dataclass(frozen=True, slots=True)
class ReleaseSpec:
    """What city IT says about a release when building it (docs/updates.md, "The manifest")."""

    version: str
    min_from: str
    valid_days: int = 90
    allow_downgrade: bool = False
    rollback_safe: bool = True
    notes: str = ""


def _targets(wheelhouse: Path) -> dict[str, Path]:
    """target name -> its folder: the wheelhouse itself if it holds a constraints.txt, else its target folders."""
    if (wheelhouse / CONSTRAINTS).is_file():
        if not _TARGET_RE.match(wheelhouse.name):
            raise BundleError(f"{wheelhouse}: a single target's folder must be named like `make wheelhouse` names them (aarch64-cp311, x86_64-cp313)")
        return {wheelhouse.name: wheelhouse}
    found = {folder.name: folder for folder in sorted(wheelhouse.iterdir()) if folder.is_dir() and (folder / CONSTRAINTS).is_file()}
    if not found:
        raise BundleError(f"{wheelhouse}: no constraints.txt in it or in its folders; build one with `make wheelhouse`")
    for name in found:
        if not _TARGET_RE.match(name):
            raise BundleError(f"{wheelhouse / name}: not a target folder name (expected e.g. aarch64-cp311)")
    return found


def own_wheel_version(folder: Path) -> str:
    """The version of OCN Edge's own wheel in a target folder (``ocn_edge-<version>-...whl``)."""
    wheels = sorted(folder.glob("ocn_edge-*.whl"))
    if len(wheels) != 1:
        raise BundleError(f"{folder}: expected one ocn_edge-*.whl, found {len(wheels)}")
    return wheels[0].name.split("-")[1]


def build_bundle(wheelhouse: Path, out: Path, spec: ReleaseSpec, private_key: Ed25519PrivateKey, *, now: float | None = None) -> Path:
    """Write the bundle of ``spec.version`` from ``wheelhouse`` into the new directory ``out``; returns ``out``."""
    parse_version(spec.version)
    parse_version(spec.min_from, field="min_from")
    if out.exists():
        raise BundleError(f"{out}: already exists; a bundle is never overwritten (choose another --out)")
    targets = _targets(wheelhouse)
    for folder in targets.values():
        own = own_wheel_version(folder)
        if own != spec.version:
            raise BundleError(f"{folder}: OCN Edge's wheel is version {own}, not --version {spec.version}; a device would report {own} after installing")
    building = out.with_name(f".{out.name}.building")
    shutil.rmtree(building, ignore_errors=True)
    (building / "wheels").mkdir(parents=True)
    files: dict[str, dict[str, object]] = {}
    manifest_targets: dict[str, dict[str, object]] = {}
    try:
        for name, folder in targets.items():
            wheels = []
            for wheel in sorted(folder.glob("*.whl")):
                path = f"wheels/{wheel.name}"
                size, digest = file_digest(wheel)
                if path in files and files[path]["sha256"] != digest:
                    raise BundleError(f"{wheel}: differs from the wheel of the same name in another target folder")
                if path not in files:
                    shutil.copyfile(wheel, building / path)
                    files[path] = {"size": size, "sha256": digest}
                wheels.append(path)
            constraints = f"targets/{name}/{CONSTRAINTS}"
            (building / constraints).parent.mkdir(parents=True)
            shutil.copyfile(folder / CONSTRAINTS, building / constraints)
            size, digest = file_digest(building / constraints)
            files[constraints] = {"size": size, "sha256": digest}
            manifest_targets[name] = {"constraints": constraints, "wheels": wheels}
        issued = int(time.time() if now is None else now)
        manifest = {
            "format": FORMAT,
            "product": PRODUCT,
            "version": spec.version,
            "min_from": spec.min_from,
            "allow_downgrade": spec.allow_downgrade,
            "rollback_safe": spec.rollback_safe,
            "issued": issued,
            "expires": issued + spec.valid_days * DAY_S,
            "targets": manifest_targets,
            "files": files,
        }
        if spec.notes:
            manifest["notes"] = spec.notes
        (building / MANIFEST_FILE).write_bytes(seal_release(manifest, private_key))
        building.rename(out)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return out

"""Build a release bundle from a wheelhouse (`make wheelhouse`) and sign its manifest with the release key.

The bundle is a directory another tool can serve as static files (docs/updates.md): every wheel
once under ``wheels/`` (a pure-Python wheel is shared by every target), one hash-pinned
``targets/<target>/constraints.txt`` per target, and ``manifest.cose``. It is written beside its
final name and renamed into place, so a bundle directory is either whole or absent.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.protocol.release import seal_release
from edge.update.delta import make_delta
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


def _deltas(building: Path, files: dict[str, dict[str, object]], delta_from: list[Path]) -> dict[str, list[dict[str, object]]]:
    """For each wheel of the new bundle that an older bundle holds in another version: a delta from that one (docs/updates.md, "Deltas")."""
    deltas: dict[str, list[dict[str, object]]] = {}
    for old_bundle in delta_from:
        if not (old_bundle / "wheels").is_dir():
            raise BundleError(f"--delta-from {old_bundle}: not a release bundle (no wheels/ in it)")
        old_wheels = {wheel.name.split("-")[0]: wheel for wheel in (old_bundle / "wheels").glob("*.whl")}
        for path, entry in files.items():
            name = Path(path).name
            old = old_wheels.get(name.split("-")[0])
            if not path.startswith("wheels/") or old is None:
                continue
            base = old.read_bytes()
            base_digest = hashlib.sha256(base).digest()
            if base_digest == entry["sha256"]:
                continue  # the same file: a device holding it downloads nothing
            delta = f"deltas/{base_digest.hex()[:16]}/{name}.zst"
            (building / delta).parent.mkdir(parents=True, exist_ok=True)
            (building / delta).write_bytes(make_delta(base, (building / path).read_bytes()))
            size, digest = file_digest(building / delta)
            deltas.setdefault(path, []).append({"from": base_digest, "path": delta, "size": size, "sha256": digest})
    return deltas


def build_bundle(
    wheelhouse: Path, out: Path, spec: ReleaseSpec, private_key: Ed25519PrivateKey, *, now: float | None = None, delta_from: list[Path] | None = None,
    rollover: tuple[bytes, ...] = (),
) -> Path:
    """Write the bundle of ``spec.version`` from ``wheelhouse`` into the new directory ``out``; returns ``out``.

    ``delta_from`` names bundles of releases devices may run: each changed wheel also gets a delta from theirs.
    ``rollover`` is the chain of release key rollovers leading to ``private_key`` (edge.update.rollover), kept
    beside the manifest as rollover.cbor so devices installed with an older key follow it.
    """
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
        deltas = _deltas(building, files, delta_from or [])
        if deltas:
            manifest["deltas"] = deltas
        (building / MANIFEST_FILE).write_bytes(seal_release(manifest, private_key))
        if rollover:
            (building / "rollover.cbor").write_bytes(cbor2.dumps(list(rollover)))
        building.rename(out)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    return out

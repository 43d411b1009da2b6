"""What a release is (its signed manifest) and every check of a release bundle, each refusal with one reason.

A bundle is a directory (docs/updates.md): ``manifest.cose`` (the manifest, COSE_Sign1, signed by
the city's release key), ``wheels/*.whl`` and ``targets/<target>/constraints.txt``. The checks run
in a fixed order, so every implementation names the same reason for the same bundle: signature
and key, the manifest's fields, expiry, platform, the version against the installed one, then the
size and SHA-256 of every file the target installs.
"""

from __future__ import annotations

import hashlib
import platform
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.protocol.errors import ProtocolError, show
from edge.protocol.keys import key_id
from edge.protocol.release import open_release, release_key_id

__all__ = [
    "FORMAT",
    "MANIFEST_FILE",
    "PRODUCT",
    "REASONS",
    "Delta",
    "FileEntry",
    "Manifest",
    "Refused",
    "check_bundle",
    "check_files",
    "check_for_device",
    "file_digest",
    "parse_manifest",
    "parse_version",
    "read_manifest",
    "this_target",
]

FORMAT = 1
PRODUCT = "ocn-edge"
MANIFEST_FILE = "manifest.cose"
# Why a bundle is refused, in the order the checks run (docs/updates.md, "Checks and reasons").
REASONS = {
    "missing": "the manifest or a file it names is not in the bundle",
    "wrong_key": "the manifest is signed by another key than the release key given",
    "bad_signature": "the manifest's signature does not verify: it was changed after signing",
    "malformed": "the manifest is not a release manifest of this format",
    "expired": "the manifest's expiry has passed",
    "other_platform": "the release has no build for this device's machine and Python",
    "too_old": "the installed version is below the release's min_from",
    "downgrade": "the release is older than (or the same as) the installed version and does not allow a downgrade",
    "needs_approval": "the release says it cannot be rolled back and was not explicitly approved",
    "rolled_back": "this version failed its probation on this device and was rolled back; a newer release is needed",
    "truncated": "a file is shorter than the manifest says (an interrupted download)",
    "tampered": "a file's size or SHA-256 differs from the manifest",
    "no_space": "the disk is full",
    "no_probation": "the installer cannot read the gateway's /status on loopback to judge a new version ([local_api] off or beyond loopback)",
}
_VERSION_RE = re.compile(r"^(0|[1-9][0-9]{0,8})(\.(0|[1-9][0-9]{0,8})){0,3}$")
_PATH_RE = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]*(/[A-Za-z0-9_+-][A-Za-z0-9._+-]*)*$")
_TARGET_RE = re.compile(r"^[a-z0-9_]+-cp[0-9]{2,3}$")
_CHUNK = 1 << 20


class Refused(Exception):
    """A bundle that must not be installed: ``reason`` is a key of REASONS, the message says which file, field or value."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason


def parse_version(text: object, *, field: str = "version") -> tuple[int, ...]:
    """A release version (1 to 4 dot-separated whole numbers, "1.4.0") as a tuple that compares in release order."""
    if type(text) is not str or not _VERSION_RE.match(text):
        raise Refused("malformed", f'manifest {field} = {show(text)}: expected 1 to 4 dot-separated whole numbers, e.g. "1.4.0"')
    return tuple(int(part) for part in text.split("."))


def this_target() -> str:
    """The target this Python runs as (`uname -m`, then the CPython tag: "aarch64-cp311"), as images/wheelhouse.py names them."""
    return f"{platform.machine()}-cp{sys.version_info.major}{sys.version_info.minor}"


@dataclass(frozen=True, slots=True)
class FileEntry:
    """One file of the bundle, by its path inside the bundle."""

    path: str
    size: int
    sha256: bytes


@dataclass(frozen=True, slots=True)
class Delta:
    """A smaller way to a file: ``patch`` rebuilds it from a file whose SHA-256 is ``base`` (docs/updates.md, "Deltas")."""

    base: bytes
    patch: FileEntry


@dataclass(frozen=True, slots=True)
class Manifest:
    """A verified manifest (docs/updates.md, "The manifest")."""

    version: str
    min_from: str
    allow_downgrade: bool
    rollback_safe: bool
    issued: int
    expires: int
    targets: Mapping[str, tuple[str, tuple[str, ...]]]  # target -> (constraints path, wheel paths)
    files: Mapping[str, FileEntry]
    notes: str = ""
    deltas: Mapping[str, tuple[Delta, ...]] = field(default_factory=dict)  # path -> ways to rebuild it

    def files_for(self, target: str) -> list[FileEntry]:
        """What a device of ``target`` installs: its constraints file and its wheels."""
        constraints, wheels = self.targets[target]
        return [self.files[constraints], *(self.files[path] for path in wheels)]


def _field(raw: Mapping[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = raw.get(name)
    if type(value) not in (kind if isinstance(kind, tuple) else (kind,)):
        raise Refused("malformed", f"manifest {name} = {show(value)}: expected {what}")
    return value


def _path(value: object, where: str) -> str:
    if type(value) is not str or not _PATH_RE.match(value) or len(value) > 255:
        raise Refused("malformed", f"manifest {where} {show(value)}: expected a relative path of letters, digits and ._+- (no ..)")
    return value


def parse_manifest(raw: Mapping[str, Any]) -> Manifest:
    """The manifest's fields checked one by one; a Refused("malformed") names the first bad one."""
    if raw.get("format") != FORMAT or type(raw.get("format")) is not int:
        raise Refused("malformed", f"manifest format = {show(raw.get('format'))}: this implementation reads format {FORMAT}")
    if raw.get("product") != PRODUCT:
        raise Refused("malformed", f"manifest product = {show(raw.get('product'))}: expected {PRODUCT!r}")
    version = _field(raw, "version", str, 'a release version such as "1.4.0"')
    parse_version(version)
    min_from = _field(raw, "min_from", str, "the oldest version this release upgrades from")
    parse_version(min_from, field="min_from")
    issued = _field(raw, "issued", int, "seconds since 1970 (UTC)")
    expires = _field(raw, "expires", int, "seconds since 1970 (UTC)")
    if not 0 <= issued < expires < 1 << 40:
        raise Refused("malformed", f"manifest expires = {expires}: expected after issued ({issued})")
    files: dict[str, FileEntry] = {}
    for path, entry in _field(raw, "files", dict, "a map of path to {size, sha256}").items():
        _path(path, "files key")
        if (
            not isinstance(entry, dict)
            or type(entry.get("size")) is not int
            or entry["size"] < 0
            or type(entry.get("sha256")) is not bytes
            or len(entry["sha256"]) != 32
        ):
            raise Refused("malformed", f'manifest files[{path!r}] = {show(entry)}: expected {{"size": uint, "sha256": 32 bytes}}')
        files[path] = FileEntry(path, entry["size"], entry["sha256"])
    targets: dict[str, tuple[str, tuple[str, ...]]] = {}
    for target, entry in _field(raw, "targets", dict, "a map of target to {constraints, wheels}").items():
        if type(target) is not str or not _TARGET_RE.match(target):
            raise Refused("malformed", f'manifest targets key {show(target)}: expected a machine and CPython tag such as "aarch64-cp311"')
        if not isinstance(entry, dict) or not isinstance(entry.get("wheels"), list):
            raise Refused("malformed", f'manifest targets[{target!r}] = {show(entry)}: expected {{"constraints": path, "wheels": [path]}}')
        constraints = _path(entry.get("constraints"), f"targets[{target!r}].constraints")
        wheels = tuple(_path(wheel, f"targets[{target!r}].wheels item") for wheel in entry["wheels"])
        for path in (constraints, *wheels):
            if path not in files:
                raise Refused("malformed", f"manifest targets[{target!r}] names {path!r}, which is not in files")
        targets[target] = (constraints, wheels)
    if not targets:
        raise Refused("malformed", "manifest targets is empty: a release installs on at least one target")
    notes = raw.get("notes", "")
    deltas: dict[str, tuple[Delta, ...]] = {}
    raw_deltas = raw.get("deltas", {})
    if not isinstance(raw_deltas, dict):
        raise Refused("malformed", f"manifest deltas = {show(raw_deltas)}: expected a map of path to a list of deltas")
    for path, ways in raw_deltas.items():
        if path not in files or not isinstance(ways, list):
            raise Refused("malformed", f"manifest deltas[{show(path)}]: expected a path of files and a list of deltas")
        deltas[path] = tuple(_delta(path, way) for way in ways)
    return Manifest(
        version=version,
        min_from=min_from,
        allow_downgrade=_field(raw, "allow_downgrade", bool, "true or false"),
        rollback_safe=_field(raw, "rollback_safe", bool, "true or false"),
        issued=issued,
        expires=expires,
        targets=targets,
        files=files,
        notes=notes if type(notes) is str else "",
        deltas=deltas,
    )


def _delta(path: str, way: object) -> Delta:
    if (
        not isinstance(way, dict)
        or type(way.get("from")) is not bytes
        or len(way["from"]) != 32
        or type(way.get("size")) is not int
        or way["size"] < 0
        or type(way.get("sha256")) is not bytes
        or len(way["sha256"]) != 32
    ):
        raise Refused("malformed", f'manifest deltas[{path!r}] item {show(way)}: expected {{"from": 32 bytes, "path": path, "size": uint, "sha256": 32 bytes}}')
    return Delta(way["from"], FileEntry(_path(way.get("path"), f"deltas[{path!r}] path"), way["size"], way["sha256"]))


def read_manifest(data: bytes, public_key: Ed25519PublicKey) -> Manifest:
    """The manifest in ``manifest.cose`` bytes, its signature checked with the release key; Refused otherwise."""
    try:
        raw = open_release(data, public_key)
    except ProtocolError as exc:
        if exc.reason == "bad_signature":
            try:
                signer = release_key_id(data)
            except ProtocolError:
                signer = b""
            expected = key_id(public_key).hex()
            if signer != key_id(public_key):
                raise Refused("wrong_key", f"manifest is signed by key id {signer.hex()}, not by the release key given (key id {expected})") from None
            raise Refused("bad_signature", f"manifest signature does not verify with the release key (key id {key_id(public_key).hex()})") from None
        if exc.reason == "truncated":
            raise Refused("truncated", f"manifest is cut short: {exc}") from None
        raise Refused("malformed", f"manifest is not a signed release manifest ({exc.reason}: {exc})") from None
    return parse_manifest(raw)


def check_for_device(manifest: Manifest, *, now: float, target: str, installed: str | None, approved: bool = False) -> None:
    """Whether this device may install the release: expiry, platform, version against ``installed`` (None: nothing installed)."""
    if now >= manifest.expires:
        raise Refused("expired", f"manifest of {manifest.version} expired at {manifest.expires} (now {int(now)}); ask city IT for a fresh release")
    if target not in manifest.targets:
        raise Refused("other_platform", f"release {manifest.version} is built for {', '.join(sorted(manifest.targets))}, not for this device ({target})")
    if installed is not None:
        have, want = parse_version(installed, field="installed version"), parse_version(manifest.version)
        if have < parse_version(manifest.min_from):
            raise Refused("too_old", f"release {manifest.version} upgrades from {manifest.min_from} or later; this device runs {installed}")
        if want <= have and not manifest.allow_downgrade:
            raise Refused("downgrade", f"release {manifest.version} is not newer than the installed {installed}, and its manifest does not allow a downgrade")
    if not manifest.rollback_safe and not approved:
        raise Refused(
            "needs_approval",
            f"release {manifest.version} says its state cannot be read by the version it would roll back to; install it only with explicit approval",
        )


def file_digest(path: Path) -> tuple[int, bytes]:
    """(size, SHA-256) of a file, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.digest()


def check_files(bundle: Path, entries: list[FileEntry]) -> None:
    """Every file present with the size and SHA-256 the manifest gives; Refused naming the first that is not."""
    for entry in entries:
        path = bundle / entry.path
        try:
            size, digest = file_digest(path)
        except FileNotFoundError:
            raise Refused("missing", f"{path}: named in the manifest, not in the bundle") from None
        if size < entry.size:
            raise Refused("truncated", f"{path}: {size} bytes of {entry.size} (an interrupted copy or download)")
        if size != entry.size or digest != entry.sha256:
            raise Refused("tampered", f"{path}: SHA-256 {digest.hex()[:16]}…, the manifest says {entry.sha256.hex()[:16]}… ({entry.size} bytes)")


def check_bundle(
    bundle: Path,
    public_key: Ed25519PublicKey,
    *,
    now: float,
    target: str | None = None,
    installed: str | None = None,
    approved: bool = False,
) -> Manifest:
    """Every check of a bundle directory, in the documented order; the verified manifest, or Refused.

    ``target`` None checks every target's files and no platform; ``installed`` None checks no version.
    """
    try:
        data = (bundle / MANIFEST_FILE).read_bytes()
    except FileNotFoundError:
        raise Refused("missing", f"{bundle / MANIFEST_FILE}: no manifest (is {bundle} a release bundle?)") from None
    manifest = read_manifest(data, public_key)
    if target is None:
        if now >= manifest.expires:
            raise Refused("expired", f"manifest of {manifest.version} expired at {manifest.expires} (now {int(now)})")
        check_files(bundle, [*manifest.files.values(), *(way.patch for ways in manifest.deltas.values() for way in ways)])
    else:
        check_for_device(manifest, now=now, target=target, installed=installed, approved=approved)
        check_files(bundle, manifest.files_for(target))
    return manifest

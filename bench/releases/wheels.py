"""Wheelhouses of OCN Edge releases, made offline and in seconds from what this venv already has.

Used by the update tests (tests/update) and the soak (bench/soak), which both install and update
real releases.

`make wheelhouse` downloads 14 MB from PyPI; this instead repacks the runtime dependencies
installed in the test venv into wheels (the files their RECORD lists, with their WHEEL tags), and
builds OCN Edge's own wheel once from the working tree, then gives it other versions (1.0.0, 2.0.0,
...) by rewriting its version in the wheel. A target folder then holds those wheels and a
hash-pinned constraints.txt, exactly as images/wheelhouse.py lays one out.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import re
import shutil
import sys
import zipfile
from pathlib import Path
from types import ModuleType

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from edge.update.manifest import this_target

REPO = Path(__file__).resolve().parents[2]
__all__ = ["build_own_wheel", "requirements", "reversioned", "runtime_wheels", "target_folder", "write_wheel"]
TARGET = this_target()


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def write_wheel(folder: Path, filename: str, files: dict[str, bytes]) -> Path:
    """A wheel named ``filename`` holding ``files`` (its dist-info included); RECORD is written here."""
    distinfo = next(name.split("/")[0] for name in files if name.split("/")[0].endswith(".dist-info"))
    record = [_record_line(name, data) for name, data in files.items() if not name.endswith("/RECORD")]
    record.append(f"{distinfo}/RECORD,,")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as wheel:
        for name, data in files.items():
            if not name.endswith("/RECORD"):
                info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
                info.external_attr = 0o644 << 16
                wheel.writestr(info, data, zipfile.ZIP_DEFLATED)
        wheel.writestr(zipfile.ZipInfo(f"{distinfo}/RECORD", date_time=(1980, 1, 1, 0, 0, 0)), "\n".join(record) + "\n")
    return path


def _repack(dist: importlib.metadata.Distribution, folder: Path) -> Path:
    """An installed distribution back as a wheel: its files as RECORD lists them, scripts and bytecode left out."""
    files: dict[str, bytes] = {}
    for entry in dist.files or ():
        name = entry.as_posix()
        if name.startswith("..") or "__pycache__" in name or name.endswith((".pyc", "/RECORD", "/INSTALLER", "/REQUESTED", "/direct_url.json")):
            continue
        files[name] = Path(str(dist.locate_file(entry))).read_bytes()
    distinfo = next(name.split("/")[0] for name in files if name.endswith(".dist-info/METADATA"))
    tags = [tag.split("-") for tag in re.findall(r"^Tag: (\S+)$", files[f"{distinfo}/WHEEL"].decode(), re.M)]
    assert tags, f"{distinfo}: no Tag in WHEEL"
    # The compressed tag set of the file name (PEP 425): py2.py3-none-any for two Tag lines.
    compressed = "-".join(".".join(dict.fromkeys(tag[part] for tag in tags)) for part in range(3))
    stem = distinfo.removesuffix(".dist-info")
    return write_wheel(folder, f"{stem}-{compressed}.whl", files)


def requirements(wheel: Path) -> list[str]:
    """The Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        metadata = next(name for name in archive.namelist() if name.endswith(".dist-info/METADATA"))
        text = archive.read(metadata).decode()
    return re.findall(r"^Requires-Dist: (.+)$", text, re.M)


def runtime_wheels(folder: Path, requires: list[str]) -> list[Path]:
    """Every runtime dependency in ``requires`` (and theirs) installed in this venv, as wheels in ``folder``."""
    environment = {key: str(value) for key, value in default_environment().items()}
    seen: set[str] = set()
    wanted = [Requirement(text) for text in requires]
    wheels = []
    while wanted:
        requirement = wanted.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or (requirement.marker and not requirement.marker.evaluate({**environment, "extra": ""})):
            continue
        seen.add(name)
        dist = importlib.metadata.distribution(name)
        wheels.append(_repack(dist, folder))
        wanted.extend(Requirement(text) for text in dist.requires or [])
    return wheels


def _load_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("images_wheelhouse_for_updates", REPO / "images" / "wheelhouse.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def build_own_wheel(folder: Path) -> Path:
    """OCN Edge's wheel built from this working tree, offline (as `make wheelhouse` builds it)."""
    wheel: Path = _load_builder().build_project_wheel(folder)
    return wheel


def reversioned(base: Path, folder: Path, version: str, *, patches: dict[str, tuple[str, str]] | None = None) -> Path:
    """OCN Edge's wheel ``base`` as version ``version``; ``patches`` replaces text in named files (old, new)."""
    old = base.name.split("-")[1]
    files: dict[str, bytes] = {}
    with zipfile.ZipFile(base) as wheel:
        for name in wheel.namelist():
            data = wheel.read(name)
            new_name = name.replace(f"ocn_edge-{old}.dist-info", f"ocn_edge-{version}.dist-info")
            if name.endswith(".dist-info/METADATA"):
                data = data.replace(f"\nVersion: {old}\n".encode(), f"\nVersion: {version}\n".encode())
            if name == "edge/__init__.py":
                data = data.replace(f'__version__ = "{old}"'.encode(), f'__version__ = "{version}"'.encode())
            for path, (before, after) in (patches or {}).items():
                if name == path:
                    assert before.encode() in data, f"{path}: {before!r} not found"
                    data = data.replace(before.encode(), after.encode())
            files[new_name] = data
    return write_wheel(folder, base.name.replace(f"-{old}-", f"-{version}-"), files)


def target_folder(root: Path, wheels: list[Path], *, target: str = TARGET) -> Path:
    """``root/<target>/``: the wheels and a constraints.txt pinning each by version and SHA-256."""
    folder = root / target
    folder.mkdir(parents=True)
    lines = []
    for wheel in wheels:
        copy = folder / wheel.name
        shutil.copyfile(wheel, copy)
        name, version = wheel.name.split("-")[:2]
        digest = hashlib.sha256(copy.read_bytes()).hexdigest()
        lines.append(f"{canonicalize_name(name)}=={version} --hash=sha256:{digest}")
    (folder / "constraints.txt").write_text("# hash-pinned, as images/wheelhouse.py writes it\n" + "\n".join(sorted(lines)) + "\n")
    return folder

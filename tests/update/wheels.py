"""Tiny wheels for the update tests that check bundles without installing them.

The real wheelhouses (OCN Edge's own wheel at several versions, its dependencies repacked from
this venv) are built by bench/releases, which the soak shares.
"""

from __future__ import annotations

from pathlib import Path

from bench.releases.wheels import write_wheel


def tiny_wheel(folder: Path, name: str, version: str, *, text: str = "") -> Path:
    """A pure-Python wheel of one module: enough for the checks that never install."""
    distinfo = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"__version__ = {version!r}\n{text}".encode(),
        f"{distinfo}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{distinfo}/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    return write_wheel(folder, f"{name}-{version}-py3-none-any.whl", files)

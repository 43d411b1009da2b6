"""The shared real-sensor datasets, for tests: found beside the repository (or at $OCN_DATASETS)."""

from __future__ import annotations

from pathlib import Path

from hilsim.models import datasets_dir
from tests.helpers.tools import missing

__all__ = ["dataset"]


def dataset(name: str) -> Path:
    """The path of one shared dataset file; skips the test (fails under OCN_REQUIRE_ALL=1) when it is absent."""
    directory = datasets_dir()
    if directory is None:
        missing(f"needs the shared dataset {name} (set OCN_DATASETS to the directory of the shared datasets)")
    path = directory / name
    if not path.exists():
        missing(f"needs the shared dataset {name} in {directory} (set OCN_DATASETS to where it is)")
    return path

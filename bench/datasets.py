"""Where the benchmarks read the shared real-sensor recordings: $OCN_DATASETS, else ../shared/datasets beside the checkout."""

from __future__ import annotations

from pathlib import Path

from hilsim.models import datasets_dir

__all__ = ["dataset", "datasets"]


def datasets() -> Path:
    """The directory of the shared datasets; exits with what to set when there is none to look in."""
    found = datasets_dir()
    if found is None:
        raise SystemExit("the benchmarks read the shared datasets: set OCN_DATASETS to their directory (../shared/datasets beside a checkout)")
    return found


def dataset(name: str) -> Path:
    """The path of one shared dataset file."""
    return datasets() / name

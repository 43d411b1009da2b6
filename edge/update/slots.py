"""The A/B layout under /opt/ocn-edge: slots ``a`` and ``b``, and the symlinks ``current`` and ``previous`` switched atomically.

A symlink is switched by creating the new link under a temporary name and renaming it over the
old one (rename(2) replaces it in one step), then fsyncing the directory so the rename itself is
on disk: after a power cut ``current`` names the old slot or the new one, never nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SLOTS", "CURRENT", "PREVIOUS", "fsync_dir", "link_target", "other_slot", "point", "slot_version"]

SLOTS = ("a", "b")
CURRENT, PREVIOUS = "current", "previous"


def fsync_dir(path: Path) -> None:
    """Make the entries of a directory (a rename, a new name) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def link_target(opt: Path, name: str) -> str | None:
    """The slot a link in ``opt`` names ("a" or "b"), or None if there is no such link."""
    try:
        target = os.readlink(opt / name)
    except (FileNotFoundError, OSError):
        return None
    return target if target in SLOTS else None


def other_slot(slot: str | None) -> str:
    """The slot an update builds: the one ``current`` does not name (``a`` if none is current)."""
    return "b" if slot == "a" else "a"


def point(opt: Path, name: str, slot: str) -> None:
    """Make ``opt/name`` a symlink to ``slot`` in one rename, durable on return."""
    assert slot in SLOTS, slot
    tmp = opt / f".{name}.new"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(slot, tmp)
    os.replace(tmp, opt / name)
    fsync_dir(opt)


def slot_version(opt: Path, slot: str) -> str | None:
    """The version of OCN Edge installed in a slot, from the wheel it was built from; None for an empty slot."""
    wheels = sorted((opt / slot / "release" / "wheels").glob("ocn_edge-*.whl"))
    if wheels:
        return wheels[0].name.split("-")[1]
    dist = sorted((opt / slot / "lib").glob("python3*/site-packages/ocn_edge-*.dist-info"))
    return dist[0].name.removesuffix(".dist-info").split("-")[1] if dist else None

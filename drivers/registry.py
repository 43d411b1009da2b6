"""Finds drivers by name through the ``ocn_edge.drivers`` entry-point group."""

from __future__ import annotations

import importlib
import os
import re
import sys
from typing import TYPE_CHECKING

from drivers.sdk import Driver

if TYPE_CHECKING:
    from importlib.metadata import EntryPoint

__all__ = ["GROUP", "UnknownDriver", "available", "load_driver"]

GROUP = "ocn_edge.drivers"


class UnknownDriver(LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no driver named {name!r} is installed (installed: {', '.join(known) or 'none'})")
        self.name = name
        self.known = known


def available() -> dict[str, EntryPoint]:
    """Installed driver names mapped to their (not yet loaded) entry points."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=GROUP)}


# A driver found once is kept: the config check and the start ask once per device, and each scan reads every
# installed distribution's metadata (20 meters made ~2,000 file reads at start). A name not found is looked
# up again, so a driver package installed while the gateway runs is found at its next reload.
_found: dict[str, type[Driver]] = {}


def load_driver(name: str) -> type[Driver]:
    if name in _found:
        return _found[name]
    target = _declared().get(name)
    if target is not None:
        cls = _load(target)
    else:  # not in a distribution installed as a directory: importlib.metadata also looks in zips and other finders
        eps = available()
        if name not in eps:
            raise UnknownDriver(name, sorted(eps))
        cls = eps[name].load()
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise TypeError(f"entry point {name!r} in group {GROUP} is {cls!r}, not a drivers.sdk.Driver subclass")
    _found[name] = cls
    return cls


# `ocn-edge run` finds its drivers without importing importlib.metadata, which brings zipfile, csv, email and
# importlib.resources with it: ~0.8 MiB a gateway would keep resident for months to read a few text files once
# (issue 17's RssAnon target; bench.gateway_load).  What it reads is what importlib.metadata reads for a
# distribution installed as a directory on sys.path, the way pip installs every wheel.
_DIST = re.compile(r"^([^-]+)(?:-.*)?\.(?:dist-info|egg-info)$")
_TARGET = re.compile(r"^(?P<module>[\w.]+)\s*(?::\s*(?P<attr>[\w.]+)\s*)?(?:\[.*\]\s*)?$")


def _declared() -> dict[str, str]:
    """Driver name -> ``module:attr`` as the installed distributions' ``entry_points.txt`` declare them.

    As importlib.metadata does: the first distribution of a name on sys.path counts, and of two
    distributions declaring one driver name the later one wins.
    """
    seen: set[str] = set()
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:  # a zip, or a directory that is gone: load_driver falls back to importlib.metadata
            continue
        for directory in names:
            match = _DIST.match(directory)
            if match is None:
                continue
            dist = re.sub(r"[-_.]+", "_", match.group(1)).lower()
            if dist in seen:
                continue
            seen.add(dist)
            try:
                with open(os.path.join(entry or ".", directory, "entry_points.txt"), encoding="utf-8") as f:
                    found.update(_group(f.read(), GROUP))
            except OSError:  # most distributions declare no entry points
                continue
    return found


def _group(text: str, group: str) -> dict[str, str]:
    """The ``name = value`` pairs of ``[group]`` in an entry_points.txt."""
    pairs: dict[str, str] = {}
    section = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1].strip()
        elif section == group and "=" in line:
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


def _load(target: str) -> object:
    """What ``module:attr`` names, imported, as EntryPoint.load does."""
    match = _TARGET.match(target)
    if match is None:
        raise TypeError(f"entry point {target!r} in group {GROUP} is not of the form module:attribute")
    value: object = importlib.import_module(match.group("module"))
    for part in (match.group("attr") or "").split("."):
        if part:
            value = getattr(value, part)
    return value

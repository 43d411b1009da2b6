"""Finds drivers by name through the ``ocn_edge.drivers`` entry-point group."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

from drivers.sdk import Driver

__all__ = ["GROUP", "UnknownDriver", "available", "load_driver"]

GROUP = "ocn_edge.drivers"


class UnknownDriver(LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no driver named {name!r} is installed (installed: {', '.join(known) or 'none'})")
        self.name = name
        self.known = known


def available() -> dict[str, EntryPoint]:
    """Installed driver names mapped to their (not yet loaded) entry points."""
    return {ep.name: ep for ep in entry_points(group=GROUP)}


# A driver found once is kept: the config check and the start ask once per device, and each scan reads every
# installed distribution's metadata (20 meters made ~2,000 file reads at start). A name not found is looked
# up again, so a driver package installed while the gateway runs is found at its next reload.
_found: dict[str, type[Driver]] = {}


def load_driver(name: str) -> type[Driver]:
    if name in _found:
        return _found[name]
    eps = available()
    if name not in eps:
        raise UnknownDriver(name, sorted(eps))
    cls = eps[name].load()
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise TypeError(f"entry point {name!r} in group {GROUP} is {cls!r}, not a drivers.sdk.Driver subclass")
    _found[name] = cls
    return cls

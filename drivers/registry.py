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


def load_driver(name: str) -> type[Driver]:
    eps = available()
    if name not in eps:
        raise UnknownDriver(name, sorted(eps))
    cls = eps[name].load()
    if not (isinstance(cls, type) and issubclass(cls, Driver)):
        raise TypeError(f"entry point {name!r} in group {GROUP} is {cls!r}, not a drivers.sdk.Driver subclass")
    return cls

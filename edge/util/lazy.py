"""A package's names loaded from their modules when first asked for (PEP 562), instead of all at its import.

Every module the gateway imports stays resident for its life (issue 17): a package that re-exports the names of
several modules (``drivers.buses``, ``edge.localapi``) imports each of them only when one of its names is first
used, and keeps the name, so the next use is a plain attribute.  ``edge.protocol`` has its own copy: it imports
nothing of ours outside itself.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping

__all__ = ["lazy_names"]


def lazy_names(package: str, homes: Mapping[str, str]) -> Callable[[str], object]:
    """The ``__getattr__`` of module ``package``: ``homes`` maps each lazy name to the module that defines it.

    The import is an ``__import__``, not ``importlib.import_module``: `python -X importtime` (tests/guardrails)
    sees only imports made this way.  Typed ``object``: a name the module's TYPE_CHECKING imports do not declare is
    an error to the type checker, not ``Any``.
    """
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> object:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        __import__(home)
        value = getattr(sys.modules[home], name)
        namespace[name] = value  # asked once: from now on a plain attribute
        return value

    return __getattr__

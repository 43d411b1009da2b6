"""Modules the gateway needs only once it runs (aiohttp above all), imported once `ocn-edge run` has its first reading.

aiohttp takes ~0.2 s of CPU to import (it loads the system's CA store at import), and issue 17 measures start-up
to the first reading.  `ocn-edge run` holds loads back (`hold_back`) until its first reading is in (edge/service.py);
they are then imported on the loop's own thread, one after the other.  Not in a worker thread: there the same imports
kept ~0.3 MiB more resident (the thread's own malloc arena and stack), and two threads importing parts of aiohttp at
once met its circular imports half done ("cannot import name ... from partially initialized module").
"""

from __future__ import annotations

import asyncio
import importlib
from types import ModuleType

__all__ = ["Hold", "hold_back", "load_module"]

_gate: asyncio.Event | None = None  # set while loads are held back
_asked: list[str] = []  # what was asked for meanwhile


class Hold:
    """Loads held back from `hold_back` until `release`."""

    def __init__(self) -> None:
        self._gate = asyncio.Event()

    def release(self, *, load: bool = True) -> None:
        """Let waiting loads go: first importing what was asked for meanwhile, one after the other, unless ``load``
        is false (a gateway stopping before its first reading does not need them), so what `ocn-edge run` does
        next (gc.freeze, edge/commands/gateway.py) finds them loaded."""
        global _gate
        if _gate is self._gate:
            _gate = None
            while _asked:
                name = _asked.pop(0)
                if load:
                    importlib.import_module(name)
        self._gate.set()


def hold_back() -> Hold:
    """Make `load_module` wait until the hold is released (nothing waits without a hold)."""
    global _gate
    hold = Hold()
    _gate = hold._gate
    return hold


async def load_module(name: str) -> ModuleType:
    """``name``, imported on the loop's thread once loads are no longer held back."""
    if _gate is not None:
        _asked.append(name)
        await _gate.wait()
    return importlib.import_module(name)

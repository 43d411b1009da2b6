"""Modules the gateway needs only once it runs (aiohttp above all), loaded in a worker thread while the loop goes on.

One load at a time: two threads importing parts of one package at once can meet its circular
imports half done ("cannot import name ... from partially initialized module"), so every load
goes through one lock, and a module is used only once its load has returned.
"""

from __future__ import annotations

import asyncio
import importlib
import threading
from types import ModuleType

__all__ = ["load_module"]

_one_at_a_time = threading.Lock()


def _import(name: str) -> ModuleType:
    with _one_at_a_time:
        return importlib.import_module(name)


async def load_module(name: str) -> ModuleType:
    """``name``, imported in a worker thread (at once if an earlier load brought it in)."""
    return await asyncio.to_thread(_import, name)

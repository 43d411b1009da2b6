"""The one place that decides whether a test needing an optional system tool skips or fails.

Without OCN_REQUIRE_ALL=1 a missing tool skips the test with the reason; with it
(CI sets it) the test fails, so a missing install step cannot hide behind a skip.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from typing import NoReturn

import pytest

__all__ = ["require_tool", "require_postgres", "missing"]


def _required() -> bool:
    return os.environ.get("OCN_REQUIRE_ALL") == "1"


def missing(reason: str) -> NoReturn:
    """Skip (or fail, under OCN_REQUIRE_ALL=1) because something the test needs is absent."""
    if _required():
        pytest.fail(f"{reason} (OCN_REQUIRE_ALL=1: optional tools are required)", pytrace=False)
    pytest.skip(reason)


def require_tool(name: str, *, package: str | None = None) -> str:
    """Return the path of executable `name`, or skip/fail naming the Debian package to install."""
    path = shutil.which(name)
    if path is None:
        missing(f"needs `{name}` (apt-get install {package or name})")
    return path


def require_postgres() -> str:
    """Return a PostgreSQL DSN that answers, or skip/fail saying how to provide one."""
    dsn = os.environ.get("OCN_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    if importlib.util.find_spec("asyncpg") is None:
        missing("needs asyncpg (pip install 'ocn-edge[postgres]')")
    import socket

    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1.0):
            pass
    except OSError:
        missing("needs PostgreSQL on 127.0.0.1:5432 (database `test`, trust auth)")
    return dsn

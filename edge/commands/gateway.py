"""Sub-commands that run or check a gateway: `check`, `run`, `demo`."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Registered as the foundation lands; see edge/runtime.py."""

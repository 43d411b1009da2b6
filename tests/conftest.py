"""Fixtures the whole suite shares."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


@pytest.fixture
def pty_port() -> Iterator[str]:
    """A serial port nobody answers on: the slave side of a real pseudo-terminal (tests of check, ports, read and scan)."""
    controller, worker = os.openpty()
    try:
        yield os.ttyname(worker)
    finally:
        os.close(worker)
        os.close(controller)

"""Fixtures the whole suite shares."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """The root logger as each test found it: a command run in process sets up logging on the stream it
    saw (pytest's capture of that test), which is closed by the next test, whose log lines would then fail."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):  # pytest's own capture handlers (subclasses) come and go by themselves
        if type(handler) is logging.StreamHandler and handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


@pytest.fixture
def pty_port() -> Iterator[str]:
    """A serial port nobody answers on: the slave side of a real pseudo-terminal (tests of check, ports, read and scan)."""
    controller, worker = os.openpty()
    try:
        yield os.ttyname(worker)
    finally:
        os.close(worker)
        os.close(controller)

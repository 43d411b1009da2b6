"""Structured logging: one line per event on stdout, `key=value` pairs that journald keeps as is."""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any, TextIO

__all__ = ["setup_logging", "LogfmtFormatter", "LEVELS"]

LEVELS = ("debug", "info", "warning", "error")

_STANDARD_ATTRS = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


def _quote(value: Any) -> str:
    text = str(value)
    if text and all(c.isalnum() or c in "-_./:@+,%" for c in text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class LogfmtFormatter(logging.Formatter):
    """`ts=2026-11-27T03:00:00.123Z level=warning logger=ocn.runtime msg="device failed" device=pm-1`.

    Extra fields passed as ``logger.info("...", extra={"device": "pm-1"})`` become
    pairs of their own, so logs can be filtered without parsing sentences.
    """

    def __init__(self, *, timestamps: bool = True) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if self.timestamps:
            t = time.gmtime(record.created)
            parts.append(f"ts={time.strftime('%Y-%m-%dT%H:%M:%S', t)}.{int(record.msecs):03d}Z")
        parts.append(f"level={record.levelname.lower()}")
        parts.append(f"logger={record.name}")
        parts.append(f"msg={_quote(record.getMessage())}")
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                parts.append(f"{key}={_quote(value)}")
        if record.exc_info:
            parts.append(f"error={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup_logging(level: str = "info", *, stream: TextIO | None = None, timestamps: bool | None = None) -> None:
    """Send every `ocn.*` logger to one stream, one line per event.

    Under systemd (JOURNAL_STREAM set) journald adds its own timestamps, so ours are left out.
    """
    if timestamps is None:
        timestamps = "JOURNAL_STREAM" not in os.environ
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(LogfmtFormatter(timestamps=timestamps))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party libraries are chatty at debug; keep them at warning unless asked.
    for noisy in ("pymodbus", "aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

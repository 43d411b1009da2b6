"""Structured logging: one line per event on stdout, `key=value` pairs (or JSON) that journald keeps as is."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, TextIO

__all__ = ["LEVELS", "LOG_FORMATS", "JsonFormatter", "LogfmtFormatter", "is_journal", "priority", "setup_logging"]

LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("logfmt", "json")

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


# syslog priorities (RFC 5424 severity) that journald reads from a "<N>" line prefix.
_PRIORITIES = ((logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


def priority(levelno: int) -> int:
    """The syslog priority of a logging level: 3 err (and critical), 4 warning, 6 info, 7 debug."""
    for threshold, prio in _PRIORITIES:
        if levelno >= threshold:
            return prio
    return 7


class JsonFormatter(logging.Formatter):
    """One JSON object per line (``--log-format json``) with the same fields as the logfmt lines, for log shippers."""

    def __init__(self, *, timestamps: bool = True) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {}
        if self.timestamps:
            t = time.gmtime(record.created)
            out["ts"] = f"{time.strftime('%Y-%m-%dT%H:%M:%S', t)}.{int(record.msecs):03d}Z"
        out["level"] = record.levelname.lower()
        out["logger"] = record.name
        out["msg"] = record.getMessage()
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_") and key not in out:
                out[key] = value if isinstance(value, int | float | bool | type(None)) else str(value)
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class _JournalPrefix(logging.Formatter):
    """Puts ``<N>`` before each line so journald files it at its priority (``journalctl -p err`` finds errors)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return f"<{priority(record.levelno)}>{self.inner.format(record)}"


def is_journal(stream: TextIO) -> bool:
    """Whether ``stream`` is connected to journald: systemd names that connection in JOURNAL_STREAM (device:inode)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    if not expected:
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return expected == f"{st.st_dev}:{st.st_ino}"


def setup_logging(level: str = "info", *, stream: TextIO | None = None, timestamps: bool | None = None,
                  fmt: str = "logfmt", journal: bool | None = None) -> None:
    """Send every `ocn.*` logger to one stream, one line per event, as logfmt or (``fmt="json"``) JSON.

    Under systemd (JOURNAL_STREAM names the stream) journald adds its own timestamps, so ours are
    left out, and each line starts with its syslog priority; ``journal`` overrides the detection.
    """
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(LOG_FORMATS)}")
    out = stream or sys.stdout
    if journal is None:
        journal = is_journal(out)
    if timestamps is None:
        timestamps = not journal and "JOURNAL_STREAM" not in os.environ
    formatter: logging.Formatter = JsonFormatter(timestamps=timestamps) if fmt == "json" else LogfmtFormatter(timestamps=timestamps)
    if journal:
        formatter = _JournalPrefix(formatter)
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Third-party libraries are chatty at debug; keep them at warning unless asked.  pymodbus is not
    # among them: drivers.modbus.adapter cuts it off and says what it means in our own words.
    for noisy in ("aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))

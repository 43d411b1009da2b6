"""Structured logging: one line per event on stdout, `key=value` pairs (or JSON) that journald keeps as is."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

__all__ = ["DRIVER_LOGGER", "LEVELS", "LOGGERS", "LOG_FORMATS", "JsonFormatter", "LogfmtFormatter", "apply_levels", "is_journal", "logger_problem",
           "pin_levels", "priority", "set_logger_levels", "setup_logging"]

LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("logfmt", "json")

# The gateway's loggers, by the name each of its lines carries (``logger=ocn.bus``): what ``[gateway]
# log_levels`` and ``ocn-edge run --log-level NAME=LEVEL`` may set apart from the rest.  A level set on one
# holds for the loggers under it too: ``ocn.driver`` for every device's driver, ``ocn.driver.<device>`` for
# one device's.  tests/guardrails/test_loggers.py keeps this list and the code's loggers the same.
DRIVER_LOGGER = "ocn.driver"
LOGGERS: dict[str, str] = {
    "ocn.runtime": "the gateway's start and stop, its devices started, failing and restarted, reloads",
    "ocn.bus": "serial and Modbus lines: a port lost, a unit that stops answering and answers again; "
               "at debug, each failure of a unit said once already",
    "ocn.modbus.frames": "at debug, every Modbus frame sent and every piece of bytes received, as hex",
    DRIVER_LOGGER: "the devices' drivers; ocn.driver.<device name> is one device's",
    "ocn.privacy": "the privacy stage: readings a rule could not take, the differential-privacy budget",
    "ocn.batcher": "sealing readings into batches and handing them to the spool",
    "ocn.spool": "the spool on disk: full, its quota, batches set aside",
    "ocn.uplink": "the link to the hub (HTTP or MQTT): batches delivered, refused and retried, status reports",
    "ocn.clock": "holding the start until the clock is set",
    "ocn.commissioning": "a technician's one-off reads and bus scans through the running gateway",
    "ocn.desired": "the hub's desired config and policy: verified, applied or refused",
    "ocn.localapi": "the local API",
    "ocn.notice": "the public transparency notice and its publication to the hub",
    "ocn.notify": "systemd readiness and watchdog notifications",
    "ocn.update": "software updates: download, install, probation and rollback",
    "ocn.demo": "make demo's own lines",
}
_NOISY = ("aiohttp.access", "asyncio")  # third-party loggers kept at warning at least (setup_logging)
_DEVICE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")  # a device name as the config allows one

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
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


def logger_problem(name: str) -> str | None:
    """Why ``name`` is not one of the gateway's loggers (with the likeliest one meant), or None if it is."""
    if name in LOGGERS:
        return None
    device = name.removeprefix(DRIVER_LOGGER + ".")
    if device != name and _DEVICE_NAME.fullmatch(device):
        return None
    from edge.schema import closest

    guess = closest(name, LOGGERS)
    hint = f'did you mean "{guess}"?' if guess else "the gateway's loggers are " + ", ".join(LOGGERS)
    return f"not one of the gateway's loggers; {hint} (a device's driver: {DRIVER_LOGGER}.<device name>)"


_set_by_us: set[str] = set()  # the loggers whose level set_logger_levels set last, cleared before it sets others
_pinned_root: str | None = None  # ``--log-level LEVEL`` on the command line: it outlasts a reload's config
_pinned: dict[str, str] = {}  # ``--log-level NAME=LEVEL``: likewise, for one logger


def pin_levels(root: str | None, loggers: Mapping[str, str]) -> None:
    """The levels set on the command line, which hold over the config's, also after a reload."""
    global _pinned_root
    _pinned_root = root
    _pinned.clear()
    _pinned.update(loggers)


def apply_levels(log_level: str, log_levels: Mapping[str, str]) -> None:
    """The config's ``log_level`` and ``log_levels`` in force, under what the command line pinned."""
    root = logging.getLogger()
    root.setLevel((_pinned_root or log_level).upper())
    for noisy in _NOISY:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
    set_logger_levels({**log_levels, **_pinned})


def set_logger_levels(levels: Mapping[str, str]) -> None:
    """Give each named logger its own level (and the loggers under it, unless set themselves); the loggers
    set by the previous call and not named now go back to following the gateway's level."""
    for name in _set_by_us - set(levels):
        logging.getLogger(name).setLevel(logging.NOTSET)
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level.upper())
    _set_by_us.clear()
    _set_by_us.update(levels)

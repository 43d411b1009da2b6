"""The gateway's log lines: syslog priorities for journald, JSON for log shippers, and no pymodbus text."""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.modbus.adapter import frames_log  # importing the adapter cuts pymodbus off, as in the gateway
from edge.logs import is_journal, priority, setup_logging


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_journald_lines_carry_their_syslog_priority(restore_logging: None) -> None:
    out = io.StringIO()
    setup_logging("debug", stream=out, journal=True)
    log = logging.getLogger("ocn.test")
    log.error("unit 11 has never answered")
    log.warning("port lost")
    log.info("gateway running")
    log.debug("sent frame")
    lines = _lines(out)
    assert [line[:3] for line in lines] == ["<3>", "<4>", "<6>", "<7>"]
    assert lines[0] == '<3>level=error logger=ocn.test msg="unit 11 has never answered"'  # journald stamps the time
    assert priority(logging.CRITICAL) == 3


def test_the_journal_is_recognised_by_the_stream_systemd_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with open(tmp_path / "journal", "w") as stream, open(tmp_path / "other", "w") as other:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert is_journal(stream)
        assert not is_journal(other)
        monkeypatch.delenv("JOURNAL_STREAM")
        assert not is_journal(stream)


def test_json_lines_for_log_shippers_keep_the_extra_fields(restore_logging: None) -> None:
    out = io.StringIO()
    setup_logging("info", stream=out, fmt="json", journal=False)
    logging.getLogger("ocn.runtime").warning("device failed", extra={"device": "pm-1", "retry_in_s": 1.5})
    (line,) = _lines(out)
    record = json.loads(line)
    assert record["level"] == "warning" and record["logger"] == "ocn.runtime" and record["msg"] == "device failed"
    assert record["device"] == "pm-1" and record["retry_in_s"] == 1.5 and record["ts"].endswith("Z")
    with pytest.raises(ValueError, match="log format 'xml'"):
        setup_logging("info", stream=out, fmt="xml")


def test_pymodbus_text_reaches_no_output_at_any_level_and_raw_frames_are_ours_at_debug(restore_logging: None) -> None:
    out = io.StringIO()
    setup_logging("debug", stream=out, journal=False, timestamps=False)
    library = logging.getLogger("pymodbus.logging")
    library.error("No response received after 0 retries, continue with next request")
    library.debug(">>>>> send: 0x2 0x3")
    frames_log.debug("sent frame", extra={"link": "/dev/ttyUSB0", "hex": bytes([2, 3, 0, 0]).hex(" ")})
    assert _lines(out) == ['level=debug logger=ocn.modbus.frames msg="sent frame" link=/dev/ttyUSB0 hex="02 03 00 00"']

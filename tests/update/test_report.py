"""What the gateway reports about updates: the newest outcome on record, as an optional key of the status report (OXP §7)."""

from __future__ import annotations

import json
from pathlib import Path

from edge.localapi.view import technician_view
from edge.spool import SpoolStats
from edge.statusreport import ReportFacts, status_report
from edge.update.fetch import FETCHED_FILE, INSTALLED_FILE
from edge.update.report import last_update

EMPTY = SpoolStats(
    batches=0,
    bytes=0,
    readings=0,
    oldest_age_s=None,
    max_bytes=0,
    when_full="drop_oldest",
    batches_dropped=0,
    readings_dropped=0,
    batches_quarantined=0,
    readings_quarantined=0,
    quarantine_batches=0,
    unclean_stops=0,
)


def write(state: Path, name: str, record: dict[str, object]) -> None:
    (state / "update").mkdir(parents=True, exist_ok=True)
    (state / "update" / name).write_text(json.dumps(record))


def test_no_update_tried_means_no_key(tmp_path: Path) -> None:
    assert last_update(tmp_path) is None
    report = status_report(EMPTY, device_id="pole-1", ts_ms=1, boot_epoch=1, facts=ReportFacts())
    assert "software_update" not in report


def test_the_newer_of_the_download_and_the_install_outcome_is_reported(tmp_path: Path) -> None:
    write(tmp_path, INSTALLED_FILE, {"state": "rolled_back", "version": "3.0.0", "running": "2.0.0", "reason": "no batch acknowledged", "ts_ms": 2000})
    write(tmp_path, FETCHED_FILE, {"state": "requested", "version": "3.0.0", "url": "https://hub.example/r/3.0.0", "ts_ms": 1000})
    assert last_update(tmp_path) == {"state": "rolled_back", "version": "3.0.0", "running": "2.0.0", "reason": "no batch acknowledged"}
    write(tmp_path, FETCHED_FILE, {"state": "refused", "version": "3.0.0", "reason": "rolled_back", "ts_ms": 3000})
    update = last_update(tmp_path)
    assert update == {"state": "refused", "version": "3.0.0", "reason": "rolled_back"}
    report = status_report(EMPTY, device_id="pole-1", ts_ms=1, boot_epoch=1, facts=ReportFacts(software_update=update))
    assert report["software_update"] == update


def test_the_technician_page_says_the_outcome_in_one_line() -> None:
    update = {"state": "rolled_back", "version": "3.0.0", "running": "2.0.0", "reason": "3.0.0 failed probation: no batch acknowledged by the hub within 900 s"}
    view = technician_view({"device_id": "pole-1", "software_update": update}, {}, {})
    assert view["overview"]["software_update"] == "3.0.0 rolled back: 3.0.0 failed probation: no batch acknowledged by the hub within 900 s; running 2.0.0"
    refused = {"state": "refused", "version": "4.0.0", "reason": "tampered: wheels/x.whl: SHA-256 differs"}
    assert technician_view({"software_update": refused}, {}, {})["overview"]["software_update"] == "4.0.0 refused: tampered: wheels/x.whl: SHA-256 differs"
    assert technician_view({"device_id": "pole-1"}, {}, {})["overview"]["software_update"] == ""

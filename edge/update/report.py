"""What the gateway says about software updates in its status report and on its local page: the newest outcome on record.

Two files hold it (docs/updates.md): ``update/fetched.json``, written by the gateway's download,
and ``update/installed.json``, written by the privileged installer. The newer one is reported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge.update.fetch import FETCHED_FILE, INSTALLED_FILE, update_dir

__all__ = ["REPORTED_KEYS", "last_update"]

REPORTED_KEYS = ("state", "version", "reason", "running")


def _read(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or being replaced right now (written by rename: never half)
        return {}
    return value if isinstance(value, dict) else {}


def _when(record: dict[str, Any]) -> int:
    when = record.get("ts_ms")
    return when if type(when) is int else 0


def last_update(state_dir: Path) -> dict[str, str] | None:
    """The newest update outcome as text fields (state, version, and reason or running when known); None if no update was ever tried."""
    records = [_read(update_dir(state_dir) / name) for name in (INSTALLED_FILE, FETCHED_FILE)]
    records = [record for record in records if record.get("state")]
    if not records:
        return None
    newest = max(records, key=_when)
    return {key: str(newest[key]) for key in REPORTED_KEYS if newest.get(key) not in (None, "")}

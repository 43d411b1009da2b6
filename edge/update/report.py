"""What the gateway says about software updates in its status report and on its local page: the newest outcome on record.

Two files hold it (docs/updates.md): ``update/fetched.json``, written by the gateway's download,
and ``update/installed.json``, written by the privileged installer. The newer one is reported — or a
download's refusal a full disk kept from being written, which this process remembers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from edge.update.fetch import FETCHED_FILE, INSTALLED_FILE, unwritten_outcome, update_dir

__all__ = ["REPORTED_KEYS", "last_update"]

REPORTED_KEYS = ("state", "version", "reason", "running")
MAX_REASON = 400  # the hub keeps 500 characters of it


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
    work = update_dir(state_dir)
    records = [_read(work / name) for name in (INSTALLED_FILE, FETCHED_FILE)]
    records.append(dict(unwritten_outcome(work) or {}))  # a refusal a full disk kept from fetched.json (no_space)
    records = [record for record in records if record.get("state")]
    if not records:
        return None
    newest = max(records, key=_when)
    found = {key: str(newest[key]) for key in REPORTED_KEYS if newest.get(key) not in (None, "")}
    if found.get("reason") and newest.get("detail"):  # a download's refusal: its code, then which file, field or value
        found["reason"] = f"{found['reason']}: {newest['detail']}"[:MAX_REASON]
    return found

"""The audit log's entries: who changed what at the hub, when, with digests of the document before and after.

Entries are written by the store in the transaction that makes the change (hub/store.py), so a
change and its entry exist together or not at all; the table takes INSERT only (schema migration 6).
Here: the entry as a value, the digest of a document, who a command-line user is, and the
entries written out as JSON and as CSV (cells a spreadsheet would run neutralised, hub.render).
"""

from __future__ import annotations

import getpass
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from hub.render import csv_row, csv_text, iso_time

__all__ = ["AUTOMATIC", "AuditEntry", "cli_actor", "csv_lines", "document_digest", "entry_json"]

AUTOMATIC = "hub"
"""The actor of what the hub does by itself (the scheduled retention run) and of the programmatic API in hub.app."""

CSV_COLUMNS = ("id", "time", "at_ms", "actor", "action", "target", "before_sha256", "after_sha256", "detail")


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change: ``actor`` (an account name, ``cli:<os user>`` or ``hub``), ``action`` (e.g. ``desired.set``),
    ``target`` (``device:pole-7``, ``fleet:street``, ``token:3``, ``account:alice``, ``retention``), the SHA-256 (hex)
    of the changed document before and after ("" where there is none) and a short ``detail``; ``id`` 0 until stored."""

    at_ms: int
    actor: str
    action: str
    target: str
    before_sha256: str = ""
    after_sha256: str = ""
    detail: str = ""
    id: int = 0


def document_digest(document: Mapping[str, Any] | None) -> str:
    """SHA-256 (hex) of a document's canonical JSON (sorted keys, no spaces, UTF-8); "" for no document."""
    if document is None:
        return ""
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def cli_actor() -> str:
    """``cli:<os user>`` for a command that works on the store directly (``cli:unknown`` if the OS names nobody)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (a bare container)
        user = "unknown"
    return f"cli:{user}"


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    """An entry as the JSON export and the API show it (with the time also in ISO 8601)."""
    return {"time": iso_time(entry.at_ms), **asdict(entry)}


def csv_lines(entries: Iterable[AuditEntry]) -> Iterator[str]:
    """The CSV export, a header line then one line per entry; text cells a spreadsheet would run are neutralised."""
    yield csv_row(list(CSV_COLUMNS))
    for e in entries:
        yield csv_row([e.id, iso_time(e.at_ms), e.at_ms, csv_text(e.actor), csv_text(e.action), csv_text(e.target),
                       e.before_sha256, e.after_sha256, csv_text(e.detail)])

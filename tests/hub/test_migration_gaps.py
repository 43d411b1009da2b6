"""A migration numbered below one already applied still runs: numbers are reserved for changes that may land later.

Migration 8 (the northbound export's outbox) shipped while 7 was kept for another change.  A database that
applied 8 before 7 existed must still get 7: the engines apply each missing number, not only those above the
newest.  Shown here with 6 (accounts and the audit log) left out of a first start, on both engines.
"""

from __future__ import annotations

import pytest

from hub import schema
from hub.audit import AuditEntry
from hub.database import open_store


async def test_a_migration_below_the_newest_applied_one_still_runs(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    latest = schema.MIGRATIONS
    monkeypatch.setattr(schema, "MIGRATIONS", tuple(m for m in latest if m[0] != 6))
    first = await open_store(db_url)
    try:
        assert await first.schema_version() == latest[-1][0]
        assert await first.hold_export_lease("a", now_ms=1000, ttl_ms=1000)  # the newest migration's tables are there
    finally:
        await first.close()
    monkeypatch.setattr(schema, "MIGRATIONS", latest)
    current = await open_store(db_url)
    try:
        # 6 ran now: its audit and accounts tables are there.
        entry_id = await current.append_audit(AuditEntry(at_ms=1, actor="test", action="test.gap", target="schema:6"))
        assert [e.id for e in await current.audit_log()] == [entry_id]
        assert await current.accounts() == []
    finally:
        await current.close()

"""The spool's figures, answered from memory without a query, match what its database holds."""

from __future__ import annotations

import random
import sqlite3
from typing import Any

from edge.spool import Spool
from tests.pipeline.conftest import seal_readings

NOW_MS = 1_790_000_900_000


def database_figures(path) -> dict[str, Any]:
    """The figures `stats` reports, counted by a second, read-only connection from what is committed."""
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        batches, size, readings, oldest = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(data)), 0), COALESCE(SUM(readings), 0),"
            " (SELECT created_ms FROM batches ORDER BY row LIMIT 1) FROM batches"
        ).fetchone()
        [quarantined] = db.execute("SELECT COUNT(*) FROM quarantine").fetchone()
        meta = dict(db.execute("SELECT name, value FROM meta"))
    finally:
        db.close()
    return {
        "batches": batches,
        "bytes": size,
        "readings": readings,
        "oldest_age_s": None if oldest is None else (NOW_MS - oldest) / 1000,
        "quarantine_batches": quarantined,
        "batches_dropped": meta.get("batches_dropped", 0),
        "readings_dropped": meta.get("readings_dropped", 0),
        "batches_quarantined": meta.get("batches_quarantined", 0),
        "readings_quarantined": meta.get("readings_quarantined", 0),
        "unclean_stops": meta.get("unclean_stops", 0),
    }


def waiting_figures(spool: Spool) -> dict[str, object]:
    """Backlog figures from the batches the spool still offers (acked ones whose deletion is pending excluded)."""
    waiting = spool.oldest(1_000_000)
    return {
        "batches": len(waiting),
        "bytes": sum(len(b.data) for b in waiting),
        "readings": sum(b.readings for b in waiting),
        "oldest_age_s": (NOW_MS - waiting[0].created_ms) / 1000 if waiting else None,
    }


def reported(spool: Spool, keys) -> dict[str, object]:
    stats = spool.stats()
    return {key: stats[key] for key in keys}


async def test_stats_match_the_database_through_puts_acks_quarantines_and_drops(tmp_path, device_key):
    path = tmp_path / "spool.db"
    spool = await Spool.open(path, max_bytes=3_000, when_full="drop_oldest", clock_ms=lambda: NOW_MS)
    await spool.begin_boot()
    rng = random.Random(3)
    start_ms = 1_790_000_000_000
    kinds = []
    for step in range(300):
        action = rng.choice(["put"] * 6 + ["ack", "lease_ack", "quarantine", "flush"])
        kinds.append(action)
        if action == "put":
            count = rng.randint(1, 60)
            spool.put(seal_readings(device_key, spool, count, start_ms=start_ms + step * 1000), readings=count)
        elif action in ("ack", "quarantine") and spool.oldest(50):
            batch = rng.choice(spool.oldest(50))
            if action == "ack":
                spool.ack(batch)
            else:
                spool.quarantine(batch, reason="malformed", detail="test")
        elif action == "lease_ack":
            leased = spool.lease_oldest()
            if leased is not None:
                spool.ack(leased)
        elif action == "flush":
            spool.flush_acks()
        assert reported(spool, waiting_figures(spool)) == waiting_figures(spool), f"after step {step} ({action})"
        if action == "flush":
            assert reported(spool, database_figures(path)) == database_figures(path), f"after step {step}"

    spool.flush_acks()
    stats = database_figures(path)
    assert reported(spool, stats) == stats
    assert stats["batches_dropped"] > 0 and stats["batches_quarantined"] > 0, "the sequence never dropped or quarantined"
    before = spool.stats()
    await spool.close()
    reopened = await Spool.open(path, max_bytes=3_000, when_full="drop_oldest", clock_ms=lambda: NOW_MS)
    assert reopened.stats() == before
    await reopened.close()

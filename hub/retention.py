"""Retention runs: the hub deletes each gateway's readings older than the retention its notice promises.

A gateway's transparency notice may state ``"retention_days": N`` (from its policy's
``retention_days``; absent or 0: no scheduled deletion).  A run reads each gateway's latest notice
and deletes its readings, and its quarantined readings, older than now − N days.  The store does
it in bounded steps (at most CHUNKS_PER_STEP chunks or QUARANTINE_PER_STEP rows per transaction),
so neither the event loop nor the database is held for long.  Each run (but a dry one) appends one
audit entry with its counts and is kept as the last run (settings), which ``/metrics`` and the
public home page show.  ``run_hub`` runs it on a schedule (``--retention-interval``, first run
RETENTION_FIRST_S after start); ``ocn-edge hub retention run [--dry-run]`` runs it on demand.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from edge.util.clock import now_ms
from hub.audit import AUTOMATIC, AuditEntry
from hub.dbwords import database_problem
from hub.store import Store

__all__ = ["RETENTION_FIRST_S", "RetentionRun", "last_run", "retention_days", "run_retention", "schedule"]

log = logging.getLogger("ocn.hub")

DAY_MS = 86_400_000
CHUNKS_PER_STEP = 200  # chunks (one channel's readings of one batch, up to 65,536 readings) per transaction
QUARANTINE_PER_STEP = 1000
MAX_RETENTION_DAYS = 100 * 366  # a larger number is no promise to delete anything
RETENTION_FIRST_S = 60.0  # the first scheduled run, after the hub has settled
LAST_RUN_SETTING = "retention_last_run"


@dataclass(frozen=True)
class RetentionRun:
    """What one run did (or, dry, would do): readings and quarantined readings deleted, per gateway and in all."""

    started_ms: int
    finished_ms: int
    dry_run: bool
    gateways: int  # gateways whose notice states a retention
    readings_deleted: int
    quarantined_deleted: int
    per_gateway: dict[str, int] = field(default_factory=dict)  # readings deleted (or due) per gateway, where any

    def summary(self) -> str:
        verb = "would delete" if self.dry_run else "deleted"
        return (f"{verb} {self.readings_deleted} reading(s) and {self.quarantined_deleted} quarantined reading(s) older than "
                f"the retention their gateway's notice states ({self.gateways} gateway(s) state one)")


def retention_days(notice: Mapping[str, Any]) -> int | None:
    """The whole number of days a notice promises to keep readings (top-level ``retention_days``), or None for no promise."""
    days = notice.get("retention_days")
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_RETENTION_DAYS:
        return None
    return days


async def _expire(store: Store, device_id: str, before_ms: int) -> tuple[int, int]:
    readings = quarantined = 0
    while True:
        deleted, looked = await store.expire_readings(device_id, before_ms, max_chunks=CHUNKS_PER_STEP)
        readings += deleted
        if looked < CHUNKS_PER_STEP:
            break
    while True:
        deleted = await store.expire_quarantine(device_id, before_ms, max_rows=QUARANTINE_PER_STEP)
        quarantined += deleted
        if deleted < QUARANTINE_PER_STEP:
            break
    return readings, quarantined


async def _due(store: Store, device_id: str, before_ms: int) -> int:
    """Readings a run would delete (counted, not decoded, where a chunk lies wholly before ``before_ms``)."""
    total = 0
    for channel in await store.channels(device_id=device_id, include_personal=True):
        total += await store.count_readings(channel_id=channel.id, until_ms=before_ms, include_personal=True, cap=2**62) or 0
    return total


async def run_retention(store: Store, *, actor: str = AUTOMATIC, dry_run: bool = False, now: int | None = None) -> RetentionRun:
    """One retention run over every gateway; recorded in the audit log (unless dry) and kept as the last run."""
    started = now_ms() if now is None else now
    gateways = readings = quarantined = 0
    per_gateway: dict[str, int] = {}
    for device in await store.devices():
        notices = await store.notices(device_id=device.device_id, limit=1)
        days = retention_days(notices[0].notice) if notices else None
        if days is None:
            continue
        gateways += 1
        before = started - days * DAY_MS
        if dry_run:
            gone, apart = await _due(store, device.device_id, before), 0
        else:
            gone, apart = await _expire(store, device.device_id, before)
        readings += gone
        quarantined += apart
        if gone:
            per_gateway[device.device_id] = gone
    run = RetentionRun(started_ms=started, finished_ms=now_ms(), dry_run=dry_run, gateways=gateways, readings_deleted=readings,
                       quarantined_deleted=quarantined, per_gateway=per_gateway)
    if not dry_run:
        await store.append_audit(AuditEntry(at_ms=run.finished_ms, actor=actor, action="retention.run", target="retention", detail=run.summary()))
        await store.set_setting(LAST_RUN_SETTING, json.dumps(asdict(run), sort_keys=True))
    return run


async def last_run(store: Store) -> RetentionRun | None:
    """The last retention run any hub process or command made, or None if none has."""
    text = await store.get_setting(LAST_RUN_SETTING)
    if not text:
        return None
    return RetentionRun(**json.loads(text))


async def schedule(store: Store, *, interval_s: float, first_after_s: float = RETENTION_FIRST_S) -> None:
    """Run retention ``first_after_s`` after start, then every ``interval_s``, until cancelled; a failed run is logged
    once, the next success once, and the schedule goes on."""
    failing = False
    await asyncio.sleep(first_after_s)
    while True:
        try:
            run = await run_retention(store)
        except Exception as exc:  # whatever the database raises, the schedule must outlive it
            if not failing:
                log.error("retention run failed; trying again at the next interval", extra={"error": database_problem(exc)})
                failing = True
        else:
            if failing:
                log.info("retention run works again")
                failing = False
            if run.readings_deleted or run.quarantined_deleted:
                log.info("retention run", extra={"readings_deleted": run.readings_deleted, "quarantined_deleted": run.quarantined_deleted,
                                                 "gateways": run.gateways})
        await asyncio.sleep(interval_s)

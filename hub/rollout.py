"""Staged software rollouts: a registered release targeted at a fleet in stages, advanced on schedule, halted on failures.

City IT starts a rollout (``ocn-edge hub rollout start VERSION --fleet F --stages 5%,25%,100% --wait 1h
--max-failures 10%``, or ``POST /admin/api/rollouts``) of a release the hub keeps (``ocn-edge hub release
add``).  A device is in a stage when a stable hash of its id falls below the stage's percentage, so
stages nest (a device of 5% is in 25%) and the same fleet always splits the same way.  Every
``interval_s`` each hub process (:func:`schedule`) looks at the running rollouts:

- each device of the stage reached gets the release as its software target: a row of the desired
  table (scope ``software``) that goes into its signed desired document (hub.fleet), so running
  gateways learn of it within seconds (OXP §8.4) and fetch it themselves (edge.update.updater);
- the stage's failures are its devices reporting ``rolled_back``, ``refused`` or ``failed`` for the
  release (their status report's ``software_update``, kept by hub.ingest) since the rollout started or
  resumed; past ``max_failure`` of the stage's devices the rollout **halts** by itself: devices that
  do not run the release yet lose the target, those that run it keep it;
- once ``wait`` has passed since the stage began, the next stage begins; after the last, the rollout is done.

Every change (start, advance, halt, resume, done) is one audit entry, written in the transaction
that makes it; a change another hub process made first is not made (or audited) twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import re
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from edge.protocol.release import release_key_id
from edge.update.manifest import MANIFEST_FILE
from hub.audit import AUTOMATIC, AuditEntry
from hub.dbwords import database_problem
from hub.models import Device
from hub.store import SOFTWARE_SCOPE, Rollout, SoftwareUpdate, Store

__all__ = [
    "FAILED_STATES",
    "RolloutError",
    "advance",
    "halt_rollout",
    "in_rollout_stage",
    "in_stage",
    "parse_ring",
    "parse_max_failures",
    "parse_stages",
    "parse_wait",
    "release_target",
    "resume_rollout",
    "rollout_progress",
    "schedule",
    "stage_label",
    "start_rollout",
]

log = logging.getLogger("ocn.hub.rollout")

FAILED_STATES = frozenset({"rolled_back", "refused", "failed"})  # software_update states that count against a stage
INTERVAL_S = 10.0
_WAIT_RE = re.compile(r"^([0-9]{1,9}(?:\.[0-9]{1,3})?)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
MAX_STAGES = 10
EVERY_RING = "*"  # as the last ring of a plan: every device of the fleet, in a ring or not
_RING_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")


class RolloutError(ValueError):
    """A rollout request that cannot be done; the message names the field or value and what would be accepted."""


def _percent(text: str, what: str) -> float:
    raw = text.strip()
    number = raw[:-1] if raw.endswith("%") else raw
    try:
        value = float(number)
    except ValueError:
        raise RolloutError(f"{what} {text!r}: expected a percentage like 5%, or only ring names") from None
    if not math.isfinite(value) or not 0 < value <= 100:
        raise RolloutError(f"{what} {text!r}: expected a percentage above 0% and at most 100%")
    return value


def parse_ring(text: str, *, what: str = "ring") -> str:
    """A ring name as a device carries it: 1 to 32 lowercase letters, digits and '-' ("" for none)."""
    if text and not _RING_RE.match(text):
        raise RolloutError(f"{what} {text[:80]!r}: expected a ring name of 1 to 32 lowercase letters, digits and '-', e.g. canary")
    return text


def parse_stages(text: str) -> tuple[float, ...] | tuple[str, ...]:
    """"5%,25%,100%" as (5.0, 25.0, 100.0): ascending percentages of the fleet; or "canary,early,*" as ring names in order,
    "*" (last) standing for every device of the fleet; at most MAX_STAGES either way."""
    parts = [part.strip() for part in text.split(",")]
    if not parts or len(parts) > MAX_STAGES:
        raise RolloutError(f"--stages {text!r}: expected 1 to {MAX_STAGES} percentages (5%,25%,100%) or ring names (canary,early,*) "
                           "separated by commas")
    if all(not part.rstrip("%").replace(".", "", 1).isdigit() for part in parts):
        for part in parts[:-1] if parts[-1] == EVERY_RING else parts:
            parse_ring(part or "-", what="--stages ring")  # "-" is refused with the message an empty name needs
        if len(set(parts)) != len(parts):
            raise RolloutError(f"--stages {text!r}: a ring is named twice")
        return tuple(parts)
    stages = tuple(_percent(part, "--stages value") for part in parts)
    if any(b <= a for a, b in zip(stages, stages[1:], strict=False)):
        raise RolloutError(f"--stages {text!r}: each stage must reach more devices than the one before")
    return stages


def stage_label(stage: float | str) -> str:
    """How a stage is shown: "25%" or the ring's name ("*": every device)."""
    return stage if isinstance(stage, str) else f"{stage:g}%"


def in_rollout_stage(rollout: Rollout, device: Device, stage: int) -> bool:
    """Whether ``device`` of the rollout's fleet is targeted once stage ``stage`` (0-based) is reached: by the hash of its id
    for percentages (stages nest), by its ring for rings (the rings of every stage so far; "*" takes every device)."""
    reached = rollout.stages[stage]
    if isinstance(reached, str):
        rings = rollout.stages[: stage + 1]
        return EVERY_RING in rings or (bool(device.ring) and device.ring in rings)
    return in_stage(device.device_id, reached)


def parse_max_failures(text: str) -> float:
    """"10%" as 0.10: the failure rate of a stage past which the rollout halts ("0%": any failure halts it)."""
    raw = text.strip().removesuffix("%")
    try:
        value = float(raw)
    except ValueError:
        raise RolloutError(f"--max-failures {text!r}: expected a percentage like 10%") from None
    if not math.isfinite(value) or not 0 <= value <= 100:
        raise RolloutError(f"--max-failures {text!r}: expected a percentage from 0% to 100%")
    return value / 100


def parse_wait(text: str) -> int:
    """A wait between stages like "1h" or "30m" in milliseconds."""
    match = _WAIT_RE.match(text.strip())
    if match is None:
        raise RolloutError(f"--wait {text!r}: expected a duration like 30m, 1h or 1d")
    wait_ms = int(float(match.group(1)) * _UNIT_MS[match.group(2)])
    if wait_ms > 90 * 86_400_000:
        raise RolloutError(f"--wait {text!r}: expected a duration up to 90d")
    return wait_ms


def in_stage(device_id: str, percent: float) -> bool:
    """Whether a device is within ``percent`` of its fleet: a stable hash of its id, in 10,000 buckets (0.01 % each)."""
    bucket = int.from_bytes(hashlib.sha256(b"ocn-rollout:" + device_id.encode()).digest()[:8], "big") % 10_000
    return bucket < round(percent * 100)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _pct(value: float) -> str:
    return f"{value:g}%"


def release_target(releases: Path, version: str, *, url: str | None = None) -> tuple[str, str]:
    """The URL gateways fetch ``version`` from and the id of the release key that signs it; RolloutError unless the hub keeps it."""
    manifest = releases / version / MANIFEST_FILE if version and "/" not in version and not version.startswith(".") else None
    try:
        data = manifest.read_bytes() if manifest is not None else b""
    except OSError:
        data = b""
    if not data:
        raise RolloutError(f"release {version!r} is not kept at this hub: add it first (ocn-edge hub release add BUNDLE --key release.pub)")
    # `hub release add` verified this manifest with the release key before keeping it: the key id it names is that key's.
    return (url or f"/releases/{version}"), release_key_id(data).hex()


def _fleet_devices(devices: Iterable[Device], fleet: str) -> list[Device]:
    return sorted((d for d in devices if d.fleet == fleet and d.status == "active"), key=lambda d: d.device_id)


async def start_rollout(
    store: Store, releases: Path, *, version: str, fleet: str, stages: tuple[float, ...] | tuple[str, ...], wait_ms: int, max_failure: float,
    actor: str, url: str | None = None, pause_backlog: int = 0, now_ms: int | None = None,
) -> Rollout:
    """Start a rollout (audited ``rollout.start``) and target its first stage at once.

    ``pause_backlog`` > 0: a gateway holds its download back while more batches than that wait in its spool."""
    now = _now_ms() if now_ms is None else now_ms
    target_url, kid = release_target(releases, version, url=url)
    running = [r for r in await store.rollouts(fleet=fleet) if r.state == "running"]
    if running:
        raise RolloutError(f"fleet {fleet!r} has rollout {running[0].id} of {running[0].version} running: "
                           f"halt it first (ocn-edge hub rollout halt {running[0].id}), or wait for it to be done")
    if not _fleet_devices(await store.devices(), fleet):
        raise RolloutError(f"fleet {fleet!r} has no active device")
    plan = ",".join(stage_label(s) for s in stages)
    if not 0 <= pause_backlog <= 1_000_000_000:
        raise RolloutError(f"--pause-backlog {pause_backlog}: expected a number of batches from 0 (never pause) up")
    rollout = Rollout(0, version, fleet, stages, wait_ms, max_failure, target_url, kid, "running", 0, now, now, "", now, now, pause_backlog)
    entry = AuditEntry(at_ms=now, actor=actor, action="rollout.start", target="rollout:new",
                       detail=f"{version} to fleet {fleet}: stages {plan}, wait {wait_ms // 1000} s, halt past {_pct(max_failure * 100)} failures"
                              + (f", downloads paused while over {pause_backlog} batches wait" if pause_backlog else ""))
    rid = await store.save_rollout(rollout, entry)
    started = replace(rollout, id=rid)
    log.info("rollout started", extra={"rollout": rid, "version": version, "fleet": fleet, "stages": plan, "actor": actor})
    await advance(store, now_ms=now, only=rid)
    return started


def _changed(rollout: Rollout, now: int, **changes: Any) -> Rollout:
    """``rollout`` with ``changes``, its ``updated_ms`` moved on (Store.save_rollout replaces only the version it read)."""
    return replace(rollout, **changes, updated_ms=max(now, rollout.updated_ms + 1))


async def _find(store: Store, rollout_id: int) -> Rollout:
    for rollout in await store.rollouts():
        if rollout.id == rollout_id:
            return rollout
    raise RolloutError(f"no rollout {rollout_id} at this hub (`ocn-edge hub rollout status` lists them)")


async def halt_rollout(store: Store, rollout_id: int, *, actor: str, reason: str = "", now_ms: int | None = None) -> Rollout:
    """Halt a running rollout by hand (audited ``rollout.halt``): devices not running the release yet lose the target."""
    now = _now_ms() if now_ms is None else now_ms
    rollout = await _find(store, rollout_id)
    if rollout.state != "running":
        raise RolloutError(f"rollout {rollout_id} is {rollout.state}, not running: nothing to halt")
    return await _halt(store, rollout, now, actor=actor, reason=reason or f"halted by {actor}")


async def resume_rollout(store: Store, rollout_id: int, *, actor: str, now_ms: int | None = None) -> Rollout:
    """Resume a halted rollout at the stage it reached (audited ``rollout.resume``); failures count again from now."""
    now = _now_ms() if now_ms is None else now_ms
    rollout = await _find(store, rollout_id)
    if rollout.state != "halted":
        raise RolloutError(f"rollout {rollout_id} is {rollout.state}, not halted: nothing to resume")
    newer = [r for r in await store.rollouts(fleet=rollout.fleet) if r.id > rollout.id]
    if newer:
        raise RolloutError(f"rollout {newer[-1].id} of {newer[-1].version} was started for fleet {rollout.fleet!r} after rollout {rollout_id}: "
                           "it cannot be resumed")
    resumed = _changed(rollout, now, state="running", reason="", stage_started_ms=now, since_ms=now)
    entry = AuditEntry(at_ms=now, actor=actor, action="rollout.resume", target=f"rollout:{rollout.id}",
                       detail=f"stage {rollout.stage + 1} of {len(rollout.stages)} ({stage_label(rollout.stages[rollout.stage])}); "
                              f"was halted: {rollout.reason}")
    if not await store.save_rollout(resumed, entry, replaces_ms=rollout.updated_ms):
        raise RolloutError(f"rollout {rollout_id} changed meanwhile; look at it again")
    log.info("rollout resumed", extra={"rollout": rollout.id, "actor": actor})
    await advance(store, now_ms=now, only=rollout.id)
    return resumed


async def _halt(store: Store, rollout: Rollout, now: int, *, actor: str, reason: str, members: list[Device] | None = None) -> Rollout:
    halted = _changed(rollout, now, state="halted", reason=reason[:500])
    entry = AuditEntry(at_ms=now, actor=actor, action="rollout.halt", target=f"rollout:{rollout.id}",
                       detail=f"stage {rollout.stage + 1} of {len(rollout.stages)} ({stage_label(rollout.stages[rollout.stage])}): {reason}"[:1000])
    if not await store.save_rollout(halted, entry, replaces_ms=rollout.updated_ms):
        return await _find(store, rollout.id)  # another process changed it first
    if members is None:
        members = [d for d in _fleet_devices(await store.devices(), rollout.fleet) if in_rollout_stage(rollout, d, rollout.stage)]
    await store.set_software_targets({d.device_id: None for d in members if d.software_version != rollout.version}, now_ms=now)
    # The hub's own halt is news for whoever reads the log; one by hand was just said by the one who did it.
    (log.warning if actor == AUTOMATIC else log.info)(
        "rollout halted", extra={"rollout": rollout.id, "version": rollout.version, "fleet": rollout.fleet, "reason": reason, "actor": actor})
    return halted


def _failures(rollout: Rollout, members: list[Device], updates: dict[str, SoftwareUpdate]) -> list[SoftwareUpdate]:
    found = []
    for device in members:
        update = updates.get(device.device_id)
        if update is not None and update.version == rollout.version and update.state in FAILED_STATES and update.changed_ms >= rollout.since_ms:
            found.append(update)
    return found


def rollout_progress(rollout: Rollout, devices: Iterable[Device], updates: dict[str, SoftwareUpdate]) -> dict[str, int]:
    """How a rollout stands: its fleet's active devices, those targeted so far, running the release, and failed."""
    fleet = _fleet_devices(devices, rollout.fleet)
    members = [d for d in fleet if in_rollout_stage(rollout, d, rollout.stage)]
    return {"devices": len(fleet), "targeted": len(members), "running": sum(d.software_version == rollout.version for d in members),
            "failed": len(_failures(rollout, members, updates))}


async def advance(store: Store, *, now_ms: int | None = None, only: int | None = None) -> None:
    """One look at every running rollout (or ``only`` one): targets, the failure check, the next stage when its wait is over."""
    now = _now_ms() if now_ms is None else now_ms
    running = [r for r in await store.rollouts() if r.state == "running" and (only is None or r.id == only)]
    if not running:
        return
    devices = await store.devices()
    updates = await store.software_updates()
    documents = await store.desired_documents()
    for rollout in running:
        await _step(store, rollout, devices, updates, documents, now)


async def _step(store: Store, rollout: Rollout, devices: list[Device], updates: dict[str, SoftwareUpdate],
                documents: dict[tuple[str, str], tuple[dict[str, Any], int]], now: int) -> None:
    fleet = _fleet_devices(devices, rollout.fleet)
    members = [d for d in fleet if in_rollout_stage(rollout, d, rollout.stage)]
    failed = _failures(rollout, members, updates)
    if members and len(failed) / len(members) > rollout.max_failure:
        named = "; ".join(f"{u.device_id}: {u.state}" + (f" ({u.reason})" if u.reason else "") for u in failed[:3])
        reason = (f"{len(failed)} of {len(members)} devices of the stage failed ({_pct(100 * len(failed) / len(members))}, "
                  f"over {_pct(rollout.max_failure * 100)}): {named}{'; …' if len(failed) > 3 else ''}")
        await _halt(store, rollout, now, actor=AUTOMATIC, reason=reason, members=members)
        return
    target: dict[str, Any] = {"version": rollout.version, "url": rollout.url, "key_id": rollout.key_id, "rollout": rollout.id}
    if rollout.pause_backlog:
        target["pause_backlog"] = rollout.pause_backlog
    missing = {d.device_id: target for d in members if documents.get((SOFTWARE_SCOPE, d.device_id), ({}, 0))[0] != target}
    if missing:
        await store.set_software_targets(missing, now_ms=now)
    if now - rollout.stage_started_ms < rollout.wait_ms:
        return
    last = rollout.stage + 1 >= len(rollout.stages)
    if last:
        done = _changed(rollout, now, state="done")
        entry = AuditEntry(at_ms=now, actor=AUTOMATIC, action="rollout.done", target=f"rollout:{rollout.id}",
                           detail=f"{rollout.version} targeted at {len(members)} of {len(fleet)} devices of fleet {rollout.fleet}")
        if await store.save_rollout(done, entry, replaces_ms=rollout.updated_ms):
            log.info("rollout done", extra={"rollout": rollout.id, "version": rollout.version, "fleet": rollout.fleet})
        return
    nxt = _changed(rollout, now, stage=rollout.stage + 1, stage_started_ms=now)
    entry = AuditEntry(at_ms=now, actor=AUTOMATIC, action="rollout.advance", target=f"rollout:{rollout.id}",
                       detail=f"stage {nxt.stage + 1} of {len(rollout.stages)} ({stage_label(rollout.stages[nxt.stage])}); "
                              f"the stage before: {len(members)} devices, {len(failed)} failed")
    if await store.save_rollout(nxt, entry, replaces_ms=rollout.updated_ms):
        log.info("rollout advanced", extra={"rollout": rollout.id, "stage": nxt.stage + 1, "stage_of_plan": stage_label(rollout.stages[nxt.stage])})
        await _step(store, nxt, devices, updates, await store.desired_documents(), now)


async def schedule(store: Store, *, interval_s: float = INTERVAL_S) -> None:
    """Advance the running rollouts every ``interval_s`` until cancelled; a failed round is logged once, the next success once."""
    failing = False
    while True:
        try:
            await advance(store)
        except Exception as exc:  # whatever the database raises, the schedule must outlive it
            if not failing:
                log.error("rollout round failed; trying again at the next interval", extra={"error": database_problem(exc)})
                failing = True
        else:
            if failing:
                log.info("rollout rounds work again")
                failing = False
        await asyncio.sleep(interval_s)

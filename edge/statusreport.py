"""The signed status report's fields (OXP §7), built in one place from the spool and what the running gateway knows.

The spool knows the backlog, the loss counters and the boot; only the running gateway knows
the policy and config in force, the desired document applied, each device's health and what is failing.  An uplink
run without a gateway (tools, tests) reports the spool's part and its own delivery error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edge import __version__
from edge.spool import SpoolStats

__all__ = ["ReportFacts", "readings_lost", "status_report"]


@dataclass(frozen=True, slots=True)
class ReportFacts:
    """What the running gateway adds to a status report; the defaults are a gateway that knows nothing more."""

    policy_digest: bytes = b""
    config_digest: bytes = b""
    applied_etag: str | None = None  # None: no desired state is handled here, so the field is left out
    errors: list[str] = field(default_factory=list)
    # device name -> {"health", "diagnosis", "next_step"} (drivers.health); empty: no devices known, field left out
    device_health: dict[str, dict[str, str]] = field(default_factory=dict)
    # the newest software update outcome (edge.update.report); None: no update tried, field left out
    software_update: dict[str, str] | None = None


def readings_lost(status: Mapping[str, Any]) -> int:
    """Readings that will never reach the hub: the spool's quota dropped them, the batcher or privacy stage could not take them."""
    spool = status.get("spool") or {}
    batcher = status.get("batcher") or {}
    return int(spool.get("readings_dropped", 0)) + int(batcher.get("readings_refused", 0)) \
        + int(batcher.get("readings_unsealable", 0)) + int(status.get("readings_failed", 0))


def status_report(spool: SpoolStats, *, device_id: str, ts_ms: int, boot_epoch: int, facts: ReportFacts) -> dict[str, Any]:
    """The status report as it would be signed now: spool backlog, loss counters, boot epoch, digests, errors."""
    report: dict[str, Any] = {
        "device_id": device_id,
        "ts_ms": ts_ms,
        "software_version": __version__,
        "boot_epoch": boot_epoch,
        "unclean_stops": spool.unclean_stops,
        "spool_batches": spool.batches,
        "spool_bytes": spool.bytes,
        "spool_oldest_age_s": spool.oldest_age_s,
        "readings_dropped": spool.readings_dropped,
        "batches_dropped": spool.batches_dropped,
        "batches_quarantined": spool.batches_quarantined,
        "readings_quarantined": spool.readings_quarantined,
        "policy_digest": facts.policy_digest,
        "config_digest": facts.config_digest,
        "errors": list(facts.errors),
    }
    if facts.applied_etag is not None:
        report["applied_etag"] = facts.applied_etag
    if facts.device_health:
        # Added to OXP §7 as an optional key: a hub that does not know it ignores it (§7.1).
        report["device_health"] = {name: dict(health) for name, health in facts.device_health.items()}
    if facts.software_update:
        # Added to OXP §7 as an optional key, like device_health: what the last update came to (docs/updates.md).
        report["software_update"] = dict(facts.software_update)
    return report

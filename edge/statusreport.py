"""The signed status report's fields (OXP §7), built in one place from the spool and what the running gateway knows.

The spool knows the backlog, the loss counters and the boot; only the running gateway knows
the policy and config in force, the desired document applied, each device's health and what is failing.  An uplink
run without a gateway (tools, tests) reports the spool's part and its own delivery error.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import cbor2

from edge import __version__
from edge.protocol import MAX_STATUS_BYTES
from edge.spool import SpoolStats

__all__ = ["REPORT_BYTES", "ReportFacts", "readings_lost", "status_report"]

# What the report's map may take of a signed message (the envelope and report_seq take under 400 bytes).
REPORT_BYTES = MAX_STATUS_BYTES - 1024


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
    return _fitted(report, REPORT_BYTES)


def _bytes(value: Any) -> int:
    return len(cbor2.dumps(value, canonical=True))


def _fitted(report: dict[str, Any], limit: int) -> dict[str, Any]:
    """``report``, or when it is over ``limit`` bytes (hundreds of devices failing at once) a shorter one that says so (OXP §7).

    First each device's health keeps its word only (its diagnosis and next step are in
    ``errors`` too); then ``errors`` keeps those that fit and ends with how many more there
    are; then ``device_health`` goes.  ``abridged`` names what was left out and counts the
    errors and devices of the whole report; the gateway's local status page keeps everything.
    """
    if _bytes(report) <= limit:
        return report
    errors: list[str] = list(report["errors"])
    health: dict[str, Mapping[str, str]] = dict(report.get("device_health") or {})
    left_out: list[str] = []
    report = dict(report, abridged={"left_out": left_out, "errors": len(errors), "devices": len(health)})
    if health:
        report["device_health"] = {name: {"health": h.get("health", "")} for name, h in health.items()}
        left_out.append("device diagnoses")
        if _bytes(report) <= limit:
            return report
    for last in (False, True):
        if last and "device_health" in report:
            del report["device_health"]
            left_out.append("device health")
        report["errors"] = _errors_that_fit(errors, limit - _bytes(dict(report, errors=[])))
        if report["errors"] != errors and "errors" not in left_out:
            left_out.append("errors")
        if _bytes(report) <= limit:
            break
    return report


def _more(n: int) -> str:
    return f"... and {n:,} more: a status report holds at most {MAX_STATUS_BYTES:,} bytes; the gateway's local status page lists them all"


def _errors_that_fit(errors: list[str], room: int) -> list[str]:
    """The first of ``errors`` that fit ``room`` bytes (as CBOR), then a line saying how many more there are."""
    if _bytes(errors) <= room:
        return errors
    kept: list[str] = []
    used = _bytes([_more(len(errors))]) - _bytes(_more(len(errors)))  # the list's own header
    for error in errors:
        cost = _bytes(error)
        if used + cost + _bytes(_more(len(errors) - len(kept) - 1)) > room:
            break
        kept.append(error)
        used += cost
    return [*kept, _more(len(errors) - len(kept))]

"""What the technician's page and ``ocn-edge status`` show, built once from the gateway's status, notice and latest released readings.

Live values come only from what the privacy stage released, so a channel the policy does not
release never shows; and of those only numbers and yes/no values show, never text (a
pseudonym is text) and never anything of a channel the notice marks personal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edge.privacy.notice import notice_channels
from edge.protocol.types import Reading
from edge.statusreport import readings_lost

__all__ = ["technician_view"]


def _health(device: Mapping[str, Any]) -> str:
    """The device's health word; before the health model reports one, failing or ok from the runner."""
    word = device.get("health")
    if isinstance(word, str) and word:
        return word
    return "failing" if device.get("failing") else "ok"


def _personal(notice: Mapping[str, Any]) -> set[str]:
    return {channel for item in notice.get("data", ()) if item.get("personal") for channel in notice_channels(item)}


def _shown(reading: Reading, personal: set[str]) -> bool:
    if isinstance(reading.value, str):
        return False
    return not any(reading.channel == c or reading.channel.startswith(c + "/") or reading.channel.startswith(c + ":") for c in personal)


_UPDATE_STATES = {
    "requested": "{version} downloaded and checked; installing",
    "downloading": "{version} downloading",
    "refused": "{version} refused",
    "failed": "{version} failed to install",
    "installed": "{version} installed",
    "rolled_back": "{version} rolled back",
}


def _update_line(update: Mapping[str, str] | None) -> str:
    """The last software update in one line: "3.0.0 rolled back: <why>; running 2.0.0"; "" when none was tried."""
    if not update:
        return ""
    state = update.get("state", "")
    line = _UPDATE_STATES.get(state, "{version} " + state).format(version=update.get("version", "?"))
    if update.get("reason"):
        line += f": {update['reason']}"
    if update.get("running") and state in ("rolled_back", "installed", "failed"):
        line += f"; running {update['running']}"
    return line


def technician_view(status: Mapping[str, Any], notice: Mapping[str, Any], latest: Mapping[str, Reading]) -> dict[str, Any]:
    """The page's document: overview, a row per device with its live values, the buses, the policy in words and the notice."""
    personal = _personal(notice)
    values: dict[str, list[dict[str, Any]]] = {}
    for channel in sorted(latest):
        reading = latest[channel]
        if not _shown(reading, personal):
            continue
        device, _, name = channel.partition("/")
        values.setdefault(device, []).append({"channel": channel, "name": name, "value": reading.value, "unit": reading.unit, "ts_ms": reading.ts_ms})
    devices = []
    last_read = status.get("last_reading_ms") or {}
    for name, device in (status.get("devices") or {}).items():
        shown = values.get(name, [])
        devices.append({
            "name": name,
            "driver": device.get("driver", ""),
            "bus": device.get("bus", ""),
            "health": _health(device),
            "diagnosis": device.get("diagnosis") or device.get("last_error", ""),
            "next_step": device.get("next_step", ""),
            "readings": device.get("readings", 0),
            "restarts": device.get("restarts", 0),
            "last_reading_ms": last_read.get(name) or max((v["ts_ms"] for v in shown), default=None),
            "values": shown,
        })
    buses = []
    for name, bus in (status.get("buses") or {}).items():
        buses.append({"name": name, **{k: v for k, v in bus.items() if k not in ("bus", "units")},
                      "units": bus.get("units", {})})
    uplink = status.get("uplink")
    spool = status.get("spool") or {}
    overview = {
        "device_id": status.get("device_id", ""),
        "software_version": status.get("software_version", ""),
        "uptime_s": status.get("uptime_s", 0),
        "boot_epoch": status.get("boot_epoch"),
        "hub": None if uplink is None else {
            "url": uplink.get("hub", ""),
            "reachable": bool(uplink.get("reachable")),
            "last_ack_ms": uplink.get("last_ack_ms") or None,
            "last_error": uplink.get("last_error", ""),
        },
        "spool": {"batches": spool.get("batches", 0), "bytes": spool.get("bytes", 0), "oldest_age_s": spool.get("oldest_age_s")},
        "readings_read": status.get("readings_read", 0),
        "readings_released": status.get("readings_released", 0),
        "readings_lost": readings_lost(status),
        "software_update": _update_line(status.get("software_update")),  # "" until an update was tried (docs/updates.md)
    }
    policy = [{"channel": channel, "what": item.get("what", ""), "unit": item.get("unit", ""),
               "leaves_as": item.get("leaves_as", ""), "purpose": item.get("purpose", "")}
              for item in notice.get("data", ()) for channel in notice_channels(item)]  # a row per channel, as the page lists them
    return {
        "overview": overview,
        "devices": devices,
        "buses": buses,
        "policy": policy,
        "notice": {"purpose": notice.get("purpose", ""), "accountable": notice.get("accountable", {}), "place": notice.get("place", {})},
    }

"""Ingest faults per device, logged once when they start and once when they clear: never a log storm."""

from __future__ import annotations

import logging

__all__ = ["DeviceFaults"]

log = logging.getLogger("ocn.hub.ingest")


class DeviceFaults:
    """Remembers which enrolled devices are failing, and how, so each episode logs two lines at most."""

    def __init__(self) -> None:
        self._failing: dict[str, tuple[str, int]] = {}

    def failed(self, device_id: str, code: str, detail: str) -> None:
        current = self._failing.get(device_id)
        if current is not None and current[0] == code:
            self._failing[device_id] = (code, current[1] + 1)
            return
        self._failing[device_id] = (code, 1)
        log.warning("device batches refused", extra={"device": device_id, "error": code, "detail": detail[:300]})

    def cleared(self, device_id: str) -> None:
        if device_id in self._failing:
            code, count = self._failing.pop(device_id)
            log.info("device batches accepted again", extra={"device": device_id, "after_error": code, "refused": count})

    def failing(self) -> dict[str, str]:
        """Device id → error code of every device whose last batch this process refused (shown on the dashboard)."""
        return {device: code for device, (code, _) in self._failing.items()}

"""Whether a freshly started version has proven itself, judged from the gateway's own /status on its local API.

A new version is on probation until every configured device has been read at least once, a batch
has been sealed into the spool, and, when the hub is reachable, a batch of the new process has
been acknowledged. A hub outage extends the probation rather than failing it: the version may be
fine and the link down. It fails if it restarts during probation (a crash, or the watchdog), if
it never answers, or if the deadline passes with something still unproven while the hub was
reachable. Reading /status needs no privilege and touches nothing of the gateway's state.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

__all__ = ["Probation", "Verdict", "read_status"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """``state`` is "pending", "passed" or "failed"; ``reason`` says what is missing or what went wrong."""

    state: str
    reason: str = ""


def read_status(url: str, *, timeout_s: float = 5.0) -> dict[str, Any] | None:
    """The gateway's /status document, or None if it does not answer (not started, restarting, crashed)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            document = json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


@dataclass(slots=True)
class Probation:
    """The probation of ``version``: feed it /status documents (None when the gateway does not answer) with the time they were read."""

    version: str
    started: float
    deadline_s: float = 900.0  # everything proven within this of the first answer, while the hub is reachable
    start_timeout_s: float = 120.0  # the new version must answer /status within this
    _process: tuple[Any, ...] | None = None
    _uptime: float = 0.0
    _last: float = 0.0  # when the previous answer was judged

    def judge(self, status: dict[str, Any] | None, now: float) -> Verdict:
        if status is None or status.get("software_version") != self.version:
            if self._process is not None:
                return Verdict("failed", f"{self.version} stopped answering during probation (a crash or the watchdog)")
            if now - self.started > self.start_timeout_s:
                return Verdict("failed", f"{self.version} did not start: no answer on /status within {self.start_timeout_s:.0f} s")
            return Verdict("pending", "waiting for the new version to answer")
        process = (status.get("boot_epoch"),)
        uptime = float(status.get("uptime_s") or 0.0)
        if self._process is None:  # the deadline runs from the first answer: starting up has start_timeout_s of its own
            self._process, self.started, self._last = process, now, now
        elif process != self._process or uptime + 1.0 < self._uptime:
            return Verdict("failed", f"{self.version} restarted during probation (a crash or the watchdog)")
        self._uptime = uptime
        since, self._last = self._last, now
        missing = self._missing(status)
        if not missing:
            return Verdict("passed", "every device read, a batch sealed" + (", a batch acknowledged" if "uplink" in status else ""))
        uplink = status.get("uplink")
        outage = isinstance(uplink, dict) and not uplink.get("reachable", True)
        if outage:  # the hub is not reachable: the deadline's clock stands still until it is back
            self.started += now - since
        elif now - self.started > self.deadline_s:
            return Verdict("failed", f"{self.version} failed probation: {'; '.join(missing)} within {self.deadline_s:.0f} s")
        return Verdict("pending", "; ".join(missing))

    @staticmethod
    def _missing(status: dict[str, Any]) -> list[str]:
        missing = []
        devices = status.get("devices") or {}
        unread = sorted(name for name, device in devices.items() if not (isinstance(device, dict) and device.get("readings")))
        if unread:
            missing.append(f"no reading yet from {', '.join(unread)}")
        if not (status.get("batcher") or {}).get("batches_sealed"):
            missing.append("no batch sealed into the spool")
        uplink = status.get("uplink")
        if isinstance(uplink, dict) and not uplink.get("batches_acked"):
            missing.append("no batch acknowledged by the hub")
        return missing

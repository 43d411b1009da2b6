"""One device health model for the whole gateway: ok, degraded or failing, with the cause and the next step in words.

Every place that shows a device's health (the local ``/status``, the status report to the hub,
the log) takes it from here, so a technician reads the same words everywhere.  A bus owner
knows whether its port is there and whether a unit ever answered; a driver knows whether some
of its requests are refused; the device supervisor knows whether the driver keeps crashing
and when the last reading came.  :func:`assess` picks the worst of what they say.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "DEGRADED",
    "FAILING",
    "HEALTHY",
    "HEALTH_WORDS",
    "OK",
    "STALE_POLLS",
    "Health",
    "HealthSource",
    "HealthWord",
    "assess",
    "worst",
]

HealthWord = Literal["ok", "degraded", "failing"]
OK: HealthWord = "ok"
DEGRADED: HealthWord = "degraded"  # some channels or some polls fail; readings still come
FAILING: HealthWord = "failing"  # nothing comes: port gone, unit never answered, nothing for STALE_POLLS intervals
HEALTH_WORDS: tuple[HealthWord, ...] = (OK, DEGRADED, FAILING)
_RANK = {OK: 0, DEGRADED: 1, FAILING: 2}

# A device that delivered nothing for this many poll intervals is failing, whatever the cause.
STALE_POLLS = 3


@dataclass(frozen=True, slots=True)
class Health:
    """A device's health word, and for anything but ok why (``cause``) and what to do (``next_step``)."""

    state: HealthWord = OK
    cause: str = ""
    next_step: str = ""

    @property
    def sentence(self) -> str:
        """``cause: next step`` as one line (the log and the status report's ``errors``)."""
        return f"{self.cause}: {self.next_step}" if self.next_step else self.cause

    def as_dict(self) -> dict[str, str]:
        """The fields ``/status`` and the status report carry per device."""
        return {"health": self.state, "diagnosis": self.cause, "next_step": self.next_step}


HEALTHY = Health()


def worst(healths: Iterable[Health | None]) -> Health:
    """The worst of several opinions (None: no opinion); the first of equals wins, so callers order by precedence."""
    out = HEALTHY
    for health in healths:
        if health is not None and _RANK[health.state] > _RANK[out.state]:
            out = health
    return out


@runtime_checkable
class HealthSource(Protocol):
    """A bus owner that can say how one device on it is doing (the port, the unit's answers)."""

    def health_of(self, device: str, address: int | str | None) -> Health | None: ...


def assess(device: str, *, bus: Health | None = None, driver: Health | None = None, crashing: str = "",
           silent_s: float | None = None, poll_interval: float = 10.0) -> Health:
    """A device's health from what each part knows.

    ``bus`` and ``driver`` are their own opinions; ``crashing`` is the last error of a driver that
    keeps failing (empty when it runs); ``silent_s`` is how long the device has gone without a reading
    (since it started if it never sent one; None: not started).  The bus comes first: "the port is
    gone" explains a crashing driver and a silent device better than either says it.
    """
    opinions: list[Health | None] = [bus]
    if crashing:
        opinions.append(Health(FAILING, f"{device}: the driver keeps failing ({crashing})",
                               f"check the device with ocn-edge read {device}; the log has each restart"))
    opinions.append(driver)
    if silent_s is not None and silent_s >= STALE_POLLS * poll_interval:
        opinions.append(Health(FAILING, f"{device}: no reading for {silent_s:.0f} s ({STALE_POLLS} poll intervals)",
                               f"check power and wiring; try ocn-edge read {device}"))
    return worst(opinions)

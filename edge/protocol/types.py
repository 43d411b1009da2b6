"""The contracts every stage shares: a Reading, the declaration of the channel it belongs to, and the device-id rule."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

__all__ = ["Kind", "Quality", "Channel", "Reading", "Value", "CHANNEL_ID_RE", "DEVICE_ID_RE", "DEVICE_ID_RULE"]

Value = int | float | str | bool

# A channel id is "<device>/<name>": stable, readable, and valid as a SenML name suffix.
CHANNEL_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]*(/[A-Za-z0-9][A-Za-z0-9_.:-]*)*$")
# A gateway's device id (docs/protocol.md §5): what a batch, a status report and an enrolment name.
DEVICE_ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
DEVICE_ID_RULE = "1-64 lowercase letters, digits and '-'"


class Kind(enum.Enum):
    """What sort of value a channel carries."""

    NUMBER = "number"
    STRING = "string"
    BOOL = "bool"


class Quality(enum.IntEnum):
    """Optional quality flag on a reading; absent means good."""

    GOOD = 0
    SUSPECT = 1  # plausible but flagged by the driver (e.g. sensor warming up)
    BAD = 2  # the device said the value is invalid; kept so the gap is visible


@dataclass(frozen=True, slots=True)
class Channel:
    """A channel declared up front by a driver (or derived by the privacy stage).

    ``resolution`` is the smallest step the value is meaningful at (e.g. 0.1 for
    µg/m³ with one decimal); the codec stores ``round(value / resolution)`` as an
    integer.  ``None`` means "no declared resolution": numbers travel as floats.
    ``personal`` marks values that identify a person (a MAC address, an exact
    position); the privacy policy must transform them before they leave memory.
    """

    id: str
    unit: str = ""
    kind: Kind = Kind.NUMBER
    resolution: float | None = None
    personal: bool = False
    description: str = ""

    def __post_init__(self) -> None:
        if not CHANNEL_ID_RE.match(self.id):
            raise ValueError(f"channel id {self.id!r}: expected letters, digits, '_', '.', ':', '-' and '/' separators")
        if self.resolution is not None and not self.resolution > 0:
            raise ValueError(f"channel {self.id!r}: resolution {self.resolution!r} must be > 0")
        if self.resolution is not None and self.kind is not Kind.NUMBER:
            raise ValueError(f"channel {self.id!r}: only number channels have a resolution")


@dataclass(frozen=True, slots=True)
class Reading:
    """One measured value: channel id, UTC time in integer milliseconds since the Unix epoch, value, unit."""

    channel: str
    ts_ms: int
    value: Value
    unit: str = ""
    quality: Quality | None = None

"""Shared helpers for the privacy tests: write a policy file, a clock the test moves, the pedestrian channels."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from edge.privacy import Policy, PrivacyStage, parse_policy
from edge.protocol.types import Channel, Kind

HEADER = """
[policy]
name = "test policy"
organisation = "City of Testing"
contact = "privacy@testing.example"
purpose = "Testing the privacy stage"
"""

PED_CHANNELS = [
    Channel("ped-1/mac", kind=Kind.STRING, personal=True, description="MAC address"),
    Channel("ped-1/rssi", unit="dBm", resolution=1.0),
    Channel("ped-1/radio", kind=Kind.STRING),
]
GPS_CHANNELS = [
    Channel("gps-1/latitude", unit="lat", resolution=1e-7, personal=True),
    Channel("gps-1/longitude", unit="lon", resolution=1e-7, personal=True),
]

# 2026-11-27 00:00:00 UTC: a day boundary, so window arithmetic in tests is easy to read.
MIDNIGHT_MS = 1_795_737_600_000


def policy_text(body: str) -> str:
    return HEADER + textwrap.dedent(body)


def make_policy(body: str) -> Policy:
    return parse_policy(policy_text(body), path="policy.toml")


def write_policy(directory: Path, body: str, name: str = "policy.toml") -> Path:
    path = directory / name
    path.write_text(policy_text(body), encoding="utf-8")
    return path


class Clock:
    """A wall clock the test sets and advances; the stage reads it through ``clock_ms``."""

    def __init__(self, now_ms: int = MIDNIGHT_MS) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> int:
        self.now_ms += ms
        return self.now_ms


def budget(stage: PrivacyStage) -> dict[str, Any]:
    """The epsilon budget figures of ``stage.stats()``: spent, the period's limit, exhausted."""
    figures: dict[str, Any] = stage.stats()
    return dict(figures["budget"])

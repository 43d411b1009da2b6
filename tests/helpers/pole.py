"""The smallest pole the runtime tests start: one SDS011 dust sensor on a real pty, and a policy for its channels.

Tests that need a gateway reading something, not a particular sensor, share these instead of each holding a copy."""

from __future__ import annotations

__all__ = ["sds011_policy", "sds011_scenario"]


def sds011_scenario(name: str, *, seed: int) -> str:
    """A hil-sim scenario: one SDS011 named ``pm-1`` in active mode, a reading a second, at a fixed position."""
    return f"""
[scenario]
name = "{name}"
seed = {seed}
latitude = 43.6452
longitude = -79.3957

[[devices]]
name = "pm-1"
kind = "sds011"
poll_interval = "1s"
[devices.options]
mode = "active"
"""


def sds011_policy(name: str, *, purpose: str, rule: str = 'rule = "keep"') -> str:
    """A city policy, version 1, applying ``rule`` (TOML lines) to every channel of ``pm-1``."""
    return f"""
[policy]
name = "{name}"
version = "1"
organisation = "Test city"
contact = "it@test.example"
purpose = "{purpose}"
retention = "none"

[channels."pm-1/*"]
{rule}
purpose = "air quality"
"""

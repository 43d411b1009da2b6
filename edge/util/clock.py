"""The two clocks the tree reads: wall time for stamps that leave the process, monotonic time for intervals.

Integer milliseconds everywhere: reading times, batch seals and stored rows are integers on the
wire and in the database, and ``time.time()`` as a float loses microseconds and invites rounding
differences between two places that stamp the same thing.
"""

from __future__ import annotations

import time

__all__ = ["monotonic_ms", "now_ms"]


def now_ms() -> int:
    """Wall-clock milliseconds since the Unix epoch: for stamps that are stored or sent."""
    return time.time_ns() // 1_000_000


def monotonic_ms() -> int:
    """Milliseconds on a clock that never steps back: for timeouts and durations, never for stamps."""
    return time.monotonic_ns() // 1_000_000

"""An opt-in probe of the hub's event-loop lag for the benchmark (``python -m bench.hostile``); off by default.

When ``$OCN_HUB_LOOP_LAG_FILE`` names a file, a task sleeps :data:`TICK_S` at a time and
measures how late it wakes: a request that holds the loop makes every other request that
late.  Once a second it appends one JSON line, ``{"t": <unix time>, "max_lag_ms": <worst
lateness in that second>}``, so a reader can take the worst over any span (a bench phase)
and a hub stopped by a signal has lost at most its last second.  Without the variable
nothing runs.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

__all__ = ["ENV", "start_probe"]

ENV = "OCN_HUB_LOOP_LAG_FILE"
TICK_S = 0.01
_running: set[asyncio.Task[None]] = set()


def start_probe() -> asyncio.Task[None] | None:
    """Start the probe on the running loop if ``$OCN_HUB_LOOP_LAG_FILE`` is set; the task, or None.

    It runs until the loop cancels it at shutdown (``asyncio.run`` cancels what is left)."""
    path = os.environ.get(ENV)
    if not path:
        return None
    task = asyncio.get_running_loop().create_task(_probe(path), name="hub-loop-lag-probe")
    _running.add(task)  # the loop keeps only a weak reference to a task
    task.add_done_callback(_running.discard)
    return task


async def _probe(path: str) -> None:
    worst, second_ends = 0.0, time.monotonic() + 1.0
    while True:
        asleep = time.monotonic()
        await asyncio.sleep(TICK_S)
        woke = time.monotonic()
        worst = max(worst, woke - asleep - TICK_S)
        if woke >= second_ends:
            # A line a second, written in one call: small enough not to be a lag of its own.
            with open(path, "a", encoding="utf-8") as out:
                out.write(json.dumps({"t": time.time(), "max_lag_ms": round(worst * 1000, 3)}) + "\n")
            worst, second_ends = 0.0, woke + 1.0

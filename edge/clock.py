"""Holds the gateway's start until the clock can be believed, so no batch is sealed with a wrong time.

A Raspberry Pi has no battery-backed clock: until NTP answers, it starts near 1970 (or, with
fake-hwclock, at the time it last shut down). A batch sealed then would carry reading times the hub
quarantines, and they cannot be corrected afterwards. The gateway therefore waits, before it opens a
bus or seals anything, until either

  - systemd-timesyncd says the clock is synchronised (/run/systemd/timesync/synchronized exists, the
    file systemd-time-wait-sync.service also waits for), or
  - the clock is past a floor: the later of this release's date and the newest file in the state
    directory (the gateway wrote it, so the clock was at least that late then).

The floor catches a clock that starts at 1970; it cannot catch a clock restored to the last shutdown
time. On the image that case is covered by systemd-time-wait-sync.service, which holds
time-sync.target (and so the gateway, ordered after it) until the first NTP answer.
"""

from __future__ import annotations

import asyncio
import calendar
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from edge.util.clock import now_ms as wall_ms

__all__ = ["RELEASE_FLOOR_MS", "SYNCHRONIZED_FLAG", "clock_floor_ms", "hold_until_clock_set", "wait_for_clock"]

# No reading can be older than the software that reads it: the date of this release, raised at each release.
RELEASE_FLOOR_MS = calendar.timegm((2026, 11, 1, 0, 0, 0)) * 1000
SYNCHRONIZED_FLAG = Path("/run/systemd/timesync/synchronized")


def clock_floor_ms(state_dir: Path) -> int:
    """The earliest time the clock can honestly show: the release date, or later if the state dir says so."""
    newest = RELEASE_FLOOR_MS
    try:
        entries = list(state_dir.iterdir())
    except OSError:
        return newest
    for entry in entries:
        try:
            newest = max(newest, int(entry.stat().st_mtime * 1000))
        except OSError:
            continue  # removed while we looked: it has no say
    return newest


async def wait_for_clock(
    floor_ms: int,
    *,
    synchronized: Path = SYNCHRONIZED_FLAG,
    now_ms: Callable[[], int] = wall_ms,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    on_wait: Callable[[int, int], None] = lambda _now, _floor: None,
    poll_s: float = 1.0,
) -> int:
    """Return once the clock is synchronised or past ``floor_ms``; ``on_wait(now, floor)`` is called once if it had to wait.

    Returns how many times it polled (0: the clock was fine at once).
    """
    polls = 0
    while not synchronized.exists() and now_ms() < floor_ms:
        if polls == 0:
            on_wait(now_ms(), floor_ms)
        polls += 1
        await sleep(poll_s)
    return polls


async def hold_until_clock_set(state_dir: Path) -> None:
    """The gateway's start: wait for a believable clock, saying so once in the log and in systemd's status.

    While waiting, systemd's start timeout is extended a poll at a time: a pole with no network yet
    is waiting, not hung.
    """
    import logging

    from edge.notify import Notifier

    log = logging.getLogger("ocn.clock")
    notifier = Notifier()

    def on_wait(now: int, floor: int) -> None:
        log.warning(
            "clock not yet synchronised; holding readings until it is",
            extra={"clock": _iso(now), "floor": _iso(floor), "waits_for": str(SYNCHRONIZED_FLAG)},
        )
        notifier.status("waiting for the clock to be synchronised")

    async def sleep(seconds: float) -> None:
        notifier.send(f"EXTEND_TIMEOUT_USEC={int((seconds + 30) * 1_000_000)}")
        await asyncio.sleep(seconds)

    try:
        if await wait_for_clock(clock_floor_ms(state_dir), on_wait=on_wait, sleep=sleep):
            log.info("clock synchronised; starting", extra={"clock": _iso(wall_ms())})
    finally:
        notifier.close()


def _iso(ms: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ms / 1000))

"""What this machine charges a process for waking up: the CPU time of an idle asyncio loop woken by a timer, by how long it slept.

    .venv/bin/python -m bench.wakeups [--seconds 4]

A gateway polling one meter every second is idle almost all the time: each poll is two wake-ups
(the poll's timer, then the meter's reply a few milliseconds later) and a few hundred
microseconds of Python between them.  What a wake-up costs depends on the machine and on how long
the process slept: after a long sleep its code and data are out of the CPU's caches (and on a
virtual machine an idle virtual CPU is descheduled by the host), so the same few Python steps
cost several times more.  Here a loop does nothing but ``await asyncio.sleep(period)``, and the
CPU time it is charged per wake-up (``/proc/self/schedstat``, nanoseconds, the scheduler's own
figure; process_time beside it) is printed for periods from 1 ms to 1 s.  The last line is the
floor this puts under bench.gateway_load's meter (one wake-up after ~1 s, one after ~2 ms, every
second, for 30 readings), before any of the gateway's own work.  Nothing passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from pathlib import Path

PERIODS_S = (0.001, 0.002, 0.01, 0.1, 1.0)
SCHEDSTAT = Path("/proc/thread-self/schedstat")


def _run_ns() -> int:
    """CPU time this thread has run, in nanoseconds (the first field of schedstat)."""
    return int(SCHEDSTAT.read_text().split()[0])


async def _sleeps(period_s: float, count: int) -> tuple[float, float]:
    """(schedstat µs, process_time µs) per wake-up of ``count`` sleeps of ``period_s``."""
    await asyncio.sleep(period_s)  # the first wake-up settles the loop's own set-up
    ran, cpu = _run_ns(), time.process_time()
    for _ in range(count):
        await asyncio.sleep(period_s)
    return (_run_ns() - ran) / count / 1000, (time.process_time() - cpu) / count * 1e6


def measure(seconds: float) -> dict[float, tuple[float, float]]:
    """Per period: the CPU per wake-up, over about ``seconds`` of sleeping (at least 5 wake-ups)."""
    return {period: asyncio.run(_sleeps(period, max(5, round(seconds / period)))) for period in PERIODS_S}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of sleeping per period (default 4; at least 5 wake-ups)")
    args = parser.parse_args(argv)
    figures = measure(args.seconds)
    print("an idle asyncio loop woken by a timer: CPU charged per wake-up, by how long it slept")
    print(f"{'slept':>8}  {'schedstat µs':>12}  {'process_time µs':>15}")
    for period, (ran_us, cpu_us) in figures.items():
        print(f"{period * 1000:>6g} ms  {ran_us:>12.1f}  {cpu_us:>15.1f}")
    floor_ms = (figures[1.0][0] + figures[0.002][0]) / 1000
    print(f"a 1 s poll of one meter (a wake-up after ~1 s and one after ~2 ms a second): {floor_ms:.3f} ms a second, "
          f"{floor_ms / 30:.4f} CPU-s per 1,000 readings of 30 values, before any of the gateway's own work")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

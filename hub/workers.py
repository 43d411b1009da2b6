"""Heavy ingest work off the event loop: a fixed set of worker threads behind a bounded queue.

Measured (docs/architecture.md, "Heavy work off the event loop"): Ed25519 verification and
zstd decompression let the event loop run while they work in a thread; cbor2 and the
payload decoder hold the GIL in proportion to the items and readings of one batch, which the
readings budget bounds per device. Worker processes were measured too and lost: the decoded
readings must come back to the process that stores them, and unpickling the readings of one
large batch held that process's GIL longer than decoding them does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["Busy", "Workers"]

T = TypeVar("T")


class Busy(Exception):
    """Every worker is busy and the queue is full: answer 503 with Retry-After, do not wait."""


class Workers:
    """``workers`` threads doing at most ``workers`` jobs at once, with at most ``queue`` more waiting."""

    def __init__(self, *, workers: int, queue: int) -> None:
        if workers < 1 or queue < 0:
            raise ValueError(f"ingest workers {workers!r} and queue {queue!r}: expected at least 1 worker and a queue of 0 or more")
        self.workers = workers
        self.queue = queue
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ocn-ingest")
        self._admitted = 0

    @property
    def admitted(self) -> int:
        """Jobs running or queued now."""
        return self._admitted

    async def run(self, job: Callable[..., T], *args: object) -> T:
        """``job(*args)`` in a worker thread; raises :class:`Busy` at once if the queue is full."""
        if self._admitted >= self.workers + self.queue:
            raise Busy(f"{self._admitted} ingest jobs running or queued, the most this hub takes")
        self._admitted += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, job, *args)
        finally:
            self._admitted -= 1

    def close(self) -> None:
        """Stop the threads once their current jobs end; queued jobs are dropped."""
        self._executor.shutdown(wait=False, cancel_futures=True)

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
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

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
        self._lock = threading.Lock()

    @property
    def admitted(self) -> int:
        """Jobs running or queued now."""
        return self._admitted

    async def run(self, job: Callable[..., T], *args: object) -> T:
        """``job(*args)`` in a worker thread; raises :class:`Busy` at once if the queue is full."""
        with self._lock:
            if self._admitted >= self.workers + self.queue:
                raise Busy(f"{self._admitted} ingest jobs running or queued, the most this hub takes")
            self._admitted += 1
        # Released when the job itself ends, not when its request does: a client that hangs up
        # must not free a place while its job still runs.
        future = self._executor.submit(job, *args)
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _release(self, _: Future[Any]) -> None:
        with self._lock:
            self._admitted -= 1

    def close(self) -> None:
        """Stop the threads once their current jobs end; queued jobs are dropped."""
        self._executor.shutdown(wait=False, cancel_futures=True)

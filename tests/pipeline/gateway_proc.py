"""A gateway-like process for the crash tests: readings → Batcher → Spool → Uplink, until killed or drained.

    python -m tests.pipeline.gateway_proc STATE_DIR HUB_URL [--stop-after SECONDS]

Each reading's value is ``boot_epoch * 1_000_000 + n``, so the test can tell every
reading apart.  Each stored batch is appended to ``STATE_DIR/sealed.log`` after
`Spool.put` returns, so the test knows which batches the spool had promised to keep.
With ``--stop-after`` the process produces for that long, then shuts down cleanly:
flush, deliver the whole spool, mark a clean shutdown.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

from edge.batcher import Batcher
from edge.protocol import load_private_key
from edge.spool import Spool, StoredBatch
from edge.types import Channel, Reading
from edge.uplink import Uplink

COUNTER = Channel("gen-1/counter", unit="count", resolution=1.0)


async def main(state_dir: Path, hub_url: str, stop_after: float | None) -> int:
    key = load_private_key(state_dir / "device.key")
    spool = await Spool.open(state_dir / "spool.db", max_bytes=100_000_000)
    boot = await spool.begin_boot()
    log_fd = os.open(state_dir / "sealed.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    uplink = Uplink(
        spool=spool,
        hub_url=hub_url,
        private_key=key,
        device_id="pole-0042",
        timeout_s=1.0,
        status_interval_s=0.3,
        backoff_initial_s=0.01,
        backoff_max_s=0.1,
        idle_poll_s=0.05,
    )

    def on_stored(batch: StoredBatch) -> None:
        os.write(log_fd, f"{batch.id.boot_epoch} {batch.id.seq} {batch.readings}\n".encode())
        uplink.wake()

    batcher = Batcher(
        device_id="pole-0042",
        private_key=key,
        spool=spool,
        boot_epoch=boot.boot_epoch,
        policy_digest=b"\x01" * 32,
        flush_interval_s=0.02,
        max_readings=40,
        channels=[COUNTER],
        on_stored=on_stored,
    )
    tasks = [asyncio.create_task(batcher.run()), asyncio.create_task(uplink.run())]
    print("ready", boot.boot_epoch, flush=True)
    start = time.monotonic()
    n = 0
    while stop_after is None or time.monotonic() - start < stop_after:
        batcher.add_nowait(Reading(COUNTER.id, time.time_ns() // 1_000_000, boot.boot_epoch * 1_000_000 + n))
        n += 1
        await asyncio.sleep(0.001)
    tasks[0].cancel()
    await batcher.flush()
    while spool.stats()["batches"]:
        await asyncio.sleep(0.02)
    await uplink.send_status()
    tasks[1].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await uplink.aclose()
    await spool.mark_clean_shutdown()
    await spool.close()
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("state_dir", type=Path)
    parser.add_argument("hub_url")
    parser.add_argument("--stop-after", type=float)
    args = parser.parse_args()
    sys.exit(asyncio.run(main(args.state_dir, args.hub_url, args.stop_after)))

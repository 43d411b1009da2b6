"""A gateway-like process for the crash and full-disk tests: readings → Batcher → Spool → Uplink, until killed or drained.

    python -m tests.pipeline.gateway_proc STATE_DIR HUB_URL [--stop-after SECONDS] [--log]
        [--sealed-log PATH] [--backpressure] [--store-retry SECONDS]

Each reading's value is ``boot_epoch * 1_000_000 + n``, so the test can tell every
reading apart.  Each stored batch is appended to ``STATE_DIR/sealed.log`` after
`Spool.put` returns, so the test knows which batches the spool had promised to keep.
With ``--stop-after`` (or on SIGTERM) the process stops producing, then shuts down
cleanly: flush, deliver the whole spool, mark a clean shutdown.

``--log`` writes the gateway's log lines (logfmt, info and above) to stderr;
``--sealed-log`` keeps the log of stored batches elsewhere than STATE_DIR (which a
test may fill); ``--backpressure`` hands readings over with ``await batcher.add``
as the runtime does, instead of ``add_nowait``; ``--store-retry`` is the batcher's
retry interval while the spool cannot write.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from edge.batcher import Batcher
from edge.logs import setup_logging
from edge.protocol import load_private_key
from edge.protocol.types import Channel, Reading
from edge.spool import Spool, StoredBatch
from edge.transport import open_transport
from edge.uplink import Uplink

COUNTER = Channel("gen-1/counter", unit="count", resolution=1.0)


async def main(
    state_dir: Path,
    hub_url: str,
    stop_after: float | None,
    *,
    sealed_log: Path | None = None,
    backpressure: bool = False,
    store_retry_s: float = 5.0,
) -> int:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    key = load_private_key(state_dir / "device.key")
    spool = await Spool.open(state_dir / "spool.db", max_bytes=100_000_000)
    boot = await spool.begin_boot()
    log_fd = os.open(sealed_log or state_dir / "sealed.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    uplink = Uplink(
        spool=spool,
        transport=open_transport(hub_url, timeout_s=1.0),
        private_key=key,
        device_id="pole-0042",
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
        store_retry_s=store_retry_s,
    )
    tasks = [asyncio.create_task(batcher.run()), asyncio.create_task(uplink.run())]
    print("ready", boot.boot_epoch, flush=True)
    start = time.monotonic()
    n = 0
    while not stop.is_set() and (stop_after is None or time.monotonic() - start < stop_after):
        reading = Reading(COUNTER.id, time.time_ns() // 1_000_000, boot.boot_epoch * 1_000_000 + n)
        if backpressure:
            await batcher.add(reading)
        else:
            batcher.add_nowait(reading)
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
    parser.add_argument("--log", action="store_true")
    parser.add_argument("--sealed-log", type=Path)
    parser.add_argument("--backpressure", action="store_true")
    parser.add_argument("--store-retry", type=float, default=5.0)
    args = parser.parse_args()
    if args.log:
        setup_logging("info", stream=sys.stderr)
    sys.exit(
        asyncio.run(
            main(
                args.state_dir,
                args.hub_url,
                args.stop_after,
                sealed_log=args.sealed_log,
                backpressure=args.backpressure,
                store_retry_s=args.store_retry,
            )
        )
    )

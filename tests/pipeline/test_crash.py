"""SIGKILL in the middle of sealing, writing and sending loses no sealed batch and duplicates nothing."""

from __future__ import annotations

import asyncio
import random
import signal
import sys
from collections import Counter
from pathlib import Path

from edge.protocol import load_public_key, write_keypair
from edge.spool import Spool
from tests.pipeline.receiver import Receiver

REPO = Path(__file__).resolve().parents[2]
KILLS = 4


async def start_gateway(state_dir: Path, url: str, *extra: str) -> asyncio.subprocess.Process:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.pipeline.gateway_proc", str(state_dir), url, *extra,
        cwd=REPO, stdout=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 30)
    assert line.startswith(b"ready"), line
    return proc


async def stored_in(state_dir: Path, epoch: int) -> None:
    """Wait until the gateway of boot epoch ``epoch`` has stored a batch, so each kill hits a working gateway."""
    log = state_dir / "sealed.log"
    async with asyncio.timeout(30):
        while not (log.exists() and any(line.startswith(f"{epoch} ") for line in log.read_text().splitlines())):
            await asyncio.sleep(0.02)


async def test_sigkill_while_writing_and_sending_loses_and_duplicates_nothing(tmp_path):
    _, public_path = write_keypair(tmp_path)
    receiver = Receiver(latency_s=(0.0, 0.03))
    receiver.trust(load_public_key(public_path))
    url = await receiver.start()
    rng = random.Random(9)
    try:
        for epoch in range(1, KILLS + 1):
            proc = await start_gateway(tmp_path, url)
            await stored_in(tmp_path, epoch)
            await asyncio.sleep(rng.uniform(0.1, 0.5))
            proc.send_signal(signal.SIGKILL)
            assert await proc.wait() == -signal.SIGKILL
        proc = await start_gateway(tmp_path, url, "--stop-after", "0.5")
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    finally:
        await receiver.stop()

    promised = {
        (int(epoch), int(seq)): int(n)
        for epoch, seq, n in (line.split() for line in (tmp_path / "sealed.log").read_text().splitlines())
    }
    received = {(epoch, seq) for _, epoch, seq in receiver.batches}
    assert set(promised) <= received, "a batch the spool had stored never reached the hub"
    assert {epoch for epoch, _ in promised} == set(range(1, KILLS + 2)), "some run stored no batch at all"

    values = Counter(value for _, _, value in receiver.readings())
    assert max(values.values()) == 1, "a reading reached the hub twice"
    assert sum(promised.values()) <= len(values)

    spool = await Spool.open(tmp_path / "spool.db", max_bytes=100_000_000)
    assert spool.check() == []
    assert spool.stats()["batches"] == 0
    assert spool.counters()["unclean_stops"] == KILLS
    last = receiver.status_reports[-1]
    assert (last["boot_epoch"], last["unclean_stops"]) == (KILLS + 1, KILLS)
    last_run = [b for (_, epoch, _), b in receiver.batches.items() if epoch == KILLS + 1]
    assert last_run and all(b.header.counters["unclean_stops"] == KILLS for b in last_run)
    await spool.close()

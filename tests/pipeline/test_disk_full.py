"""A full disk under the spool: the gateway keeps going, says so once, and loses or duplicates nothing.

The spool lives on a real tmpfs of a few megabytes (tests/pipeline/small_disk.py);
a ballast file fills it while a real gateway process (tests/pipeline/gateway_proc.py)
seals and sends to a real receiving hub on loopback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge.batcher import Batcher
from edge.protocol import load_public_key, open_batch, write_keypair
from edge.protocol.types import Channel, Kind, Reading
from edge.spool import Spool, SpoolError
from edge.transport import open_transport
from edge.uplink import Uplink
from tests.pipeline.conftest import seal_readings
from tests.pipeline.receiver import Receiver
from tests.pipeline.small_disk import SmallDisk, small_disk

REPO = Path(__file__).resolve().parents[2]
DISK_BYTES = 8 << 20
CANNOT_WRITE = "spool cannot write"
WRITABLE_AGAIN = "spool writable again"
# gateway_proc seals at most 40 readings a batch; while the spool refuses, the batcher
# holds at most 6 batches before `add` holds the producer back (docs/spool-and-uplink.md).
HELD_AT_MOST = 6 * 40


@pytest.fixture
def disk(tmp_path) -> Iterator[SmallDisk]:
    with small_disk(tmp_path / "disk", size=DISK_BYTES) as mounted:
        yield mounted


class Gateway:
    """One gateway_proc run with its state on the small disk; its log lines are collected as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, state: Path, url: str, sealed_log: Path, *extra: str) -> Gateway:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.pipeline.gateway_proc", str(state), url,
            "--log", "--backpressure", "--store-retry", "0.05", "--sealed-log", str(sealed_log), *extra,
            cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.startswith(b"ready"), line
        return cls(proc)

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.lines.append(line.decode())

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def errors(self) -> list[str]:
        return [line for line in self.lines if "level=error" in line or "Traceback" in line]

    async def until_logged(self, text: str, timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while not self.count(text):
                assert self.proc.returncode is None, "gateway exited:\n" + "".join(self.lines)
                await asyncio.sleep(0.02)

    async def wait(self, timeout: float = 60.0) -> int:
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        await self._reader
        return code


def sealed(sealed_log: Path) -> dict[tuple[int, int], int]:
    """(boot epoch, seq) → readings of every batch the spool had stored, from gateway_proc's log."""
    if not sealed_log.exists():
        return {}
    return {
        (int(epoch), int(seq)): int(n) for epoch, seq, n in (line.split() for line in sealed_log.read_text().splitlines())
    }


async def until(predicate, timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


async def test_a_full_disk_while_readings_flow_is_logged_once_and_every_reading_arrives_once(tmp_path, disk):
    state = disk.path / "state"
    _, public_path = write_keypair(state)
    receiver = Receiver()
    receiver.trust(load_public_key(public_path))
    url = await receiver.start()
    sealed_log = tmp_path / "sealed.log"
    try:
        gateway = await Gateway.start(state, url, sealed_log)
        await until(lambda: len(sealed(sealed_log)) >= 5)
        disk.fill()
        await gateway.until_logged(CANNOT_WRITE)
        full_from_ms = now_ms()
        stored_before = len(sealed(sealed_log))
        # Full for 50 flush intervals and 20 store retries: still running, still one line.
        await asyncio.sleep(1.0)
        assert gateway.proc.returncode is None
        assert len(sealed(sealed_log)) == stored_before, "a batch was stored on a full disk"
        full_until_ms = now_ms()
        disk.free()
        await gateway.until_logged(WRITABLE_AGAIN)
        await until(lambda: len(sealed(sealed_log)) >= stored_before + 10)
        gateway.proc.send_signal(signal.SIGTERM)
        assert await gateway.wait() == 0, "".join(gateway.lines)
    finally:
        await receiver.stop()

    assert gateway.count(CANNOT_WRITE) == 1
    assert gateway.count(WRITABLE_AGAIN) == 1
    assert len(gateway.errors()) == 1, "".join(gateway.errors())
    assert "is full" in gateway.errors()[0] and str(state) in gateway.errors()[0]

    received = receiver.readings()
    values = Counter(value for _, _, value in received)
    assert max(values.values()) == 1, "a reading reached the hub twice"
    assert sorted(values) == [1_000_000 + n for n in range(len(values))], "a reading was lost"
    assert sorted(seq for _, _, seq in receiver.batches) == list(range(len(receiver.batches))), "a gap in seq"
    assert set(sealed(sealed_log)) == {(epoch, seq) for _, epoch, seq in receiver.batches}
    # Backpressure: while the spool refused, the producer was held back instead of memory growing.
    made_while_full = sum(full_from_ms <= ts <= full_until_ms for _, ts, _ in received)
    assert made_while_full <= HELD_AT_MOST

    spool = await Spool.open(state / "spool.db", max_bytes=100_000_000)
    assert spool.check() == []
    assert spool.stats()["batches"] == 0
    assert spool.counters()["unclean_stops"] == 0
    await spool.close()


async def test_acks_on_a_full_disk_neither_stop_nor_flood_delivery_and_resent_batches_are_deduplicated(tmp_path, disk):
    state = disk.path / "state"
    _, public_path = write_keypair(state)
    receiver = Receiver(default="fail")
    receiver.trust(load_public_key(public_path))
    url = await receiver.start()
    sealed_log = tmp_path / "sealed.log"
    try:
        gateway = await Gateway.start(state, url, sealed_log)
        # The hub is down: a backlog builds up in the spool.
        await until(lambda: len(sealed(sealed_log)) >= 30)
        disk.fill()
        await gateway.until_logged(CANNOT_WRITE)
        # The hub is back while the disk is full: every ack's deletion needs disk space there is not.
        receiver.default = "ok"
        backlog = set(sealed(sealed_log))
        await until(lambda: backlog <= {(epoch, seq) for _, epoch, seq in receiver.batches})
        await asyncio.sleep(0.5)
        assert gateway.proc.returncode is None
        assert gateway.count(CANNOT_WRITE) == 1 and len(gateway.errors()) == 1, "".join(gateway.lines)
        # Power cut while the disk is still full: acked batches whose deletion never reached the disk remain.
        gateway.proc.send_signal(signal.SIGKILL)
        assert await gateway.wait() == -signal.SIGKILL
        disk.free()
        gateway = await Gateway.start(state, url, sealed_log, "--stop-after", "0.3")
        assert await gateway.wait() == 0, "".join(gateway.lines)
        assert gateway.errors() == []
    finally:
        await receiver.stop()

    assert any(posts > 1 for posts in receiver.posts.values()), "no acked batch was sent again after the restart"
    values = Counter(value for _, _, value in receiver.readings())
    assert max(values.values()) == 1, "a reading reached the hub twice"
    promised = sealed(sealed_log)
    received = {(epoch, seq) for _, epoch, seq in receiver.batches}
    assert set(promised) <= received, "a batch the spool had stored never reached the hub"
    assert sum(promised.values()) == len(values)
    for epoch in (1, 2):
        seqs = sorted(seq for _, e, seq in receiver.batches if e == epoch)
        assert seqs == list(range(len(seqs))), f"a gap in the sequence numbers of boot epoch {epoch}"

    spool = await Spool.open(state / "spool.db", max_bytes=100_000_000)
    assert spool.check() == []
    assert spool.stats()["batches"] == 0
    await spool.close()


async def test_a_split_batch_cut_short_by_a_full_disk_is_finished_without_duplicating_its_stored_part(disk, device_key):
    spool = await Spool.open(disk.path / "spool.db", max_bytes=50_000_000)
    await spool.begin_boot()
    note = Channel("cam-1/note", kind=Kind.STRING)
    batcher = Batcher(
        device_id="pole-0042", private_key=device_key, spool=spool, boot_epoch=spool.boot_epoch,
        policy_digest=b"\x01" * 32, channels=[note], max_readings=1000,
    )
    # About 1.5 MB once compressed: over the 1 MiB batch limit, so it is sealed as two halves.
    readings = [Reading(note.id, 1_790_000_000_000 + i, os.urandom(15000).hex()) for i in range(100)]
    for reading in readings:
        batcher.add_nowait(reading)
    disk.fill(leave=1_000_000)  # room for the first half only
    with pytest.raises(sqlite3.OperationalError, match="full"):
        await batcher.flush()
    [first] = spool.oldest(10)
    assert (first.id.seq, batcher.unsealed) == (0, 100 - first.readings)
    disk.free()
    await batcher.flush()
    batches = [open_batch(b.data, device_key.public_key()) for b in spool.oldest(10)]
    assert [b.header.seq for b in batches] == [0, 1]
    assert [r.value for b in batches for r in b.readings] == [r.value for r in readings]
    assert batcher.unsealed == 0 and spool.check() == []
    await spool.close()


def write_gateway_config(tmp_path: Path, state: Path) -> Path:
    """A gateway config whose state (key, spool) is ``state``; it never gets as far as reading its one meter."""
    (tmp_path / "policy.toml").write_text(
        '[policy]\nname = "energy"\nversion = "1"\norganisation = "Test city"\ncontact = "it@test.example"\n'
        'purpose = "testing a full disk"\nretention = "none"\n\n[channels."meter-1/*"]\nrule = "keep"\npurpose = "energy"\n'
    )
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[gateway]\nid = "pole-0042"\nstate_dir = "{state}"\n\n'
        '[[buses]]\nname = "meters"\ntype = "modbus-tcp"\nhost = "127.0.0.1"\ntcp_port = 1\n\n'
        '[[devices]]\nname = "meter-1"\ndriver = "modbus"\nbus = "meters"\naddress = 1\n'
        '[devices.options]\nprofile = "eastron-sdm120"\n\n'
        '[privacy]\npolicy = "policy.toml"\n\n[uplink]\nhub = ""\n\n[local_api]\nenabled = false\n'
    )
    return config


async def test_a_gateway_started_on_a_full_disk_exits_naming_the_spool_and_the_full_filesystem(tmp_path, disk):
    state = disk.path / "state"
    write_keypair(state)
    config = write_gateway_config(tmp_path, state)
    disk.fill()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edge.cli", "run", str(config),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, (out + err).decode()
    message = err.decode().strip().splitlines()[-1]
    assert message.startswith(f"ocn-edge run: spool {state / 'spool.db'}: ")
    assert f"the filesystem holding {state} is full (0 bytes free of {DISK_BYTES})" in message
    assert "Traceback" not in (out + err).decode()
    # It never ran, so it must not claim to have stopped cleanly.
    assert "stopped cleanly" not in out.decode() and "start abandoned" in out.decode()


async def test_a_run_that_cannot_record_its_start_on_a_full_disk_is_refused_and_the_spool_stays_intact(disk, device_key):
    running = await Spool.open(disk.path / "spool.db", max_bytes=1_000_000)
    await running.begin_boot()
    kept = running.put(seal_readings(device_key, running, 20), readings=20)
    assert kept is not None
    disk.fill()
    # A second start while the first never stopped (its write-ahead log is still there), as after a crash.
    restarted = await Spool.open(disk.path / "spool.db", max_bytes=1_000_000)
    with pytest.raises(SpoolError) as refused:
        await restarted.begin_boot()
    assert str(refused.value).startswith(f"spool {disk.path / 'spool.db'}: cannot record the start of this run: ")
    assert "is full" in str(refused.value) and "batches already in the spool are safe" in str(refused.value)
    assert [b.data for b in restarted.oldest(10)] == [kept.data]
    assert restarted.check() == []
    disk.free()
    assert (await restarted.begin_boot()).boot_epoch == 2
    await restarted.close()
    await running.close()


async def test_a_rejected_batch_that_cannot_be_quarantined_on_a_full_disk_pauses_delivery_with_one_line(
    disk, device_key, caplog
):
    caplog.set_level(logging.INFO)
    spool = await Spool.open(disk.path / "spool.db", max_bytes=1_000_000)
    await spool.begin_boot()
    for _ in range(3):
        spool.put(seal_readings(device_key, spool, 10), readings=10)
    receiver = Receiver(default="reject")
    receiver.trust(device_key.public_key())
    await receiver.start()
    uplink = Uplink(
        spool=spool, transport=open_transport(receiver.url), private_key=device_key, device_id="pole-0042",
        status_interval_s=0, backoff_initial_s=0.01, backoff_max_s=0.05, idle_poll_s=0.05,
    )
    disk.fill()
    task = asyncio.create_task(uplink.run())
    try:
        await until(lambda: any("delivery paused" in r.getMessage() for r in caplog.records))
        await asyncio.sleep(0.5)
        assert len(receiver.behaviours) == 1, "the rejected batch was sent again while it could not be quarantined"
        disk.free()
        await until(lambda: spool.stats()["quarantine_batches"] == 3, timeout=20)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await uplink.aclose()
        await receiver.stop()
    messages = Counter(r.getMessage() for r in caplog.records if r.name in ("ocn.spool", "ocn.uplink"))
    assert messages["cannot read or update the spool; delivery paused"] == 1
    assert messages["spool usable again; delivery resumed"] == 1
    assert messages[WRITABLE_AGAIN] == 1
    assert sum(m.startswith(CANNOT_WRITE) for m in messages.elements()) == 1
    assert spool.stats()["batches"] == 0 and spool.check() == []
    await spool.close()

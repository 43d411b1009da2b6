"""Only their owner may read a gateway's state and spool: directories it creates are 0700, SQLite files and journals 0600."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.config import load_config
from edge.demo import DEMO_POLICY
from edge.enrol import enrol
from edge.private import private_database, private_directory
from edge.runtime import Gateway
from edge.spool import Spool
from hilsim import run_scenario
from hub.app import run_hub
from tests.hub.test_gateway_sync import fast_batches, wait_for
from tests.pipeline.conftest import seal_readings


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def sqlite_files(database: Path) -> dict[str, int]:
    """The modes of a database and whichever of its -wal and -shm exist."""
    return {p.name: mode(p) for p in (database, Path(f"{database}-wal"), Path(f"{database}-shm")) if p.exists()}


@pytest.fixture(autouse=True)
def lenient_umask() -> Iterator[None]:
    """The usual umask of a login shell (022): what made hub.db 0644."""
    previous = os.umask(0o022)
    yield
    os.umask(previous)


async def test_a_new_spool_its_journal_and_its_new_directories_are_private(tmp_path: Path, device_key: Ed25519PrivateKey) -> None:
    path = tmp_path / "var" / "ocn" / "spool.db"
    spool = await Spool.open(path, max_bytes=1_000_000)
    try:
        await spool.begin_boot()
        spool.put(seal_readings(device_key, spool, 5), readings=5)
        files = sqlite_files(path)
        assert set(files) == {"spool.db", "spool.db-wal", "spool.db-shm"}  # the journal exists while the spool is open
        assert files == dict.fromkeys(files, 0o600)
        assert (mode(path.parent), mode(path.parent.parent)) == (0o700, 0o700)
    finally:
        await spool.close()


async def test_a_spool_an_older_version_left_readable_is_made_private_when_opened(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    conn.execute("INSERT INTO t VALUES (1)")  # -wal and -shm as the old spool left them, 0644
    assert sqlite_files(path) == {"spool.db": 0o644, "spool.db-wal": 0o644, "spool.db-shm": 0o644}
    private_database(path)
    assert sqlite_files(path) == {"spool.db": 0o600, "spool.db-wal": 0o600, "spool.db-shm": 0o600}
    conn.close()


def test_an_existing_directory_keeps_the_mode_its_operator_gave_it(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    os.chmod(shared, 0o755)
    private_directory(shared / "a" / "b")
    assert (mode(shared), mode(shared / "a"), mode(shared / "a" / "b")) == (0o755, 0o700, 0o700)


async def test_a_running_gateway_and_hub_keep_their_state_private(tmp_path: Path) -> None:
    async with run_hub(state_dir=tmp_path / "hub", admin_token="x") as hub, run_scenario("default", seed=3, run_dir=tmp_path / "sim") as sim:
        config_path = tmp_path / "gateway.toml"
        config_path.write_text(sim.gateway_config_toml(state_dir=tmp_path / "gateway", hub=hub.url, gateway_id="pole-0042", policy=str(DEMO_POLICY)))
        config = fast_batches(load_config(config_path))
        await enrol(hub_url=hub.url, token=await hub.create_token(approve=True), device_id="pole-0042", key_path=Path(config.uplink.key))
        gateway = Gateway(config)
        await gateway.start()
        try:
            async def readings_arrive() -> bool:
                return (await hub.counters("pole-0042"))["readings_stored"] > 0

            await wait_for(readings_arrive)
            spool = tmp_path / "gateway" / "spool.db"
            assert mode(tmp_path / "gateway") == 0o700
            assert sqlite_files(spool) == {spool.name: 0o600, f"{spool.name}-wal": 0o600, f"{spool.name}-shm": 0o600}
            others = {p.name: mode(p) for p in (tmp_path / "gateway").rglob("*") if p.name != "device.pub"}  # a public key is public
            assert others == dict.fromkeys(others, 0o600) and "device.key" in others
            assert mode(tmp_path / "hub") == 0o700
            assert sqlite_files(tmp_path / "hub" / "hub.db") == {"hub.db": 0o600, "hub.db-wal": 0o600, "hub.db-shm": 0o600}
        finally:
            await asyncio.wait_for(gateway.stop(drain_timeout_s=5), timeout=30)

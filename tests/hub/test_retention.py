"""Retention runs on both engines: readings older than the retention a gateway's notice states are deleted, younger ones stay."""

from __future__ import annotations

import asyncio
import getpass
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.cli import main
from edge.protocol import BatchHeader, seal_batch
from edge.protocol.types import Reading
from edge.util.clock import now_ms
from hub.app import RunningHub, run_hub
from hub.bounds import Quarantined
from hub.models import IncomingBatch
from hub.retention import DAY_MS, last_run, run_retention
from tests.hub.gateways import CHANNELS, SimGateway, enrol, post_cose
from tests.hub.test_dashboard import NOTICE

RETENTION_DAYS = 30


@dataclass
class Fleet:
    """A running hub, its two gateways, the cutoff of a run made now, and the reading times sent either side of it."""

    hub: RunningHub
    kept: SimGateway  # its notice promises RETENTION_DAYS
    forever: SimGateway  # its notice promises nothing
    cutoff: int
    old: list[int]
    young: list[int]


def batch(gateway: SimGateway, seq: int, times: list[int]) -> bytes:
    header = BatchHeader(device_id=gateway.device_id, key_id=gateway.key_id, boot_epoch=1, seq=seq, policy_digest=b"\x07" * 32, codec="zstd",
                         created_ms=max(times), counters={})
    readings = [Reading(CHANNELS[0].id, ts, 230.0 + i % 10, "V") for i, ts in enumerate(times)]
    return seal_batch(header, CHANNELS[:1], readings, gateway.private_key)


async def stored_times(hub: RunningHub, device_id: str) -> list[int]:
    return sorted(r.ts_ms for r in await hub.store.readings(device_id=device_id, limit=10_000, include_personal=True))


async def start(db_url: str, state_dir: Path, *, interval_s: float) -> AsyncIterator[Fleet]:
    async with run_hub(db=db_url, state_dir=state_dir, admin_token="admin-secret", retention_interval_s=interval_s) as hub, \
            aiohttp.ClientSession() as http:
        kept, forever = SimGateway("pole-kept"), SimGateway("pole-forever")
        now = now_ms()
        cutoff = now - RETENTION_DAYS * DAY_MS
        # 20 readings well past the retention, one just past it in the same batch as one just inside it, one from yesterday.
        old = [cutoff - 40 * DAY_MS + i * 60_000 for i in range(20)] + [cutoff - 3_600_000]
        young = [cutoff + 3_600_000, now - DAY_MS]
        for gateway, notice in ((kept, {**NOTICE, "retention_days": RETENTION_DAYS}), (forever, NOTICE)):
            await enrol(http, hub.url, gateway, await hub.create_token())
            place = {**NOTICE["place"], "gateway_id": gateway.device_id}
            assert (await post_cose(http, f"{hub.url}/oxp/v1/notice", gateway.notice({**notice, "place": place})))[0] == 200
            for seq, times in enumerate((old[:20], [old[20], young[0]], young[1:]), start=1):
                status, answer, _ = await post_cose(http, f"{hub.url}/oxp/v1/batches", batch(gateway, seq, times))
                assert status == 200, answer
        yield Fleet(hub, kept, forever, cutoff, old, young)


@pytest.fixture
async def fleet(db_url: str, tmp_path: Path) -> AsyncIterator[Fleet]:
    """On each engine; the hub's own schedule is a day away, so runs happen only when a test makes one."""
    async for running in start(db_url, tmp_path / "hub", interval_s=86400):
        yield running


async def test_readings_past_the_retention_are_gone_after_a_run_and_younger_ones_stay(fleet: Fleet) -> None:
    assert await stored_times(fleet.hub, "pole-kept") == sorted(fleet.old + fleet.young)
    run = await run_retention(fleet.hub.store, actor="cli:test")
    assert (run.readings_deleted, run.gateways, run.per_gateway) == (21, 1, {"pole-kept": 21})
    # The batch that straddled the cutoff kept its younger reading.
    assert await stored_times(fleet.hub, "pole-kept") == fleet.young
    assert await stored_times(fleet.hub, "pole-forever") == sorted(fleet.old + fleet.young)  # no promise, nothing deleted
    again = await run_retention(fleet.hub.store, actor="cli:test")
    assert again.readings_deleted == 0
    entries = [e for e in await fleet.hub.store.audit_log() if e.action == "retention.run"]
    assert [(e.actor, e.target) for e in entries] == [("cli:test", "retention"), ("cli:test", "retention")]
    assert "deleted 21 reading(s)" in entries[1].detail
    last = await last_run(fleet.hub.store)
    assert last is not None and last.readings_deleted == 0 and last.finished_ms == entries[0].at_ms


async def test_a_dry_run_counts_and_deletes_nothing_nor_records_a_run(fleet: Fleet) -> None:
    run = await run_retention(fleet.hub.store, dry_run=True)
    assert (run.dry_run, run.readings_deleted, run.per_gateway) == (True, 21, {"pole-kept": 21})
    assert await stored_times(fleet.hub, "pole-kept") == sorted(fleet.old + fleet.young)
    assert await last_run(fleet.hub.store) is None and not [e for e in await fleet.hub.store.audit_log() if e.action == "retention.run"]


async def test_quarantined_readings_received_before_the_retention_go_too(fleet: Fleet) -> None:
    long_ago = fleet.cutoff - DAY_MS
    odd = Reading(CHANNELS[0].id, 5, 1.0, "V")  # a time in 1970: quarantined on arrival
    for seq, received in ((90, long_ago), (91, now_ms())):
        await fleet.hub.store.store_batch(IncomingBatch(
            device_id="pole-kept", key_id=fleet.kept.key_id, boot_epoch=1, seq=seq, created_ms=received, received_ms=received,
            policy_digest=b"\x07" * 32, codec="zstd", counters={}, channels=CHANNELS[:1], readings=[],
            quarantined=[Quarantined(odd, "time_before_floor")]))
    assert await fleet.hub.store.quarantined("pole-kept") == {"time_before_floor": 2}
    run = await run_retention(fleet.hub.store)
    assert run.quarantined_deleted == 1 and await fleet.hub.store.quarantined("pole-kept") == {"time_before_floor": 1}


async def test_the_hub_runs_retention_on_its_schedule_and_metrics_and_home_page_say_so(db_url: str, tmp_path: Path) -> None:
    async for fleet in start(db_url, tmp_path / "hub", interval_s=0.2):
        async with asyncio.timeout(60):  # a guard against a hang, not a measurement: the first run comes 0.2 s after start
            while await last_run(fleet.hub.store) is None:
                await asyncio.sleep(0.05)
        assert fleet.young[0] == (await stored_times(fleet.hub, "pole-kept"))[0]
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{fleet.hub.url}/metrics") as resp:
                families = {f.name: f for f in text_string_to_metric_families(await resp.text())}
            async with http.get(f"{fleet.hub.url}/") as resp:
                home = await resp.text()
        assert families["ocn_hub_retention_last_run_timestamp_seconds"].samples[0].value > 0
        assert {s.labels["store"] for s in families["ocn_hub_retention_last_run_deleted"].samples} == {"readings", "quarantine"}
        assert "Last run:" in home
        assert any(e.actor == "hub" and e.action == "retention.run" for e in await fleet.hub.store.audit_log())


def test_retention_run_from_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def setup() -> None:
        async for _ in start(f"sqlite:///{tmp_path / 'hub.db'}", tmp_path, interval_s=86400):
            pass

    asyncio.run(setup())
    assert main(["hub", "retention", "run", "--dry-run", "--state-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "would delete 21 reading(s) and 0 quarantined reading(s) older than the retention their gateway's notice states (1 gateway(s) state one)",
        "  pole-kept: 21"]
    assert main(["hub", "retention", "run", "--state-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.startswith("deleted 21 reading(s)")
    assert main(["hub", "audit", "export", "--format", "csv", "--state-dir", str(tmp_path)]) == 0
    assert f"cli:{getpass.getuser()},retention.run,retention" in capsys.readouterr().out

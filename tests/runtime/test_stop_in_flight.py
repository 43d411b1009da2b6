"""A clean stop while a batch is on its way to the hub: its answer is waited for (a little while), so a batch the hub
stored is not left in the spool to be sent again at the next start; and the stop starts no new batch.

A real hub behind hil-sim's uplink proxy, which holds every chunk 0.4 s each way; the gateway reads an SDS011 on a real
pty and seals a batch a second.  The test holds one batch at the transport until the stop has begun to wind the uplink
down, then lets it go: it is on its way, on the wire, for about 0.8 s after the stop began, whatever the time the stop
took to finish its polls.  The 2-minute soak of a clean-clone CI run once found such a batch in the spool and at the hub
alike (docs/soak.md, "in flight")."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bench.soak.evidence import hub_batch_ids
from edge.config import load_config
from edge.enrol import enrol
from edge.runtime import Gateway
from edge.spool import Spool
from edge.transport import Ack, Refused
from hilsim.netproxy import UplinkProxy
from hub.app import run_hub
from hub.database import sqlite_path
from tests.helpers.pole import sds011_policy, sds011_scenario

SCENARIO = sds011_scenario("stop-in-flight", seed=5)
POLICY = sds011_policy("air quality, kept", purpose="testing a clean stop")


async def _until(predicate, timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_a_clean_stop_waits_for_the_batch_on_its_way_and_leaves_in_the_spool_nothing_the_hub_stored(
        hilsim_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "scenario.toml").write_text(SCENARIO)
    sim = await hilsim_run(tmp_path / "scenario.toml")
    (tmp_path / "policy.toml").write_text(POLICY)
    async with run_hub(listen="127.0.0.1:0", state_dir=tmp_path / "hub") as hub, \
            UplinkProxy(upstream_port=int(hub.url.rsplit(":", 1)[1])) as proxy:
        text = sim.gateway_config_toml(state_dir=tmp_path / "state", hub=proxy.url, gateway_id="pole-7", policy="policy.toml")
        (tmp_path / "gateway.toml").write_text(text.replace('flush_interval = "30s"', 'flush_interval = "1s"'))
        config = load_config(tmp_path / "gateway.toml")
        await enrol(hub_url=hub.url, token=await hub.create_token(), device_id="pole-7", key_path=Path(config.uplink.key))
        gateway = Gateway(config)
        await gateway.start()
        try:
            uplink = gateway.uplink
            assert uplink is not None
            await _until(lambda: uplink.counters.batches_acked >= 1)
            stop_began, held_one = asyncio.Event(), asyncio.Event()
            at_stop: dict[str, int] = {}
            finish_sending, send_batch = uplink.finish_sending, uplink.transport.send_batch

            async def finishing(grace_s: float) -> None:
                at_stop.update(sent=uplink.counters.batches_sent, acked=uplink.counters.batches_acked)
                stop_began.set()
                await finish_sending(grace_s)

            async def held(data: bytes) -> Ack | Refused:
                held_one.set()
                await stop_began.wait()
                return await send_batch(data)

            monkeypatch.setattr(uplink, "finish_sending", finishing)
            monkeypatch.setattr(uplink.transport, "send_batch", held)
            proxy.set_mode("delay", delay=0.4)
            async with asyncio.timeout(20):
                await held_one.wait()  # the next batch is on its way, held (one batch is in flight at a time)
        finally:
            await gateway.stop()
        assert at_stop["sent"] == at_stop["acked"] + 1, "one batch was on its way as the stop began"
        assert uplink.counters.batches_acked == at_stop["sent"], "the batch on its way was answered and its ack kept"
        assert uplink.counters.batches_sent == at_stop["sent"], "nothing started after the stop began"
        stored = hub_batch_ids(Path(sqlite_path(hub.hub.store.url)), "pole-7")
    spool = await Spool.open(Path(config.gateway.state_dir) / "spool.db", max_bytes=config.spool.max_size)
    try:
        waiting = {(b.id.key_id, b.id.boot_epoch, b.id.seq) for b in spool.oldest(limit=1000)}
    finally:
        await spool.close()
    assert not waiting & stored, "no batch is both at the hub and in the spool"
    assert len(stored) == at_stop["sent"]

"""A hub's first start and a gateway's first contact: the shown-once admin token is not lost, and a pending gateway says so."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
from pathlib import Path

import pytest

from edge.config import load_config
from edge.demo import DEMO_POLICY
from edge.enrol import enrol
from edge.runtime import Gateway
from hilsim import run_scenario
from hub.app import run_hub


async def test_a_first_start_that_cannot_listen_keeps_the_admin_token_for_the_next(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError):
            async with run_hub(listen=f"127.0.0.1:{port}", state_dir=tmp_path):
                pass
    async with run_hub(listen="127.0.0.1:0", state_dir=tmp_path) as hub:
        assert hub.admin_token, "the token of the first start that listens is generated and shown"
    async with run_hub(listen="127.0.0.1:0", state_dir=tmp_path) as hub:
        assert hub.admin_token is None, "and only once"


def test_a_restarted_hub_points_to_login_link(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import os
    import signal
    import threading

    from edge.cli import main

    def stop_soon() -> None:
        os.kill(os.getpid(), signal.SIGINT)

    for _ in range(2):
        timer = threading.Timer(3.0, stop_soon)
        timer.start()
        try:
            assert main(["hub", "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path)]) == 0
        finally:
            timer.cancel()
    err = capsys.readouterr().err
    assert err.count("Admin token (shown once") == 1
    assert "ocn-edge hub login-link --url http://127.0.0.1:" in err and f"--state-dir {tmp_path}" in err


async def test_a_gateway_awaiting_approval_says_so_once_and_not_that_the_hub_is_unreachable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with run_hub(state_dir=tmp_path / "hub", admin_token="x", key_cache_s=0.2) as hub, \
            run_scenario("default", seed=3, run_dir=tmp_path / "sim") as sim:
        config_path = tmp_path / "gateway.toml"
        config_path.write_text(sim.gateway_config_toml(state_dir=tmp_path / "gateway", hub=hub.url, gateway_id="pole-0042", policy=str(DEMO_POLICY)))
        config = load_config(config_path)
        config = dataclasses.replace(config, batch=dataclasses.replace(config.batch, span=1.0, flush_interval=0.5))
        await enrol(hub_url=hub.url, token=await hub.create_token(approve=False), device_id="pole-0042", key_path=Path(config.uplink.key))
        gateway = Gateway(config)
        with caplog.at_level(logging.INFO, logger="ocn.uplink"):
            await gateway.start()
            try:
                assert gateway.uplink is not None
                uplink = gateway.uplink
                async with asyncio.timeout(30):
                    while uplink.counters.retries < 3:
                        await asyncio.sleep(0.05)
                    assert await hub.set_device_status("pole-0042", "active")
                    while uplink.counters.batches_acked == 0:
                        await asyncio.sleep(0.05)
            finally:
                await asyncio.wait_for(gateway.stop(drain_timeout_s=5), timeout=30)
    said = [r.getMessage() for r in caplog.records if r.name == "ocn.uplink" and r.levelno >= logging.INFO]
    assert [m for m in said if m.startswith("awaiting approval at the hub")] == [said[0]]
    assert "approved at the hub; delivery resumed" in said
    assert not any("unreachable" in m for m in said), said

"""Public reads in a process of their own (hub.publicprocess): the same answers, a lower priority, and a crash that costs devices nothing.

``ocn-edge hub`` runs open data and SensorThings in a child process by default, because under the
combined attack of bench.hostile their rendering took event-loop time and the interpreter lock
from ingest.  These tests run a real child process over a real Unix socket.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
import time
from pathlib import Path

import aiohttp
import pytest

from hub.app import IngestSettings, RunningHub, run_hub
from hub.publicprocess import PUBLIC_PROCESS, PublicProcess, PublicProcessSettings
from tests.hub.gateways import SimGateway, enrol, post_cose

STA = "/sta/v1.1"
PATHS = (
    "/data",
    "/data/readings.csv",
    "/data/readings.csv?limit=7&offset=3",
    "/data/readings.senml.json?channel=temp",
    "/data/readings.senml.cbor",
    "/data/readings.csv?limit=abc",
    STA,
    f"{STA}/Things",
    f"{STA}/Datastreams?$top=2&$count=true",
    f"{STA}/Observations?$top=5&$orderby=result desc,phenomenonTime",
    f"{STA}/Observations?$filter=result gt",
    f"{STA}/Nothing",
)


def public_process_of(hub: RunningHub) -> PublicProcess:
    assert hub.app is not None
    return hub.app[PUBLIC_PROCESS]


async def answer(http: aiohttp.ClientSession, hub: RunningHub, path: str, **headers: str) -> tuple[int, str, bytes]:
    async with http.get(hub.url + path, headers=headers) as resp:
        body = await resp.read()
        # Links in answers name the hub they came from; the two hubs compared listen on different ports.
        return resp.status, resp.content_type, body.replace(hub.url.encode(), b"HUB")


async def test_answers_from_the_public_process_are_the_answers_of_the_hubs_own_process(
    tmp_path: Path, db_url: str, http: aiohttp.ClientSession
) -> None:
    async with run_hub(db=db_url, state_dir=tmp_path / "a", admin_token="admin-secret", public_process=PublicProcessSettings()) as forwarded:
        gateway = SimGateway("pole-0042")
        await enrol(http, forwarded.url, gateway, await forwarded.create_token())
        for seq in range(1, 4):
            status, _, _ = await post_cose(http, f"{forwarded.url}/oxp/v1/batches", gateway.batch(seq, n=20))
            assert status == 200
        async with run_hub(db=db_url, state_dir=tmp_path / "b", admin_token="admin-secret") as inline:
            assert inline.app is not None and PUBLIC_PROCESS not in inline.app
            for path in PATHS:
                assert await answer(http, forwarded, path) == await answer(http, inline, path), path
        # The client's host name reaches the process, so links name the address the client used.
        async with http.get(f"{forwarded.url}{STA}", headers={"Host": "data.city.example"}) as resp:
            assert resp.status == 200
            assert "http://data.city.example/sta/v1.1/Things" in await resp.text()
        ok, _, csv = await answer(http, forwarded, "/data/readings.csv")
        assert ok == 200 and csv.count(b"\n") == 61  # the header and the 60 readings stored


async def test_the_public_process_runs_at_a_lower_priority_behind_a_private_socket_and_stops_with_the_hub(tmp_path: Path) -> None:
    async with run_hub(state_dir=tmp_path / "hub", admin_token="admin-secret", public_process=PublicProcessSettings(nice=7)) as hub:
        public = public_process_of(hub)
        pid = public.pid
        assert pid is not None
        nice = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
        assert nice == os.getpriority(os.PRIO_PROCESS, 0) + 7
        assert stat.S_IMODE(public.socket.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(public.socket.stat().st_mode) & 0o077 == 0
        socket_dir = public.socket.parent
    assert not socket_dir.exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


async def test_a_killed_public_process_answers_503_busy_until_it_is_back_and_devices_are_served_meanwhile(
    tmp_path: Path, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ocn.hub")
    async with run_hub(state_dir=tmp_path / "hub", admin_token="admin-secret", public_process=PublicProcessSettings(),
                       ingest=IngestSettings()) as hub:
        gateway = SimGateway("pole-0042")
        await enrol(http, hub.url, gateway, await hub.create_token())
        public = public_process_of(hub)
        first = public.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        async with http.get(f"{hub.url}/data/readings.csv") as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "5"
            assert (await resp.json())["error"] == "busy"
        status, _, _ = await post_cose(http, f"{hub.url}/oxp/v1/batches", gateway.batch(1, n=10))
        assert status == 200  # ingest does not depend on the public process
        deadline = time.monotonic() + 30
        while True:
            async with http.get(f"{hub.url}/data/readings.csv") as resp:
                if resp.status == 200:
                    assert (await resp.text()).count("\n") == 11
                    break
            assert time.monotonic() < deadline, "the public reads process did not come back within 30 s"
            await asyncio.sleep(0.1)
        assert public.pid not in (None, first)
    exits = [r for r in caplog.records if r.getMessage().startswith("public reads process exited")]
    assert len(exits) == 1 and exits[0].__dict__["exit_code"] == -signal.SIGKILL
    assert any(r.getMessage() == "public reads process running again" for r in caplog.records)

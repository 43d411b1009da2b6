"""The leak test: known MACs and exact positions go into a whole gateway; none comes out in any form.

Simulated pedestrian counters (hil-sim, real ptys) hear phones; a simulated GPS reports
a position.  The real gateway (drivers, privacy stage, batcher, spool, uplink, local API)
runs at debug log level against a real HTTP hub on loopback.  Then every byte that left
the privacy stage is searched: uplink bodies as sent and decoded, every file in the state
directory (and every batch in the spool database, decoded), every log line, and every
local API response.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sqlite3
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from edge.config import load_config
from edge.flow import ReadingFlow
from edge.logs import setup_logging
from edge.protocol import ProtocolError, load_public_key, open_batch, open_status, peek_header, to_senml, write_keypair
from edge.runtime import Gateway

from .leakscan import find_leaks, mac_forms, position_forms

SCENARIO = """
[scenario]
name = "leak"
description = "two pedestrian counters and a GPS away from the pole"
seed = 11
latitude = 43.6452
longitude = -79.3957

[[devices]]
name = "ped-1"
kind = "pedestrian-counter"
poll_interval = "1s"
[devices.options]
regulars = 30
randomisers = 10
passers_per_minute = 900.0
hear_every = "1s"
day_length = "1m"
[[devices.faults]]          # broken lines make the driver log: those lines must not carry a MAC either
kind = "partial_frame"
at = "500ms"
duration = "3s"
probability = 0.3
[[devices.faults]]
kind = "line_noise"
at = "1s"
duration = "2s"
probability = 0.3

[[devices]]
name = "ped-2"
kind = "pedestrian-counter"
poll_interval = "1s"
[devices.options]
regulars = 10
passers_per_minute = 600.0
hear_every = "1s"

[[devices]]
name = "gps-1"
kind = "nmea-gps"
poll_interval = "1s"
[devices.options]
latitude = 43.6611
longitude = -79.3883
"""

POLICY = """
[policy]
name = "leak test"
organisation = "City of Testing"
contact = "privacy@testing.example"
purpose = "Prove that nothing personal leaves"

[privacy_budget]
epsilon = 10.0

[channels."ped-1/mac"]
rule = "count_distinct"
window = "1m"
k = 3
epsilon = 1.0

[channels."ped-2/mac"]
rule = "pseudonymize"
bits = 48

[channels."ped-*/rssi"]
rule = "keep"

[channels."gps-1/latitude"]
rule = "generalize_location"
grid = "500m"

[channels."gps-1/longitude"]
rule = "generalize_location"
grid = "500m"

[channels."gps-1/*"]
rule = "keep"
"""


class Hub:
    """A real OXP endpoint on loopback that acks everything and keeps every request body as received."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, bytes]] = []
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application(client_max_size=2 * 1024 * 1024)
        app.router.add_post("/oxp/v1/batches", self._batch)
        app.router.add_post("/oxp/v1/status", self._status)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _batch(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.bodies.append(("batch", body))
        h = peek_header(body)
        return web.json_response(
            {"device_id": h.device_id, "key_id": h.key_id.hex(), "boot_epoch": h.boot_epoch, "seq": h.seq, "status": "stored"}
        )

    async def _status(self, request: web.Request) -> web.Response:
        self.bodies.append(("status", await request.read()))
        return web.json_response({"ok": True, "desired": None, "etag": "0"})


def decoded(data: bytes, public_key) -> bytes:
    """A sealed batch or status report, opened, as text: what a reader of the data would see."""
    try:
        batch = open_batch(data, public_key)
        return (repr(batch) + json.dumps(to_senml(batch), default=repr)).encode()
    except ProtocolError:
        pass
    try:
        return repr(open_status(data, public_key)).encode()
    except ProtocolError:
        return b""


def files_under(root: Path, public_key) -> dict[str, bytes]:
    """Every file's bytes, plus every SQLite value (and every batch in it, opened)."""
    out: dict[str, bytes] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        out[f"file {path.relative_to(root)}"] = data
        if data.startswith(b"SQLite format 3\x00"):
            db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
                    for n, row in enumerate(db.execute(f'SELECT * FROM "{table}"')):
                        for i, value in enumerate(row):
                            raw = value if isinstance(value, bytes) else str(value).encode()
                            out[f"sqlite {path.name} {table}[{n}][{i}]"] = raw + decoded(raw, public_key)
            finally:
                db.close()
    return out


async def test_no_mac_address_or_exact_position_leaves_the_gateway_in_any_form(hilsim_run, tmp_path, monkeypatch) -> None:
    scenario = tmp_path / "leak.toml"
    scenario.write_text(SCENARIO)
    sim = await hilsim_run(scenario)
    hub = Hub()
    await hub.start()
    state = tmp_path / "state"
    state.mkdir()
    write_keypair(state)
    public_key = load_public_key(state / "device.pub")
    (tmp_path / "policy.toml").write_text(POLICY)
    config_text = sim.gateway_config_toml(
        state_dir=state, hub=hub.url, policy="policy.toml", log_level="debug", local_api_listen="127.0.0.1:0"
    ).replace('flush_interval = "30s"', 'flush_interval = "1s"').replace("max_readings = 20000", "max_readings = 500")
    (tmp_path / "gateway.toml").write_text(config_text)
    config = load_config(tmp_path / "gateway.toml")

    log_stream = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    setup_logging("debug", stream=log_stream)
    debug_on = logging.getLogger("ocn.driver.ped-1").isEnabledFor(logging.DEBUG)
    raw_macs: set[str] = set()
    raw_positions: set[float] = set()
    api: dict[str, bytes] = {}
    try:
        emit_all = ReadingFlow.emit_all

        async def tap(flow, readings):  # the ground truth: every personal value that entered the privacy stage
            for reading in readings:
                if reading.channel.endswith("/mac"):
                    raw_macs.add(reading.value)
                if reading.channel.endswith(("/latitude", "/longitude")):
                    raw_positions.add(reading.value)
            await emit_all(flow, readings)

        # Every reading a driver hands over goes through ReadingFlow.emit_all (one reading or a poll's).
        monkeypatch.setattr(ReadingFlow, "emit_all", tap)
        gateway = Gateway(config)
        await gateway.start()
        try:
            await asyncio.sleep(4.0)
            port = gateway._local_api_runner.addresses[0][1]
            async with aiohttp.ClientSession() as http:
                for path in ("/", "/notice", "/notice.json", "/status"):
                    async with http.get(f"http://127.0.0.1:{port}{path}") as response:
                        assert response.status == 200
                        api[f"local API {path}"] = await response.read()
            async with asyncio.timeout(20):
                while not any(kind == "batch" for kind, _ in hub.bodies):
                    await asyncio.sleep(0.1)
        finally:
            try:
                async with asyncio.timeout(60):
                    await gateway.stop()
            except TimeoutError:
                pytest.fail("Gateway.stop() did not return within 60 s", pytrace=False)
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        await hub.stop()

    assert len(raw_macs) >= 50 and raw_macs <= sim.emitted_macs()
    assert len(raw_positions) >= 4
    released = [r for kind, body in hub.bodies if kind == "batch" for r in open_batch(body, public_key).readings]
    channels = {r.channel for r in released}
    assert {"ped-2/mac", "gps-1/latitude", "gps-1/longitude"} <= channels  # the test saw real output

    haystacks: dict[str, bytes] = {"logs": log_stream.getvalue().encode(), **api}
    for n, (kind, body) in enumerate(hub.bodies):
        haystacks[f"uplink {kind} {n}"] = body + decoded(body, public_key)
    haystacks.update(files_under(state, public_key))
    assert debug_on and "level=warning" in log_stream.getvalue()  # debug logging ran, and faults were logged

    needles = {form for mac in sim.emitted_macs() for form in mac_forms(mac)}
    needles |= {form for value in raw_positions for form in position_forms(value)}
    assert find_leaks(needles, haystacks) == []

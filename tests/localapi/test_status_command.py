"""`ocn-edge status` reads the running gateway's local API; `ocn-edge access-token create` keeps only the token's hash."""

from __future__ import annotations

import asyncio
import json

import pytest

from edge.cli import main
from edge.localapi.access import TOKEN_FILE
from tests.localapi.conftest import LocalGateway


async def test_status_prints_the_pages_document_as_json(local_gateway: LocalGateway, capsys: pytest.CaptureFixture[str]) -> None:
    await asyncio.sleep(2)
    assert await asyncio.to_thread(main, ["status", "--url", local_gateway.url, "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert view["overview"]["device_id"] == "pole-7"
    assert {d["name"] for d in view["devices"]} >= {"meter-1", "weather-1", "pm-1"}
    assert {b["name"] for b in view["buses"]} >= {"rs485-1", "meters-tcp"}
    rows = {d["name"]: d for d in view["devices"]}
    assert rows["weather-1"]["bus"] == "rs485-1"
    assert rows["meter-1"]["last_reading_ms"]  # read, whether or not the policy has released any of it yet


async def test_status_in_a_terminal_shows_devices_with_their_live_values(local_gateway: LocalGateway, capsys: pytest.CaptureFixture[str]) -> None:
    await asyncio.sleep(3)
    assert await asyncio.to_thread(main, ["status", "--url", local_gateway.url]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gateway pole-7")
    assert "weather-1" in out and "rs485-1" in out and "temperature=" in out


async def test_status_says_when_no_gateway_answers(capsys: pytest.CaptureFixture[str]) -> None:
    assert await asyncio.to_thread(main, ["status", "--url", "http://127.0.0.1:9"]) == 1
    assert "no gateway answers there" in capsys.readouterr().err


async def test_access_token_create_prints_the_token_once_and_keeps_its_hash(local_gateway: LocalGateway, capsys: pytest.CaptureFixture[str]) -> None:
    assert await asyncio.to_thread(main, ["access-token", "create", "--config", str(local_gateway.config_path)]) == 0
    captured = capsys.readouterr()
    token = captured.out.strip()
    stored = (local_gateway.gateway.config.gateway.state_dir / TOKEN_FILE).read_text()
    assert token and token not in stored
    assert f"/technician?token={token}" in captured.err and "loopback only" in captured.err

"""Slow clients are timed out: a request's headers and body have deadlines, open connections a cap.

The reproduction: 3,000 clients sending a byte every 10 s were never timed out.  Here tens of
real sockets on 127.0.0.1 trickle bytes at a hub with deadlines of a second, and are
disconnected (or answered 408) while a gateway's batch is stored meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from hub.app import RunningHub, run_hub
from hub.server import RESERVED_FILES, ConnectionSettings
from tests.hub.gateways import SimGateway, enrol, post_cose

SLOW_CLIENTS = 30
# A guard against a hang, not a measure: every deadline in these tests is 1 s.
GUARD_S = 60


@pytest.fixture
async def strict_hub(tmp_path: Path) -> AsyncIterator[RunningHub]:
    settings = ConnectionSettings(header_timeout_s=1.0, body_timeout_s=1.0, max_connections=200)
    async with run_hub(state_dir=tmp_path / "hub", admin_token="admin-secret", connections=settings) as hub:
        yield hub


def port_of(hub: RunningHub) -> int:
    return int(hub.url.rsplit(":", 1)[1])


async def trickle(port: int, head: bytes, trickled: bytes) -> tuple[int, bytes | None]:
    """Send ``head`` at once, then ``trickled`` a byte every 0.2 s until the hub answers or closes: (bytes trickled, answer).

    The answer is None when the connection was reset: a socket closed with unread bytes in it
    resets, and the client may lose what was sent to it before.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    sent = 0
    try:
        for byte in trickled:
            try:
                # read(n) hands over what has come; read() would lose a partial answer to the timeout.
                first = await asyncio.wait_for(reader.read(65536), 0.2)
            except TimeoutError:
                writer.write(bytes([byte]))
                sent += 1
                continue
            return sent, first + await reader.read()
        return sent, await reader.read()
    except ConnectionResetError:
        return sent, None
    finally:
        writer.close()


async def a_gateway_is_served(http: aiohttp.ClientSession, hub: RunningHub) -> None:
    gateway = SimGateway("pole-0042")
    await enrol(http, hub.url, gateway, await hub.create_token())
    status, ack, _ = await post_cose(http, f"{hub.url}/oxp/v1/batches", gateway.batch(1))
    assert (status, ack["status"]) == (200, "stored")


async def test_clients_trickling_headers_are_disconnected_while_a_gateway_is_served(strict_hub: RunningHub, http: aiohttp.ClientSession) -> None:
    request = b"GET /oxp/v1/hub-key HTTP/1.1\r\nHost: hub\r\nX-Padding: " + b"x" * 200 + b"\r\n\r\n"
    slow = [asyncio.create_task(trickle(port_of(strict_hub), b"", request)) for _ in range(SLOW_CLIENTS)]
    await a_gateway_is_served(http, strict_hub)
    outcomes = await asyncio.wait_for(asyncio.gather(*slow), GUARD_S)
    for sent, answer in outcomes:
        assert answer in (b"", None)  # closed without an answer ...
        assert sent < len(request)  # ... before its headers were complete


async def test_a_client_that_connects_and_sends_nothing_is_disconnected(strict_hub: RunningHub) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(strict_hub))
    try:
        assert await asyncio.wait_for(reader.read(), GUARD_S) == b""
    finally:
        writer.close()


async def test_clients_trickling_a_body_are_answered_408_and_disconnected_while_a_gateway_is_served(
    strict_hub: RunningHub, http: aiohttp.ClientSession
) -> None:
    head = b"POST /oxp/v1/batches HTTP/1.1\r\nHost: hub\r\nContent-Type: application/cose\r\nContent-Length: 1000\r\n\r\n"
    slow = [asyncio.create_task(trickle(port_of(strict_hub), head, b"\xa0" * 1000)) for _ in range(SLOW_CLIENTS)]
    await a_gateway_is_served(http, strict_hub)
    outcomes = await asyncio.wait_for(asyncio.gather(*slow), GUARD_S)
    for sent, answer in outcomes:
        assert sent < 1000
        assert answer is None or (answer.startswith(b"HTTP/1.1 408 ") and b"Connection: close" in answer and b'"error": "body_timeout"' in answer)
    assert any(answer is not None for _, answer in outcomes)


async def test_a_keep_alive_connection_serves_request_after_request_and_then_times_out_a_trickled_one(strict_hub: RunningHub) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(strict_hub))
    try:
        for _ in range(3):
            writer.write(b"GET /oxp/v1/hub-key HTTP/1.1\r\nHost: hub\r\n\r\n")
            assert (await reader.readline()).startswith(b"HTTP/1.1 200 ")
            length = 0
            while (line := await reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
        writer.write(b"GET /oxp/v1/hub-key HT")  # the next request starts, and stops
        assert await asyncio.wait_for(reader.read(), GUARD_S) == b""
    finally:
        writer.close()


async def test_a_body_refused_unread_closes_the_connection_instead_of_being_read_and_discarded(strict_hub: RunningHub) -> None:
    # aiohttp would otherwise read the rest of a refused 1 MiB body for up to 10 s before the next request.
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(strict_hub))
    try:
        writer.write(b"POST /oxp/v1/batches HTTP/1.1\r\nHost: hub\r\nContent-Type: application/cose\r\n"
                     b"Content-Length: 4194304\r\n\r\n" + b"\x00" * 1024)
        answer = await asyncio.wait_for(reader.read(), GUARD_S)  # the whole answer, then the hub closes
        assert answer.startswith(b"HTTP/1.1 413 ") and b"Connection: close" in answer
    finally:
        writer.close()


async def test_connections_over_the_cap_are_answered_503_and_the_hub_serves_again_below_it(tmp_path: Path) -> None:
    settings = ConnectionSettings(header_timeout_s=30.0, max_connections=5)
    async with run_hub(state_dir=tmp_path / "hub", connections=settings) as hub:
        held = [await asyncio.open_connection("127.0.0.1", port_of(hub)) for _ in range(5)]
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(hub))
        answer = await asyncio.wait_for(reader.read(), GUARD_S)
        writer.close()
        assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 5" in answer and b'"error": "busy"' in answer
        for _, held_writer in held:
            held_writer.close()
        # Closed connections leave the count; then a request is served (a fresh session, so no idle connection lingers in a pool).
        for _ in range(100):
            async with aiohttp.ClientSession() as http, http.get(f"{hub.url}/oxp/v1/hub-key") as resp:
                if resp.status == 200:
                    break
            await asyncio.sleep(0.05)
        assert resp.status == 200


async def test_the_start_up_log_gives_the_connection_cap_and_the_open_file_limits(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ocn.hub")
    async with run_hub(state_dir=tmp_path / "hub", connections=ConnectionSettings(max_connections=100)):
        pass
    (record,) = [vars(r) for r in caplog.records if r.getMessage() == "connection limits"]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert record["max_connections"] == 100 and record["open_files_needed"] == 100 + RESERVED_FILES
    assert record["open_files_soft"] in (soft, "unlimited") and record["open_files_hard"] in (hard, "unlimited")
    assert soft == resource.RLIM_INFINITY or soft >= 100 + RESERVED_FILES


async def test_a_cap_the_open_file_limit_cannot_carry_is_lowered_and_said_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("this process's hard open-file limit is unlimited; no cap is too high for it")
    caplog.set_level(logging.INFO, logger="ocn.hub")
    async with run_hub(state_dir=tmp_path / "hub", connections=ConnectionSettings(max_connections=hard)) as hub:
        async with aiohttp.ClientSession() as http, http.get(f"{hub.url}/oxp/v1/hub-key") as resp:
            assert resp.status == 200
    (warning,) = [vars(r) for r in caplog.records if r.levelno == logging.WARNING and "open-file limit" in r.getMessage()]
    assert warning["cap"] == hard - RESERVED_FILES
    (record,) = [vars(r) for r in caplog.records if r.getMessage() == "connection limits"]
    assert record["max_connections"] == hard - RESERVED_FILES


@pytest.mark.parametrize(("field", "value", "option"), [
    ("header_timeout_s", 0.0, "--header-timeout"),
    ("body_timeout_s", float("inf"), "--body-timeout"),
    ("max_connections", 0, "--max-connections"),
])
def test_connection_settings_out_of_range_are_refused_naming_the_option(field: str, value: Any, option: str) -> None:
    with pytest.raises(ValueError, match=f"^{option} {value!r}: expected"):
        ConnectionSettings(**{field: value})

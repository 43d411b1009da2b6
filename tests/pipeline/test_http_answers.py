"""The HTTP transport reads the hub's whole answer even when the network delivers it in pieces (found by the soak)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from edge.transport import open_transport
from edge.transport.contract import Ack

ACK = json.dumps({"status": "stored", "device_id": "pole-0042", "key_id": "ab" * 8, "boot_epoch": 1, "seq": 3}).encode()
SLOW_LINK_S = 0.3  # between the two segments, as a congested link or a proxy holds the rest of an answer


@pytest.fixture
async def hub_answering_in_two_segments() -> AsyncIterator[str]:
    """A hub on loopback whose 200 answer comes in two TCP segments: the head with part of the body, then the rest."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(ACK) + ACK[:12])
        await writer.drain()
        await asyncio.sleep(SLOW_LINK_S)
        writer.write(ACK[12:])
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


async def test_an_ack_whose_body_arrives_in_two_segments_is_read_whole(hub_answering_in_two_segments):
    transport = open_transport(hub_answering_in_two_segments, timeout_s=10)
    try:
        answer = await transport.send_batch(b"sealed batch bytes")
    finally:
        await transport.aclose()
    assert isinstance(answer, Ack), answer  # before the fix: Refused("hub answered 200 without a JSON ack"), and a resend
    assert (answer.device_id, answer.boot_epoch, answer.seq) == ("pole-0042", 1, 3)

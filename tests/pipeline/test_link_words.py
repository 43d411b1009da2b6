"""A failure to reach the hub or the broker is said in our words: no aiohttp, aiomqtt or paho class name or sentence
reaches the log, the status or the hub (the soak at e9ed3a8 logged ``ClientOSError: [Errno None] Can not write request
body for http://…`` and ``ClientConnectorError: Cannot connect to host …``)."""

from __future__ import annotations

import asyncio
import errno
import re
import socket

import aiohttp
import aiomqtt
import pytest
from aiomqtt.exceptions import MqttConnectError

from bench.soak.evidence import LIBRARY_WORDS
from edge.transport.contract import Refused
from edge.transport.http import HttpTransport
from edge.transport.mqtt import _describe
from edge.transport.words import broker_problem, link_problem


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ours(text: str) -> str:
    assert not LIBRARY_WORDS.search(text), text
    return text


async def test_a_hub_nothing_listens_for_is_a_refused_connection_in_our_words() -> None:
    port = closed_port()
    transport = HttpTransport(f"http://127.0.0.1:{port}", timeout_s=5)
    try:
        refused = await transport.send_batch(b"\xd2\x84")
    finally:
        await transport.aclose()
    assert isinstance(refused, Refused) and not refused.final
    assert ours(refused.message) == f"cannot connect to the hub at 127.0.0.1:{port}: connection refused (nothing listens there: is it running?)"


async def test_a_hub_that_hangs_up_without_answering_closed_the_connection() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")  # the request's head, then nothing: closed
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport = HttpTransport(f"http://127.0.0.1:{port}", timeout_s=5)
    try:
        refused = await transport.send_batch(b"\xd2\x84")
    finally:
        await transport.aclose()
        server.close()
        await server.wait_closed()
    assert isinstance(refused, Refused)
    assert ours(refused.message) in ("the hub closed the connection before answering",
                                     "the connection to the hub broke during the request: the connection was reset")


async def test_a_name_that_does_not_resolve_is_said_as_such() -> None:
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError) as caught:
            await session.get("http://no-such-host.invalid/")  # .invalid never resolves (RFC 6761)
    assert ours(link_problem(caught.value)).startswith("cannot find no-such-host.invalid: the name does not resolve")


def test_a_connection_broken_while_sending_says_what_broke_it() -> None:
    broken = aiohttp.ClientOSError(None, "Can not write request body for http://127.0.0.1:1/oxp/v1/batches")
    assert ours(link_problem(broken)) == "the connection to the hub broke during the request"
    broken.__cause__ = ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
    assert ours(link_problem(broken)) == "the connection to the hub broke during the request: the connection was reset"
    assert ours(link_problem(OSError(errno.EHOSTUNREACH, "No route to host"), "the update server")) == (
        "cannot reach the update server: no route to the host")


@pytest.mark.parametrize(("exc", "said"), [
    (MqttConnectError(4), "the broker refused the connection (bad user name or password)"),
    (aiomqtt.MqttCodeError(7, "Unexpected disconnection"), "the broker dropped the connection (the connection to the broker was lost)"),
    (aiomqtt.MqttError("[Errno 111] Connection refused"), "cannot reach the broker: connection refused (nothing listens there: is it running?)"),
    (aiomqtt.MqttError("Operation timed out"), "the broker did not answer in time"),
    (aiomqtt.MqttError("Disconnected during message iteration"), "the broker dropped the connection"),
    (aiomqtt.MqttError("the broker closed the connection"), "the broker closed the connection"),  # ours, passed through
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "cannot reach the broker: connection refused (nothing listens there: is it running?)"),
    (ConnectionError("the connection to the broker is gone"), "the connection to the broker is gone"),  # ours
])
def test_the_brokers_failures_are_said_in_our_words(exc: BaseException, said: str) -> None:
    assert ours(_describe(exc)) == said
    if not isinstance(exc, ConnectionError) or exc.errno is not None:
        assert broker_problem(exc) == said


def test_a_brokers_reason_code_keeps_its_number_and_the_specs_name() -> None:
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.reasoncodes import ReasonCode

    said = ours(broker_problem(MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=135))))
    assert re.fullmatch(r"the broker refused the connection \(135: Not authorized\)", said), said

"""A failure to reach the hub or the broker is said in our words: no aiohttp, aiomqtt or paho class name or sentence
reaches the log, the status or the hub (the soak at e9ed3a8 logged ``ClientOSError: [Errno None] Can not write request
body for http://…`` and ``ClientConnectorError: Cannot connect to host …``)."""

from __future__ import annotations

import asyncio
import errno
import socket
import ssl

import aiohttp
import aiomqtt
import pytest
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from bench.soak.evidence import LIBRARY_WORDS
from edge.transport.contract import Refused
from edge.transport.http import HttpTransport
from edge.transport.mqtt import _describe
from edge.util.linkwords import broker_problem, link_problem, os_words


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


def test_an_os_error_is_said_by_its_number_never_by_the_text_a_library_gave_it() -> None:
    broken = aiohttp.ClientOSError(errno.EIO, "Can not write request body for http://127.0.0.1:1/oxp/v1/batches")
    assert ours(link_problem(broken)) == "the connection to the hub broke during the request: input/output error"
    assert ours(link_problem(TimeoutError(), "the update server")) == "the update server did not answer in time"
    assert ours(link_problem(ssl.SSLError())) == "cannot reach the hub: the TLS handshake failed"  # no reason: no crash
    assert ours(os_words(socket.gaierror(socket.EAI_NONAME, "Name or service not known"))).startswith("the name does not resolve")


def reason(value: int, packet: int = PacketTypes.CONNACK) -> ReasonCode:
    return ReasonCode(packet, identifier=value)


@pytest.mark.parametrize(("exc", "said"), [
    # aiomqtt 2.5 on MQTT 5 (edge/transport/mqtt.py) gives paho ReasonCodes
    (MqttConnectError(reason(134)), "the broker refused the connection (bad user name or password (check the broker password file), code 134)"),
    (MqttConnectError(reason(135)), "the broker refused the connection (not authorised (check the broker's ACL for this gateway), code 135)"),
    (aiomqtt.MqttCodeError(reason(142, PacketTypes.DISCONNECT), "Unexpected disconnection"),
     "the broker dropped the connection (another connection took over this client id, code 142)"),
    (aiomqtt.MqttCodeError(reason(135, PacketTypes.SUBACK), "Could not subscribe to topic"),
     "the broker refused the subscription (not authorised (check the broker's ACL for this gateway), code 135)"),
    # an MQTT 3 session's and paho's plain numbers
    (MqttConnectError(4), "the broker refused the connection (bad user name or password (check the broker password file), code 4)"),
    (aiomqtt.MqttCodeError(7, "Unexpected disconnection"), "the broker dropped the connection (the connection to the broker was lost, code 7)"),
    # connect's OSError, turned into text by aiomqtt
    (aiomqtt.MqttError("[Errno 111] Connection refused"), "cannot reach the broker: connection refused (nothing listens there: is it running?)"),
    (aiomqtt.MqttError("[Errno -2] Name or service not known"), "cannot reach the broker: the name does not resolve (check the address and the DNS server)"),
    (aiomqtt.MqttError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: self-signed certificate (_ssl.c:1006)"),
     "cannot reach the broker: the TLS handshake failed (CERTIFICATE_VERIFY_FAILED)"),
    (aiomqtt.MqttError("Operation timed out"), "the broker did not answer in time"),
    (aiomqtt.MqttError("Disconnected during message iteration"), "the broker dropped the connection"),
    (aiomqtt.MqttError("the broker closed the connection"), "the broker closed the connection"),  # ours, passed through
    (aiomqtt.MqttError("something paho says"), "the connection to the broker failed"),
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), "cannot reach the broker: connection refused (nothing listens there: is it running?)"),
    (ConnectionError("the connection to the broker is gone"), "the connection to the broker is gone"),  # ours
])
def test_the_brokers_failures_are_said_in_our_words(exc: BaseException, said: str) -> None:
    assert ours(_describe(exc)) == said
    if not isinstance(exc, ConnectionError) or exc.errno is not None:
        assert broker_problem(exc) == said


@pytest.mark.parametrize("content, said", [
    (b"garbage\n", "it holds no PEM certificate"),
    (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "a certificate in it does not parse"),
    (None, "no such file or directory"),
], ids=["no certificate", "a broken certificate", "no file"])
def test_a_ca_bundle_that_does_not_load_is_said_in_our_words(tmp_path, content: bytes | None, said: str) -> None:
    from edge.transport import tls_context
    from edge.transport.contract import UplinkError

    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_bytes(content)
    with pytest.raises(UplinkError) as caught:
        tls_context(ca)
    assert ours(str(caught.value)) == f"uplink ca = {str(ca)!r}: cannot read a PEM CA bundle there ({said})"


def test_a_device_key_directory_that_cannot_be_written_is_said_in_our_words(tmp_path) -> None:
    from edge.enrol import EnrolError, ensure_device_key

    (tmp_path / "file").write_text("")  # a file where the key's directory would be
    with pytest.raises(EnrolError) as caught:
        ensure_device_key(tmp_path / "file" / "state" / "device.key")
    assert "[Errno" not in ours(str(caught.value))
    assert "a file is in the way where a directory is expected" in str(caught.value)


def test_a_desired_ca_that_is_not_pem_says_it_holds_no_certificate() -> None:
    from edge.util.linkwords import ca_bundle_problem

    with pytest.raises(ssl.SSLError) as caught:
        ssl.create_default_context(cadata="garbage")
    assert ca_bundle_problem(caught.value) == "it holds no PEM certificate"

"""The HTTP transport's way to the hub: the proxy the service's environment names (docs/spool-and-uplink.md), and one
connection kept between messages."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from edge.transport import open_transport
from edge.transport.contract import Taken

OK = json.dumps({"ok": True}).encode()


@dataclass
class Listener:
    """A loopback HTTP/1.1 server answering every request {"ok": true}: what it was asked, and on how many connections."""

    port: int = 0
    request_lines: list[str] = field(default_factory=list)
    proxy_authorizations: list[str] = field(default_factory=list)
    connections: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                lines = head.decode().split("\r\n")
                self.request_lines.append(lines[0])
                headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                self.proxy_authorizations.append(headers.get("proxy-authorization", ""))
                await reader.readexactly(int(headers.get("content-length", "0")))
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(OK), OK))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    out = Listener()
    server = await asyncio.start_server(out.serve, "127.0.0.1", 0)
    out.port = server.sockets[0].getsockname()[1]
    try:
        yield out
    finally:
        server.close()
        await server.wait_closed()


@pytest.fixture
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("http_proxy", "https_proxy", "no_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


async def test_messages_go_through_the_proxy_the_environment_names(listener: Listener, no_proxy_settings: pytest.MonkeyPatch) -> None:
    no_proxy_settings.setenv("HTTP_PROXY", f"http://city:secret@127.0.0.1:{listener.port}")
    transport = open_transport("http://hub.invalid:8080")  # a name nobody resolves: only the proxy can take it
    try:
        assert isinstance(await transport.send_status(b"report 1"), Taken)
        assert isinstance(await transport.send_status(b"report 2"), Taken)
    finally:
        await transport.aclose()
    assert listener.request_lines == ["POST http://hub.invalid:8080/oxp/v1/status HTTP/1.1"] * 2
    assert listener.proxy_authorizations == ["Basic " + base64.b64encode(b"city:secret").decode()] * 2


async def test_a_hub_named_in_no_proxy_is_reached_directly(listener: Listener, no_proxy_settings: pytest.MonkeyPatch) -> None:
    no_proxy_settings.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    no_proxy_settings.setenv("NO_PROXY", "127.0.0.1")
    transport = open_transport(f"http://127.0.0.1:{listener.port}")
    try:
        assert isinstance(await transport.send_status(b"report"), Taken)
    finally:
        await transport.aclose()
    assert listener.request_lines == ["POST /oxp/v1/status HTTP/1.1"]


async def test_messages_one_after_another_share_one_connection(listener: Listener, no_proxy_settings: pytest.MonkeyPatch) -> None:
    transport = open_transport(f"http://127.0.0.1:{listener.port}")
    try:
        for _ in range(3):
            assert isinstance(await transport.send_status(b"report"), Taken)
            await asyncio.sleep(0.2)
    finally:
        await transport.aclose()
    assert len(listener.request_lines) == 3
    assert listener.connections == 1


def test_for_an_https_hub_the_proxys_credentials_go_on_the_tunnels_connect_not_to_the_hub(no_proxy_settings: pytest.MonkeyPatch) -> None:
    from edge.transport.http import _route_from_environment

    no_proxy_settings.setenv("HTTPS_PROXY", "http://city:secret@proxy.city.lan:3128")
    route = _route_from_environment("https://hub.city.example")
    assert str(route.proxy) == "http://proxy.city.lan:3128"
    assert route.proxy_headers == {"Proxy-Authorization": "Basic " + base64.b64encode(b"city:secret").decode()}
    assert "Proxy-Authorization" not in route.headers

"""The local API's listener: bound at start, answering once its HTTP server has loaded in a worker thread."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from edge.localapi import LocalApi, LocalApiError
from edge.schema import HostPort

NOTICE = {"policy": "test"}


def _api() -> LocalApi:
    return LocalApi(notice_html=lambda language: "<p>notice</p>", notice_json=lambda: NOTICE, status=dict)


async def _get(url_host: str, port: int, path: str) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection(url_host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {url_host}\r\nConnection: close\r\n\r\n".encode())
    await writer.drain()
    answer = await asyncio.wait_for(reader.read(), timeout=30)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def test_a_request_made_as_start_returns_is_answered_once_the_server_has_loaded() -> None:
    api = _api()
    await api.start(HostPort("127.0.0.1", 0))
    try:
        host, port = api.addresses[0][:2]
        # Connected before the loop has run the server's loading at all: the connection waits in the backlog.
        status, body = await _get(host, port, "/notice.json")
        assert status == 200
        assert json.loads(body) == NOTICE
    finally:
        await api.aclose()


async def test_a_port_taken_is_a_start_error_naming_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        api = _api()
        with pytest.raises(LocalApiError, match=r"local_api.listen = '127.0.0.1:\d+': cannot listen there"):
            await api.start(HostPort("127.0.0.1", port))
        await api.aclose()


async def test_a_stop_before_the_server_has_loaded_closes_the_listener() -> None:
    api = _api()
    await api.start(HostPort("127.0.0.1", 0))
    host, port = api.addresses[0][:2]
    await api.aclose()
    assert api.url is None
    with pytest.raises(OSError):
        await asyncio.open_connection(host, port)

"""The local API's listener: bound at start, answering once its HTTP server has loaded."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from edge.localapi import LocalApi, LocalApiError
from edge.schema import HostPort

NOTICE = {"policy": "test"}
ROOT = Path(__file__).resolve().parents[2]


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


def test_the_local_api_and_the_uplink_load_aiohttp_at_the_same_time_without_breaking_it(tmp_path: Path) -> None:
    # Both load aiohttp as the gateway starts; when they did in two worker threads, importing its parts at once met its
    # circular imports half done ("partially initialized module 'aiohttp.helpers'") and the local API never answered.
    code = """
import asyncio, json, sys
from edge.localapi import LocalApi
from edge.schema import HostPort
from edge.transport import open_transport

async def hub(reader, writer):
    await reader.readuntil(b"\\r\\n\\r\\n")
    writer.write(b'HTTP/1.1 200 OK\\r\\nContent-Length: 12\\r\\nConnection: close\\r\\n\\r\\n{"ok": true}')
    await writer.drain()
    writer.close()

async def main():
    server = await asyncio.start_server(hub, "127.0.0.1", 0)
    transport = open_transport(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}")
    api = LocalApi(notice_html=lambda language: "", notice_json=lambda: {"policy": "test"}, status=dict)
    await api.start(HostPort("127.0.0.1", 0))
    host, port = api.addresses[0][:2]

    async def notice():
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /notice.json HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
        return (await asyncio.wait_for(reader.read(), 30)).split(b"\\r\\n", 1)[0]

    answer, sent = await asyncio.gather(notice(), transport.send_status(b"report"))
    print(type(sent).__name__, answer.decode())
    await transport.aclose()
    await api.aclose()

asyncio.run(main())
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for _ in range(3):  # a race: a fresh interpreter each time, nothing imported before
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split() == ["Taken", "HTTP/1.1", "200", "OK"], done.stdout + done.stderr[-2000:]


async def test_malformed_requests_are_answered_400_and_said_once_in_our_words(caplog: pytest.LogCaptureFixture) -> None:
    # aiohttp's server logged each as `logger=aiohttp.server msg="Error handling request from 127.0.0.1"` with a traceback.
    import logging

    from bench.soak.evidence import LIBRARY_WORDS

    caplog.set_level(logging.DEBUG)
    api = _api()
    await api.start(HostPort("127.0.0.1", 0))
    try:
        host, port = api.addresses[0][:2]
        for _ in range(10):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), timeout=30)
            writer.close()
            assert answer.split(b"\r\n", 1)[0].endswith(b"400 Bad Request"), answer[:100]
        status, _ = await _get(host, port, "/notice.json")  # and it still serves
        assert status == 200
    finally:
        await api.aclose()
    said = [(r.name, r.getMessage(), r.__dict__.get("reason") or r.__dict__.get("reasons")) for r in caplog.records if r.levelno >= logging.WARNING]
    assert said == [("ocn.localapi", "refused a malformed HTTP request (400); more are counted and said at most once a minute",
                     "a malformed Content-Length"),
                    # the other nine, said as the local API stops (else a minute later)
                    ("ocn.localapi", "refused malformed HTTP requests (400)", "9 a malformed Content-Length")]
    assert not [r for r in caplog.records if r.name.startswith("aiohttp") or LIBRARY_WORDS.search(r.getMessage())]

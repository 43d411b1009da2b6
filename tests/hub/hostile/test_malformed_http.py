"""A client's malformed HTTP is answered 400 and said in our words, once, not a line of aiohttp's per request.

The reproduction: a request with ``Content-Length: abc`` (or a 20 kB URL, or a chunk size ``zz``) made the hub
log ``level=error logger=aiohttp.server msg="Error handling request from 127.0.0.1"`` with a traceback through
aiohttp's parser, one per request: a log storm in a library's words that any anonymous client could cause.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bench.soak.evidence import LIBRARY_WORDS
from edge.util.httpwords import SUMMARY_S, BadRequests, bad_request_words
from hub.app import RunningHub, run_hub
from hub.server import Connections, ConnectionSettings, HubRunner

BAD = {  # raw request -> what the hub says was wrong with it
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n": "a malformed Content-Length",
    b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n": "a request line or header longer than the server reads",
    b"POST /oxp/v1/batches HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n": "a malformed chunked body",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n": "a malformed header",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n": "an HTTP version the server does not take",
    b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked, x\r\n\r\n": "a malformed Transfer-Encoding",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 TLS to a plain port\r\n\r\n": "not HTTP (a port scanner, or TLS sent to a plain-HTTP port)",
}


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[RunningHub]:
    async with run_hub(state_dir=tmp_path / "hub", admin_token="admin-secret") as running:
        yield running


async def raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        return b""
    finally:
        writer.close()


def lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_malformed_requests_are_answered_400_and_said_once_in_our_words(hub: RunningHub, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    port = int(hub.url.rsplit(":", 1)[1])
    for _ in range(20):  # an anonymous client sending them as fast as it can
        for request in BAD:
            answer = await raw(port, request)
            assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n", 1)[0], answer[:200]
    said = lines(caplog)
    assert [(r.name, r.getMessage()) for r in said] == [
        ("ocn.hub", "refused a malformed HTTP request (400); more are counted and said at most once a minute")], said
    assert said[0].__dict__["reason"] == "a malformed Content-Length"
    assert not [r for r in caplog.records if r.name.startswith("aiohttp")]
    for record in caplog.records:
        assert not LIBRARY_WORDS.search(record.getMessage() + str(record.__dict__.get("reason", ""))), record

    async with aiohttp.ClientSession() as http, http.get(f"{hub.url}/metrics") as response:
        metrics = await response.text()
    for words in BAD.values():
        assert re.search(rf'^ocn_hub_http_malformed_total\{{reason="{re.escape(words)}"\}} 20\.0$', metrics, re.M), (words, metrics)
    # The hub still serves.
    async with aiohttp.ClientSession() as http, http.get(f"{hub.url}/healthz") as response:
        assert response.status == 200


def test_after_the_first_line_the_refusals_are_said_at_most_once_a_minute_with_their_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    refusals = BadRequests(logging.getLogger("ocn.hub"), clock=lambda: now[0])
    caplog.set_level(logging.INFO, logger="ocn.hub")
    from aiohttp import http_exceptions

    header, line = http_exceptions.InvalidHeader(b"Bad Header"), http_exceptions.LineTooLong("line", "8190")
    refusals.refused(header)
    for second in range(1, 60):  # within the minute: counted, not said
        now[0] = float(second)
        refusals.refused(header if second % 3 else line)
    now[0] = SUMMARY_S + 0.5
    refusals.refused(header)
    said = [r for r in caplog.records if r.name == "ocn.hub"]
    assert [r.getMessage() for r in said] == [
        "refused a malformed HTTP request (400); more are counted and said at most once a minute",
        "refused malformed HTTP requests (400)",
    ]
    assert said[1].__dict__["refused"] == 60 and said[1].__dict__["seconds"] == 60
    assert said[1].__dict__["reasons"] == "41 a malformed header; 19 a request line or header longer than the server reads"
    assert sum(refusals.total.values()) == 61


def test_every_parser_error_has_our_words() -> None:
    from aiohttp import http_exceptions

    for name in dir(http_exceptions):
        kind: Any = getattr(http_exceptions, name)
        if isinstance(kind, type) and issubclass(kind, http_exceptions.HttpProcessingError):
            exc: Exception
            if kind is http_exceptions.LineTooLong:
                exc = kind("x", "1")
            elif issubclass(kind, http_exceptions.BadHttpMessage):
                exc = kind("x")
            else:
                exc = kind()
            words = bad_request_words(exc)
            assert words and not LIBRARY_WORDS.search(words) and kind.__name__ not in words


async def test_a_handler_that_fails_is_answered_500_and_logged_once_as_a_bug_under_our_logger(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(request: web.Request) -> web.Response:
        raise KeyError("a bug")

    app = web.Application()
    app.router.add_get("/broken", broken)
    runner = HubRunner(app, connections=Connections(ConnectionSettings(), cap=10), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    caplog.set_level(logging.DEBUG)
    try:
        port: Any = runner.addresses[0][1]
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/broken") as response:
            assert response.status == 500
    finally:
        await runner.cleanup()
    said = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [(r.name, r.getMessage()) for r in said] == [
        ("ocn.hub", "a request failed inside the server and was answered 500; this is a bug, please report it with the traceback")]
    assert said[0].exc_info is not None and isinstance(said[0].exc_info[1], KeyError)
    assert not [r for r in caplog.records if r.name.startswith("aiohttp")]


@pytest.mark.parametrize("header", [b"Authorization: Bearer \xff\xfe", b"Authorization: Bearer admin-secret\xff", b"Cookie: ocn_session=\xff\xfe"],
                         ids=["a token of bytes", "the admin token and a byte more", "a session cookie of bytes"])
async def test_a_credential_that_is_not_utf_8_is_refused_401_not_a_500(hub: RunningHub, header: bytes, caplog: pytest.LogCaptureFixture) -> None:
    # A bearer token that was not UTF-8 failed hashing it (UnicodeEncodeError) and the request was answered 500.
    port = int(hub.url.rsplit(":", 1)[1])
    answer = await raw(port, b"GET /fleet HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + header + b"\r\n\r\n")
    assert answer.split(b"\r\n", 1)[0] == b"HTTP/1.1 401 Unauthorized", answer[:300]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


HOSTILE_HEADERS = [  # each header's value as bytes that are not UTF-8, or absurd
    b"Authorization: Bearer \xff\xfe", b"Authorization: \xff", b"Cookie: ocn_session=\xff\xfe", b"Origin: \xff", b"Sec-Fetch-Site: \xff",
    b"If-None-Match: \xff\xfe", b"Accept: \xff", b"Accept-Language: \xff", b"Range: bytes=\xff", b"X-Forwarded-For: \xff",
    b"Content-Type: \xff", b"Accept-Encoding: \xff", b"Authorization: Bearer " + b"a" * 8000,
]


async def test_every_route_answers_hostile_header_bytes_without_a_500_or_an_error_line(hub: RunningHub, caplog: pytest.LogCaptureFixture) -> None:
    port = int(hub.url.rsplit(":", 1)[1])
    app = hub.app
    assert app is not None
    routes = sorted({(route.method, re.sub(r"\{[^}]+\}", "x", route.resource.canonical))
                     for route in app.router.routes() if route.resource is not None and route.method != "*"})
    assert len(routes) > 20, routes
    failed = []
    for (method, path), header in ((r, h) for r in routes for h in HOSTILE_HEADERS):
        request = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n".encode() + header + b"\r\n\r\n{}"
        status = (await raw(port, request)).split(b"\r\n", 1)[0]
        if not re.match(rb"HTTP/1\.[01] [234]\d\d ", status):
            failed.append((method, path, header[:40], status))
    assert not failed, failed
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_enrolment_token_with_a_lone_surrogate_is_refused_not_a_500(hub: RunningHub, caplog: pytest.LogCaptureFixture) -> None:
    import json

    from tests.hub.gateways import SimGateway

    body = json.dumps(SimGateway("pole-1").enrol_body("\ud800")).encode()  # JSON's "\ud800": valid JSON, not valid UTF-8
    port = int(hub.url.rsplit(":", 1)[1])
    answer = await raw(port, b"POST /oxp/v1/enrol HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n"
                             b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert answer.split(b"\r\n", 1)[0] == b"HTTP/1.1 401 Unauthorized", answer[:300]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("path, kind", [("/oxp/v1/enrol", "application/json"), ("/oxp/v1/batches", "application/cose"),
                                        ("/login", "application/x-www-form-urlencoded")])
async def test_a_body_that_does_not_decode_is_a_400_and_a_client_that_leaves_mid_body_is_not_a_database_outage(
        hub: RunningHub, path: str, kind: str, caplog: pytest.LogCaptureFixture) -> None:
    # Before: a body marked gzip that is not was answered 500 and logged as a bug, every time; a client that closed its
    # connection mid-body was logged as "database unavailable; answering 503" (its ConnectionResetError taken for the database's).
    caplog.set_level(logging.INFO)
    port = int(hub.url.rsplit(":", 1)[1])
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {kind}\r\n".encode()
    for _ in range(5):
        answer = await raw(port, head + b"Connection: close\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\nabcd")
        assert answer.split(b"\r\n", 1)[0] == b"HTTP/1.1 400 Bad Request", answer[:300]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + b"Content-Length: 100\r\n\r\nabcd")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.close()
        await asyncio.sleep(0.1)
    async with aiohttp.ClientSession() as http, http.get(f"{hub.url}/healthz") as response:
        assert response.status == 200
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], [r.getMessage() for r in caplog.records]
    assert not [r for r in caplog.records if "database" in r.getMessage()]
    assert not hub.hub.database_down


def test_failures_inside_are_said_once_a_minute_with_their_traceback_first_and_a_count_after(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    said = BadRequests(logging.getLogger("ocn.hub"), clock=lambda: now[0])
    for second in range(30):
        now[0] = float(second)
        try:
            raise KeyError("a bug")
        except KeyError as exc:
            said.failed_inside(exc, 500, "")
    said.close()  # the server stops: what it held is said
    lines = [r for r in caplog.records if r.name == "ocn.hub"]
    assert [r.getMessage() for r in lines] == [
        "a request failed inside the server and was answered 500; this is a bug, please report it with the traceback",
        "more requests failed inside the server the same way; this is a bug, please report it"]
    assert lines[0].exc_info is not None and lines[1].__dict__["failed"] == 29 and said.failed["KeyError"] == 30


async def test_refusals_held_after_the_last_line_are_said_a_minute_later_without_another_request(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    from aiohttp import http_exceptions

    import edge.util.httpwords as httpwords

    monkeypatch.setattr(httpwords, "SUMMARY_S", 0.2)
    said = BadRequests(logging.getLogger("ocn.hub"))
    for _ in range(3):
        said.refused(http_exceptions.InvalidHeader(b"Bad Header"))
    await asyncio.sleep(0.5)
    lines = [r for r in caplog.records if r.name == "ocn.hub"]
    assert [r.getMessage() for r in lines] == [
        "refused a malformed HTTP request (400); more are counted and said at most once a minute", "refused malformed HTTP requests (400)"]
    assert lines[1].__dict__["refused"] == 2 and lines[1].__dict__["reasons"] == "2 a malformed header"

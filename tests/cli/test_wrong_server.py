"""A command pointed at something that is not what it expects (a proxy's error page, another service's JSON, an
answer cut off, bytes that are not text) says so in one line of our words: never a traceback, never a library's text.

Before, `ocn-edge status --url` at such a server ended in "this is a bug" with a JSONDecodeError or IncompleteRead
traceback, `enrol` printed the answer's raw bytes or "no explanation", `check --online` passed a server that
answered 200 with anything, and a refused connection was said as "[Errno 111] Connection refused".
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.soak.evidence import LIBRARY_WORDS
from edge.cli import main

ANSWERS = {  # what the server answers every request with: status, content type, body, extra bytes promised
    "proxy page": (502, "text/html", b"<html><body>nginx: 502 Bad Gateway</body></html>", 0),
    "other json": (200, "application/json", b'{"unexpected": [1, 2]}', 0),
    "cut off": (200, "application/json", b'{"overview": {"device', 100),
    "not text": (200, "application/octet-stream", b"\x00\xff\x1b[2J garbage", 0),
}


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, str]]:
    running = []
    urls = {}
    for name, (status, kind, body, promised) in ANSWERS.items():

        class Answer(http.server.BaseHTTPRequestHandler):
            def answer(self, status: int = status, kind: str = kind, body: bytes = body, promised: int = promised) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body) + promised))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = answer

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answer)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        running.append(server)
        urls[name] = f"http://127.0.0.1:{server.server_address[1]}"
    yield urls
    for server in running:
        server.shutdown()
        server.server_close()


def one_line(capsys: pytest.CaptureFixture[str]) -> str:
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "this is a bug" not in err, err
    assert not LIBRARY_WORDS.search(err), err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert all(c.isprintable() for c in lines[0]), lines[0]
    return lines[0]


@pytest.mark.parametrize("name, says", [
    ("proxy page", "the gateway answered 502"),
    ("other json", "what answers there is not a gateway's local API (/technician.json lacks the page's fields)"),
    ("cut off", "what answers there is not a gateway's local API (its answer was cut off or is not HTTP)"),
    ("not text", "what answers there is not a gateway's local API (/technician.json is not JSON)"),
])
def test_status_at_something_else_says_what_answered(servers: dict[str, str], name: str, says: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--url", servers[name]]) == 1
    assert one_line(capsys) == f"ocn-edge: {servers[name]}: {says}" + ("" if name == "proxy page" else "; is this the gateway's address?")


def test_status_where_nothing_listens_says_so_in_our_words(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["status", "--url", f"http://127.0.0.1:{port}"]) == 1
    assert "no gateway answers there (connection refused (nothing listens there: is it running?))" in one_line(capsys)


@pytest.mark.parametrize("name, says", [
    ("other json", "is not an OCN hub: it answered 200 to the enrolment with a JSON document that is not an enrolment's answer"),
    ("not text", "is not an OCN hub: it answered 200 to the enrolment with '?"),
    ("proxy page", "the hub answered 502 to the enrolment: <html><body>nginx: 502 Bad Gateway</body></html>"),
])
def test_enrol_at_something_else_says_what_answered(servers: dict[str, str], name: str, says: str, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", str(tmp_path / "gw")]) == 0
    config = tmp_path / "gw" / "gateway.toml"
    text = config.read_text()
    text = text.replace('state_dir = "/var/lib/ocn-edge"', f'state_dir = "{tmp_path / "state"}"')
    text = text.replace('hub = "https://hub.example.org/"', f'hub = "{servers[name]}"')
    config.write_text(text)
    capsys.readouterr()
    assert main(["enrol", str(config), "--token", "a-token"]) != 0
    assert says in one_line(capsys)


@pytest.mark.parametrize("name", ["other json", "not text", "cut off"])
def test_check_online_does_not_pass_a_server_that_answers_without_a_hubs_key(servers: dict[str, str], name: str, tmp_path: Path,
                                                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", str(tmp_path / "gw")]) == 0
    config = tmp_path / "gw" / "gateway.toml"
    config.write_text(config.read_text().replace('hub = "https://hub.example.org/"', f'hub = "{servers[name]}"'))
    capsys.readouterr()
    main(["check", "--online", str(config)])
    err = capsys.readouterr().err
    assert "Traceback" not in err and not LIBRARY_WORDS.search(err), err
    assert f'uplink.hub = "{servers[name]}": {servers[name]}/oxp/v1/hub-key answered, but not' in err, err

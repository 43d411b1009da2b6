"""What aiohttp's server would log about a connection, said in our words: a client's malformed request, and a request that failed inside.

aiohttp logs both under its own logger, ``aiohttp.server``, as ``Error handling request from 127.0.0.1`` with a
traceback through its parser (``aiohttp.http_exceptions.BadHttpMessage: 400, message: Invalid character in
Content-Length``): a line of a library's words per bad request, at level error, which any anonymous client can
make the hub write as fast as it can send.  :class:`OurWordsHandler` is aiohttp's connection handler with those
lines replaced: a malformed request is answered 400 as before and counted by what was wrong with it
(:class:`BadRequests`), said once when the first comes and then at most once a minute with the count, at
warning; an exception a request handler let escape (a bug: answered 500) is logged under our logger with its
traceback, at most once a minute, the rest counted.  The hub's connections and the gateway's local API both use it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import http_exceptions
from aiohttp.web_protocol import RequestHandler, RequestPayloadError
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

__all__ = ["BadRequests", "OurWordsHandler", "bad_request_words"]

SUMMARY_S = 60.0  # malformed requests after the first are said at most this often, with their count

# aiohttp's parser errors by class, most specific first, and what each means to whoever reads the log.
_WORDS: tuple[tuple[type[Exception], str], ...] = (
    (http_exceptions.BadHttpMethod, "not HTTP (a port scanner, or TLS sent to a plain-HTTP port)"),
    (http_exceptions.LineTooLong, "a request line or header longer than the server reads"),
    (http_exceptions.InvalidURLError, "a malformed URL"),
    (http_exceptions.InvalidHeader, "a malformed header"),
    (http_exceptions.TransferEncodingError, "a malformed chunked body"),
    (http_exceptions.ContentLengthError, "a body that does not match its Content-Length"),
    (http_exceptions.DecompressSizeError, "a compressed body that expands past the limit"),
    (http_exceptions.ContentEncodingError, "a body that does not decode as its Content-Encoding says"),
    (RequestPayloadError, "a body that broke in transit or does not decode as its Content-Encoding says"),
)


_PARTS = (  # llhttp's first words ("Invalid character in chunk size", "Invalid header token", "Duplicate Content-Length")
    ("content-length", "a malformed Content-Length"),
    ("transfer-encoding", "a malformed Transfer-Encoding"),
    ("chunk", "a malformed chunked body"),
    ("version", "an HTTP version the server does not take"),
    ("header", "a malformed header"),
    ("method", "not HTTP (a port scanner, or TLS sent to a plain-HTTP port)"),
    ("url", "a malformed URL"),
)


def bad_request_words(exc: BaseException) -> str:
    """What was wrong with a request aiohttp's parser refused, in our words ("a malformed header")."""
    for kind, words in _WORDS:
        if isinstance(exc, kind):
            return words
    if isinstance(exc, http_exceptions.BadStatusLine):
        return "an HTTP version the server does not take" if "version" in str(getattr(exc, "message", "")).lower() else "not an HTTP request line"
    # The C parser (llhttp) raises the plain BadHttpMessage for most of what it refuses; its first words say which part.
    said = str(getattr(exc, "message", "")).split(":", 1)[0].lower()
    for part, words in _PARTS:
        if part in said:
            return words
    return "a malformed HTTP request"


class BadRequests:
    """What one server refused or failed: malformed requests counted by what was wrong, and requests that failed inside it.

    Each kind is said when its first comes, then at most once a minute with the count since (a line is also due a minute
    after the last, if more came meanwhile, so a burst that stops is still told).  A request that failed inside the
    server is a bug: its first is logged with its traceback, the rest of the minute counted, by the exception's class.
    """

    def __init__(self, log: logging.Logger, *, counted: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.total: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()  # requests that failed inside the server, by the exception's class
        self.counted = counted  # the server's metrics, if it keeps any: called with the reason of each refusal
        self._clock = clock
        self._held: Counter[str] = Counter()  # refused since the last line
        self._said_at: float | None = None
        self._failed_held: Counter[str] = Counter()
        self._failed_said_at: float | None = None
        self._due: asyncio.TimerHandle | None = None

    def refused(self, exc: BaseException) -> None:
        words = bad_request_words(exc)
        self.total[words] += 1
        if self.counted is not None:
            self.counted(words)
        self._held[words] += 1
        now = self._clock()
        if self._said_at is None:
            self.log.warning("refused a malformed HTTP request (400); more are counted and said at most once a minute",
                             extra={"reason": words})
            self._said_at = now
            self._held.clear()
        elif now - self._said_at >= SUMMARY_S:
            self._say_refused(now)
        else:
            self._later()

    def failed_inside(self, exc: BaseException | None, status: int, detail: str) -> None:
        kind = type(exc).__name__ if exc is not None else "no response"
        self.failed[kind] += 1
        now = self._clock()
        if self._failed_said_at is None or now - self._failed_said_at >= SUMMARY_S:
            held = sum(self._failed_held.values())
            extra: dict[str, Any] = {"detail": detail} if detail else {}
            if held:
                extra["more_since_last"] = held
            self.log.error(f"a request failed inside the server and was answered {status}; this is a bug, please report it with "
                           "the traceback", exc_info=exc, extra=extra)
            self._failed_said_at = now
            self._failed_held.clear()
        else:
            self._failed_held[kind] += 1
            self._later()

    def _say_refused(self, now: float) -> None:
        assert self._said_at is not None
        self.log.warning("refused malformed HTTP requests (400)", extra={
            "refused": sum(self._held.values()), "seconds": round(now - self._said_at),
            "reasons": "; ".join(f"{count} {words}" for words, count in self._held.most_common())})
        self._said_at = now
        self._held.clear()

    def _later(self) -> None:
        """A line is due when the minute since the last is up, for what came meanwhile: scheduled once on the running loop."""
        if self._due is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a test with its own clock): said with the next one after the minute
        self._due = loop.call_later(SUMMARY_S, self._flush)

    def _flush(self) -> None:
        self._due = None
        now = self._clock()
        if self._held and self._said_at is not None:
            if now - self._said_at >= SUMMARY_S:
                self._say_refused(now)
            else:
                self._later()
        if self._failed_held:
            self._say_failed()

    def close(self) -> None:
        """Say what is held, as the server stops."""
        if self._due is not None:
            self._due.cancel()
            self._due = None
        if self._held and self._said_at is not None:
            self._say_refused(self._clock())
        if self._failed_held:
            self._say_failed()

    def _say_failed(self) -> None:
        held = sum(self._failed_held.values())
        self.log.error("more requests failed inside the server the same way; this is a bug, please report it", extra={
            "failed": held, "kinds": "; ".join(f"{count} {kind}" for kind, count in self._failed_held.most_common())})
        self._failed_said_at = self._clock()
        self._failed_held.clear()


class OurWordsHandler(RequestHandler):
    """aiohttp's connection handler, whose log lines are ours: see the module's text.

    ``bad_requests`` counts and says what it refused and what failed inside.  aiohttp's own logger gets nothing: the
    one line it writes directly (a first request that is not HTTP, at debug) goes to a logger that is switched off.
    What is the client's doing is not a bug: a malformed request (400 from aiohttp's parser), a body that breaks in
    transit or does not decode as its Content-Encoding says (answered 400 here, where aiohttp answers 500), and a
    client that left before its answer (nothing to answer, nothing said).
    """

    def __init__(self, manager: Any, *, bad_requests: BadRequests, **kwargs: Any) -> None:
        kwargs["logger"] = _SILENT
        super().__init__(manager, **kwargs)
        self.bad_requests = bad_requests
        self._said = False  # the line for the error being handled is said (or is not to be said)
        self._status = 500

    def handle_error(self, request: BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> StreamResponse:
        if status == 400 and isinstance(exc, http_exceptions.HttpProcessingError):
            self.bad_requests.refused(exc)  # aiohttp's parser refused it
            self._said = True
        elif status == 500 and isinstance(exc, RequestPayloadError):
            cause = exc.__cause__ if isinstance(exc.__cause__, http_exceptions.HttpProcessingError) else exc
            self.bad_requests.refused(cause)
            status, self._said = 400, True
        elif isinstance(exc, ConnectionError) and self.transport is None:
            self._said = True  # the client left: nobody hears the answer, and nothing is wrong here
        self._status = status
        try:
            return super().handle_error(request, status, exc, message)
        finally:
            self._said = False
            self._status = 500  # what aiohttp answers when it logs outside handle_error (a handler that returned no response)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        if self._said:
            return
        exc = kw.get("exc_info")
        if isinstance(exc, BaseException):
            self.bad_requests.failed_inside(exc, self._status, "")
        else:  # no exception: what aiohttp found wrong with the handler's answer ("Missing return statement on request handler")
            self.bad_requests.failed_inside(None, self._status, str(args[0]) if args else "")

    def log_debug(self, *args: Any, **kw: Any) -> None:
        return  # aiohttp's debug lines (a client gone mid-request, an unfinished body) say nothing an operator acts on


_SILENT = logging.Logger("aiohttp.server, silenced")  # not in logging's tree: nothing reaches a handler through it
_SILENT.disabled = True

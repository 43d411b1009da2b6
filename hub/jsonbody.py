"""Read a request's JSON body within a byte limit and a nesting-depth limit, or refuse it with a reason.

Python's json parser recurses once per nesting level: a body of a few thousand ``[`` ends in a
RecursionError (an answer of 500) after using the whole stack. The depth is therefore counted
first, by one linear pass over the text that only tracks strings and brackets, and a body
nested deeper than the limit is refused before the parser sees it.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

__all__ = ["BodyError", "MAX_JSON_DEPTH", "json_depth", "read_bounded", "read_json"]

MAX_JSON_DEPTH = 32
"""Deeper than any document the hub accepts (a desired document nests a handful of levels)."""

# The only tokens that change the nesting depth or whether we are inside a string; an escape
# (backslash and the character after it) is one token, so an escaped quote never ends a string.
_STRUCTURE = re.compile(rb'\\.|[\[\]{}"]', re.DOTALL)


class BodyError(ValueError):
    """A request body the hub refuses (too large, or JSON it will not parse): ``status`` is the HTTP status, ``code`` the OXP error code."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def json_depth(raw: bytes, *, stop_after: int) -> int:
    """The deepest nesting of arrays and objects in ``raw`` (0 for a scalar), counting no further than ``stop_after`` + 1.

    Linear in ``len(raw)``; the text need not be valid JSON (the parser judges that afterwards).
    """
    depth = deepest = 0
    in_string = False
    for match in _STRUCTURE.finditer(raw):
        char = match.group()
        if char == b'"':
            in_string = not in_string
        elif in_string or len(char) == 2:
            continue
        elif char in b"[{":
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > stop_after:
                    return deepest
        else:
            depth -= 1
    return deepest


async def read_bounded(request: web.Request, *, limit: int, what: str = "body") -> bytes:
    """The whole body of ``request``, or raise :class:`BodyError` (413) as soon as it passes ``limit`` bytes.

    Whatever the body's type: the COSE endpoints read theirs with it too.
    """
    if request.content_length is not None and request.content_length > limit:
        raise BodyError(413, "too_large", f"{what} is {request.content_length} bytes, over the limit of {limit}")
    parts, size = [], 0
    try:
        async for part in request.content.iter_chunked(64 * 1024):
            size += len(part)
            if size > limit:
                raise BodyError(413, "too_large", f"{what} is over the limit of {limit} bytes")
            parts.append(part)
    except RequestPayloadError:  # a chunk or a Content-Encoding that does not decode: aiohttp would answer 500
        raise BodyError(400, "malformed", f"{what} does not decode: its chunked framing or its Content-Encoding is broken") from None
    return b"".join(parts)


async def read_json(request: web.Request, *, limit: int, max_depth: int = MAX_JSON_DEPTH, what: str = "request body") -> Any:
    """The JSON value of ``request``'s body, or raise :class:`BodyError` (415, 413 or 400) naming what is wrong.

    Stops reading as soon as the body passes ``limit`` bytes; refuses nesting deeper than ``max_depth``.
    """
    if request.content_type != "application/json":
        raise BodyError(415, "unsupported_media_type", f"Content-Type {request.content_type!r}: expected application/json")
    raw = await read_bounded(request, limit=limit, what=what)
    if json_depth(raw, stop_after=max_depth) > max_depth:
        raise BodyError(400, "malformed", f"{what} nests arrays and objects deeper than {max_depth} levels")
    try:
        return json.loads(raw)
    except ValueError:
        raise BodyError(400, "malformed", f"{what} is not JSON (UTF-8, RFC 8259)") from None

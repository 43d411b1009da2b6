"""Large public answers (JSON, CBOR, CSV) written in slices, so encoding one never holds the event loop for long.

json.dumps and cbor2.dumps are single C calls that keep the GIL until they return: on a
SensorThings answer of 40,000 entities (19 MB) the loop stood still for 2.2 s, and moving the
call to a thread would not help.  Here the value is encoded a slice at a time, each slice sent
before the next is encoded, with a turn for the loop in between.  An answer made as its values
are read (hub.readingpages) comes as an async iterable of such pieces, a batch at a time.

Nothing is sent before the first slice is full (or the answer is complete), so what fails early
(a query past its budget, the store gone) is still answered with its status.  Once the first
bytes are sent the status cannot change: a failure after that closes the connection, which is
how HTTP says the answer is incomplete.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from typing import Any

import cbor2
from aiohttp import web

from hub.budget import OverBudget
from hub.publicreads import REQUEST_BUDGET

__all__ = ["Pieces", "cbor_array_head", "send_cbor_array", "send_json", "send_pieces", "send_text"]

log = logging.getLogger("ocn.hub")

Pieces = AsyncIterable[Iterable[bytes]]

# Bytes encoded between two turns of the event loop: about 2 ms of json.dumps.
SLICE_BYTES = 256 * 1024
# ...and at most this long: CSV lines cost far more per byte than json.dumps (a 256 KiB slice of
# readings.csv was 40 ms alone, and several times that while public queries share the interpreter).
SLICE_S = 0.004
# Items of one list encoded by one call.
GROUP = 500


def json_pieces(value: Any, dumps: Callable[[Any], str]) -> Iterator[str]:
    """``dumps(value)`` in pieces: lists a group of items at a time, objects holding a list a member at a time."""
    if isinstance(value, list) and (len(value) > GROUP or any(_holds_a_list(item) for item in value)):
        yield "["
        for start in range(0, len(value), GROUP):
            if start:
                yield ", "
            group = value[start : start + GROUP]
            if any(_holds_a_list(item) for item in group):
                for i, item in enumerate(group):
                    if i:
                        yield ", "
                    yield from json_pieces(item, dumps)
            else:
                yield dumps(group)[1:-1]
        yield "]"
    elif _holds_a_list(value):
        yield "{"
        for i, (key, item) in enumerate(value.items()):
            yield (", " if i else "") + dumps(key) + ": "
            yield from json_pieces(item, dumps)
        yield "}"
    else:
        yield dumps(value)


def _holds_a_list(value: Any) -> bool:
    """An object with a non-empty list among its members, or in an object among them (an expansion)."""
    return isinstance(value, Mapping) and any((isinstance(v, list) and v) or _holds_a_list(v) for v in value.values())


async def _once(pieces: Iterable[bytes]) -> AsyncIterator[Iterable[bytes]]:
    yield pieces


async def send_pieces(request: web.Request, batches: Pieces, *, content_type: str, charset: str | None,
                      headers: Mapping[str, str] | None = None) -> web.StreamResponse:
    """The bytes of each batch of pieces, in order, in slices; the batches may be made as they are sent."""
    response = web.StreamResponse(headers=headers)
    response.content_type = content_type
    if charset:
        response.charset = charset
    budget = request.get(REQUEST_BUDGET)
    buffer, size, started = [], 0, time.perf_counter()
    try:
        async for pieces in batches:
            for piece in pieces:
                buffer.append(piece)
                size += len(piece)
                if size >= SLICE_BYTES or time.perf_counter() - started >= SLICE_S:
                    if not response.prepared:
                        await response.prepare(request)
                    await response.write(b"".join(buffer))
                    buffer, size = [], 0
                    if budget is None:
                        await asyncio.sleep(0)
                    else:
                        await budget.pause_rendering(time.perf_counter() - started)
                    started = time.perf_counter()
        if budget is not None and budget.end_turn is not None:
            await budget.end_turn()  # the answer is made: the client may ask again once it has the last bytes
        if not response.prepared:
            await response.prepare(request)
        await response.write(b"".join(buffer))
        await response.write_eof()
    except (asyncio.CancelledError, ConnectionError):
        raise
    except Exception as exc:
        if not response.prepared:
            raise  # nothing sent yet: the route answers with its error (a query past its budget: 400 or 503)
        log.warning("a public answer stopped after it had begun; its connection is closed",
                    extra={"path": request.path, "error": exc.detail if isinstance(exc, OverBudget) else type(exc).__name__})
        if request.transport is not None:
            request.transport.close()
    return response


async def send_json(request: web.Request, value: Any, *, content_type: str = "application/json", headers: Mapping[str, str] | None = None,
                    **dumps_options: Any) -> web.StreamResponse:
    """``value`` as JSON (``json.dumps(value, **dumps_options)``, the same text) in slices."""

    def dumps(item: Any) -> str:
        return json.dumps(item, **dumps_options)

    return await send_pieces(request, _once(piece.encode() for piece in json_pieces(value, dumps)), content_type=content_type,
                             charset="utf-8", headers=headers)


def cbor_array_head(length: int) -> bytes:
    """The header of a CBOR array of ``length`` items (its items follow it)."""
    head = io.BytesIO()
    cbor2.CBOREncoder(head).encode_length(4, length)
    return head.getvalue()


async def send_cbor_array(request: web.Request, items: list[Any], *, content_type: str, headers: Mapping[str, str] | None = None) -> web.StreamResponse:
    """``cbor2.dumps(items)`` (the same bytes) in slices."""

    def pieces() -> Iterator[bytes]:
        yield cbor_array_head(len(items))
        for start in range(0, len(items), GROUP):
            yield b"".join(cbor2.dumps(item) for item in items[start : start + GROUP])

    return await send_pieces(request, _once(pieces()), content_type=content_type, charset=None, headers=headers)


async def send_text(request: web.Request, lines: Iterable[str], *, content_type: str, headers: Mapping[str, str] | None = None) -> web.StreamResponse:
    """Text made line by line (``lines`` is consumed as it is sent), in UTF-8 slices."""
    return await send_pieces(request, _once(line.encode() for line in lines), content_type=content_type, charset="utf-8", headers=headers)

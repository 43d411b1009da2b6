"""Open-data exports of stored readings: CSV and SenML (RFC 8428) JSON and CBOR, filtered by device, channel and time.

Personal channels (OXP kind + 4) are never listed or exported: the store leaves them out of these queries.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import cbor2
from aiohttp import web

from edge.protocol.senml import SENML_CBOR_LABELS
from hub.budget import QueryBudget
from hub.chunks import check_window
from hub.models import StoredReading
from hub.params import ParamError, whole
from hub.publicreads import READ_STORE, Refused, public_read
from hub.readingpages import ReadingPage, reading_page
from hub.render import csv_row, csv_text, iso_time, json_number
from hub.sta_filter import iso_ms
from hub.streamed import Pieces, cbor_array_head, send_pieces

__all__ = ["SenmlRecords", "routes", "parse_time", "to_senml_records"]

routes = web.RouteTableDef()

DEFAULT_LIMIT = 10_000
MAX_LIMIT = 100_000

TIME_MIN, TIME_MAX = -(2**63), 2**63 - 1
_DIGITS = re.compile(r"-?[0-9]+")


class QueryError(ParamError):
    """A query parameter is wrong; the message names it, its value and what would be accepted."""


def parse_time(name: str, text: str | None) -> int | None:
    """A time parameter as UTC milliseconds: ISO 8601 (``2026-11-27T03:00:00Z``) or integer milliseconds (signed 64-bit, §2)."""
    if text is None or text == "":
        return None
    if _DIGITS.fullmatch(text):
        try:
            return whole(name, text, low=TIME_MIN, high=TIME_MAX)
        except ParamError:
            raise QueryError(f"{name}={text[:40]!r}: expected milliseconds since 1970 from {TIME_MIN} to {TIME_MAX}, "
                             "or ISO 8601 like 2026-11-27T03:00:00Z") from None
    try:
        return iso_ms(text)
    except (ValueError, OverflowError):
        raise QueryError(f"{name}={text[:40]!r}: expected ISO 8601 like 2026-11-27T03:00:00Z or milliseconds since 1970") from None


def _int(name: str, text: str | None, default: int, *, high: int) -> int:
    try:
        return whole(name, text, low=0, high=high, default=default)
    except ParamError as exc:
        raise QueryError(str(exc)) from None


def _page(request: web.Request, budget: QueryBudget) -> tuple[AbstractAsyncContextManager[ReadingPage], int, int]:
    """The page of readings a request asks for (opened by the caller), its limit and offset; QueryError for a bad parameter."""
    q = request.query
    limit = _int("limit", q.get("limit"), DEFAULT_LIMIT, high=MAX_LIMIT)
    offset = _int("offset", q.get("offset"), 0, high=2**62)
    since_ms, until_ms = parse_time("since", q.get("since")), parse_time("until", q.get("until"))
    try:
        check_window(offset, limit)
    except ValueError as exc:
        raise QueryError(f"limit/offset: {exc}") from None
    page = reading_page(request.app[READ_STORE], device_id=q.get("device") or None, channel=q.get("channel") or None,
                        since_ms=since_ms, until_ms=until_ms, limit=limit, offset=offset, budget=budget)
    return page, limit, offset


def _next_link(request: web.Request, size: int, limit: int, offset: int) -> dict[str, str]:
    if size < limit:
        return {}
    url = request.url.update_query(offset=str(offset + limit))
    return {"Link": f'<{url}>; rel="next"'}


class SenmlRecords:
    """SenML records of readings given in runs; each run of one device's readings starts with its base name and base time
    (as the gateway's view), across the runs as within one.

    With ``json_numbers`` (SenML JSON) a NaN or infinite value, which JSON cannot spell, is the
    string value ``"NaN"``, ``"Infinity"`` or ``"-Infinity"`` (``vs``); SenML CBOR keeps the float.
    """

    def __init__(self, *, json_numbers: bool = False) -> None:
        self.json_numbers = json_numbers
        self.device: str | None = None
        self.base_ms = 0

    def records(self, rows: Iterable[StoredReading]) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        json_numbers = self.json_numbers
        for r in rows:
            record: dict[str, Any] = {}
            if r.device_id != self.device:
                self.device, self.base_ms = r.device_id, r.ts_ms
                record.update({"bn": f"urn:dev:ocn:{r.device_id}:", "bt": r.ts_ms / 1000})
            record["n"] = r.channel
            if r.unit:
                record["u"] = r.unit
            if isinstance(r.value, bool):
                record["vb"] = r.value
            elif isinstance(r.value, str):
                record["vs"] = r.value
            elif json_numbers and json_number(r.value) is not r.value:
                record["vs"] = json_number(r.value)
            else:
                record["v"] = r.value
            if r.ts_ms != self.base_ms:
                record["t"] = (r.ts_ms - self.base_ms) / 1000
            if r.quality is not None:
                record["q"] = r.quality
            records.append(record)
        return records


def to_senml_records(rows: Sequence[StoredReading], *, json_numbers: bool = False) -> list[dict[str, Any]]:
    """SenML records of ``rows`` (see :class:`SenmlRecords`)."""
    return SenmlRecords(json_numbers=json_numbers).records(rows)


def _bad(exc: QueryError) -> web.Response:
    return web.json_response({"error": "bad_query", "detail": str(exc)}, status=400)


in_turn = public_read(Refused.json_response, narrow="narrow it with device, channel, since and until")


@routes.get("/data")
@in_turn
async def index(request: web.Request, budget: QueryBudget) -> web.Response:
    channels = await request.app[READ_STORE].channels()
    lines = [
        "<!doctype html><html lang=en><meta charset=utf-8><title>Open data · OCN hub</title>",
        "<body style='font-family:system-ui,sans-serif;margin:24px'><h1>Open data</h1>",
        "<p>Readings as <a href='/data/readings.csv'>CSV</a>, <a href='/data/readings.senml.json'>SenML JSON</a> or "
        "<a href='/data/readings.senml.cbor'>SenML CBOR</a>. Filter with <code>device</code>, <code>channel</code>, "
        "<code>since</code>, <code>until</code> (ISO 8601 or epoch milliseconds), <code>limit</code> (max 100000) and "
        "<code>offset</code>; a full page carries a <code>Link: rel=next</code> header. "
        "The same data as an OGC <a href='/sta/v1.1'>SensorThings API</a>.</p><table border=1 cellpadding=4>"
        "<tr><th>Gateway</th><th>Channel</th><th>Unit</th><th>Download</th></tr>",
    ]
    from markupsafe import escape

    for c in channels:
        link = f"device={escape(c.device_id)}&channel={escape(c.channel)}"
        lines.append(
            f"<tr><td>{escape(c.device_id)}</td><td>{escape(c.channel)}</td><td>{escape(c.unit)}</td>"
            f"<td><a href='/data/readings.csv?{link}'>CSV</a> · <a href='/data/readings.senml.json?{link}'>SenML</a></td></tr>"
        )
    lines.append("</table></body></html>")
    return web.Response(text="".join(lines), content_type="text/html")


@routes.get("/data/readings.csv")
@in_turn
async def readings_csv(request: web.Request, budget: QueryBudget) -> web.StreamResponse:
    try:
        opening, limit, offset = _page(request, budget)
        async with opening as page:
            return await send_pieces(request, _csv(page), content_type="text/csv", charset="utf-8",
                                     headers=_next_link(request, page.size, limit, offset))
    except QueryError as exc:
        return _bad(exc)


async def _csv(page: ReadingPage) -> Pieces:
    # Text a spreadsheet would run is neutralised and quoted (hub.render); numbers as they are.
    yield [csv_row(["device_id", "channel", "time", "ts_ms", "value", "unit", "quality"]).encode()]
    async for rows in page.batches():
        lines = []
        for r in rows:
            value = ("true" if r.value else "false") if isinstance(r.value, bool) else csv_text(r.value) if isinstance(r.value, str) else r.value
            lines.append(csv_row([csv_text(r.device_id), csv_text(r.channel), iso_time(r.ts_ms), r.ts_ms, value, csv_text(r.unit),
                                  "" if r.quality is None else r.quality]).encode())
        yield lines


@routes.get("/data/readings.senml.json")
@in_turn
async def readings_senml_json(request: web.Request, budget: QueryBudget) -> web.StreamResponse:
    try:
        opening, limit, offset = _page(request, budget)
        async with opening as page:
            return await send_pieces(request, _senml_json(page), content_type="application/senml+json", charset="utf-8",
                                     headers=_next_link(request, page.size, limit, offset))
    except QueryError as exc:
        return _bad(exc)


async def _senml_json(page: ReadingPage) -> Pieces:
    """``json.dumps(records, ensure_ascii=False, allow_nan=False)``, the same text, a batch of readings at a time."""
    senml, separator = SenmlRecords(json_numbers=True), "["
    async for rows in page.batches():
        if rows:
            yield [separator.encode(), json.dumps(senml.records(rows), ensure_ascii=False, allow_nan=False)[1:-1].encode()]
            separator = ", "
    yield [b"[]" if separator == "[" else b"]"]


@routes.get("/data/readings.senml.cbor")
@in_turn
async def readings_senml_cbor(request: web.Request, budget: QueryBudget) -> web.StreamResponse:
    try:
        opening, limit, offset = _page(request, budget)
        async with opening as page:
            return await send_pieces(request, _senml_cbor(page), content_type="application/senml+cbor", charset=None,
                                     headers=_next_link(request, page.size, limit, offset))
    except QueryError as exc:
        return _bad(exc)


async def _senml_cbor(page: ReadingPage) -> Pieces:
    """``cbor2.dumps(records)`` with SenML's CBOR labels, the same bytes, a batch of readings at a time."""
    yield [cbor_array_head(page.size)]
    senml, sent = SenmlRecords(), 0
    async for rows in page.batches():
        yield [cbor2.dumps({SENML_CBOR_LABELS.get(k, k): v for k, v in record.items()}) for record in senml.records(rows)]
        sent += len(rows)
    if sent != page.size:
        # The array's length was sent first: readings deleted meanwhile (retention) leave it short, and it must not end as if whole.
        raise ValueError(f"the page held {sent} readings where its count said {page.size}")

"""How readings are kept: one compact chunk per channel per batch, and the query that reads them back in order.

A row per reading costs more than the rest of ingest together (on a Raspberry Pi class
or small cloud machine SQLite inserts well under 100,000 indexed rows a second), while a
batch already groups a channel's readings.  So each batch stores one row per channel:
its time range, its count and a CBOR array of time offsets, values and quality flags.
Queries select the chunks whose time range overlaps, decode them and merge in order,
stopping as soon as no further chunk can change the page asked for.
A reading's id is ``chunk id * 65536 + position`` (``MAX_CHUNK`` readings per chunk).
"""

from __future__ import annotations

import bisect
import itertools
import operator
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

import cbor2

from edge.protocol.types import Reading
from hub.budget import Meter
from hub.models import StoredReading

__all__ = ["MAX_CHUNK", "MAX_WINDOW", "Collector", "Counter", "Releaser", "chunk_query", "check_window", "count_query", "encode_chunks",
           "outside_query", "quarantine_plan", "ChunkQuery", "Size", "split_chunk", "split_reading_id"]

MAX_CHUNK = 65536
# offset + limit of one query: deeper pages must narrow the time range instead.
MAX_WINDOW = 1_000_000
CHUNK_PAGE = 256
# Readings a Releaser hands on at once: a few hundred KiB of an answer, rendered while the next are read.
RELEASE_BATCH = 2048

Match = Callable[[StoredReading], bool]


def _chunk(times: Sequence[int], values: Sequence[Any], qualities: Sequence[int | None]) -> tuple[int, int, int, bytes]:
    """(first_ms, last_ms, count, data) of one chunk's readings."""
    first = min(times)
    data = cbor2.dumps([[t - first for t in times], list(values), list(qualities) if any(q is not None for q in qualities) else None])
    return first, max(times), len(times), data


def encode_chunks(readings: Iterable[Reading]) -> dict[str, list[tuple[int, int, int, bytes]]]:
    """Per channel: (first_ms, last_ms, count, data) for each chunk of at most MAX_CHUNK readings."""
    by_channel: dict[str, list[Reading]] = {}
    for r in readings:
        rows = by_channel.get(r.channel)
        if rows is None:
            by_channel[r.channel] = [r]
        else:
            rows.append(r)
    out: dict[str, list[tuple[int, int, int, bytes]]] = {}
    for channel, rows in by_channel.items():
        if len(rows) == 1:
            # A channel's one reading in a batch (a 5-second batch of a station is mostly these): _chunk's result, made
            # without its lists and min/max (bench.mqtt_hub: 17 channels of one reading a batch, 2x faster).
            (one,) = rows
            quality = None if one.quality is None else [int(one.quality)]
            out[channel] = [(one.ts_ms, one.ts_ms, 1, cbor2.dumps([[0], [one.value], quality]))]
            continue
        out[channel] = [
            _chunk([r.ts_ms for r in part], [r.value for r in part], [None if r.quality is None else int(r.quality) for r in part])
            for part in (rows[start : start + MAX_CHUNK] for start in range(0, len(rows), MAX_CHUNK))
        ]
    return out


def split_chunk(
    first_ms: int, data: bytes, fault: Callable[[int], str | None]
) -> tuple[tuple[int, int, int, bytes] | None, list[tuple[list[Any], str]]]:
    """A stored chunk without the readings whose time has a ``fault`` (None: no reading left), and those readings.

    Each refused reading is ``[ts_ms, value, quality]`` with its reason.  The readings kept move
    up to fill the gaps, so their ids (chunk id × 65536 + position) change.
    """
    offsets, values, qualities = cbor2.loads(bytes(data))
    kept: tuple[list[int], list[Any], list[int | None]] = ([], [], [])
    refused: list[tuple[list[Any], str]] = []
    for i, offset in enumerate(offsets):
        ts, quality = first_ms + offset, None if qualities is None else qualities[i]
        reason = fault(ts)
        if reason is None:
            kept[0].append(ts)
            kept[1].append(values[i])
            kept[2].append(quality)
        else:
            refused.append(([ts, values[i], quality], reason))
    return (_chunk(*kept) if kept[0] else None), refused


def outside_query(mark: str) -> str:
    """SELECT of the chunks holding a reading before the first parameter or after the second, for quarantine_plan.

    ``mark`` is the engine's placeholder style ("?" or "$").
    """
    low, high = ("?", "?") if mark == "?" else ("$1", "$2")
    return ("SELECT k.id, c.device_id, c.name, c.unit, k.first_ms, k.data" + _CHUNKS_FROM
            + f" WHERE k.first_ms < {low} OR k.last_ms > {high} ORDER BY k.id")


class QuarantinePlan(NamedTuple):
    """What moving stored readings into quarantine writes: chunks to rewrite or delete, and quarantine rows."""

    rewrite: list[tuple[int, int, int, bytes, int]]  # (first_ms, last_ms, count, data, chunk id)
    delete: list[tuple[int]]  # (chunk id,)
    quarantine: list[tuple[str, str, str, bytes, str, int]]  # (device_id, channel, unit, reading, reason, received_ms)


def quarantine_plan(rows: Iterable[Sequence[Any]], fault: Callable[[int], str | None], *, now_ms: int) -> QuarantinePlan:
    """The plan that takes every reading whose time has a ``fault`` out of the chunk rows of outside_query."""
    plan = QuarantinePlan([], [], [])
    for chunk_id, device_id, channel, unit, first_ms, data in rows:
        kept, refused = split_chunk(first_ms, data, fault)
        if not refused:
            continue
        plan.quarantine.extend((device_id, channel, unit, cbor2.dumps(reading), reason, now_ms) for reading, reason in refused)
        if kept is None:
            plan.delete.append((chunk_id,))
        else:
            plan.rewrite.append((*kept, chunk_id))
    return plan


def split_reading_id(reading_id: int) -> tuple[int, int]:
    """(chunk id, position) of a reading id."""
    return reading_id >> 16, reading_id & 0xFFFF


def _chunks_where(
    mark: str,
    *,
    include_personal: bool,
    device_id: str | None = None,
    channel: str | None = None,
    channel_id: int | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    chunk_id: int | None = None,
) -> tuple[str, list[Any]]:
    """The WHERE clause (with its leading space, or "") over ``chunks k JOIN channels c`` and its parameters.

    ``mark`` is the engine's placeholder style ("?" or "$"). Chunks of personal channels are
    left out unless ``include_personal``.
    """
    clauses: list[str] = [] if include_personal else ["NOT c.personal"]
    params: list[Any] = []
    conditions = (
        ("c.device_id = ", device_id),
        ("c.name = ", channel),
        ("k.channel_id = ", channel_id),
        ("k.last_ms >= ", since_ms),
        ("k.first_ms < ", until_ms),
        ("k.id = ", chunk_id),
    )
    for test, value in conditions:
        if value is not None:
            params.append(value)
            clauses.append(test + ("?" if mark == "?" else f"${len(params)}"))
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


_CHUNKS_FROM = " FROM chunks k JOIN channels c ON c.id = k.channel_id"


class ChunkQuery(NamedTuple):
    """The chunks that may hold matching readings: their WHERE clause and parameters, and the order the Collector reads them in."""

    where: str
    params: list[Any]
    order_by: str

    def rows(self) -> str:
        """SELECT of those chunks in order; the caller appends LIMIT/OFFSET."""
        return "SELECT k.id, k.channel_id, c.device_id, c.name, c.unit, k.first_ms, k.last_ms, k.data" + _CHUNKS_FROM + self.where + self.order_by

    def size(self) -> str:
        """SELECT of how many readings those chunks hold (one row, one number), for a Size."""
        return "SELECT COALESCE(SUM(k.count), 0)" + _CHUNKS_FROM + self.where


def chunk_query(
    mark: str,
    *,
    device_id: str | None,
    channel: str | None,
    channel_id: int | None,
    since_ms: int | None,
    until_ms: int | None,
    chunk_id: int | None,
    order: str,
    descending: bool,
    include_personal: bool = False,
) -> ChunkQuery:
    """The chunks that may hold matching readings, in the order the Collector reads them.

    ``mark`` is the engine's placeholder style ("?" or "$").  Chunks of personal channels are
    left out unless ``include_personal``.
    """
    where, params = _chunks_where(
        mark, include_personal=include_personal, device_id=device_id, channel=channel, channel_id=channel_id,
        since_ms=since_ms, until_ms=until_ms, chunk_id=chunk_id,
    )
    if order == "ts_ms":
        order_by = " ORDER BY k.last_ms DESC, k.id DESC" if descending else " ORDER BY k.first_ms, k.id"
    else:
        # Descending by value too, so a reading tied with a full page's last one always ranks below it (Collector._contenders).
        order_by = " ORDER BY k.id DESC" if descending else " ORDER BY k.id"
    return ChunkQuery(where, params, order_by)


class Size:
    """Takes the one row of a ChunkQuery.size(): the readings a query ordered by value would have to decode, known before decoding any."""

    def __init__(self) -> None:
        self.readings = 0

    def feed(self, rows: Sequence[Sequence[Any]]) -> bool:
        for (total,) in rows:
            self.readings = int(total)
        return False

    def page(self) -> list[StoredReading]:
        return []


def count_query(
    mark: str, *, channel_id: int | None, since_ms: int | None, until_ms: int | None, include_personal: bool = False,
    device_id: str | None = None, channel: str | None = None,
) -> tuple[str, list[Any]]:
    """SELECT of the chunks that may hold readings of ``channel_id`` (or of a device and channel name) in [since, until),
    with their counts, for a Counter.

    Chunks of personal channels are left out unless ``include_personal``.
    """
    where, params = _chunks_where(
        mark, include_personal=include_personal, device_id=device_id, channel=channel, channel_id=channel_id, since_ms=since_ms,
        until_ms=until_ms,
    )
    sql = "SELECT k.id, k.channel_id, c.device_id, c.name, c.unit, k.first_ms, k.last_ms, k.count, k.data" + _CHUNKS_FROM
    return sql + where + " ORDER BY k.id", params


class Counter:
    """Counts the readings in [since, until) that ``match``: chunks wholly inside count without decoding when nothing else is asked.

    Stops once more than ``cap`` readings had to be decoded (``exceeded``), so a count over a
    huge store with a predicate on values costs at most what paging to the end would; and, given
    ``enough``, once that many are counted (a page's reader asking only whether its page is full).
    """

    def __init__(self, *, since_ms: int | None, until_ms: int | None, match: Match | None, cap: int = MAX_WINDOW,
                 enough: int | None = None) -> None:
        self.since_ms, self.until_ms, self.match, self.cap, self.enough = since_ms, until_ms, match, cap, enough
        self.total = 0
        self.decoded = 0
        self.exceeded = False

    def feed(self, rows: Sequence[Sequence[Any]]) -> bool:
        """Add chunk rows (as selected by count_query); False once the cap is passed, or ``enough`` are counted."""
        for chunk_id, channel_id, device_id, name, unit, first_ms, last_ms, count, data in rows:
            if self.enough is not None and self.total >= self.enough:
                return False
            inside = (self.since_ms is None or first_ms >= self.since_ms) and (self.until_ms is None or last_ms < self.until_ms)
            if inside and self.match is None:
                self.total += count
                continue
            self.decoded += count
            if self.decoded > self.cap:
                self.exceeded = True
                return False
            offsets, values, qualities = cbor2.loads(bytes(data))
            for i, offset in enumerate(offsets):
                ts = first_ms + offset
                if (self.since_ms is not None and ts < self.since_ms) or (self.until_ms is not None and ts >= self.until_ms):
                    continue
                if self.match is None or self.match(
                    StoredReading(chunk_id << 16 | i, channel_id, device_id, name, ts, values[i], unit, None if qualities is None else qualities[i])
                ):
                    self.total += 1
        return self.enough is None or self.total < self.enough

    def page(self) -> list[StoredReading]:
        return []


def check_window(offset: int, limit: int) -> None:
    """Raise ValueError when a page reaches deeper than one query may read (MAX_WINDOW)."""
    if offset + limit > MAX_WINDOW:
        raise ValueError(f"offset + limit = {offset + limit}: at most {MAX_WINDOW}; narrow the time range to page deeper")


def _in_range(first_ms: int, last_ms: int, offsets: Sequence[int], count: int, since: int | None, until: int | None,
              candidates: Sequence[int] | None = None) -> Sequence[int]:
    """Positions of a chunk's readings (or of ``candidates`` among them) whose time is in [since, until)."""
    if candidates is None:
        if (since is None or first_ms >= since) and (until is None or last_ms < until):
            return range(count)
        candidates = range(count)
    return [i for i in candidates
            if (since is None or first_ms + offsets[i] >= since) and (until is None or first_ms + offsets[i] < until)]


def _value_key(value: Any) -> tuple[int, Any]:
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, int | float):
        return (0, value)
    return (2, str(value))


_BY_TIME = operator.attrgetter("ts_ms", "id")
_TIME = operator.attrgetter("ts_ms")
_BY_ID = operator.attrgetter("id")
# Exact types: a bool is an int to isinstance, yet sorts after every number (_value_key).
_NUMBER_TYPES = frozenset((int, float))


class Collector:
    """Merges decoded chunks into one ordered page: ``feed`` chunk rows until it says stop, then ``page``.

    ``match`` may be a :class:`hub.budget.Meter` (a public query's budget): the collector then
    charges each chunk's readings in one call and asks the predicate inside it only about the
    readings that can still enter the page.  Ordered by value, once the page is full a reading
    must be at least as good as the page's last one to be looked at: a result-ordered query over
    a million readings builds tens of thousands of rows, not a million (2.1 s → 0.1 s on 300,000).
    """

    def __init__(
        self,
        *,
        since_ms: int | None,
        until_ms: int | None,
        match: Match | None,
        order: str,
        descending: bool,
        offset: int,
        limit: int,
        position: int | None = None,
    ) -> None:
        if order not in ("ts_ms", "id", "value"):
            raise ValueError(f"order {order!r}: expected ts_ms, id or value")
        check_window(offset, limit)
        self.since_ms, self.until_ms = since_ms, until_ms
        self.meter: Meter | None = match if isinstance(match, Meter) else None
        self.match: Match | None = match.match if isinstance(match, Meter) else match
        self.order, self.descending = order, descending
        self.offset, self.limit, self.need = offset, limit, offset + limit
        self.position = position
        # Ordered by value: (sort key, reading), each key computed once, so a sort compares tuples in C and calls
        # no Python.  Ordered by time or id: the readings alone (a key tuple each would be 11 MiB per 100,000).
        self.items: list[Any] = []
        self.bound: int | None = None
        # Ordered by value: the key of the page's last reading once the page is full.
        self.threshold: tuple[int, Any] | None = None

    def _trim(self) -> None:
        if self.order == "value":
            self.items.sort(reverse=self.descending)  # ids are unique: no two keys are equal, readings are never compared
        else:
            self.items.sort(key=_BY_TIME if self.order == "ts_ms" else _BY_ID, reverse=self.descending)
        del self.items[self.need :]
        if len(self.items) >= self.need and self.need > 0:
            last = self.items[-1][1] if self.order == "value" else self.items[-1]
            if self.order == "value":
                self.threshold = _value_key(last.value)
            else:
                self.bound = last.ts_ms if self.order == "ts_ms" else last.id

    def finished_before(self, first_ms: int, last_ms: int, chunk_id: int) -> bool:
        """True when this chunk, and every chunk after it in query order, cannot enter the page."""
        if self.need == 0:
            return True
        if self.bound is None:
            return False
        if self.order == "ts_ms":
            return last_ms < self.bound if self.descending else first_ms > self.bound
        return (chunk_id << 16 | 0xFFFF) < self.bound if self.descending else chunk_id << 16 > self.bound

    def _positions(self, first_ms: int, last_ms: int, offsets: Sequence[int], count: int) -> Sequence[int]:
        """Positions of the chunk's readings inside [since, until) (and at ``position`` when asked for one)."""
        candidates = None if self.position is None else [self.position] if self.position < count else []
        return _in_range(first_ms, last_ms, offsets, count, self.since_ms, self.until_ms, candidates)

    def _contenders(self, values: Sequence[Any], positions: Sequence[int]) -> Sequence[int]:
        """Positions whose value can still enter a full page ordered by value: strictly better than the page's last.

        A tie cannot enter: ties rank by id, and chunks come in id order (descending for a
        descending page, chunk_query), so every reading still to come loses a tie to the page.
        """
        threshold = self.threshold
        if threshold is None:
            return positions
        if threshold[0] == 0:  # the page ends on a number: compare numbers directly, the rest by their class
            t = threshold[1]
            if self.descending:  # bools and text sort above every number
                return [i for i in positions if not (type(values[i]) in _NUMBER_TYPES and values[i] <= t)]
            return [i for i in positions if type(values[i]) in _NUMBER_TYPES and values[i] < t]
        if self.descending:
            return [i for i in positions if _value_key(values[i]) > threshold]
        return [i for i in positions if _value_key(values[i]) < threshold]

    def feed(self, rows: Sequence[Sequence[Any]]) -> bool:
        """Add chunk rows (as selected by chunk_query); False once no later chunk can matter."""
        match = self.match
        for chunk_id, channel_id, device_id, name, unit, first_ms, last_ms, data in rows:
            if self.finished_before(first_ms, last_ms, chunk_id):
                return False
            offsets, values, qualities = cbor2.loads(bytes(data))
            positions = self._positions(first_ms, last_ms, offsets, len(values))
            if self.meter is not None:
                self.meter.charge(len(positions))
            if self.order == "value":
                positions = self._contenders(values, positions)
            elif self.order == "ts_ms" and self.bound is not None:
                # A full page ordered by time: a reading after its last one (before, descending) cannot enter; a tie may.
                bound = self.bound - first_ms
                positions = ([i for i in positions if offsets[i] >= bound] if self.descending
                             else [i for i in positions if offsets[i] <= bound])
            base_id = chunk_id << 16
            keyed = self.order == "value"
            for i in positions:
                reading = StoredReading(base_id | i, channel_id, device_id, name, first_ms + offsets[i], values[i], unit,
                                        None if qualities is None else qualities[i])
                if match is None or match(reading):
                    self.items.append(((_value_key(reading.value), reading.id), reading) if keyed else reading)
            full = self.bound is not None or self.threshold is not None
            # Trimmed a quarter past a full page: a few sorts of mostly sorted lists, and at most 1.25 pages held.
            if len(self.items) >= (self.need + self.need // 4 + 1 if full else self.need):
                self._trim()
        return True

    def page(self) -> list[StoredReading]:
        self._trim()
        page = self.items[self.offset : self.offset + self.limit]
        return [reading for _, reading in page] if self.order == "value" else page


class Releaser:
    """Readings of chunk rows in time order, handed to ``emit`` as soon as no chunk still to come can hold an earlier one.

    Chunks come ordered by their first time (chunk_query, ascending ts_ms), so once a chunk
    starting at t is read, every reading held from earlier chunks before t is final.  A page
    of 100,000 readings over chunks that follow each other in time is thus held one chunk at a
    time, not whole as a Collector holds it (28 MiB); readings of chunks that overlap in time
    wait for each other, never more than the page still needs.  The first ``offset`` readings
    are skipped, ``emit`` gets the next ``limit`` in lists of at most RELEASE_BATCH, and reading
    stops there.  ``match`` as for a Collector.
    """

    def __init__(self, *, since_ms: int | None, until_ms: int | None, match: Match | None, offset: int, limit: int,
                 emit: Callable[[list[StoredReading]], None]) -> None:
        check_window(offset, limit)
        self.since_ms, self.until_ms = since_ms, until_ms
        self.meter: Meter | None = match if isinstance(match, Meter) else None
        self.match: Match | None = match.match if isinstance(match, Meter) else match
        self.offset, self.need = offset, offset + limit
        self.emit = emit
        self.pending: list[StoredReading] = []
        self.released = 0  # readings final so far, the skipped ones included

    def _release(self, before_ms: int | None) -> None:
        """Hand on the pending readings before ``before_ms`` (None: all of them), within the page."""
        pending = self.pending
        pending.sort(key=_BY_TIME)
        cut = len(pending) if before_ms is None else bisect.bisect_left(pending, before_ms, key=_TIME)
        cut = min(cut, self.need - self.released)
        ready = pending[max(0, self.offset - self.released) : cut]
        del pending[:cut]
        self.released += cut
        for start in range(0, len(ready), RELEASE_BATCH):
            self.emit(ready[start : start + RELEASE_BATCH])

    def feed(self, rows: Sequence[Sequence[Any]]) -> bool:
        """Add chunk rows (as selected by chunk_query in ascending time); False once the page is complete."""
        match = self.match
        for chunk_id, channel_id, device_id, name, unit, first_ms, last_ms, data in rows:
            self._release(first_ms)
            if self.released >= self.need:
                return False
            offsets, values, qualities = cbor2.loads(bytes(data))
            positions = _in_range(first_ms, last_ms, offsets, len(values), self.since_ms, self.until_ms)
            if self.meter is not None:
                self.meter.charge(len(positions))
            base_id = chunk_id << 16
            for i in positions:
                reading = StoredReading(base_id | i, channel_id, device_id, name, first_ms + offsets[i], values[i], unit,
                                        None if qualities is None else qualities[i])
                if match is None or match(reading):
                    self.pending.append(reading)
            room = self.need - self.released
            if len(self.pending) > room + room // 4:
                # Overlapping chunks: only the earliest ``room`` can still enter the page.
                self.pending.sort(key=_BY_TIME)
                del self.pending[room:]
        return True

    def page(self) -> list[StoredReading]:
        """Hand on what is still pending (the store has no more chunks); the readings went to ``emit``, so none are returned."""
        self._release(None)
        return []


def collect_pages(fetch_page: Callable[[int, int], list[Any]], collector: Collector) -> list[StoredReading]:
    """Run a collector over chunk pages fetched synchronously (``fetch_page(limit, offset)``)."""
    for start in itertools.count(0, CHUNK_PAGE):
        rows = fetch_page(CHUNK_PAGE, start)
        if not collector.feed(rows) or len(rows) < CHUNK_PAGE:
            break
    return collector.page()

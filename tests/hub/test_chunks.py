"""The chunk Collector against a plain sort of every reading: same page for every order, window and predicate.

The Collector skips work (chunks past a full page's bound, values that cannot beat a full
page's last one, ties that lose on id); this checks that what it skips never changes the answer.
"""

from __future__ import annotations

import time
from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.protocol.types import Quality, Reading
from hub.budget import OverBudget, QueryBudget
from hub.chunks import Collector, Counter, Releaser, _chunk, encode_chunks
from hub.models import StoredReading

numbers = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, -0.5, 2.0, 1e300]))
mixed = st.one_of(numbers, st.booleans(), st.sampled_from(["a", "b", ""]))


@st.composite
def chunk_lists(draw: st.DrawFn, min_size: int = 0) -> list[tuple[int, list[tuple[int, Any]]]]:
    """Chunks of (first_ms, [(offset, value)]): all numbers (as meters send) or numbers, bools and text mixed."""
    values = draw(st.sampled_from([numbers, mixed]))
    return draw(st.lists(st.tuples(st.integers(0, 10), st.lists(st.tuples(st.integers(0, 6), values), min_size=1, max_size=12)),
                         min_size=min_size, max_size=8))


def rows_in_query_order(chunks: list[tuple[int, list[tuple[int, Any]]]], order: str, descending: bool) -> list[tuple[Any, ...]]:
    """Chunk rows as chunk_query selects them: (id, channel_id, device_id, name, unit, first_ms, last_ms, data), in its ORDER BY."""
    rows = []
    for chunk_id, (first_ms, readings) in enumerate(chunks, start=1):
        times = [first_ms + offset for offset, _ in readings]
        first = min(times)
        data = cbor2.dumps([[t - first for t in times], [v for _, v in readings], None])
        rows.append((chunk_id, 7, "gw-1", "c", "u", first, max(times), data))
    if order == "ts_ms":
        rows.sort(key=lambda r: (-r[6], -r[0]) if descending else (r[5], r[0]))
    else:
        rows.sort(key=lambda r: -r[0] if descending else r[0])
    return rows


def class_key(value: Any) -> tuple[int, Any]:
    if type(value) is bool:
        return (1, int(value))
    if isinstance(value, str):
        return (2, value)
    return (0, value)


def expected(chunks: list[tuple[int, list[tuple[int, Any]]]], *, order: str, descending: bool, offset: int, limit: int,
             since: int | None, until: int | None, keep: Any) -> list[int]:
    everything = []
    for chunk_id, (first_ms, readings) in enumerate(chunks, start=1):
        first = min(first_ms + offset_ for offset_, _ in readings)
        for i, (offset_, value) in enumerate(readings):
            ts = first_ms + offset_
            assert ts >= first
            r = StoredReading(chunk_id << 16 | i, 7, "gw-1", "c", ts, value, "u", None)
            if (since is None or ts >= since) and (until is None or ts < until) and (keep is None or keep(r)):
                everything.append(r)
    keys = {"ts_ms": lambda r: (r.ts_ms, r.id), "id": lambda r: (r.id,), "value": lambda r: (class_key(r.value), r.id)}
    everything.sort(key=keys[order], reverse=descending)
    return [r.id for r in everything[offset : offset + limit]]


@settings(max_examples=500, deadline=None, derandomize=True)
@given(
    chunks=chunk_lists(),
    order=st.sampled_from(["ts_ms", "id", "value"]),
    descending=st.booleans(),
    offset=st.integers(0, 6),
    limit=st.integers(0, 10),
    since=st.none() | st.integers(0, 16),
    span=st.none() | st.integers(0, 16),
    predicate=st.sampled_from([None, "numbers", "even ids"]),
    page_rows=st.integers(1, 4),
    metered=st.booleans(),
)
def test_a_collector_page_is_the_plain_sort_of_every_matching_reading(
    chunks: list[tuple[int, list[tuple[int, Any]]]], order: str, descending: bool, offset: int, limit: int,
    since: int | None, span: int | None, predicate: str | None, page_rows: int, metered: bool,
) -> None:
    until = None if span is None else (since or 0) + span
    keep = {None: None, "numbers": lambda r: type(r.value) in (int, float), "even ids": lambda r: r.id % 2 == 0}[predicate]
    budget = QueryBudget(max_examined=10**6, seconds=60.0)
    collector = Collector(since_ms=since, until_ms=until, match=budget.meter(keep) if metered else keep, order=order,
                          descending=descending, offset=offset, limit=limit)
    rows = rows_in_query_order(chunks, order, descending)
    for start in range(0, len(rows), page_rows):
        if not collector.feed(rows[start : start + page_rows]):
            break
    got = [r.id for r in collector.page()]
    assert got == expected(chunks, order=order, descending=descending, offset=offset, limit=limit, since=since, until=until, keep=keep)
    if metered:  # every reading in the time window was charged, whether or not the collector looked at it
        assert budget.examined <= sum(len(readings) for _, readings in chunks)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(chunks=chunk_lists(min_size=2), descending=st.booleans(), limit=st.integers(1, 6), page_rows=st.integers(1, 3))
def test_ordered_by_value_the_readings_skipped_against_a_full_page_could_not_have_entered_it(
    chunks: list[tuple[int, list[tuple[int, Any]]]], descending: bool, limit: int, page_rows: int,
) -> None:
    collector = Collector(since_ms=None, until_ms=None, match=None, order="value", descending=descending, offset=0, limit=limit)
    rows = rows_in_query_order(chunks, "value", descending)
    for start in range(0, len(rows), page_rows):
        collector.feed(rows[start : start + page_rows])
    got = [r.id for r in collector.page()]
    assert got == expected(chunks, order="value", descending=descending, offset=0, limit=limit, since=None, until=None, keep=None)


def test_a_paced_query_counts_its_cpu_and_a_query_past_its_cpu_budget_is_too_costly() -> None:
    budget = QueryBudget(max_examined=10**9, seconds=60.0, cpu_seconds=0.05, share=0.5)
    started = time.monotonic()
    with pytest.raises(OverBudget) as refused:
        while True:
            sum(range(20_000))  # CPU work between chunks, as a collector decoding one does
            budget.charge(1000)
    assert refused.value.kind == "work" and 0.05 < budget.cpu_used < 0.2
    # at half a CPU it paused about as long as it worked (structure, not timing: at least the work it did)
    assert time.monotonic() - started >= budget.cpu_used


@settings(max_examples=500, deadline=None, derandomize=True)
@given(
    chunks=chunk_lists(),
    offset=st.integers(0, 6),
    limit=st.integers(0, 10),
    since=st.none() | st.integers(0, 16),
    span=st.none() | st.integers(0, 16),
    page_rows=st.integers(1, 4),
)
def test_a_releaser_hands_on_the_collectors_page_in_order(
    chunks: list[tuple[int, list[tuple[int, Any]]]], offset: int, limit: int, since: int | None, span: int | None, page_rows: int,
) -> None:
    until = None if span is None else (since or 0) + span
    got: list[StoredReading] = []
    releaser = Releaser(since_ms=since, until_ms=until, match=None, offset=offset, limit=limit, emit=got.extend)
    rows = rows_in_query_order(chunks, "ts_ms", False)
    for start in range(0, len(rows), page_rows):
        if not releaser.feed(rows[start : start + page_rows]):
            break
    assert releaser.page() == []
    assert [r.id for r in got] == expected(chunks, order="ts_ms", descending=False, offset=offset, limit=limit, since=since,
                                           until=until, keep=None)


def test_a_releaser_holds_one_chunk_at_a_time_when_chunks_follow_each_other_in_time() -> None:
    # 50 chunks of 100 readings, each after the last: the page is 5,000 readings, what waits at once is one chunk.
    chunks = [(c * 1000, [(i, float(i)) for i in range(100)]) for c in range(50)]
    held: list[int] = []
    releaser = Releaser(since_ms=None, until_ms=None, match=None, offset=0, limit=5000, emit=lambda batch: held.append(len(releaser.pending)))
    for row in rows_in_query_order(chunks, "ts_ms", False):
        releaser.feed([row])
    releaser.page()
    assert len(held) == 50 and max(held) <= 100


def test_a_counter_given_enough_stops_once_it_has_counted_them() -> None:
    rows = []
    for chunk_id in range(1, 11):
        data = cbor2.dumps([[0, 1, 2], [1.0, 2.0, 3.0], None])
        rows.append((chunk_id, 7, "gw-1", "c", "u", chunk_id * 10, chunk_id * 10 + 2, 3, data))
    counter = Counter(since_ms=None, until_ms=None, match=None, enough=7)
    assert counter.feed(rows) is False and 7 <= counter.total < 10
    whole = Counter(since_ms=None, until_ms=None, match=None, enough=100)
    assert whole.feed(rows) is True and whole.total == 30


def test_a_channel_with_one_reading_in_a_batch_is_chunked_as_a_longer_one_would_be() -> None:
    """encode_chunks' short way for a channel's only reading gives _chunk's bytes, with and without a quality."""
    readings = [Reading("a/x", 1_000, 1.5, "W"), Reading("a/y", 1_001, 7, "W", Quality.SUSPECT), Reading("a/z", 1_002, "on"),
                Reading("a/w", 1_003, True), Reading("a/v", 1_004, float("inf")), Reading("a/x2", 5, 2.0), Reading("a/x2", 3, 1.0)]
    chunks = encode_chunks(readings)
    for r in readings[:5]:
        assert chunks[r.channel] == [_chunk([r.ts_ms], [r.value], [None if r.quality is None else int(r.quality)])]
    assert chunks["a/x2"] == [_chunk([5, 3], [2.0, 1.0], [None, None])]

"""The request planner: fewest requests under the protocol limits, gap fill, never an unreadable address."""

from __future__ import annotations

import functools

from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.modbus.planner import ReadRequest, Span, plan_reads


def minimum_requests(spans: list[Span], *, max_gap: int, limit: int, holes: list[tuple[int, int]]) -> int:
    """Reference: the fewest feasible groups of address-ordered spans, by dynamic programming over all splits."""
    ordered = sorted(spans, key=lambda s: (s.address, s.count))

    def feasible(i: int, j: int) -> bool:  # spans i..j (inclusive) in one request
        start, end = ordered[i].address, ordered[i].address + ordered[i].count
        for s in ordered[i + 1 : j + 1]:
            if s.address - end > max_gap:
                return False
            if any(first < s.address and last >= end for first, last in holes):
                return False
            end = max(end, s.address + s.count)
        return end - start <= limit

    @functools.cache
    def best(i: int) -> int:
        if i == len(ordered):
            return 0
        return min(1 + best(j + 1) for j in range(i, len(ordered)) if feasible(i, j))

    return best(0)


def covers(requests: list[ReadRequest], spans: list[Span]) -> bool:
    return all(any(r.function == s.function and r.address <= s.address and s.address + s.count <= r.end
                   for r in requests) for s in spans)


spans_strategy = st.lists(
    st.builds(Span, st.just("holding"), st.integers(0, 600), st.sampled_from([1, 2, 4])),
    min_size=1, max_size=14, unique_by=lambda s: s.address,
)


@settings(max_examples=150, deadline=None)
@given(spans=spans_strategy, max_gap=st.integers(0, 40),
       hole=st.one_of(st.none(), st.tuples(st.integers(0, 600), st.integers(0, 20))))
def test_plan_uses_the_fewest_requests_any_split_could(spans, max_gap, hole):
    holes = [] if hole is None else [(hole[0], hole[0] + hole[1])]
    # a hole may not cover a wanted register (the profile loader rejects that)
    spans = [s for s in spans if not any(s.address <= last and s.address + s.count - 1 >= first for first, last in holes)]
    if not spans:
        return
    plan = plan_reads(spans, max_gap=max_gap, unreadable={"holding": holes})
    assert covers(plan, spans)
    assert len(plan) == minimum_requests(spans, max_gap=max_gap, limit=125, holes=holes)


@settings(max_examples=100, deadline=None)
@given(spans=spans_strategy, max_gap=st.integers(0, 40), first=st.integers(0, 600), width=st.integers(0, 30))
def test_plan_never_reads_an_unreadable_address(spans, max_gap, first, width):
    hole = (first, first + width)
    spans = [s for s in spans if not (s.address <= hole[1] and s.address + s.count - 1 >= hole[0])]
    for request in plan_reads(spans, max_gap=max_gap, unreadable={"holding": [hole]}):
        assert request.end - 1 < hole[0] or request.address > hole[1]
        assert request.count <= 125


def test_gap_fill_merges_neighbours_up_to_max_gap_unused_registers():
    spans = [Span("input", 0, 2), Span("input", 10, 2)]
    assert plan_reads(spans, max_gap=8) == [ReadRequest("input", 0, 12, 4)]
    assert plan_reads(spans, max_gap=7) == [ReadRequest("input", 0, 2, 2), ReadRequest("input", 10, 2, 2)]


def test_a_request_never_exceeds_125_registers():
    spans = [Span("holding", a, 2) for a in range(0, 300, 2)]
    plan = plan_reads(spans)
    assert [r.count for r in plan] == [124, 124, 52]


def test_coils_and_discrete_inputs_merge_up_to_2000_bits():
    spans = [Span("coil", a) for a in range(0, 2500)]
    assert [r.count for r in plan_reads(spans)] == [2000, 500]


def test_functions_are_planned_separately():
    plan = plan_reads([Span("input", 0), Span("holding", 1), Span("input", 1)], max_gap=10)
    assert plan == [ReadRequest("holding", 1, 1, 1), ReadRequest("input", 0, 2, 2)]


def test_values_sharing_a_register_count_it_once_as_used():
    plan = plan_reads([Span("holding", 8), Span("holding", 8), Span("holding", 9)])
    assert plan == [ReadRequest("holding", 8, 2, 2)]


def test_a_request_holds_the_registers_wholly_inside_it_of_its_own_function():
    req = ReadRequest("input", 10, 4, 4)  # addresses 10..13
    assert req.holds("input", 10, 2) and req.holds("input", 12, 2) and req.holds("input", 13, 1)
    assert not req.holds("input", 9, 2)  # starts before it
    assert not req.holds("input", 13, 2)  # ends after it
    assert not req.holds("holding", 10, 2)  # another table

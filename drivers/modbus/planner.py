"""Plans the fewest Modbus read requests that cover a device's registers (pure function, no I/O)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = ["MAX_BITS", "MAX_REGISTERS", "ReadRequest", "Span", "plan_reads"]

# Modbus application protocol v1.1b3, sections 6.1-6.4: the most one read may ask for.
MAX_REGISTERS = 125
MAX_BITS = 2000

BIT_FUNCTIONS = frozenset({"coil", "discrete"})


@dataclass(frozen=True, slots=True)
class Span:
    """Registers one value occupies: ``count`` addresses from ``address`` in table ``function``."""

    function: str  # "holding" | "input" | "coil" | "discrete"
    address: int
    count: int = 1


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """One read transaction: ``count`` addresses from ``address``, of which ``used`` carry wanted values."""

    function: str
    address: int
    count: int
    used: int

    @property
    def end(self) -> int:
        return self.address + self.count

    def holds(self, function: str, address: int, count: int) -> bool:
        """Whether this request reads the ``count`` addresses of ``function`` from ``address`` (a register or span)."""
        return function == self.function and self.address <= address and address + count <= self.end


def plan_reads(
    spans: Iterable[Span],
    *,
    max_gap: int = 0,
    unreadable: Mapping[str, Sequence[tuple[int, int]]] | None = None,
    max_registers: int = MAX_REGISTERS,
    max_bits: int = MAX_BITS,
) -> list[ReadRequest]:
    """Merge ``spans`` into as few requests as the limits allow, per function, in address order.

    Neighbouring spans share a request when the unused addresses between them
    number at most ``max_gap``, the request stays within the protocol limit, and
    no address in ``unreadable`` (inclusive ``(first, last)`` ranges per
    function) falls inside it.  Greedy extension is optimal here: any run of
    consecutive spans that fits in one request still fits after dropping spans
    from either end, so closing a request only when the next span cannot join
    never costs an extra request.
    """
    if max_gap < 0:
        raise ValueError(f"max_gap = {max_gap}: expected 0 or more unused registers")
    by_function: dict[str, list[Span]] = {}
    for span in spans:
        if span.count < 1:
            raise ValueError(f"{span}: a value occupies at least one address")
        by_function.setdefault(span.function, []).append(span)
    blocked = unreadable or {}
    requests: list[ReadRequest] = []
    for function in sorted(by_function):
        limit = max_bits if function in BIT_FUNCTIONS else max_registers
        holes = sorted(blocked.get(function, ()))
        ordered = sorted(by_function[function], key=lambda s: (s.address, s.count))
        start: int | None = None  # the request being built, from start to end
        end = 0
        used: set[int] = set()
        for span in ordered:
            span_end = span.address + span.count
            if span.count > limit:
                raise ValueError(f"{span}: more than {limit} addresses cannot be read in one request")
            if start is not None and _joinable(start, end, span.address, span_end, max_gap, limit, holes):
                end = max(end, span_end)
                used.update(range(span.address, span_end))
                continue
            if start is not None:
                requests.append(ReadRequest(function, start, end - start, len(used)))
            start, end = span.address, span_end
            used = set(range(span.address, span_end))
        if start is not None:
            requests.append(ReadRequest(function, start, end - start, len(used)))
    return requests


def _joinable(start: int, end: int, span_start: int, span_end: int, max_gap: int, limit: int,
              holes: Sequence[tuple[int, int]]) -> bool:
    if span_start - end > max_gap:
        return False
    new_end = max(end, span_end)
    if new_end - start > limit:
        return False
    # Only the filled gap is new territory; the spans themselves are readable by definition.
    return not any(first < span_start and last >= end for first, last in holes)

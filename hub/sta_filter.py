"""The OData `$filter` subset SensorThings clients send for Observations, turned into a predicate.

Supported: ``phenomenonTime``/``resultTime`` and ``result`` compared with ``eq ne gt ge lt le``
to numbers, ISO 8601 times, quoted strings or true/false; combined with ``and``, ``or``,
``not`` and parentheses.  The filter becomes a predicate over stored readings, plus the
time range its top-level ``and`` implies, so the store reads only the chunks that matter.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from collections.abc import Callable
from typing import Any

from hub.store import StoredReading

__all__ = ["FilterError", "compile_filter"]

OPERATORS = ("eq", "ne", "gt", "ge", "lt", "le")
MIRROR = {"eq": "eq", "ne": "ne", "gt": "lt", "ge": "le", "lt": "gt", "le": "ge"}
FIELDS = {"phenomenonTime": "time", "resultTime": "time", "result": "result", "id": "id", "@iot.id": "id"}

TOKEN = re.compile(
    r"\s*(?:(?P<lp>\()|(?P<rp>\))|(?P<str>'(?:[^']|'')*')"
    r"|(?P<time>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:\d{2}))"
    r"|(?P<num>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|(?P<word>[@A-Za-z_][\w@.]*))"
)


HINT = (
    "Supported: phenomenonTime, resultTime or result compared with eq, ne, gt, ge, lt, le to a number,"
    " an ISO 8601 time, a 'quoted' string or true/false; combined with and, or, not and parentheses"
)


class FilterError(ValueError):
    """The $filter text is outside the supported subset; the message says where and what is accepted."""


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise FilterError(f"$filter={text!r}: cannot read from {text[pos:pos + 20]!r}")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.pos = 0
        self.depth = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise FilterError(f"$filter={self.text!r}: ends too early")
        self.pos += 1
        return token

    def word(self, *words: str) -> bool:
        token = self.peek()
        if token is not None and token[0] == "word" and token[1] in words:
            self.pos += 1
            return True
        return False

    def parse(self) -> tuple[Any, ...]:
        sql = self.disjunction()
        if self.peek() is not None:
            raise FilterError(f"$filter={self.text!r}: unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return sql

    def disjunction(self) -> tuple[Any, ...]:
        parts = [self.conjunction()]
        while self.word("or"):
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else ("or", parts)

    def conjunction(self) -> tuple[Any, ...]:
        parts = [self.negation()]
        while self.word("and"):
            parts.append(self.negation())
        return parts[0] if len(parts) == 1 else ("and", parts)

    def negation(self) -> tuple[Any, ...]:
        self.depth += 1
        if self.depth > 64:
            raise FilterError("$filter: nested deeper than 64 levels")
        try:
            return self._negation()
        finally:
            self.depth -= 1

    def _negation(self) -> tuple[Any, ...]:
        if self.word("not"):
            return ("not", self.negation())
        token = self.peek()
        if token is not None and token[0] == "lp":
            self.take()
            inner = self.disjunction()
            if self.take()[0] != "rp":
                raise FilterError(f"$filter={self.text!r}: expected ')'")
            return inner
        return self.comparison()

    def operand(self) -> tuple[str, Any]:
        kind, text = self.take()
        if kind == "word" and text in FIELDS:
            return "field", FIELDS[text]
        if kind == "word" and text in ("true", "false"):
            return "bool", text == "true"
        if kind == "num":
            return "num", float(text)
        if kind == "str":
            return "str", text[1:-1].replace("''", "'")
        if kind == "time":
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
            return "time", int(moment.astimezone(timezone.utc).timestamp() * 1000)
        raise FilterError(
            f"$filter={self.text!r}: {text!r} is not supported; use phenomenonTime, resultTime or result with eq, ne, gt, ge, lt, le"
        )

    def comparison(self) -> tuple[Any, ...]:
        left = self.operand()
        op_token = self.take()
        if op_token[0] != "word" or op_token[1] not in OPERATORS:
            raise FilterError(f"$filter={self.text!r}: expected one of eq, ne, gt, ge, lt, le after {left[1]!r}, got {op_token[1]!r}")
        op = op_token[1]
        right = self.operand()
        if left[0] != "field":
            left, right, op = right, left, MIRROR[op]
        if left[0] != "field" or right[0] == "field":
            raise FilterError(f"$filter={self.text!r}: compare a property (phenomenonTime, result) with a value")
        field, (kind, value) = left[1], right
        if field == "time":
            if kind not in ("time", "num"):
                raise FilterError(f"$filter={self.text!r}: phenomenonTime compares with an ISO 8601 time like 2026-11-27T03:00:00Z")
            value = int(value)
        elif field == "id":
            if kind != "num":
                raise FilterError(f"$filter={self.text!r}: @iot.id compares with a number")
            value = int(value)
        elif kind not in ("str", "num", "bool"):
            raise FilterError(f"$filter={self.text!r}: result compares with a number, a quoted string or true/false")
        return ("cmp", field, op, value)


COMPARE = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
}


def _predicate(node: tuple[Any, ...]) -> Callable[[StoredReading], bool]:
    kind = node[0]
    if kind == "and":
        parts = [_predicate(n) for n in node[1]]
        return lambda r: all(p(r) for p in parts)
    if kind == "or":
        parts = [_predicate(n) for n in node[1]]
        return lambda r: any(p(r) for p in parts)
    if kind == "not":
        inner = _predicate(node[1])
        return lambda r: not inner(r)
    _, field, op, value = node
    compare = COMPARE[op]
    if field == "time":
        return lambda r: compare(r.ts_ms, value)
    if field == "id":
        return lambda r: compare(r.id, value)

    def on_result(r: StoredReading) -> bool:
        # A number never equals a string: comparing across kinds is simply false, as in OData.
        result = r.value
        if isinstance(value, str) != isinstance(result, str):
            return op == "ne"
        try:
            return bool(compare(result, value))
        except TypeError:
            return False

    return on_result


def _time_range(node: tuple[Any, ...]) -> tuple[int | None, int | None]:
    """[since, until) implied by the comparisons on time joined by the top-level ``and``."""
    since, until = None, None
    parts = node[1] if node[0] == "and" else [node]
    for part in parts:
        if part[0] != "cmp" or part[1] != "time":
            continue
        _, _, op, value = part
        low = {"gt": value + 1, "ge": value, "eq": value}.get(op)
        high = {"lt": value, "le": value + 1, "eq": value + 1}.get(op)
        if low is not None:
            since = low if since is None else max(since, low)
        if high is not None:
            until = high if until is None else min(until, high)
    return since, until


def compile_filter(text: str) -> tuple[Callable[[StoredReading], bool], int | None, int | None]:
    """A predicate over stored readings and the [since, until) milliseconds it implies (None: open)."""
    if len(text) > 2000:
        raise FilterError(f"$filter: longer than 2000 characters. {HINT}")
    try:
        tree = _Parser(text).parse()
    except FilterError as exc:
        raise FilterError(f"{exc}. {HINT}") from None
    since, until = _time_range(tree)
    return _predicate(tree), since, until

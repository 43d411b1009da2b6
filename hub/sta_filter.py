"""The OData `$filter` subset SensorThings clients send for Observations, turned into a safe SQL condition.

Supported: ``phenomenonTime``/``resultTime`` and ``result`` compared with ``eq ne gt ge lt le``
to numbers, ISO 8601 times, quoted strings or true/false; combined with ``and``, ``or``,
``not`` and parentheses.  Values always travel as query parameters, never as SQL text.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

__all__ = ["FilterError", "compile_filter"]

OPERATORS = {"eq": "=", "ne": "<>", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
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
        self.params: list[Any] = []
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

    def parse(self) -> str:
        sql = self.disjunction()
        if self.peek() is not None:
            raise FilterError(f"$filter={self.text!r}: unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return sql

    def disjunction(self) -> str:
        parts = [self.conjunction()]
        while self.word("or"):
            parts.append(self.conjunction())
        return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"

    def conjunction(self) -> str:
        parts = [self.negation()]
        while self.word("and"):
            parts.append(self.negation())
        return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"

    def negation(self) -> str:
        self.depth += 1
        if self.depth > 64:
            raise FilterError("$filter: nested deeper than 64 levels")
        try:
            return self._negation()
        finally:
            self.depth -= 1

    def _negation(self) -> str:
        if self.word("not"):
            return f"NOT ({self.negation()})"
        token = self.peek()
        if token is not None and token[0] == "lp":
            self.take()
            inner = self.disjunction()
            if self.take()[0] != "rp":
                raise FilterError(f"$filter={self.text!r}: expected ')'")
            return f"({inner})"
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

    def comparison(self) -> str:
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
            column = "r.ts_ms"
            value = int(value)
        elif field == "id":
            column = "r.id"
            value = int(value)
        elif kind == "str":
            column = "r.txt"
        elif kind in ("num", "bool"):
            column = "r.num"
            value = float(value)
        else:
            raise FilterError(f"$filter={self.text!r}: result compares with a number, a quoted string or true/false")
        self.params.append(value)
        return f"{column} {OPERATORS[op]} {{}}"


def compile_filter(text: str) -> tuple[str, list[Any]]:
    """SQL condition text (a ``{}`` where each parameter goes) and its parameters."""
    if len(text) > 2000:
        raise FilterError("$filter: longer than 2000 characters")
    try:
        parser = _Parser(text)
        return parser.parse(), parser.params
    except FilterError as exc:
        raise FilterError(f"{exc}. {HINT}") from None

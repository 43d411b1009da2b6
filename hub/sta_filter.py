"""The OData expression language of SensorThings ``$filter`` and ``$orderby``: parsed, type-checked, compiled to Python.

Follows OGC 18-088 §9.3.3.5 (built-in operators and functions, after OData 4.0 URL
conventions §5.1.1): ``eq ne gt ge lt le``, ``and or not``, ``add sub mul div mod``,
parentheses, string, date, math, instant and point geometry functions, literals ('strings'
with '' escaping, numbers, ISO 8601 times, true/false/null, WKT ``geography'POINT (x y)'``)
and property paths, which may pass through navigation properties (``Datastream/Thing/name``).  The caller says what a path
means for its entity set (a ``Resolve``); this module knows no entity type.

A path through a navigation property that leads to several entities (``Datastreams/name``
on Things) compares true when any of them does, as FROST-Server and OData ``any()`` do.
Values compare only with values of the same kind (number, string, boolean, time): a
number never equals a string, and a comparison with ``null`` is true only for ``eq null``
on a missing value.  Times are milliseconds since 1970 (UTC) at run time.

Anything outside this raises :class:`FilterError` with a message naming the construct;
nothing else escapes, whatever the text (tests/hub/test_sensorthings.py fuzzes this).
"""

from __future__ import annotations

import itertools
import math
import re
import time as _time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

__all__ = [
    "FilterError",
    "Getter",
    "Many",
    "Node",
    "Resolve",
    "compile_predicate",
    "compile_value",
    "conjuncts",
    "many",
    "parse_filter",
    "parse_orderby",
    "paths",
    "strip_prefix",
    "time_range",
]

MAX_LENGTH = 2000
MAX_DEPTH = 48
# Combining two to-many paths in one operation takes every pair of their values, and chaining such
# operations multiplies again (4 Datastreams added to themselves 10 times are 4**10 sums): bounded here.
MAX_COMBINATIONS = 1000

Node = tuple[Any, ...]
Getter = Callable[[Any], Any]
# What a property path means on one entity set: its getter and its type (num, str, bool, time, json, any).
Resolve = Callable[[tuple[str, ...]], tuple[Getter, str]]

TOKEN = re.compile(
    r"\s*(?:(?P<lp>\()|(?P<rp>\))|(?P<comma>,)"
    r"|(?P<str>'(?:[^']|'')*')"
    r"|(?P<typed>[A-Za-z][A-Za-z.]*'(?:[^']|'')*')"
    r"|(?P<time>[0-9]{4}-[0-9]{2}-[0-9]{2}(?:T[0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:\.[0-9]+)?)?(?:Z|[+-][0-9]{2}:[0-9]{2})?)?"
    r"(?:/[0-9]{4}-[0-9]{2}-[0-9]{2}[0-9T:.Z+-]*)?)"
    r"|(?P<num>[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)"
    r"|(?P<word>[@A-Za-z_][A-Za-z0-9_@.]*(?:/[@A-Za-z_][A-Za-z0-9_@.]*)*)"
    r"|(?P<minus>-))"
)

COMPARISONS = ("eq", "ne", "gt", "ge", "lt", "le")
ARITHMETIC = ("add", "sub", "mul", "div", "mod")
KEYWORDS = {"and", "or", "not", *COMPARISONS, *ARITHMETIC, "asc", "desc"}
MIN_MS = -62135596800000  # 0001-01-01T00:00:00Z
MAX_MS = 253402300799999  # 9999-12-31T23:59:59.999Z
MAX_DIGITS = 40  # a whole-number literal: 2^64 has 20 digits, stored values fit well inside
# A time range goes to SQLite and PostgreSQL as 64-bit integers; stored times lie far inside this.
RANGE_LIMIT_MS = 2**62


class FilterError(ValueError):
    """The expression is outside what this server evaluates; the message names the construct and what is accepted."""


class Many(tuple[Any, ...]):
    """The values a path takes through a navigation property leading to several entities (true if any matches)."""


def many(values: Iterable[Any]) -> Many:
    """The values of a multi-valued expression, flat: a Many never holds a Many."""
    out: list[Any] = []
    for value in values:
        if isinstance(value, Many):
            out.extend(value)
        else:
            out.append(value)
    return Many(out)


def _combinations(values: Iterable[Any]) -> Iterable[tuple[Any, ...]]:
    """Every choice of one value per operand (a Many stands for each of its values); FilterError beyond MAX_COMBINATIONS."""
    choices = [value if isinstance(value, Many) else (value,) for value in values]
    if sum(isinstance(c, Many) for c in choices) > 1 and math.prod(len(c) for c in choices) > MAX_COMBINATIONS:
        raise FilterError(f"an operation combines two to-many paths (e.g. Datastreams/…) into more than {MAX_COMBINATIONS} pairs "
                          "of values; compare each such path with a literal instead")
    return itertools.product(*choices)


# --- reading the text -----------------------------------------------------------------


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utc_ms(moment: datetime) -> int:
    """Whole milliseconds since 1970 of an aware datetime, exactly (floor), before 1970 too.

    ``int(moment.timestamp() * 1000)`` goes through a float and truncates: about one time in
    a hundred came out a millisecond early (2004-07-02T11:16:25.972Z as ...971).
    """
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def iso_ms(text: str) -> int:
    """Milliseconds since 1970 of an ISO 8601 date or time (no zone: UTC); ValueError if it is none."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return utc_ms(moment)


def parse_time(text: str) -> int:
    """Milliseconds since 1970 of an ISO 8601 date or time (no zone: UTC)."""
    if "/" in text:
        raise FilterError(f"{text!r}: time intervals are not supported; compare with start and end instants")
    try:
        return iso_ms(text)
    except ValueError:
        raise FilterError(f"{text!r} is not a valid ISO 8601 time (e.g. 2026-11-27T03:00:00Z)") from None
    except OverflowError:
        raise FilterError(f"{text!r}: time out of range") from None


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise FilterError(f"cannot read from {text[pos:pos + 20]!r} (strings go in single quotes, '' for a quote)")
        kind = m.lastgroup or ""
        out.append((kind, m.group(kind)))
        pos = m.end()
    return out


class _Parser:
    """Recursive descent over OData precedence: or < and < not < comparison < add/sub < mul/div/mod < unary."""

    def __init__(self, text: str, what: str) -> None:
        if len(text) > MAX_LENGTH:
            raise FilterError(f"{what}: longer than {MAX_LENGTH} characters")
        self.what = what
        self.tokens = _tokens(text)
        self.pos = 0
        self.depth = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise FilterError("ends too early")
        self.pos += 1
        return token

    def word(self, *words: str) -> str | None:
        token = self.peek()
        if token is not None and token[0] == "word" and token[1] in words:
            self.pos += 1
            return token[1]
        return None

    def expect(self, kind: str, shown: str) -> None:
        token = self.peek()
        if token is None or token[0] != kind:
            raise FilterError(f"expected {shown}, got {'the end' if token is None else repr(token[1])}")
        self.pos += 1

    def nested(self, parse: Callable[[], Node]) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise FilterError(f"nested deeper than {MAX_DEPTH} levels")
        try:
            return parse()
        finally:
            self.depth -= 1

    def disjunction(self) -> Node:
        node = self.conjunction()
        while self.word("or"):
            node = ("or", node, self.conjunction())
        return node

    def conjunction(self) -> Node:
        node = self.negation()
        while self.word("and"):
            node = ("and", node, self.negation())
        return node

    def negation(self) -> Node:
        if self.word("not"):
            return ("not", self.nested(self.negation))
        return self.comparison()

    def comparison(self) -> Node:
        left = self.additive()
        op = self.word(*COMPARISONS)
        if op is None:
            token = self.peek()
            if token is not None and token[0] == "word" and token[1] not in KEYWORDS and token[1].lower() in COMPARISONS + ("has", "in"):
                raise FilterError(f"operator {token[1]!r} is not supported; operators are lower case: eq, ne, gt, ge, lt, le")
            if token is not None and token[0] == "word" and token[1] in ("has", "in", "isof", "cast"):
                raise FilterError(f"operator {token[1]!r} is not supported")
            return left
        return ("cmp", op, left, self.additive())

    def additive(self) -> Node:
        node = self.multiplicative()
        while op := self.word("add", "sub"):
            node = ("arith", op, node, self.multiplicative())
        return node

    def multiplicative(self) -> Node:
        node = self.unary()
        while op := self.word("mul", "div", "mod"):
            node = ("arith", op, node, self.unary())
        return node

    def unary(self) -> Node:
        token = self.peek()
        if token is not None and token[0] == "minus":
            self.take()
            inner = self.nested(self.unary)
            if inner[0] == "lit" and inner[1] == "num":
                return ("lit", "num", -inner[2])
            return ("neg", inner)
        return self.nested(self.primary)

    def primary(self) -> Node:
        kind, text = self.take()
        if kind == "lp":
            inner = self.disjunction()
            self.expect("rp", "')'")
            return inner
        if kind == "str":
            return ("lit", "str", text[1:-1].replace("''", "'"))
        if kind == "num":
            if any(c in text for c in ".eE"):
                return ("lit", "num", float(text))
            if len(text) > MAX_DIGITS:  # past 4,300 digits int() refuses; long before that it costs quadratic time
                raise FilterError(f"{text[:24]}...: a whole number of {len(text)} digits; at most {MAX_DIGITS} are accepted")
            return ("lit", "num", int(text))
        if kind == "time":
            return ("lit", "time", parse_time(text))
        if kind == "typed":
            prefix, _, body = text.partition("'")
            if prefix in ("geography", "geometry"):
                return ("lit", "geo", parse_wkt(body[:-1].replace("''", "'")))
            raise FilterError(f"{prefix}'…' literals are not supported; use strings, numbers, ISO 8601 times, true, false or null")
        if kind == "word":
            if text in ("true", "false"):
                return ("lit", "bool", text == "true")
            if text == "null":
                return ("lit", "null", None)
            if text in KEYWORDS:
                raise FilterError(f"unexpected {text!r}: expected a property, a literal or a function call")
            token = self.peek()
            if token is not None and token[0] == "lp":
                return self.call(text)
            return ("path", tuple(text.split("/")))
        raise FilterError(f"unexpected {text!r}: expected a property, a literal or a function call")

    def call(self, name: str) -> Node:
        self.take()
        args: list[Node] = []
        token = self.peek()
        if token is not None and token[0] == "rp":
            self.take()
        else:
            while True:
                args.append(self.nested(self.disjunction))
                kind, text = self.take()
                if kind == "rp":
                    break
                if kind != "comma":
                    raise FilterError(f"in {name}(…): expected ',' or ')', got {text!r}")
        return ("call", name, tuple(args))

    def finish(self, node: Node) -> Node:
        token = self.peek()
        if token is not None:
            raise FilterError(f"unexpected {token[1]!r}")
        return node


def _parse(text: str, what: str, parse: Callable[[_Parser], Node]) -> Node:
    try:
        parser = _Parser(text, what)
        return parse(parser)
    except FilterError as exc:
        raise FilterError(f"{what}={text[:200]!r}: {exc}") from None
    except RecursionError:
        raise FilterError(f"{what}: nested too deeply") from None


def parse_filter(text: str) -> Node:
    """The syntax tree of a ``$filter`` expression."""
    return _parse(text, "$filter", lambda p: p.finish(p.disjunction()))


def parse_orderby(text: str) -> list[tuple[Node, bool]]:
    """``$orderby`` as (expression, descending) pairs, first key first."""

    def items(p: _Parser) -> Node:
        keys: list[tuple[Node, bool]] = []
        while True:
            expression = p.disjunction()
            direction = p.word("asc", "desc")
            keys.append((expression, direction == "desc"))
            token = p.peek()
            if token is None:
                return ("keys", keys)
            if token[0] != "comma":
                raise FilterError(f"expected ',' or the end after an $orderby key, got {token[1]!r} (directions are asc or desc)")
            p.take()

    tree = _parse(text, "$orderby", items)
    return list(tree[1])


# --- shapes of a tree -----------------------------------------------------------------


def conjuncts(node: Node) -> list[Node]:
    """The parts joined by top-level ``and``."""
    if node[0] == "and":
        return conjuncts(node[1]) + conjuncts(node[2])
    return [node]


def paths(node: Node) -> Iterable[tuple[str, ...]]:
    """Every property path a tree reads."""
    if node[0] == "path":
        yield node[1]
    elif node[0] in ("and", "or"):
        yield from paths(node[1])
        yield from paths(node[2])
    elif node[0] in ("not", "neg"):
        yield from paths(node[1])
    elif node[0] in ("cmp", "arith"):
        yield from paths(node[2])
        yield from paths(node[3])
    elif node[0] == "call":
        for arg in node[2]:
            yield from paths(arg)


def strip_prefix(node: Node, head: str) -> Node:
    """The same tree with ``head/`` removed from every path (each path must start with it)."""
    kind = node[0]
    if kind == "path":
        return ("path", node[1][1:])
    if kind in ("and", "or"):
        return (kind, strip_prefix(node[1], head), strip_prefix(node[2], head))
    if kind in ("not", "neg"):
        return (kind, strip_prefix(node[1], head))
    if kind in ("cmp", "arith"):
        return (kind, node[1], strip_prefix(node[2], head), strip_prefix(node[3], head))
    if kind == "call":
        return (kind, node[1], tuple(strip_prefix(a, head) for a in node[2]))
    return node


def time_range(node: Node, time_paths: Iterable[tuple[str, ...]]) -> tuple[int | None, int | None]:
    """[since, until) in milliseconds implied by comparisons of ``time_paths`` with literals under top-level ``and``."""
    wanted = set(time_paths)
    since, until = None, None
    for part in conjuncts(node):
        if part[0] != "cmp":
            continue
        _, op, left, right = part
        if right[0] == "path" and left[0] == "lit":
            left, right, op = right, left, MIRROR[op]
        if left[0] != "path" or left[1] not in wanted or right[0] != "lit":
            continue
        value = _literal_ms(right)
        if value is None:
            continue
        value = max(-RANGE_LIMIT_MS, min(RANGE_LIMIT_MS, value))
        low = {"gt": value + 1, "ge": value, "eq": value}.get(op)
        high = {"lt": value, "le": value + 1, "eq": value + 1}.get(op)
        if low is not None:
            since = low if since is None else max(since, low)
        if high is not None:
            until = high if until is None else min(until, high)
    return since, until


def _literal_ms(node: Node) -> int | None:
    if node[1] == "time" or (node[1] == "num" and isinstance(node[2], int)):
        return int(node[2])
    if node[1] == "str":
        try:
            return parse_time(node[2])
        except FilterError:
            return None
    return None


MIRROR = {"eq": "eq", "ne": "ne", "gt": "lt", "ge": "le", "lt": "gt", "le": "ge"}


# --- geometry (points, line strings and polygons in plain coordinates, as WKT and GeoJSON) --

WKT = re.compile(r"\s*(POINT|LINESTRING|POLYGON)\s*(\(.*\))\s*", re.IGNORECASE | re.DOTALL)
NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def _positions(text: str) -> list[list[float]]:
    out = []
    for pair in text.split(","):
        numbers = pair.split()
        if len(numbers) != 2 or not all(NUMBER.fullmatch(n) for n in numbers):
            raise FilterError(f"{pair.strip()!r} is not a position; WKT positions are 'x y' (longitude latitude)")
        out.append([float(numbers[0]), float(numbers[1])])
    return out


def parse_wkt(text: str) -> dict[str, Any]:
    """A WKT POINT, LINESTRING or POLYGON as a GeoJSON geometry."""
    m = WKT.fullmatch(text)
    if m is None:
        raise FilterError(f"geography'{text[:60]}': expected WKT POINT (x y), LINESTRING (x y, …) or POLYGON ((x y, …))")
    kind, body = m.group(1).upper(), m.group(2).strip()[1:-1].strip()
    if kind == "POINT":
        points = _positions(body)
        if len(points) != 1:
            raise FilterError(f"geography'{text[:60]}': a POINT has one position")
        return {"type": "Point", "coordinates": points[0]}
    if kind == "LINESTRING":
        line = _positions(body)
        if len(line) < 2:
            raise FilterError(f"geography'{text[:60]}': a LINESTRING has two positions or more")
        return {"type": "LineString", "coordinates": line}
    rings = re.findall(r"\(([^()]*)\)", body)
    if not rings or re.sub(r"\([^()]*\)|[\s,]", "", body):
        raise FilterError(f"geography'{text[:60]}': a POLYGON is ((x y, …), …): rings in parentheses")
    polygon = [_positions(ring) for ring in rings]
    if any(len(ring) < 4 or ring[0] != ring[-1] for ring in polygon):
        raise FilterError(f"geography'{text[:60]}': each POLYGON ring closes (first position = last) and has four positions or more")
    return {"type": "Polygon", "coordinates": polygon}


def _shape(value: Any) -> tuple[str, Any] | None:
    """(type, coordinates) of a GeoJSON geometry this module understands, or None."""
    if not isinstance(value, dict) or value.get("type") not in ("Point", "LineString", "Polygon"):
        return None
    coordinates = value.get("coordinates")

    def position(p: Any) -> bool:
        return isinstance(p, list) and len(p) >= 2 and all(_kind(c) == "num" for c in p[:2])

    kind = value["type"]
    if kind == "Point" and position(coordinates):
        return kind, coordinates
    if kind == "LineString" and isinstance(coordinates, list) and len(coordinates) >= 2 and all(position(p) for p in coordinates):
        return kind, coordinates
    if kind == "Polygon" and isinstance(coordinates, list) and coordinates and all(
        isinstance(r, list) and len(r) >= 4 and all(position(p) for p in r) for r in coordinates
    ):
        return kind, coordinates
    return None


def _on_segment(p: list[float], a: list[float], b: list[float]) -> bool:
    cross = (b[0] - a[0]) * (p[1] - a[1]) - (b[1] - a[1]) * (p[0] - a[0])
    return abs(cross) <= 1e-12 and min(a[0], b[0]) <= p[0] <= max(a[0], b[0]) and min(a[1], b[1]) <= p[1] <= max(a[1], b[1])


def _in_ring(p: list[float], ring: list[list[float]]) -> bool:
    """Ray casting; a point on the ring counts as inside."""
    inside = False
    for a, b in itertools.pairwise(ring):
        if _on_segment(p, a, b):
            return True
        if (a[1] > p[1]) != (b[1] > p[1]) and p[0] < a[0] + (p[1] - a[1]) * (b[0] - a[0]) / (b[1] - a[1]):
            inside = not inside
    return inside


def _point_in(point: list[float], shape: tuple[str, Any]) -> bool:
    kind, coordinates = shape
    if kind == "Point":
        return point[:2] == coordinates[:2]
    if kind == "LineString":
        return any(_on_segment(point, a, b) for a, b in itertools.pairwise(coordinates))
    outer, *holes = coordinates
    return _in_ring(point, outer) and not any(
        _in_ring(point, hole) and not any(_on_segment(point, a, b) for a, b in itertools.pairwise(hole)) for hole in holes
    )


def _geometry(f: Callable[..., Any]) -> Callable[..., Any]:
    """A geometry function of points (against any shape); None when an argument is not a geometry it handles."""

    def run(*values: Any) -> Any:
        shapes = [_shape(v) for v in values]
        if any(shape is None for shape in shapes):
            return None
        return f(*shapes)

    return run


def _intersects(a: tuple[str, Any], b: tuple[str, Any]) -> bool | None:
    if a[0] == "Point":
        return _point_in(a[1], b)
    if b[0] == "Point":
        return _point_in(b[1], a)
    return None


def _distance(a: tuple[str, Any], b: tuple[str, Any]) -> float | None:
    if a[0] == "Point" and b[0] == "Point":
        return math.hypot(a[1][0] - b[1][0], a[1][1] - b[1][1])
    return None


def _length(a: tuple[str, Any]) -> float | None:
    if a[0] != "LineString":
        return None
    return sum(math.hypot(q[0] - p[0], q[1] - p[1]) for p, q in itertools.pairwise(a[1]))


def _within(a: tuple[str, Any], b: tuple[str, Any]) -> bool | None:
    return _point_in(a[1], b) if a[0] == "Point" else None


def _contains(a: tuple[str, Any], b: tuple[str, Any]) -> bool | None:
    return _point_in(b[1], a) if b[0] == "Point" else None


def _equals(a: tuple[str, Any], b: tuple[str, Any]) -> bool | None:
    if a[0] == b[0] == "Point":
        return a[1][:2] == b[1][:2]
    return None


def _disjoint(a: tuple[str, Any], b: tuple[str, Any]) -> bool | None:
    hit = _intersects(a, b)
    return None if hit is None else not hit


# --- run-time semantics ---------------------------------------------------------------


def _kind(value: Any) -> str | None:
    if value is None:
        return None
    if value is True or value is False:
        return "bool"
    if isinstance(value, int | float):
        return "num"
    if isinstance(value, str):
        return "str"
    return "other"


OPERATIONS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
}


def compare(op: str, a: Any, b: Any) -> bool:
    if isinstance(a, Many) or isinstance(b, Many):
        return any(compare(op, x, y) for x, y in _combinations((a, b)))
    ka, kb = _kind(a), _kind(b)
    if ka is None or kb is None:
        return (ka == kb) if op == "eq" else (ka != kb) if op == "ne" else False
    if ka != kb or ka == "other":
        return op == "ne"
    return OPERATIONS[op](a, b)


def _truncated(a: int, b: int) -> int:
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b > 0) else -q


def arithmetic(op: str, a: Any, b: Any) -> Any:
    if isinstance(a, Many) or isinstance(b, Many):
        return Many(arithmetic(op, x, y) for x, y in _combinations((a, b)))
    if _kind(a) != "num" or _kind(b) != "num":
        return None
    try:
        if op == "add":
            return a + b
        if op == "sub":
            return a - b
        if op == "mul":
            return a * b
        integers = isinstance(a, int) and isinstance(b, int)
        if op == "div":
            return _truncated(a, b) if integers else a / b
        return a - b * _truncated(a, b) if integers else math.fmod(a, b)
    except (ZeroDivisionError, OverflowError, ValueError):
        return None


def _utc(ms: Any) -> datetime | None:
    if _kind(ms) != "num":
        return None
    try:
        return datetime.fromtimestamp(ms / 1000, UTC)
    except (OverflowError, ValueError, OSError):
        return None


def _date_part(part: Callable[[datetime], Any]) -> Callable[[Any], Any]:
    def run(ms: Any) -> Any:
        moment = _utc(ms)
        return None if moment is None else part(moment)

    return run


def _round(x: float) -> float:
    return math.floor(x + 0.5) if x >= 0 else -math.floor(-x + 0.5)


def _number(f: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def run(x: Any) -> Any:
        if _kind(x) != "num":
            return None
        try:
            return f(x)
        except (OverflowError, ValueError):
            return None

    return run


def _strings(f: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any) -> Any:
        return f(*args) if all(isinstance(a, str) for a in args) else None

    return run


def _substring(s: Any, start: Any, length: Any = 0) -> Any:
    if not isinstance(s, str) or _kind(start) != "num" or _kind(length) != "num" or start < 0:
        return None
    if not (math.isfinite(start) and math.isfinite(length)):  # arithmetic overflows to inf or nan: no position
        return None
    start = int(start)
    return s[start:] if length == 0 else s[start : start + max(0, int(length))]


# name: (argument types, result type, implementation).  "time" arguments are milliseconds at run time.
FUNCTIONS: dict[str, tuple[tuple[str, ...], str, Callable[..., Any]]] = {
    "substringof": (("str", "str"), "bool", _strings(lambda a, b: a in b)),
    "contains": (("str", "str"), "bool", _strings(lambda a, b: b in a)),
    "startswith": (("str", "str"), "bool", _strings(lambda a, b: a.startswith(b))),
    "endswith": (("str", "str"), "bool", _strings(lambda a, b: a.endswith(b))),
    "length": (("str",), "num", _strings(len)),
    "indexof": (("str", "str"), "num", _strings(lambda a, b: a.find(b))),
    "substring": (("str", "num", "num"), "str", _substring),
    "tolower": (("str",), "str", _strings(str.lower)),
    "toupper": (("str",), "str", _strings(str.upper)),
    "trim": (("str",), "str", _strings(str.strip)),
    "concat": (("str", "str"), "str", _strings(lambda a, b: a + b)),
    "year": (("time",), "num", _date_part(lambda d: d.year)),
    "month": (("time",), "num", _date_part(lambda d: d.month)),
    "day": (("time",), "num", _date_part(lambda d: d.day)),
    "hour": (("time",), "num", _date_part(lambda d: d.hour)),
    "minute": (("time",), "num", _date_part(lambda d: d.minute)),
    "second": (("time",), "num", _date_part(lambda d: d.second)),
    "fractionalseconds": (("time",), "num", _date_part(lambda d: d.microsecond / 1e6)),
    "date": (("time",), "time", _date_part(lambda d: utc_ms(d.replace(hour=0, minute=0, second=0, microsecond=0)))),
    "time": (("time",), "str", _date_part(lambda d: d.strftime("%H:%M:%S.") + f"{d.microsecond // 1000:03d}")),
    "totaloffsetminutes": (("time",), "num", _date_part(lambda d: 0)),
    "now": ((), "time", lambda: time_ms()),
    "mindatetime": ((), "time", lambda: MIN_MS),
    "maxdatetime": ((), "time", lambda: MAX_MS),
    "before": (("time", "time"), "bool", lambda a, b: compare("lt", a, b)),
    "after": (("time", "time"), "bool", lambda a, b: compare("gt", a, b)),
    "meets": (("time", "time"), "bool", lambda a, b: compare("eq", a, b)),
    "starts": (("time", "time"), "bool", lambda a, b: compare("eq", a, b)),
    "finishes": (("time", "time"), "bool", lambda a, b: compare("eq", a, b)),
    "geo.distance": (("geo", "geo"), "num", _geometry(_distance)),
    "geo.length": (("geo",), "num", _geometry(_length)),
    "geo.intersects": (("geo", "geo"), "bool", _geometry(_intersects)),
    "st_equals": (("geo", "geo"), "bool", _geometry(_equals)),
    "st_disjoint": (("geo", "geo"), "bool", _geometry(_disjoint)),
    "st_intersects": (("geo", "geo"), "bool", _geometry(_intersects)),
    "st_within": (("geo", "geo"), "bool", _geometry(_within)),
    "st_contains": (("geo", "geo"), "bool", _geometry(_contains)),
    "round": (("num",), "num", _number(_round)),
    "floor": (("num",), "num", _number(math.floor)),
    "ceiling": (("num",), "num", _number(math.ceil)),
}
UNSUPPORTED_FUNCTIONS = {
    "during": "needs a time interval, and this server keeps only instants",
    "overlaps": "needs a time interval, and this server keeps only instants",
    **{f"st_{name}": "only st_equals, st_disjoint, st_intersects, st_within and st_contains are supported"
       for name in ("touches", "overlaps", "crosses", "relate")},
}
SUPPORTED_FUNCTIONS = ", ".join(FUNCTIONS)


def time_ms() -> int:
    return _time.time_ns() // 1_000_000


def _apply(f: Callable[..., Any], values: list[Any]) -> Any:
    if any(isinstance(v, Many) for v in values):
        return Many(_apply(f, list(choice)) for choice in _combinations(values))
    if any(v is None for v in values):
        return None
    return f(*values)


# --- compiling a tree into a getter -----------------------------------------------------


def _fits(expected: str, actual: str) -> bool:
    if expected == "geo":
        return actual in ("any", "null", "geo", "json")
    return actual in ("any", "null", expected) or (expected == "num" and actual == "time") or (expected == "time" and actual == "num")


def _as_time(node: Node, getter: Getter, kind: str) -> tuple[Getter, str]:
    """A 'quoted' ISO time compared with a time is read as a time, as many clients send it."""
    if node[0] == "lit" and node[1] == "str":
        ms = parse_time(node[2])
        return (lambda _obj: ms), "time"
    return getter, kind


def compile_value(node: Node, resolve: Resolve) -> tuple[Getter, str]:
    """A getter computing the expression for one entity, and the expression's type."""
    kind = node[0]
    if kind == "lit":
        value = node[2]
        return (lambda _obj: value), node[1]
    if kind == "path":
        return resolve(node[1])
    if kind == "neg":
        inner, inner_type = compile_value(node[1], resolve)
        if not _fits("num", inner_type):
            raise FilterError(f"'-' applies to numbers, not to a {inner_type}")
        return (lambda obj: arithmetic("sub", 0, inner(obj))), "num"
    if kind == "arith":
        _, op, left_node, right_node = node
        left, left_type = compile_value(left_node, resolve)
        right, right_type = compile_value(right_node, resolve)
        for t in (left_type, right_type):
            if t == "time":
                raise FilterError(f"{op} on times needs durations, which are not supported")
            if not _fits("num", t):
                raise FilterError(f"{op} applies to numbers, not to a {t}")
        return (lambda obj: arithmetic(op, left(obj), right(obj))), "num"
    if kind == "call":
        return _compile_call(node, resolve)
    predicate = compile_predicate(node, resolve)
    return predicate, "bool"


def _compile_call(node: Node, resolve: Resolve) -> tuple[Getter, str]:
    _, name, arg_nodes = node
    if name in UNSUPPORTED_FUNCTIONS:
        raise FilterError(f"{name}() is not supported: {UNSUPPORTED_FUNCTIONS[name]}")
    if name not in FUNCTIONS:
        raise FilterError(f"unknown function {name}(); supported: {SUPPORTED_FUNCTIONS}")
    types, result, f = FUNCTIONS[name]
    low = 2 if name == "substring" else len(types)
    if not low <= len(arg_nodes) <= len(types):
        raise FilterError(f"{name}() takes {len(types)} argument{'s' if len(types) != 1 else ''}, got {len(arg_nodes)}")
    getters = []
    for position, (expected, arg_node) in enumerate(zip(types, arg_nodes, strict=True), start=1):
        getter, actual = compile_value(arg_node, resolve)
        if expected == "time" and actual == "str":
            getter, actual = _as_time(arg_node, getter, actual)
        if not _fits(expected, actual):
            raise FilterError(f"{name}(): argument {position} must be a {expected}, got a {actual}")
        getters.append(getter)
    if not getters:
        return (lambda _obj: f()), result
    if len(getters) == 1:
        only = getters[0]
        return (lambda obj: _apply(f, [only(obj)])), result
    return (lambda obj: _apply(f, [g(obj) for g in getters])), result


def compile_predicate(node: Node, resolve: Resolve) -> Callable[[Any], bool]:
    """A predicate that is True for the entities the expression keeps (false and null drop them)."""
    kind = node[0]
    if kind in ("and", "or"):
        left, right = compile_predicate(node[1], resolve), compile_predicate(node[2], resolve)
        if kind == "and":
            return lambda obj: left(obj) and right(obj)
        return lambda obj: left(obj) or right(obj)
    if kind == "not":
        inner = compile_predicate(node[1], resolve)
        return lambda obj: not inner(obj)
    if kind == "cmp":
        return _compile_comparison(node, resolve)
    getter, value_type = compile_value(node, resolve)
    if value_type not in ("bool", "any"):
        raise FilterError(f"a condition is needed here, not a {value_type} (e.g. name eq 'x')")
    return lambda obj: _truthy(getter(obj))


def _truthy(value: Any) -> bool:
    if isinstance(value, Many):
        return any(v is True for v in value)
    return value is True


def _numeric_text(node: Node, other_type: str) -> Node:
    """A quoted whole number compared with a numeric id reads as the number (``Datastream/id eq '1'`` in OGC 18-088)."""
    if other_type == "num" and node[0] == "lit" and node[1] == "str" and re.fullmatch(r"-?[0-9]{1,18}", node[2]):
        return ("lit", "num", int(node[2]))
    return node


def _compile_comparison(node: Node, resolve: Resolve) -> Callable[[Any], bool]:
    _, op, left_node, right_node = node
    if left_node[0] == "path" and right_node[0] == "lit":
        right_node = _numeric_text(right_node, resolve(left_node[1])[1])
    elif right_node[0] == "path" and left_node[0] == "lit":
        left_node = _numeric_text(left_node, resolve(right_node[1])[1])
    left, left_type = compile_value(left_node, resolve)
    right, right_type = compile_value(right_node, resolve)
    if left_type == "time" and right_type == "str":
        right, right_type = _as_time(right_node, right, right_type)
    if right_type == "time" and left_type == "str":
        left, left_type = _as_time(left_node, left, left_type)
    if "geo" in (left_type, right_type):
        raise FilterError("compare geometries with st_equals(…) or geo.intersects(…), not with an operator")
    if "json" in (left_type, right_type):
        raise FilterError("compare a property inside an object (e.g. properties/fleet or unitOfMeasurement/symbol), not the object")
    known = {left_type, right_type} - {"any", "null"}
    if len(known) == 2 and known != {"time", "num"}:
        raise FilterError(f"cannot compare a {left_type} with a {right_type}")
    if right_node[0] == "lit":
        value = right_node[2] if right_type != "time" or right_node[1] == "time" else right(None)
        if right_node[1] == "null":
            return lambda obj: compare(op, left(obj), None)
        return lambda obj: compare(op, left(obj), value)
    return lambda obj: compare(op, left(obj), right(obj))

"""A small composable schema language that validates a parsed TOML document and reports every problem.

Pieces are small and compose (ESPHome style): typed fields (`Str`, `Int`, `Float`,
`Bool`, `Choice`, `Duration`, `Size`, `FilePath`, `Address`, `Url`, `AnyTable`),
`Table` for a TOML table and `ArrayOf` for an array of tables.  Defaults live in
the schema only, written the way a person writes them in the file ("10s"), and go
through the same conversion as a value from the file.  Validation never stops at
the first problem: every problem becomes one line naming the file, the key path,
the value and what would be accepted, e.g.::

    gateway.toml: devices[2].poll_interval = "fast": expected a duration like "10s"

There is no implicit coercion: a number where a duration string belongs is an
error (bare ``0`` excepted, which means the same in every unit).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, is_dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "INVALID",
    "REQUIRED",
    "Address",
    "AnyTable",
    "ArrayOf",
    "Bad",
    "Bool",
    "Broken",
    "Choice",
    "Context",
    "Duration",
    "Field",
    "FilePath",
    "Float",
    "HostPort",
    "Int",
    "Rule",
    "Size",
    "Str",
    "Table",
    "Type",
    "Url",
    "closest",
    "dumps_toml",
    "format_duration",
    "format_size",
    "join",
    "parse_duration",
    "parse_size",
    "render",
    "value_of",
]


class _Marker:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


REQUIRED: Any = _Marker("REQUIRED")  # a Field default meaning "the file must set this key"
INVALID: Any = _Marker("INVALID")  # the value of a key whose problem has already been reported


class Bad(ValueError):
    """A value is wrong; ``message`` is the text after ``key = value:``, e.g. 'expected a duration like "10s"'."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class Broken:
    """A table that had problems: the values that did convert, for cross-field rules to look at."""

    values: Mapping[str, Any]


def value_of(item: Any, name: str) -> Any:
    """Field ``name`` of a converted table (a dataclass, a dict or a Broken one); INVALID if unknown."""
    if item is INVALID:
        return INVALID
    if isinstance(item, Broken):
        return item.values.get(name, INVALID)
    if _is_table(item):
        return item.get(name, INVALID)
    return getattr(item, name, INVALID)


# TOML's plain values and the converted tables (dataclasses): told apart from a table before isinstance(value, Mapping),
# which for a type an ABC has not seen walks every class under Mapping and leaves the answer cached in each (~0.25 MiB
# for loading and digesting one gateway config, kept for the gateway's life: issue 17).
_PLAIN = (str, bool, int, float, list, tuple, datetime.date, datetime.time, Path, type(None))


def _is_table(value: Any) -> bool:
    """A TOML table: the dict tomllib makes, or any other Mapping."""
    if isinstance(value, dict):
        return True
    if isinstance(value, _PLAIN) or is_dataclass(value):
        return False
    return isinstance(value, Mapping)


def render(value: Any, *, limit: int = 80) -> str:
    """A value the way it is written in TOML, shortened for a one-line message."""
    text = _inline(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def join(path: str, key: str | int) -> str:
    """The key path of a child: `devices[2]` for an index, `gateway.id` for a key."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def closest(word: str, candidates: Iterable[str]) -> str | None:
    """The candidate a typo most likely meant, or None."""
    import difflib  # only when a key is misspelt: a config that loads never needs it (issue 17)

    found = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return found[0] if found else None


@dataclass(slots=True)
class Context:
    """One validation run: where relative paths start, and every problem found so far."""

    source: str  # the config file as the user named it; starts every message
    base_dir: Path  # relative paths in the file resolve against this directory
    problems: list[str] = field(default_factory=list)

    def report(self, path: str, text: str) -> None:
        """A problem with a key as a whole: ``file: path: text``."""
        self.problems.append(f"{self.source}: {path}: {text}" if path else f"{self.source}: {text}")

    def report_value(self, path: str, value: Any, text: str) -> None:
        """A problem with a key's value: ``file: path = value: text``."""
        self.problems.append(f"{self.source}: {path} = {render(value)}: {text}")

    def invalid(self, path: str, value: Any, expected: str) -> None:
        self.report_value(path, value, f"expected {expected}")

    def missing(self, path: str, expected: str) -> None:
        self.report(path, f"missing; expected {expected}")

    def unknown(self, path: str, key: str, known: Iterable[str]) -> None:
        known = list(known)
        guess = closest(key, known)
        if guess is not None:
            self.report(path, f'unknown key; did you mean "{guess}"?')
        elif known:
            self.report(path, "unknown key; known keys here: " + ", ".join(known))
        else:
            self.report(path, "unknown key; nothing belongs here")


class Type:
    """A kind of value: converts what TOML gave into what the program uses, and back for printing."""

    expected = "a value"

    def convert(self, raw: Any, ctx: Context, path: str) -> Any:
        """The converted value, or INVALID after reporting the problem to ``ctx``."""
        try:
            return self.parse(raw, ctx)
        except Bad as bad:
            ctx.report_value(path, raw, bad.message)
            return INVALID

    def parse(self, raw: Any, ctx: Context) -> Any:
        """Convert one value or raise :class:`Bad`."""
        return raw

    def fail(self) -> Bad:
        return Bad(f"expected {self.expected}")

    def dump(self, value: Any) -> Any:
        """The value as it would be written in the file (None: leave the key out)."""
        return value

    def dump_unset(self) -> Any:
        """How an unset optional key is written in the file (None: leave the key out)."""
        return None


def _is_int(raw: Any) -> bool:
    return isinstance(raw, int) and not isinstance(raw, bool)


def _is_number(raw: Any) -> bool:
    return isinstance(raw, (int, float)) and not isinstance(raw, bool)


class Str(Type):
    """Text, optionally matching a pattern; ``rule`` tells a person what the pattern allows."""

    def __init__(
        self,
        *,
        expected: str = "a string",
        pattern: str | None = None,
        rule: str = "",
        max_length: int | None = None,
    ) -> None:
        self.expected = expected
        self._pattern = re.compile(pattern) if pattern else None
        self._rule = rule
        self._max_length = max_length

    def parse(self, raw: Any, ctx: Context) -> str:
        if not isinstance(raw, str):
            raise self.fail()
        too_long = self._max_length is not None and len(raw) > self._max_length
        if too_long or (self._pattern is not None and not self._pattern.fullmatch(raw)):
            raise Bad(f"expected {self.expected}" + (f" ({self._rule})" if self._rule else ""))
        return raw


def _range_text(noun: str, minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f"{noun} from {minimum!r} to {maximum!r}"
    if minimum is not None:
        return f"{noun} of at least {minimum!r}"
    if maximum is not None:
        return f"{noun} of at most {maximum!r}"
    return noun


class Int(Type):
    """A whole number, optionally within ``minimum``..``maximum`` (inclusive)."""

    def __init__(self, *, minimum: int | None = None, maximum: int | None = None, expected: str = "") -> None:
        self.expected = expected or _range_text("a whole number", minimum, maximum)
        self._min = minimum
        self._max = maximum

    def parse(self, raw: Any, ctx: Context) -> int:
        if not _is_int(raw):
            raise self.fail()
        if (self._min is not None and raw < self._min) or (self._max is not None and raw > self._max):
            raise self.fail()
        return raw


class Float(Type):
    """A number (TOML integer or float), optionally within ``minimum``..``maximum`` (inclusive)."""

    def __init__(self, *, minimum: float | None = None, maximum: float | None = None, expected: str = "") -> None:
        self.expected = expected or _range_text("a number", minimum, maximum)
        self._min = minimum
        self._max = maximum

    def parse(self, raw: Any, ctx: Context) -> float:
        if not _is_number(raw) or not math.isfinite(raw):
            raise self.fail()
        if (self._min is not None and raw < self._min) or (self._max is not None and raw > self._max):
            raise self.fail()
        return float(raw)


class Bool(Type):
    """true or false: never "yes", 1 or "on"."""

    expected = "true or false"

    def parse(self, raw: Any, ctx: Context) -> bool:
        if not isinstance(raw, bool):
            raise self.fail()
        return raw


class Choice(Type):
    """One of a fixed set of values (compared by type and value: 1 is not "1", true is not 1)."""

    def __init__(self, *choices: Any) -> None:
        self.choices = choices
        self.expected = "one of " + ", ".join(render(c) for c in choices)

    def parse(self, raw: Any, ctx: Context) -> Any:
        for choice in self.choices:
            if _same_kind(raw, choice) and raw == choice:
                return choice
        raise self.fail()


def _same_kind(a: Any, b: Any) -> bool:
    # Python says 1 == 1.0 == True; TOML files must not: "1" is not 1 and true is not 1.
    return isinstance(a, str) == isinstance(b, str) and isinstance(a, bool) == isinstance(b, bool)


_DURATION_UNITS = {
    "d": Decimal(86_400_000),
    "h": Decimal(3_600_000),
    "m": Decimal(60_000),
    "s": Decimal(1000),
    "ms": Decimal(1),
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|d|h|m|s)")
_DURATION_ORDER = list(_DURATION_UNITS)


def parse_duration(text: str) -> float:
    """Seconds in a duration like "500ms", "10s", "5m", "1h", "1d" or "1m30s"; ValueError if it is not one."""
    text = text.strip()
    if text == "0":
        return 0.0
    total_ms = Decimal(0)
    position = 0
    last_unit = -1
    for match in _DURATION_PART.finditer(text):
        unit = _DURATION_ORDER.index(match.group(2))
        if match.start() != position or unit <= last_unit:
            raise ValueError(text)
        total_ms += Decimal(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
        last_unit = unit
    if position == 0 or position != len(text):
        raise ValueError(text)
    return float(total_ms / 1000)


def format_duration(seconds: float) -> str:
    """``seconds`` in the largest units that fit, as a string :func:`parse_duration` reads back exactly."""
    exact = Decimal(repr(float(seconds)))
    ms = exact * 1000
    if ms != ms.to_integral_value():
        return f"{exact:f}s"
    remaining = int(ms)
    if remaining == 0:
        return "0s"
    parts = []
    for unit, size in _DURATION_UNITS.items():
        count, remaining = divmod(remaining, int(size))
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)


class Duration(Type):
    """A duration string converted to float seconds, optionally at least ``at_least`` (itself a duration)."""

    expected = 'a duration like "10s"'

    def __init__(self, *, at_least: str | None = None) -> None:
        self._at_least = at_least
        self._min = parse_duration(at_least) if at_least is not None else None

    def parse(self, raw: Any, ctx: Context) -> float:
        if _is_int(raw) and raw == 0:
            return 0.0
        if not isinstance(raw, str):
            raise self.fail()
        try:
            seconds = parse_duration(raw)
        except (ValueError, InvalidOperation):
            raise self.fail() from None
        if self._min is not None and seconds < self._min:
            raise Bad(f'expected a duration of at least "{self._at_least}"')
        return seconds

    def dump(self, value: Any) -> Any:
        return format_duration(value)


_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]+)")


def parse_size(text: str) -> int:
    """Bytes in a size like "512B", "64KB", "200MB", "1GB" (powers of 1000) or "64KiB", "1GiB" (powers of 1024)."""
    text = text.strip()
    if text == "0":
        return 0
    match = _SIZE.fullmatch(text.lower())
    if match is None or match.group(2) not in _SIZE_UNITS:
        raise ValueError(text)
    size = Decimal(match.group(1)) * _SIZE_UNITS[match.group(2)]
    if size != size.to_integral_value():
        raise ValueError(text)  # a fraction of a byte
    return int(size)


def format_size(size: int) -> str:
    """A size string in the largest unit that divides it, which :func:`parse_size` reads back as exactly ``size``."""
    if size == 0:
        return "0"
    for unit, factor in (
        ("TB", 1000**4),
        ("GB", 1000**3),
        ("MB", 1000**2),
        ("KB", 1000),
        ("GiB", 1024**3),
        ("MiB", 1024**2),
        ("KiB", 1024),
    ):
        if size % factor == 0:
            return f"{size // factor}{unit}"
    return f"{size}B"


class Size(Type):
    """A size string converted to int bytes, optionally at least ``at_least`` (itself a size)."""

    expected = 'a size like "200MB"'

    def __init__(self, *, at_least: str | None = None) -> None:
        self._at_least = at_least
        self._min = parse_size(at_least) if at_least is not None else None

    def parse(self, raw: Any, ctx: Context) -> int:
        if _is_int(raw) and raw == 0:
            return 0
        if not isinstance(raw, str):
            raise self.fail()
        try:
            size = parse_size(raw)
        except (ValueError, InvalidOperation):
            raise self.fail() from None
        if self._min is not None and size < self._min:
            raise Bad(f'expected a size of at least "{self._at_least}"')
        return size

    def dump(self, value: Any) -> Any:
        return format_size(value)


class FilePath(Type):
    """A path, resolved against the config file's directory; "" means "not set" when ``optional``.

    ``must_exist`` checks at validation time that a file is there, so a typo is
    caught by `ocn-edge check` rather than when the gateway starts.
    """

    def __init__(self, *, example: str, optional: bool = False, must_exist: bool = False, noun: str = "a path") -> None:
        self.expected = f'{noun} like "{example}"' + (' or "" for none' if optional else "")
        self._optional = optional
        self._must_exist = must_exist

    def parse(self, raw: Any, ctx: Context) -> Path | None:
        if not isinstance(raw, str) or "\0" in raw:
            raise self.fail()
        if raw == "":
            if self._optional:
                return None
            raise self.fail()
        path = Path(os.path.normpath(ctx.base_dir / Path(raw).expanduser()))
        if self._must_exist and not path.is_file():
            raise Bad(f"no such file: {path}")
        return path

    def dump(self, value: Any) -> Any:
        return str(value)

    def dump_unset(self) -> Any:
        return "" if self._optional else None


class HostPort(str):
    """A host and a TCP port: the text "host:port" ("[::1]:8080" for IPv6), with ``host`` and ``port`` parsed.

    A ``str`` so that code treating the setting as the text it is keeps working.
    """

    host: str
    port: int

    def __new__(cls, host: str, port: int) -> HostPort:
        self = super().__new__(cls, f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        self.host = host
        self.port = port
        return self

    def __repr__(self) -> str:
        return f"HostPort({self.host!r}, {self.port!r})"


_ADDRESS = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[A-Za-z0-9.-]+)):(?P<port>\d{1,5})")


class Address(Type):
    """ "host:port" converted to a :class:`HostPort`."""

    expected = 'an address like "127.0.0.1:8080"'

    def parse(self, raw: Any, ctx: Context) -> HostPort:
        match = _ADDRESS.fullmatch(raw) if isinstance(raw, str) else None
        if match is None or int(match["port"]) > 65535:
            raise self.fail()
        return HostPort(match["v6"] or match["host"], int(match["port"]))

    def dump(self, value: Any) -> Any:
        return str(value)


class Url(Type):
    """An absolute URL with one of ``schemes``; "" means "not set" when ``optional``."""

    def __init__(self, *, schemes: Sequence[str], example: str, optional: bool = False) -> None:
        self._schemes = tuple(schemes)
        self._optional = optional
        self.expected = f'{"/".join(self._schemes)} URL like "{example}"'
        self.expected = ("an " if self._schemes[0][0] in "aeiouh" else "a ") + self.expected
        if optional:
            self.expected += ' or ""'

    def parse(self, raw: Any, ctx: Context) -> str:
        if not isinstance(raw, str):
            raise self.fail()
        if raw == "" and self._optional:
            return raw
        try:
            parts = urlsplit(raw)
            _ = parts.port  # raises ValueError on a bad port
        except ValueError:
            raise self.fail() from None
        if parts.scheme not in self._schemes or not parts.hostname or any(c.isspace() for c in raw):
            raise self.fail()
        return raw


class AnyTable(Type):
    """A table whose keys someone else checks (e.g. a driver's options); kept as a plain dict."""

    expected = "a table"

    def parse(self, raw: Any, ctx: Context) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.fail()
        return dict(raw)

    def dump(self, value: Any) -> Any:
        return _drop_none(value)


def _drop_none(value: Any) -> Any:
    if _is_table(value):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [_drop_none(v) for v in value]
    return value


@dataclass(frozen=True, slots=True)
class Field:
    """One key of a table: its type and its default as written in a file (REQUIRED: no default, None: unset)."""

    type: Type
    default: Any = REQUIRED


# A cross-field rule sees the table's converted values (INVALID where a problem was
# already reported), the context and the table's path; it reports problems and may
# replace values (e.g. fill a default that depends on another key).
Rule = Callable[[dict[str, Any], Context, str], None]


class Table(Type):
    """A TOML table with known keys; unknown keys are problems with a did-you-mean suggestion.

    Converts to ``into(**values)`` (a dict without ``into``).  When anything in the
    table had a problem, converts to :class:`Broken` instead so that rules further
    up can still look at the keys that were fine.  ``unused(value)`` names keys that
    do not apply to a converted value (a serial line's baud rate on a TCP bus); they
    are printed only when set to something other than their default.
    """

    expected = "a table"

    def __init__(
        self,
        fields: Mapping[str, Field],
        *,
        into: Callable[..., Any] | None = None,
        rules: Sequence[Rule] = (),
        expected: str = "a table",
        unused: Callable[[Any], Iterable[str]] | None = None,
    ) -> None:
        self.fields = dict(fields)
        self._into = into
        self._rules = tuple(rules)
        self._unused = unused
        self.expected = expected

    def convert(self, raw: Any, ctx: Context, path: str) -> Any:
        if not isinstance(raw, dict):
            ctx.invalid(path, raw, self.expected)
            return INVALID
        before = len(ctx.problems)
        for key in raw:
            if key not in self.fields:
                ctx.unknown(join(path, key), key, self.fields)
        values: dict[str, Any] = {}
        for name, spec in self.fields.items():
            where = join(path, name)
            if name in raw:
                values[name] = spec.type.convert(raw[name], ctx, where)
            elif spec.default is REQUIRED:
                ctx.missing(where, spec.type.expected)
                values[name] = INVALID
            elif spec.default is None:
                values[name] = None
            else:
                values[name] = spec.type.convert(spec.default, ctx, where)
        for rule in self._rules:
            rule(values, ctx, path)
        if len(ctx.problems) != before:
            return Broken(values)
        return self._into(**values) if self._into is not None else values

    def dump(self, value: Any) -> Any:
        out: dict[str, Any] = {}
        unused = set(self._unused(value)) if self._unused is not None else set()
        for name, spec in self.fields.items():
            item = value_of(value, name)
            if name in unused and item == _default_value(spec):
                continue
            dumped = spec.type.dump_unset() if item is None else spec.type.dump(item)
            if dumped is not None:
                out[name] = dumped
        return out


def _default_value(spec: Field) -> Any:
    if spec.default is REQUIRED or spec.default is None:
        return None
    return spec.type.convert(spec.default, Context(source="", base_dir=Path.cwd()), "")


class ArrayOf(Type):
    """An array of tables (``[[devices]]``), converted to a tuple."""

    def __init__(self, item: Table, *, expected: str) -> None:
        self.item = item
        self.expected = expected

    def convert(self, raw: Any, ctx: Context, path: str) -> Any:
        if not isinstance(raw, list):
            ctx.invalid(path, raw, self.expected)
            return INVALID
        return tuple(self.item.convert(item, ctx, join(path, i)) for i, item in enumerate(raw))

    def dump(self, value: Any) -> Any:
        return [self.item.dump(item) for item in value]


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(name: str) -> str:
    return name if _BARE_KEY.fullmatch(name) else _string(name)


def _string(text: str) -> str:
    # JSON string escapes are valid TOML basic-string escapes; TOML also forbids a raw DEL.
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _inline(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, float):
        return (
            repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
        )
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, Path):
        return _string(str(value))
    if _is_table(value):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(k)} = {_inline(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return str(value)


def _is_table_array(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and bool(value) and all(_is_table(v) for v in value)


def dumps_toml(document: Mapping[str, Any]) -> str:
    """A document of plain values, tables and arrays of tables as TOML text that tomllib reads back equal."""
    lines: list[str] = []
    _write_table(lines, [], document)
    return "\n".join(lines).lstrip("\n") + "\n"


def _write_table(lines: list[str], prefix: list[str], table: Mapping[str, Any]) -> None:
    nested = {k: v for k, v in table.items() if _is_table(v) or _is_table_array(v)}
    for key, value in table.items():
        if key not in nested:
            lines.append(f"{_key(key)} = {_inline(value)}")
    for key, value in nested.items():
        name = ".".join(_key(part) for part in [*prefix, key])
        if _is_table(value):
            lines += ["", f"[{name}]"]
            _write_table(lines, [*prefix, key], value)
        else:
            for item in value:
                lines += ["", f"[[{name}]]"]
                _write_table(lines, [*prefix, key], item)

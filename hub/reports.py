"""What the hub accepts as a status report or a transparency notice (docs/protocol.md §7), as declarative schemas.

A report is checked whole before anything of it is stored or its freshness is
recorded: a bad one is refused with the first field that is wrong, its value and
what would be accepted.  Keys a schema does not name are ignored (a later sender
may add fields, §13), except in a notice, which the hub stores and publishes as
JSON: there every value must be one JSON can carry.  No stored text, nor a
notice's key, may hold U+0000 (PostgreSQL refuses it in text and jsonb), and the
one-line fields of a status report hold no control character.  The register checks stored
notices with the same schema, so a notice stored before these checks cannot break
the page.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge.privacy.notice import MAX_STORED_NOTICE_BYTES, stored_notice_bytes
from edge.protocol import Reason
from edge.protocol.errors import show

__all__ = [
    "Freshness",
    "MAX_STORED_NOTICE_BYTES",
    "NOTICE",
    "NOTICE_MESSAGE",
    "ReportError",
    "STATUS_REPORT",
    "check_notice_message",
    "check_status_report",
    "freshness",
    "is_fresh",
    "next_mark",
    "notice_problem",
    "stored_notice_bytes",
]

UINT_MAX = 2**64 - 1
TIME_MAX = 2**63 - 1  # §2: times are in the signed 64-bit range
# Deep enough for any notice; a peer's nesting must not decide how deep the checker recurses.
MAX_DEPTH = 16


class ReportError(ValueError):
    """A report does not fit its schema; ``reason`` is the OXP reason code (malformed, or wrong_type for a message of the other type)."""

    def __init__(self, field: str, value: Any, expected: str, *, reason: Reason = Reason.MALFORMED) -> None:
        self.field = field
        self.reason = reason
        self.detail = f"field {field!r} = {show(value)}: expected {expected}"
        super().__init__(self.detail)


def _child(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}" if path else key


class Shape:
    """One kind of value; ``check`` raises :class:`ReportError` naming the field when a value is not one."""

    expected = "a value"

    def check(self, value: Any, path: str, depth: int = 0) -> None:
        if not self.fits(value):
            raise ReportError(path, value, self.expected)

    def fits(self, value: Any) -> bool:
        return True


class Text(Shape):
    """Text without U+0000, which a PostgreSQL text or jsonb column refuses; ``one_line`` refuses every control character."""

    def __init__(self, *, one_line: bool = False) -> None:
        self.one_line = one_line
        self.expected = "one line of text without control characters" if one_line else "text without U+0000"

    def fits(self, value: Any) -> bool:
        if not isinstance(value, str):
            return False
        return not any(unicodedata.category(c) == "Cc" for c in value) if self.one_line else "\x00" not in value


def _check_key(path: str, key: Any) -> None:
    if not isinstance(key, str):
        raise ReportError(path, key, "text keys only")
    if "\x00" in key:
        raise ReportError(path, key, "keys without U+0000")


class Flag(Shape):
    expected = "true or false"

    def fits(self, value: Any) -> bool:
        return isinstance(value, bool)


class Uint(Shape):
    """An unsigned integer from ``minimum`` up to ``maximum`` (a uint of §2 by default)."""

    def __init__(self, maximum: int = UINT_MAX, *, minimum: int = 0) -> None:
        self.minimum, self.maximum = minimum, maximum
        self.expected = "an unsigned integer" + (
            f" from {minimum} to {maximum}" if minimum else "" if maximum == UINT_MAX else f" up to {maximum}"
        )

    def fits(self, value: Any) -> bool:
        return type(value) is int and self.minimum <= value <= self.maximum


class Number(Shape):
    """A finite number (integer or float) from ``minimum`` to ``maximum``."""

    def __init__(self, minimum: float = -math.inf, maximum: float = math.inf) -> None:
        self.minimum, self.maximum = minimum, maximum
        bounds = f" from {minimum:g} to {maximum:g}" if math.isfinite(minimum) and math.isfinite(maximum) else ""
        self.expected = "a finite number" + (f" of at least {minimum:g}" if math.isfinite(minimum) and not bounds else bounds)

    def fits(self, value: Any) -> bool:
        if type(value) not in (int, float) or (type(value) is float and not math.isfinite(value)):
            return False
        return self.minimum <= value <= self.maximum


class Digest(Shape):
    """A byte string of at most 64 bytes (a SHA-256 digest, or empty for none)."""

    expected = "a byte string of at most 64 bytes"

    def fits(self, value: Any) -> bool:
        return isinstance(value, bytes) and len(value) <= 64


class Maybe(Shape):
    """``shape`` or null."""

    def __init__(self, shape: Shape) -> None:
        self.shape = shape
        self.expected = f"{shape.expected} or null"

    def check(self, value: Any, path: str, depth: int = 0) -> None:
        if value is not None:
            try:
                self.shape.check(value, path, depth)
            except ReportError as exc:
                if exc.field != path:
                    raise
                raise ReportError(path, value, self.expected) from None


class Absent(Shape):
    """A key that must not be there: its presence says the message is of another type."""

    def __init__(self, expected: str) -> None:
        self.expected = expected

    def check(self, value: Any, path: str, depth: int = 0) -> None:
        raise ReportError(path, value, self.expected, reason=Reason.WRONG_TYPE)


class Json(Shape):
    """Any value JSON carries: maps with text keys, lists, text, finite numbers, integers within 64 bits, booleans, null."""

    expected = "a JSON value (map with text keys, list, text, finite number, true, false or null)"

    def check(self, value: Any, path: str, depth: int = 0) -> None:
        if depth > MAX_DEPTH:
            raise ReportError(path, value, f"nesting of at most {MAX_DEPTH} levels")
        if isinstance(value, Mapping):
            for key, item in value.items():
                _check_key(path, key)
                self.check(item, _child(path, key), depth + 1)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self.check(item, _child(path, index), depth + 1)
        elif type(value) is str and "\x00" in value:
            raise ReportError(path, value, "text without U+0000 (the hub stores notices as JSON, which PostgreSQL keeps without it)")
        elif not (value is None or type(value) in (str, bool) or _json_number(value)):
            raise ReportError(path, value, self.expected)


def _json_number(value: Any) -> bool:
    if type(value) is int:
        return -(2**63) <= value <= UINT_MAX
    return type(value) is float and math.isfinite(value)


class Language(Text):
    """A language tag as BCP 47 starts one: a primary language subtag ("fr"), perhaps a region or more ("fr-CA")."""

    _TAG = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{1,8})*")
    expected = 'a language tag like "en" or "fr"'

    def __init__(self) -> None:
        super().__init__(one_line=True)
        self.expected = Language.expected

    def fits(self, value: Any) -> bool:
        return isinstance(value, str) and self._TAG.fullmatch(value) is not None


class ListOf(Shape):
    def __init__(self, item: Shape) -> None:
        self.item = item
        self.expected = f"a list of {item.expected}"

    def check(self, value: Any, path: str, depth: int = 0) -> None:
        if not isinstance(value, list):
            raise ReportError(path, value, self.expected)
        for index, item in enumerate(value):
            self.item.check(item, _child(path, index), depth + 1)


class Map(Shape):
    """A map whose named keys must fit their shapes; other keys must fit ``others`` (anything by default).

    ``required`` keys must be present; ``requires`` says which key needs which other
    (``{"report_seq": "boot_epoch"}``: a report_seq only with a boot_epoch).
    """

    def __init__(
        self,
        fields: Mapping[str, Shape],
        *,
        required: Sequence[str] = (),
        requires: Mapping[str, str] | None = None,
        others: Shape | None = None,
        expected: str = "",
    ) -> None:
        self.fields = dict(fields)
        self.required = tuple(required)
        self.requires = dict(requires or {})
        self.others = others
        self.expected = expected or "a map of " + ", ".join(self.fields)

    def check(self, value: Any, path: str, depth: int = 0) -> None:
        if not isinstance(value, Mapping):
            raise ReportError(path, value, self.expected)
        if depth > MAX_DEPTH:
            raise ReportError(path, value, f"nesting of at most {MAX_DEPTH} levels")
        for key in self.required:
            if key not in value:
                raise ReportError(_child(path, key), None, f"{self.fields[key].expected} (the key is required)")
        for key, needed in self.requires.items():
            if key in value and needed not in value:
                raise ReportError(_child(path, needed), None, f"{self.fields[needed].expected} (required with {key!r})")
        for key, shape in self.fields.items():
            if key in value:
                shape.check(value[key], _child(path, key), depth + 1)
        if self.others is not None:
            for key, item in value.items():
                _check_key(path, key)
                if key not in self.fields:
                    self.others.check(item, _child(path, key), depth + 1)


TIME = Uint(TIME_MAX)  # §2 time, device clock: never before 1970 in a report
COUNT = Uint()
LATITUDE = Maybe(Number(-90, 90))
LONGITUDE = Maybe(Number(-180, 180))

# Freshness (§7.2): the boot epoch and a per-boot counter of status-type messages.
FRESHNESS_FIELDS: dict[str, Shape] = {"boot_epoch": Uint(), "report_seq": Uint()}

STATUS_REPORT = Map(
    {
        "device_id": Text(),
        "ts_ms": TIME,
        "software_version": Text(one_line=True),
        **FRESHNESS_FIELDS,
        "unclean_stops": COUNT,
        "spool_batches": COUNT,
        "spool_bytes": COUNT,
        "spool_oldest_age_s": Maybe(Number(0)),
        "readings_dropped": COUNT,
        "batches_dropped": COUNT,
        "batches_quarantined": COUNT,
        "readings_quarantined": COUNT,
        "policy_digest": Digest(),
        "config_digest": Digest(),
        "applied_etag": Text(one_line=True),
        "errors": ListOf(Text()),
        # Each device's health (drivers/health.py): {name: {health, diagnosis, next_step}}; unknown keys inside are ignored.
        "device_health": Map({}, others=Map({"health": Text(one_line=True), "diagnosis": Text(), "next_step": Text()}, others=Json(),
                                              expected="a map of health, diagnosis and next_step"),
                             expected="a map of device names to their health"),
        "notice": Absent("no 'notice' in a status report (a transparency notice goes to /oxp/v1/notice)"),
    },
    requires={"report_seq": "boot_epoch"},
    expected="a status report map",
)

_PLACE = Map(
    {"gateway_id": Text(), "site": Text(), "latitude": LATITUDE, "longitude": LONGITUDE},
    others=Json(),
    expected="a map of gateway_id, site, latitude and longitude",
)
_DATA_ITEM = Map(
    {
        "channel": Text(),
        "channels": ListOf(Text()),  # every channel the item describes, "channel" the first (§7.3)
        "channel_count": COUNT,  # how many, in an abridged notice that leaves the list out
        "device": Text(),
        "what": Text(),
        "unit": Text(),
        "personal": Flag(),
        "process": ListOf(Text()),
        "leaves_as": Text(),
        "purpose": Text(),
        "untranslated": ListOf(Text()),
    },
    others=Json(),
    expected="a map describing one or more channels (channel, channels, what, leaves_as, purpose, ...)",
)
_ACCOUNTABLE = Map({"organisation": Text(), "contact": Text()}, others=Json(), expected="a map of organisation and contact")
_TECHNOLOGY = ListOf(Map({"device": Text(), "driver": Text(), "type": Text()}, others=Json(), expected="a map of device, driver and type"))
_BUDGET = Maybe(Map({"epsilon": Number(0), "period": Text()}, others=Json(), expected="a map of epsilon and period"))
RETENTION_DAYS = Uint(36_525, minimum=1)  # as a policy's retention_days (edge.privacy.policy.MAX_RETENTION_DAYS)

# The notice's texts in one more of its languages (§7.3): the same keys and shapes as the notice's own.
_TRANSLATION = Map(
    {
        "accountable": _ACCOUNTABLE,
        "purpose": Text(),
        "technology": _TECHNOLOGY,
        "data": ListOf(_DATA_ITEM),
        "default": Text(),
        "retention": Text(),
        "deletion": Text(),
        "storage": Text(),
        "access": Text(),
        "pseudonym_key_rotation": Text(),
        "privacy_budget": _BUDGET,
        "untranslated": ListOf(Text()),
    },
    others=Json(),
    expected="the notice's texts in one language, as a map",
)


class _Translations(Map):
    """``translations``: a map from language tags to the notice's texts in that language."""

    def __init__(self) -> None:
        super().__init__({}, others=_TRANSLATION, expected="a map of language tags to the notice's texts in that language")

    def check(self, value: Any, path: str, depth: int = 0) -> None:
        super().check(value, path, depth)
        for key in value:
            if not Language().fits(key):
                raise ReportError(_child(path, key), key, f"a key that is {Language.expected}")


class _Languages(ListOf):
    """``languages``: the notice's languages, its default first, each once."""

    def __init__(self) -> None:
        super().__init__(Language())
        self.expected = "a list of different language tags, the default first"

    def check(self, value: Any, path: str, depth: int = 0) -> None:
        super().check(value, path, depth)
        if not value or len(set(value)) != len(value):
            raise ReportError(path, value, self.expected)


class _Notice(Map):
    """The notice's map, and the one rule between its keys: each translation is in one of its ``languages``."""

    def check(self, value: Any, path: str, depth: int = 0) -> None:
        super().check(value, path, depth)
        languages = value.get("languages", ["en"])
        for language in value.get("translations") or {}:
            if language not in languages[1:]:
                raise ReportError(_child(_child(path, "translations"), language), language,
                                  f"one of the notice's languages after its default ({', '.join(languages)})")

# The notice as edge.privacy.build_notice makes it (docs/privacy.md, "The public notice"), plus the
# flat keys earlier notices used (site, latitude, longitude, location, operator, sensors).
NOTICE = _Notice(
    {
        "schema": Text(),
        "generated_ms": TIME,
        "place": _PLACE,
        "location": _PLACE,
        "site": Text(),
        "latitude": LATITUDE,
        "longitude": LONGITUDE,
        "operator": Text(),
        "accountable": _ACCOUNTABLE,
        "purpose": Text(),
        "technology": _TECHNOLOGY,
        "data": ListOf(_DATA_ITEM),
        "sensors": ListOf(_DATA_ITEM),
        "withheld": ListOf(Text()),
        "default": Text(),
        "process": ListOf(Text()),
        "retention": Text(),
        "retention_days": RETENTION_DAYS,
        "deletion": Text(),
        "storage": Text(),
        "access": Text(),
        "pseudonym_key_rotation": Text(),
        "privacy_budget": _BUDGET,
        "languages": _Languages(),
        "translations": _Translations(),
        # A notice too long for a signed message says what it leaves out and how much it describes (§7.3).
        "abridged": Map(
            {"left_out": ListOf(Text()), "channels": COUNT, "withheld": COUNT, "devices": COUNT, "full_bytes": COUNT, "limit_bytes": COUNT},
            others=Json(),
            expected="a map of left_out, channels, withheld, devices, full_bytes and limit_bytes",
        ),
        "policy": Map(
            {"name": Text(), "version": Text(), "digest": Text(), "signed_by": Maybe(Text())},
            others=Json(),
            expected="a map of name, version, digest and signed_by",
        ),
    },
    others=Json(),
    expected="the transparency notice as a map",
)

NOTICE_MESSAGE = Map(
    {"device_id": Text(), "ts_ms": TIME, **FRESHNESS_FIELDS, "notice": NOTICE},
    required=("notice",),
    requires={"report_seq": "boot_epoch"},
    expected="a notice message map",
)


def check_status_report(report: Mapping[str, Any]) -> None:
    """Raise :class:`ReportError` unless ``report`` fits the status report schema."""
    STATUS_REPORT.check(report, "")


def check_notice_message(message: Mapping[str, Any]) -> None:
    """Raise :class:`ReportError` unless ``message`` carries a notice that fits the notice schema and, stored as JSON,
    takes at most :data:`MAX_STORED_NOTICE_BYTES` (reason too_large)."""
    NOTICE_MESSAGE.check(message, "")
    stored = stored_notice_bytes(message["notice"])
    if stored > MAX_STORED_NOTICE_BYTES:
        raise ReportError("notice", f"{stored:,} bytes as JSON", f"at most {MAX_STORED_NOTICE_BYTES:,} bytes as the register stores it "
                          "(twice the signed message's limit; a gateway's notice takes about as much as it did signed)",
                          reason=Reason.TOO_LARGE)


def notice_problem(notice: Any) -> str | None:
    """Why a stored notice cannot be shown, or None when it fits the schema."""
    try:
        NOTICE.check(notice, "notice")
    except ReportError as exc:
        return exc.detail
    return None


@dataclass(frozen=True, slots=True)
class Freshness:
    """Where a status-type message stands in its sender's sequence (§7.2).

    ``report_seq`` is None for a sender from before freshness; ``boot_epoch`` is None
    for such a sender's notices, which carry none.
    """

    boot_epoch: int | None
    report_seq: int | None

    def describe(self) -> str:
        """In words, for an error detail: "boot 7, report 12"."""
        boot = "no boot epoch" if self.boot_epoch is None else f"boot {self.boot_epoch}"
        return boot + (", no report_seq" if self.report_seq is None else f", report {self.report_seq}")


def freshness(message: Mapping[str, Any]) -> Freshness:
    """The freshness a checked status report or notice message declares."""
    return Freshness(message.get("boot_epoch"), message.get("report_seq"))


def is_fresh(message: Freshness, mark: Freshness | None) -> bool:
    """True if a message may be accepted after ``mark``, the freshness of the last one accepted from its key (§7.2).

    With a report_seq, (boot_epoch, report_seq) must be greater than the mark's.  Without
    one (a sender from before freshness) only the boot epoch speaks: a report from an
    earlier boot than the mark's is a replay, and once the key has sent a report_seq, so is
    one from the same boot; a notice without a boot epoch is accepted only until then.
    """
    if mark is None:
        return True
    if message.report_seq is not None and mark.report_seq is not None:
        return (message.boot_epoch, message.report_seq) > (mark.boot_epoch, mark.report_seq)
    if message.boot_epoch is None:
        return mark.report_seq is None
    if mark.boot_epoch is None:
        return True
    if mark.report_seq is None:
        return message.boot_epoch >= mark.boot_epoch
    return message.boot_epoch > mark.boot_epoch


def next_mark(message: Freshness, mark: Freshness | None) -> Freshness | None:
    """The mark to keep after accepting ``message``: its freshness, unless it carries no boot epoch to order by."""
    return mark if message.boot_epoch is None else message

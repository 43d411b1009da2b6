"""The privacy policy as data: parse a policy TOML file, validate every rule, compute its canonical digest."""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cbor2

from edge.privacy.catalogue import DEFAULT_LANGUAGE, LANGUAGES
from edge.privacy.rule import DAY_MS, Reader, Rule, axis_of, parse_distance_m, parse_duration_ms, show
from edge.privacy.rules import RULES, kind_of
from edge.protocol.types import Channel
from edge.util.files import toml_problem

__all__ = [
    "DAY_MS",
    "Budget",
    "Policy",
    "PolicyError",
    "Rule",
    "TEXTS",
    "Translation",
    "axis_of",
    "canonical_encoding",
    "parse_distance_m",
    "parse_duration_ms",
    "parse_policy",
]

_COMMON_KEYS = {"rule", "purpose", "description"}
# The city's own texts a notice shows: written in [policy] in the notice's default language, and
# in [policy.translations.<language>] in each other language the notice is shown in.
TEXTS = ("organisation", "contact", "purpose", "retention", "storage", "access")
_CHANNEL_TEXTS = ("purpose", "what")  # per rule pattern: the rule's purpose, and the channel's name for the public
MAX_RETENTION_DAYS = 36_525  # a century: the hub turns days into a cutoff in milliseconds
_TIME_OF_DAY_RE = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


class PolicyError(ValueError):
    """A policy file is invalid; ``problems`` holds one line per problem naming file, rule and value."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def canonical_encoding(document: Mapping[str, Any]) -> bytes:
    """The bytes the policy digest is taken over: deterministic CBOR (RFC 8949 §4.2.1) of the parsed TOML.

    Policy documents only have text keys, for which bytewise and length-first key
    orders agree, so cbor2's canonical mode gives the §4.2.1 encoding: shortest
    integer and length heads, shortest float that keeps the value, sorted keys.
    """
    return cbor2.dumps(document, canonical=True)


@dataclass(frozen=True, slots=True)
class Budget:
    """The differential-privacy budget: total epsilon per period, periods aligned to UTC midnight."""

    epsilon: float
    period_ms: int = DAY_MS


@dataclass(frozen=True, slots=True)
class Translation:
    """The city's texts in one language of the notice: ``texts`` by policy field, ``channels`` by rule pattern."""

    texts: Mapping[str, str] = field(default_factory=dict)
    channels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # pattern -> {"purpose": ..., "what": ...}


@dataclass(frozen=True, slots=True)
class Policy:
    """A parsed, validated policy. ``digest`` is SHA-256 of :func:`canonical_encoding` of the document."""

    path: str
    document: Mapping[str, Any]
    digest: bytes
    rules: tuple[Rule, ...]
    name: str = ""
    version: str = ""
    organisation: str = ""
    contact: str = ""
    purpose: str = ""
    retention: str = ""
    storage: str = ""
    access: str = ""
    rotate_ms: int = DAY_MS
    rotate_offset_ms: int = 0
    budget: Budget | None = None
    signed_by: str | None = field(default=None)  # governance key id (hex) when the signature was verified
    languages: tuple[str, ...] = (DEFAULT_LANGUAGE,)  # the notice's languages, the default first
    retention_days: int | None = None  # the hub deletes readings older than this; None: no scheduled deletion
    translations: Mapping[str, Translation] = field(default_factory=dict)  # by language

    def text(self, key: str, language: str) -> str | None:
        """One of :data:`TEXTS` in ``language``: "" when the policy leaves it out, None when only the default language has it."""
        default = str(getattr(self, key))
        if language == self.languages[0] or not default:
            return default
        return self.translations.get(language, Translation()).texts.get(key)

    def channel_text(self, pattern: str, key: str, language: str) -> str | None:
        """The rule's ``purpose`` or the channel's ``what`` in ``language``, when the policy gives one."""
        if key == "purpose" and language == self.languages[0]:
            rule = next((r for r in self.rules if r.pattern == pattern), None)
            return rule.purpose if rule is not None else None
        return self.translations.get(language, Translation()).channels.get(pattern, {}).get(key)

    def translation_gaps(self) -> list[str]:
        """Warnings: a text the default language has that a declared language lacks (its notice shows the default text)."""
        name = Path(self.path).name
        default = self.languages[0]
        gaps: list[str] = []
        for language in self.languages[1:]:
            for key in TEXTS:
                if self.text(key, language) is None:
                    gaps.append(f"{name}: policy.translations.{language}.{key} is missing: the notice in {language} "
                                f"shows policy.{key} in {default} instead")
            for rule in self.rules:
                if rule.purpose and self.channel_text(rule.pattern, "purpose", language) is None:
                    gaps.append(f'{name}: policy.translations.{language}.channels."{rule.pattern}".purpose is missing: '
                                f'the notice in {language} shows the purpose of channels."{rule.pattern}" in {default} instead')
        return gaps

    def rule_for(self, channel_id: str) -> Rule | None:
        """The most specific rule whose pattern matches ``channel_id``; ties go to the lexically first pattern."""
        best: Rule | None = None
        for rule in self.rules:  # rules are sorted most specific first, then by pattern
            if rule.matches(channel_id):
                best = rule
                break
        return best

    def check_channels(self, channels: Sequence[Channel]) -> list[str]:
        """Problems with applying this policy to the declared channels (empty list: fine)."""
        name = Path(self.path).name
        problems: list[str] = []
        for channel in channels:
            rule = self.rule_for(channel.id)
            kind = kind_of(rule) if rule is not None else None
            if rule is None or kind is None or not kind.releases:
                continue
            where = f'{name}: channels."{rule.pattern}".rule = "{rule.rule}"'
            if channel.personal and not kind.safe_for_personal:
                if not (rule.allow_personal and rule.legal_basis):
                    problems.append(
                        f"{where}: {channel.id} is personal; {rule.rule} needs allow_personal = true and a "
                        f"legal_basis (or use drop, pseudonymize, count_distinct or generalize_location)"
                    )
            problems.extend(kind.channel_problems(rule, channel, where))
        return problems

    def unused_patterns(self, channels: Sequence[Channel]) -> list[str]:
        """Patterns that decide no declared channel (a typo, or a device not configured here)."""
        used = {rule.pattern for rule in map(self.rule_for, (c.id for c in channels)) if rule is not None}
        return [r.pattern for r in self.rules if r.pattern not in used]


def _no_datetimes(value: Any, where: str, problems: list[str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _no_datetimes(v, f"{where}.{k}" if where else k, problems)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _no_datetimes(v, f"{where}[{i}]", problems)
    elif not isinstance(value, (str, int, float, bool)):
        problems.append(f"{where} = {value!r}: dates and times are not allowed in a policy; write them as strings")


def _parse_rule(file: str, pattern: str, table: Any, problems: list[str]) -> Rule | None:
    where = f'channels."{pattern}"'
    if not isinstance(table, dict):
        problems.append(f"{file}: {where} = {show(table)}: expected a table with a rule, e.g. rule = \"drop\"")
        return None
    r = Reader(file, where, table, problems)
    before = len(problems)
    rule = table.get("rule")
    if not isinstance(rule, str) or rule not in RULES:
        r.bad("rule", rule, "one of " + ", ".join(RULES))
        return None
    kind = RULES[rule]
    for key in table:
        if key not in _COMMON_KEYS | kind.settings:
            allowed = ", ".join(sorted(_COMMON_KEYS | kind.settings))
            r.bad(key, table[key], f"no such setting for rule \"{rule}\" (settings: {allowed})")
    fields: dict[str, Any] = {"pattern": pattern, "rule": rule, "purpose": r.text("purpose"), "description": r.text("description")}
    kind.parse(r, fields)
    if len(problems) > before:
        return None
    return Rule(**{k: v for k, v in fields.items() if v is not None})


def parse_policy(text: str, *, path: str = "policy.toml") -> Policy:
    """Parse and validate policy TOML text; raises :class:`PolicyError` listing every problem."""
    file = Path(path).name
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError([toml_problem(file, exc)]) from None
    problems: list[str] = []
    _no_datetimes(document, "", problems)
    known = {"policy", "pseudonyms", "privacy_budget", "channels"}
    for key in document:
        if key not in known:
            problems.append(f"{file}: {key}: unknown section (sections: {', '.join(sorted(known))})")
    head = Reader(file, "policy", document.get("policy", {}), problems)
    meta = {k: head.text(k) for k in ("name", "version", *TEXTS)}
    languages = _languages(head)
    retention_days = head.table.get("retention_days")
    if retention_days is not None and (type(retention_days) is not int or not 1 <= retention_days <= MAX_RETENTION_DAYS):
        head.bad("retention_days", retention_days, f"a whole number of days from 1 to {MAX_RETENTION_DAYS}: the hub deletes "
                 "readings older than that (leave it out for no scheduled deletion)")
        retention_days = None
    settings = [*meta, "notice_languages", "retention_days", "translations"]
    for key in head.table:
        if key not in settings:
            head.bad(key, head.table[key], "no such setting (settings: " + ", ".join(settings) + ")")
    for key in ("organisation", "contact", "purpose"):
        if not meta[key].strip():
            problems.append(f"{file}: policy.{key} is missing: the public notice must say who is accountable and why")

    pseudo = Reader(file, "pseudonyms", document.get("pseudonyms", {}), problems)
    rotate_ms = pseudo.duration("rotate") or DAY_MS
    if DAY_MS % rotate_ms and rotate_ms % DAY_MS:
        pseudo.bad("rotate", pseudo.table.get("rotate"), "a period that divides a day, or whole days")
    rotate_at = pseudo.text("rotate_at", "00:00")
    m = _TIME_OF_DAY_RE.match(rotate_at)
    if not m:
        pseudo.bad("rotate_at", rotate_at, 'a UTC time of day "HH:MM"')
    offset_ms = (int(m.group(1)) * 60 + int(m.group(2))) * 60_000 if m else 0
    for key in pseudo.table:
        if key not in ("rotate", "rotate_at"):
            pseudo.bad(key, pseudo.table[key], "no such setting (settings: rotate, rotate_at)")

    budget: Budget | None = None
    if "privacy_budget" in document:
        b = Reader(file, "privacy_budget", document["privacy_budget"], problems)
        epsilon = b.number("epsilon")
        if "epsilon" not in b.table:
            b.bad("epsilon", None, "the total epsilon allowed per period, e.g. epsilon = 4.0")
        period = b.duration("period") or DAY_MS
        for key in b.table:
            if key not in ("epsilon", "period"):
                b.bad(key, b.table[key], "no such setting (settings: epsilon, period)")
        if DAY_MS % period and period % DAY_MS:
            b.bad("period", b.table.get("period"), "a period that divides a day, or whole days")
        if epsilon is not None:
            budget = Budget(epsilon=epsilon, period_ms=period)

    channels = document.get("channels", {})
    rules: list[Rule] = []
    if not isinstance(channels, dict) or not channels:
        problems.append(f'{file}: channels: no rules; add at least one, e.g. [channels."pm-1/pm2_5"] rule = "keep"')
    else:
        for pattern, table in channels.items():
            if not re.fullmatch(r"[A-Za-z0-9_.:/*?\[\]!-]+", pattern):
                problems.append(f'{file}: channels."{pattern}": not a channel id or glob pattern like "ped-1/*"')
                continue
            rule = _parse_rule(file, pattern, table, problems)
            if rule is None:
                continue
            if rule.epsilon is not None and budget is None:
                problems.append(
                    f'{file}: channels."{pattern}".epsilon = {rule.epsilon!r}: needs a [privacy_budget] section '
                    f"(epsilon per period) so releases stop when the budget is spent"
                )
            elif rule.epsilon is not None and budget is not None and rule.epsilon > budget.epsilon:
                problems.append(
                    f'{file}: channels."{pattern}".epsilon = {rule.epsilon!r}: larger than the whole '
                    f"privacy_budget.epsilon = {budget.epsilon!r}; no window could ever be released"
                )
            rules.append(rule)
    translations = _translations(head, languages, set(channels) if isinstance(channels, dict) else set())
    if problems:
        raise PolicyError(problems)
    rules.sort(key=lambda r: (tuple(-x for x in r.specificity), r.pattern))
    return Policy(
        path=path,
        document=document,
        digest=hashlib.sha256(canonical_encoding(document)).digest(),
        rules=tuple(rules),
        rotate_ms=rotate_ms,
        rotate_offset_ms=offset_ms,
        budget=budget,
        languages=languages,
        retention_days=retention_days,
        translations=translations,
        **meta,
    )


def _languages(head: Reader) -> tuple[str, ...]:
    """``notice_languages``: the languages the notice is shown in, the default first (English alone when absent)."""
    value = head.table.get("notice_languages", [DEFAULT_LANGUAGE])
    if (not isinstance(value, list) or not value or any(not isinstance(v, str) or v not in LANGUAGES for v in value)
            or len(set(value)) != len(value)):
        head.bad("notice_languages", value, f"a list of different languages from {', '.join(LANGUAGES)}, the notice's "
                 'default first, e.g. ["fr", "en"]')
        return (DEFAULT_LANGUAGE,)
    return tuple(value)


def _translations(head: Reader, languages: Sequence[str], patterns: set[str]) -> dict[str, Translation]:
    """``[policy.translations.<language>]``: the city's texts, and per rule pattern its purpose and the channel's name."""
    table = head.table.get("translations", {})
    where = f"{head.where}.translations"
    if not isinstance(table, dict):
        head.bad("translations", table, 'a table per language, e.g. [policy.translations.fr] purpose = "..."')
        return {}
    out: dict[str, Translation] = {}
    for language, texts in table.items():
        if language not in languages:
            head.problems.append(f"{head.file}: {where}.{language}: not one of policy.notice_languages "
                                 f"({', '.join(languages)}); add it there, or remove this table")
            continue
        if not isinstance(texts, dict):
            head.bad(f"translations.{language}", texts, "a table of the policy's texts in that language")
            continue
        r = Reader(head.file, f"{where}.{language}", texts, head.problems)
        default = language == languages[0]
        for key in texts:
            if key == "channels":
                continue
            if key not in TEXTS:
                r.bad(key, texts[key], "no such text (texts: " + ", ".join([*TEXTS, "channels"]) + ")")
            elif default:
                r.bad(key, texts[key], f"nothing: {language} is the notice's default language, whose texts are "
                      f"policy.{key} itself")
        channels: dict[str, dict[str, str]] = {}
        raw = texts.get("channels", {})
        if not isinstance(raw, dict):
            r.bad("channels", raw, 'a table per rule pattern, e.g. [policy.translations.fr.channels."ped-1/mac"]')
            raw = {}
        for pattern, item in raw.items():
            rc = Reader(head.file, f'{where}.{language}.channels."{pattern}"', item if isinstance(item, dict) else {},
                        head.problems)
            allowed = ("what",) if default else _CHANNEL_TEXTS
            if pattern not in patterns:
                head.problems.append(f'{head.file}: {where}.{language}.channels."{pattern}": no rule has this pattern '
                                     f"(patterns: {', '.join(sorted(patterns))})")
            elif not isinstance(item, dict):
                r.bad(f'channels."{pattern}"', item, "a table of " + " and ".join(allowed))
            else:
                for key in item:
                    if key not in allowed:
                        rc.bad(key, item[key], "one of " + ", ".join(allowed) + (
                            f" ({language} is the default language: the rule's own purpose is its text)" if default else ""))
                channels[pattern] = {key: rc.text(key) for key in allowed if key in item}
        out[language] = Translation({key: r.text(key) for key in TEXTS if key in texts and not default}, channels)
    return out

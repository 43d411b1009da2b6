"""The notice's fixed words in each language it can be shown in: one reviewable TOML table per language beside this module.

``en.toml`` and ``fr.toml`` hold the labels, headings, rule explanations, durations and
technology names; a language is added by adding its table (with every key ``en.toml`` has).
The city's own texts (purpose, retention, ...) are not here: they come from the policy.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_LANGUAGE", "LANGUAGES", "Words", "best_language", "words", "words_or_english"]

DEFAULT_LANGUAGE = "en"
# The tables are package data beside this module (as edge.starter's files are): read through the file system, not
# importlib.resources, which brings zipfile and tempfile into every gateway's resident set (issue 17).
_HERE = Path(__file__).resolve().parent
LANGUAGES: tuple[str, ...] = tuple(
    sorted(
        (entry.name.removesuffix(".toml") for entry in _HERE.iterdir() if entry.name.endswith(".toml")),
        key=lambda code: (code != DEFAULT_LANGUAGE, code),
    )
)

_DURATIONS = (("day", 86_400_000), ("hour", 3_600_000), ("minute", 60_000), ("second", 1000))


class Words:
    """One language's table: ``words("page.title", place=...)`` and the number, count and duration forms of that language."""

    def __init__(self, language: str, table: Mapping[str, Any]) -> None:
        self.language = language
        self._table = table
        head = table["language"]
        self.name: str = head["name"]
        self._singular = frozenset(head["singular"])
        self._decimal: str = head["decimal"]
        self._thousands: str = head["thousands"]
        self.colon: str = head["colon"]

    def __call__(self, key: str, **values: object) -> str:
        """The text under ``section.name``, its ``{placeholders}`` filled from ``values``."""
        section, _, name = key.partition(".")
        text = self._table[section][name]
        return str(text).format(**values) if values else str(text)

    def has(self, key: str) -> bool:
        section, _, name = key.partition(".")
        return name in self._table.get(section, {})

    def count(self, key: str, n: int, **values: object) -> str:
        """The singular or plural form under ``key`` (a pair), with ``{n}`` written as this language writes a whole number."""
        section, _, name = key.partition(".")
        singular, plural = self._table[section][name]
        return str(singular if n in self._singular else plural).format(n=self.whole(n), **values)

    def number(self, value: float) -> str:
        """0.5 -> "0.5" in English, "0,5" in French (as short as the value allows)."""
        return f"{value:g}".replace(".", self._decimal)

    def whole(self, value: float) -> str:
        """1250 -> "1,250" in English, "1 250" in French."""
        return f"{value:,.0f}".replace(",", self._thousands)

    def duration(self, ms: int) -> str:
        """86_400_000 -> "1 day" / "1 jour"; 900_000 -> "15 minutes"."""
        for unit, size in _DURATIONS:
            if ms % size == 0:
                return self.count(f"duration.{unit}", ms // size)
        return self.count("duration.millisecond", ms)

    def join(self, items: Sequence[str]) -> str:
        """["a", "b", "c"] -> "a, b and c"."""
        if len(items) <= 1:
            return "".join(items)
        return ", ".join(items[:-1]) + f" {self('language.and')} " + items[-1]

    def technology(self, driver: str) -> str:
        """What a driver's device is, in words a passer-by recognises (DTPR "technology type")."""
        key = f"technology.{driver}"
        return self(key) if self.has(key) else self("technology.other")

    def process(self, label: str) -> str:
        """A DTPR process label in this language (the label itself if the table has none)."""
        key = f"process.{label}"
        return self(key) if self.has(key) else label


@functools.cache
def words(language: str = DEFAULT_LANGUAGE) -> Words:
    """The words of ``language`` (one of :data:`LANGUAGES`); raises LookupError for another."""
    if language not in LANGUAGES:
        raise LookupError(f"no notice words for language {language!r} (languages: {', '.join(LANGUAGES)})")
    text = (_HERE / f"{language}.toml").read_text(encoding="utf-8")
    return Words(language, tomllib.loads(text))


def words_or_english(language: str) -> Words:
    """The words of ``language``, or English for a language without a table (a notice from a newer gateway)."""
    return words(language if language in LANGUAGES else DEFAULT_LANGUAGE)


def best_language(accept: str, offered: Iterable[str]) -> str | None:
    """The offered language an ``Accept-Language`` header ranks highest (RFC 9110 §12.5.4), or None.

    Tags match on their primary subtag ("fr-CA" asks for "fr"); "*" takes the first offered;
    among equal weights the header's order decides.
    """
    choices = list(offered)
    best: str | None = None
    best_q = 0.0
    for part in accept.split(","):
        tag, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        primary = tag.lower().split("-")[0]
        candidate = choices[0] if primary == "*" and choices else primary if primary in choices else None
        if candidate is not None and q > best_q:
            best, best_q = candidate, q
    return best

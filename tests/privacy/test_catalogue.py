"""The notice's words per language: every catalogue complete, French written as French, Accept-Language read as RFC 9110 says."""

from __future__ import annotations

import string
import tomllib
from importlib import resources
from typing import Any

import pytest

from edge.privacy import parse_policy
from edge.privacy.catalogue import LANGUAGES, best_language, words
from edge.privacy.rules import RULES

from .support import HEADER


def _table(language: str) -> dict[str, Any]:
    return tomllib.loads(resources.files("edge.privacy.catalogue").joinpath(f"{language}.toml").read_text(encoding="utf-8"))


def _placeholders(value: Any) -> set[str]:
    texts = value if isinstance(value, list) else [value]
    return {name for text in texts if isinstance(text, str) for _, name, _, _ in string.Formatter().parse(text) if name}


def test_english_and_french_are_offered() -> None:
    assert LANGUAGES[:1] == ("en",) and "fr" in LANGUAGES


@pytest.mark.parametrize("language", [code for code in LANGUAGES if code != "en"])
def test_every_catalogue_has_every_english_key_with_the_same_placeholders(language: str) -> None:
    english, other = _table("en"), _table(language)
    assert other.keys() == english.keys()
    for section, entries in english.items():
        assert other[section].keys() == entries.keys(), section
        for key, value in entries.items():
            theirs = other[section][key]
            assert type(theirs) is type(value), f"{section}.{key}"
            if isinstance(value, list) and section != "language":
                assert len(theirs) == len(value) == 2, f"{section}.{key}: a singular and a plural form"
            assert _placeholders(theirs) == _placeholders(value), f"{section}.{key}"


def test_french_writes_durations_numbers_and_lists_as_french_does() -> None:
    fr = words("fr")
    assert [fr.duration(ms) for ms in (1000, 900_000, 3_600_000, 2 * 86_400_000)] == ["1 seconde", "15 minutes", "1 heure", "2 jours"]
    assert fr.number(0.5) == "0,5" and fr.whole(1250) == "1\u00a0250"
    assert fr.join(["la moyenne", "le minimum", "le maximum"]) == "la moyenne, le minimum et le maximum"
    assert fr("page.run_by") + fr.colon == "Exploité par\u00a0:"
    en = words("en")
    assert (en.duration(86_400_000), en.number(0.5), en.whole(1250), en.colon) == ("1 day", "0.5", "1,250", ":")


RULE_TABLES = {
    "keep": 'rule = "keep"',
    "drop": 'rule = "drop"',
    "quantize": 'rule = "quantize"\nstep = 0.5',
    "round_time": 'rule = "round_time"\nstep = "15m"',
    "aggregate": 'rule = "aggregate"\nwindow = "5m"\nfunctions = ["mean", "max"]',
    "generalize_location": 'rule = "generalize_location"\ngrid = "1250m"',
    "pseudonymize": 'rule = "pseudonymize"',
    "count_distinct": 'rule = "count_distinct"\nwindow = "15m"\nk = 5\nepsilon = 0.5\nmax_windows = 1',
}


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_rule_explains_itself_in_french_in_french_words(name: str) -> None:
    policy = parse_policy(HEADER + f'[privacy_budget]\nepsilon = 4.0\n[channels."a/b"]\n{RULE_TABLES[name]}\n')
    rule = policy.rules[0]
    french = RULES[name].describe(rule, policy, "ug/m3", words("fr"))
    english = RULES[name].describe(rule, policy, "ug/m3", words("en"))
    assert french and french != english
    assert not any(word in french.split() for word in ("the", "leaves", "never", "every", "only"))


def test_the_french_explanations_read_as_written() -> None:
    policy = parse_policy(HEADER + f'[privacy_budget]\nepsilon = 4.0\n[channels."a/b"]\n{RULE_TABLES["count_distinct"]}\n')
    text = RULES["count_distinct"].describe(policy.rules[0], policy, "", words("fr"))
    assert text == (
        "La valeur ne quitte jamais l'appareil. Seul le nombre de valeurs différentes observées au cours de chaque période de "
        "15 minutes en sort; un décompte inférieur à 5 n'est jamais publié; un bruit aléatoire est ajouté à chaque décompte "
        "(confidentialité différentielle, epsilon de 0,5 par décompte, au plus 4 par période de 1 jour; une fois ce budget "
        "épuisé, aucun décompte n'est publié avant la période suivante); un même appareil est compté dans au plus 1 fenêtre "
        "par période."
    )
    grid = parse_policy(HEADER + f'[channels."gps-1/latitude"]\n{RULE_TABLES["generalize_location"]}\n')
    assert RULES["generalize_location"].describe(grid.rules[0], grid, "", words("fr")) == (
        "La position exacte ne quitte jamais l'appareil; seul le centre d'un carré de 1\u00a0250 m de côté en sort."
    )


@pytest.mark.parametrize(
    ("header", "offered", "chosen"),
    [
        ("fr-CA,fr;q=0.9,en;q=0.8", ["en", "fr"], "fr"),
        ("en-US,en;q=0.9", ["fr", "en"], "en"),
        ("de-DE, fr;q=0.5, en;q=0.7", ["fr", "en"], "en"),
        ("de", ["fr", "en"], None),
        ("*", ["fr", "en"], "fr"),
        ("en;q=0, fr", ["en", "fr"], "fr"),
        ("en;q=oops, fr;q=0.1", ["en", "fr"], "fr"),
        ("", ["en", "fr"], None),
    ],
)
def test_accept_language_picks_the_offered_language_ranked_highest(header: str, offered: list[str], chosen: str | None) -> None:
    assert best_language(header, offered) == chosen

"""Notices in the policy's languages: French and English JSON and pages, visible fallback, machine-readable retention, bad fields refused."""

from __future__ import annotations

import html.parser
import json
import re
from types import SimpleNamespace

import aiohttp
import pytest
from aiohttp import web

from edge.cli import main
from edge.localapi import create_app
from edge.privacy import PolicyError, build_notice, parse_policy, render_notice_html
from edge.protocol.types import Channel

from .support import GPS_CHANNELS, PED_CHANNELS
from .test_commands import GATEWAY

BILINGUAL = """
[policy]
name = "Rue Sainte-Catherine"
version = "3"
notice_languages = ["fr", "en"]
retention_days = 730
organisation = "Ville de Montréal, Service de l'urbanisme"
contact = "vieprivee@montreal.example"
purpose = "Mesurer l'achalandage et la qualité de l'air pour planifier les trottoirs."
retention = "Les décomptes sont conservés deux ans sur le serveur de la ville."

[policy.translations.en]
organisation = "City of Montréal, Urban Planning"
contact = "vieprivee@montreal.example"
purpose = "Measure foot traffic and air quality to plan sidewalks."

[policy.translations.en.channels."ped-1/mac"]
purpose = "How busy the street is"

[policy.translations.fr.channels."pm-1/pm2_5"]
what = "Particules fines (PM2,5)"

[privacy_budget]
epsilon = 4.0

[channels."ped-1/mac"]
rule = "count_distinct"
window = "15m"
k = 5
epsilon = 0.5
purpose = "Achalandage de la rue"

[channels."ped-1/*"]
rule = "drop"

[channels."gps-1/*"]
rule = "generalize_location"
grid = "250m"

[channels."pm-1/pm2_5"]
rule = "keep"
"""
PM = Channel("pm-1/pm2_5", unit="ug/m3", resolution=0.1, description="PM2.5 mass concentration")
CHANNELS = [*PED_CHANNELS, *GPS_CHANNELS, PM]
CONFIG = SimpleNamespace(
    gateway=SimpleNamespace(id="pole-0007", site="Sainte-Catherine & Peel", latitude=45.5009, longitude=-73.5727),
    devices=[
        SimpleNamespace(name="ped-1", driver="pedestrian-counter"),
        SimpleNamespace(name="gps-1", driver="nmea-gps"),
        SimpleNamespace(name="pm-1", driver="sds011"),
    ],
)
ENGLISH_ONLY = BILINGUAL.replace('notice_languages = ["fr", "en"]\n', 'notice_languages = ["en"]\n').split("[policy.translations.en]")[0] + (
    BILINGUAL.split('what = "Particules fines (PM2,5)"\n')[1]
)


@pytest.fixture
def notice() -> dict:
    return build_notice(parse_policy(BILINGUAL, path="rue.toml"), CONFIG, channels=CHANNELS, generated_ms=0)


def test_the_notice_is_in_its_default_language_with_each_other_language_under_translations(notice) -> None:
    assert notice["languages"] == ["fr", "en"] and list(notice["translations"]) == ["en"]
    assert notice["accountable"]["organisation"] == "Ville de Montréal, Service de l'urbanisme"
    assert notice["default"] == "Tout ce que la politique ne nomme pas ne quitte jamais l'appareil et n'est jamais conservé."
    assert notice["technology"][2]["type"] == "Capteur de qualité de l'air (particules fines, diffusion laser)"
    assert notice["pseudonym_key_rotation"] == "1 jour" and notice["privacy_budget"] == {"epsilon": 4.0, "period": "1 jour"}
    data = {d["channel"]: d for d in notice["data"]}
    assert data["ped-1/mac"]["purpose"] == "Achalandage de la rue"
    assert data["ped-1/mac"]["leaves_as"].startswith("La valeur ne quitte jamais l'appareil. Seul le nombre de valeurs différentes")
    assert data["pm-1/pm2_5"]["what"] == "Particules fines (PM2,5)"

    en = notice["translations"]["en"]
    assert en["accountable"]["organisation"] == "City of Montréal, Urban Planning"
    assert en["purpose"] == "Measure foot traffic and air quality to plan sidewalks."
    assert en["default"] == "Anything the policy does not name never leaves the device and is never stored."
    en_data = {d["channel"]: d for d in en["data"]}
    assert en_data["ped-1/mac"]["purpose"] == "How busy the street is"
    assert "Only the number of different values seen in each 15 minutes leaves" in en_data["ped-1/mac"]["leaves_as"]
    assert en_data["pm-1/pm2_5"]["what"] == "PM2.5 mass concentration"
    assert json.loads(json.dumps(notice)) == notice


def test_the_retention_in_days_is_machine_readable_and_said_in_each_language(notice) -> None:
    assert notice["retention_days"] == 730
    assert notice["deletion"] == "Les mesures datant de plus de 730 jours sont supprimées par le serveur central de la ville."
    assert notice["translations"]["en"]["deletion"] == "Readings older than 730 days are deleted by the city's hub."


def test_an_english_only_policy_gives_the_notice_it_gave_before_plus_its_language() -> None:
    policy = parse_policy(ENGLISH_ONLY.replace("retention_days = 730\n", ""), path="rue.toml")
    notice = build_notice(policy, CONFIG, channels=CHANNELS, generated_ms=0)
    assert notice["languages"] == ["en"] and notice["translations"] == {}
    assert "retention_days" not in notice and "deletion" not in notice
    assert notice["default"] == "Anything the policy does not name never leaves the device and is never stored."
    assert all("untranslated" not in item for item in notice["data"])
    assert set(notice) == {"schema", "generated_ms", "place", "accountable", "purpose", "technology", "data", "withheld", "default",
                           "process", "retention", "storage", "access", "pseudonym_key_rotation", "privacy_budget", "policy",
                           "languages", "translations"}


def test_a_text_missing_in_a_language_falls_back_to_the_default_language_and_says_so(notice) -> None:
    en = notice["translations"]["en"]
    assert en["retention"] == "Les décomptes sont conservés deux ans sur le serveur de la ville."
    assert en["untranslated"] == ["retention"]
    assert en["storage"].startswith("Only what this policy releases is stored")  # not in the policy: the English words
    assert en["access"] == "Not stated in the policy."
    fr_data = {d["channel"]: d for d in notice["data"]}
    assert fr_data["ped-1/mac"]["untranslated"] == ["what"]  # the driver's English name; the policy gives none in French
    assert "untranslated" not in fr_data["pm-1/pm2_5"]

    page = render_notice_html(notice, "en")
    kept = "Les décomptes sont conservés deux ans sur le serveur de la ville."
    assert f'<span lang="fr">{kept}</span> <small class="untranslated">(not translated)</small>' in page
    french = render_notice_html(notice)
    assert '<span lang="en">MAC address</span> <small class="untranslated">(texte non traduit)</small>' in french


def test_check_warns_of_each_text_a_language_lacks() -> None:
    gaps = parse_policy(BILINGUAL, path="rue.toml").translation_gaps()
    assert gaps == ["rue.toml: policy.translations.en.retention is missing: the notice in en shows policy.retention in fr instead"]
    lacking = BILINGUAL.replace('[policy.translations.en.channels."ped-1/mac"]\npurpose = "How busy the street is"\n', "")
    assert 'rue.toml: policy.translations.en.channels."ped-1/mac".purpose is missing: the notice in en shows the purpose of ' \
        'channels."ped-1/mac" in fr instead' in parse_policy(lacking, path="rue.toml").translation_gaps()


class _Page(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.lang = ""
        self.links: list[dict[str, str | None]] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append(tag)
        if tag == "html":
            self.lang = dict(attrs).get("lang") or ""
        if tag == "a":
            self.links.append(dict(attrs))

    def handle_data(self, data) -> None:
        self.text.append(data)

    @property
    def words(self) -> str:
        return re.sub(r"[ \t\r\n]+", " ", " ".join(self.text))  # keeping the no-break spaces French puts before a colon


def test_the_french_page_is_french_and_links_to_the_english_one(notice) -> None:
    page = _Page()
    page.feed(render_notice_html(notice))
    text = page.words
    assert page.lang == "fr" and "script" not in page.tags and "img" not in page.tags
    assert "Capteurs sur ce poteau\u00a0: ce qu'ils recueillent et pourquoi" in text
    assert "Exploité par\u00a0: Ville de Montréal, Service de l'urbanisme." in text
    assert "Mesuré, mais jamais transmis ni conservé\u00a0: ped-1/rssi, ped-1/radio." in text
    assert "Les mesures datant de plus de 730 jours sont supprimées par le serveur central de la ville." in text
    assert "dépersonnalisé" in text and "confidentialité différentielle" in text
    assert {"href": "?lang=en", "hreflang": "en", "lang": "en"} in page.links


def test_the_english_page_is_english_and_links_to_the_french_one(notice) -> None:
    page = _Page()
    page.feed(render_notice_html(notice, "en", link=lambda language: f"notice.{language}.html"))
    text = page.words
    assert page.lang == "en"
    assert "Sensors on this pole: what they collect and why" in text
    assert "Run by: City of Montréal, Urban Planning." in text
    assert "Readings older than 730 days are deleted by the city's hub." in text
    assert {"href": "notice.fr.html", "hreflang": "fr", "lang": "fr"} in page.links


def test_a_language_the_notice_is_not_in_shows_its_default_language(notice) -> None:
    page = _Page()
    page.feed(render_notice_html(notice, "de"))
    assert page.lang == "fr"


def _problems(text: str) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, path="/etc/ocn-edge/rue.toml")
    return caught.value.problems


@pytest.mark.parametrize(
    ("old", "new", "problem"),
    [
        ('notice_languages = ["fr", "en"]', 'notice_languages = ["fr", "de"]',
         'rue.toml: policy.notice_languages = [\'fr\', \'de\']: expected a list of different languages from en, fr'),
        ('notice_languages = ["fr", "en"]', 'notice_languages = "fr"', 'rue.toml: policy.notice_languages = "fr": expected a list'),
        ('notice_languages = ["fr", "en"]', 'notice_languages = ["fr", "fr"]', "rue.toml: policy.notice_languages = ['fr', 'fr']"),
        ('notice_languages = ["fr", "en"]', 'notice_languages = []', "rue.toml: policy.notice_languages = []: expected"),
        ("retention_days = 730", "retention_days = 0",
         "rue.toml: policy.retention_days = 0: expected a whole number of days from 1 to 36525"),
        ("retention_days = 730", 'retention_days = "2 years"', 'rue.toml: policy.retention_days = "2 years": expected a whole number'),
        ("retention_days = 730", "retention_days = 730.5", "rue.toml: policy.retention_days = 730.5: expected a whole number"),
        ("retention_days = 730", "retention_days = true", "rue.toml: policy.retention_days = true: expected a whole number"),
        ("[policy.translations.en]", "[policy.translations.de]",
         "rue.toml: policy.translations.de: not one of policy.notice_languages (fr, en)"),
        ('purpose = "Measure foot traffic and air quality to plan sidewalks."', "purpose = 3",
         "rue.toml: policy.translations.en.purpose = 3: expected a string"),
        ('purpose = "Measure foot traffic and air quality to plan sidewalks."', 'colour = "blue"',
         'rue.toml: policy.translations.en.colour = "blue": expected no such text (texts: organisation, contact, purpose'),
        ('[policy.translations.en.channels."ped-1/mac"]', '[policy.translations.en.channels."ped-2/mac"]',
         'rue.toml: policy.translations.en.channels."ped-2/mac": no rule has this pattern'),
        ('purpose = "How busy the street is"', 'purpose = "How busy the street is"\ncolour = "blue"',
         'rue.toml: policy.translations.en.channels."ped-1/mac".colour = "blue": expected one of purpose, what'),
        ('what = "Particules fines (PM2,5)"', 'what = "Particules fines (PM2,5)"\npurpose = "Qualité de l\'air"',
         'rue.toml: policy.translations.fr.channels."pm-1/pm2_5".purpose = "Qualité de l\'air": expected one of what '
         "(fr is the default language"),
        ('[policy.translations.fr.channels."pm-1/pm2_5"]', '[policy.translations.fr]\npurpose = "Autre"\n[policy.translations.fr.channels."pm-1/pm2_5"]',
         'rue.toml: policy.translations.fr.purpose = "Autre": expected nothing: fr is the notice\'s default language'),
    ],
)
def test_a_bad_language_retention_or_translation_is_refused_naming_file_field_and_value(old: str, new: str, problem: str) -> None:
    assert old in BILINGUAL
    problems = _problems(BILINGUAL.replace(old, new, 1))
    assert any(p.startswith(problem) for p in problems), problems


async def test_the_gateway_page_answers_in_the_language_asked_for_or_the_browser_prefers(notice) -> None:
    app = create_app(notice_html=lambda language: render_notice_html(notice, language), notice_json=notice, status=dict)
    runner = web.ServerRunner(web.Server(app))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    asks = [
        ("/", {}, "fr"),
        ("/notice", {"Accept-Language": "en-CA,en;q=0.9,fr;q=0.5"}, "en"),
        ("/notice", {"Accept-Language": "de-DE"}, "fr"),
        ("/?lang=en", {"Accept-Language": "fr"}, "en"),
        ("/notice?lang=de", {"Accept-Language": "en"}, "en"),
    ]
    try:
        async with aiohttp.ClientSession() as http:
            for path, headers, language in asks:
                async with http.get(base + path, headers=headers) as r:
                    page = _Page()
                    page.feed(await r.text())
                    assert (r.status, r.headers["Content-Language"], page.lang) == (200, language, language), path
                    assert r.headers["Vary"] == "Accept-Language"
                    heading = "Capteurs sur ce poteau" if language == "fr" else "Sensors on this pole"
                    assert heading in page.words, path
            async with http.get(base + "/notice.json") as r:
                document = await r.json()
            assert document["languages"] == ["fr", "en"] and document["translations"]["en"]["deletion"].startswith("Readings older")
    finally:
        await runner.cleanup()


def test_policy_check_names_the_languages_and_warns_of_a_missing_text(tmp_path, capsys) -> None:
    (tmp_path / "rue.toml").write_text(BILINGUAL, encoding="utf-8")
    assert main(["policy", "check", str(tmp_path / "rue.toml")]) == 0
    out, err = capsys.readouterr()
    assert "notice in fr, en; the hub deletes readings after 730 days" in out
    assert err == "warning: rue.toml: policy.translations.en.retention is missing: the notice in en shows policy.retention in fr instead\n"


def test_the_notice_command_writes_one_page_per_language_linked_to_each_other(tmp_path, capsys) -> None:
    (tmp_path / "gateway.toml").write_text(GATEWAY)
    (tmp_path / "policy.toml").write_text(BILINGUAL, encoding="utf-8")
    assert main(["notice", str(tmp_path / "gateway.toml"), "--out", str(tmp_path / "out")]) == 0
    french, english = _Page(), _Page()
    french.feed((tmp_path / "out" / "notice.html").read_text(encoding="utf-8"))
    english.feed((tmp_path / "out" / "notice.en.html").read_text(encoding="utf-8"))
    assert (french.lang, english.lang) == ("fr", "en")
    assert {"href": "notice.en.html", "hreflang": "en", "lang": "en"} in french.links
    assert {"href": "notice.html", "hreflang": "fr", "lang": "fr"} in english.links
    assert "Compteur d'appareils Wi-Fi / Bluetooth" in french.words and "Wi-Fi / Bluetooth device counter" in english.words
    assert json.loads((tmp_path / "out" / "notice.json").read_text(encoding="utf-8"))["languages"] == ["fr", "en"]

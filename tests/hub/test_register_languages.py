"""The hub's transparency register with notices in more than one language: checked on receipt, shown in each language in Chromium."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.privacy import build_notice, parse_policy
from hub.app import RunningHub, run_hub
from tests.helpers.tools import require_tool
from tests.hub.gateways import SimGateway, enrol, post_cose
from tests.hub.test_browser import ARTIFACTS, chromium
from tests.privacy.test_languages import BILINGUAL, CHANNELS, CONFIG

# The register of a French-speaking city: French first, English second.
NOTICE: dict[str, Any] = build_notice(parse_policy(BILINGUAL, path="rue.toml"), CONFIG, channels=CHANNELS, generated_ms=1_795_737_600_000)


@pytest.fixture
async def register(tmp_path: Path) -> AsyncIterator[tuple[RunningHub, SimGateway, aiohttp.ClientSession]]:
    async with run_hub(state_dir=tmp_path / "hub", admin_token="admin-secret") as hub, aiohttp.ClientSession() as http:
        gateway = SimGateway("pole-0007")
        await enrol(http, hub.url, gateway, await hub.create_token())
        yield hub, gateway, http


async def test_a_bilingual_notice_is_taken_and_published_as_sent(register) -> None:
    hub, gateway, http = register
    status, body, _ = await post_cose(http, f"{hub.url}/oxp/v1/notice", gateway.notice(NOTICE))
    assert status == 200, body
    async with http.get(f"{hub.url}/transparency.json") as resp:
        published = (await resp.json())["notices"][0]["notice"]
    assert published["languages"] == ["fr", "en"] and published["retention_days"] == 730
    assert published["translations"]["en"]["purpose"] == "Measure foot traffic and air quality to plan sidewalks."


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"translations": {"de": NOTICE["translations"]["en"]}}, "notice.translations.de"),
        ({"languages": ["fr", "fr"]}, "notice.languages"),
        ({"languages": ["French"]}, "notice.languages[0]"),
        ({"retention_days": 0}, "notice.retention_days"),
        ({"retention_days": "2 years"}, "notice.retention_days"),
        ({"translations": {"en": {**NOTICE["translations"]["en"], "purpose": 7}}}, "notice.translations.en.purpose"),
        ({"translations": {"en": {**NOTICE["translations"]["en"], "untranslated": "retention"}}}, "notice.translations.en.untranslated"),
        ({"translations": ["en"]}, "notice.translations"),
    ],
)
async def test_a_notice_with_a_bad_language_field_is_refused_naming_it(register, change: dict[str, Any], field: str) -> None:
    hub, gateway, http = register
    status, body, _ = await post_cose(http, f"{hub.url}/oxp/v1/notice", gateway.notice({**NOTICE, **change}))
    assert (status, body["error"]) == (400, "malformed")
    assert body["detail"].startswith(f"field '{field}' = "), body["detail"]


async def test_the_register_shows_a_french_notice_in_french_and_in_english(register, tmp_path: Path) -> None:
    hub, gateway, http = register
    binary = require_tool("chromium")
    status, _, _ = await post_cose(http, f"{hub.url}/oxp/v1/notice", gateway.notice(NOTICE))
    assert status == 200
    dom = (await chromium(binary, tmp_path / "profile", "--dump-dom", f"{hub.url}/transparency")).replace("&nbsp;", "\u00a0")
    french = re.search(r'<div id="pole-0007-fr" lang="fr" class="notice-language">(.*?)</div>', dom, re.S)
    english = re.search(r'<details id="pole-0007-en" lang="en" class="notice-language">(.*?)</details>', dom, re.S)
    assert french and english
    fr, en = french.group(1), english.group(1)
    assert "<strong>Exploité par\u00a0:</strong> Ville de Montréal, Service de l'urbanisme" in fr
    assert "La valeur ne quitte jamais l'appareil. Seul le nombre de valeurs différentes" in fr
    assert "Durée de conservation" in fr
    assert "Les mesures datant de plus de 730 jours sont supprimées par le serveur central de la ville." in fr
    assert "dépersonnalisé, agrégé, k-anonymat, confidentialité différentielle" in fr
    assert "<summary>English</summary>" in en
    assert "<strong>Run by:</strong> City of Montréal, Urban Planning" in en
    assert "Readings older than 730 days are deleted by the city's hub." in en
    # the retention the policy gives only in French shows in French on the English side, and says so
    assert '<span lang="fr">Les décomptes sont conservés deux ans sur le serveur de la ville.</span> <span class="muted">(not translated)</span>' in en
    ARTIFACTS.mkdir(exist_ok=True)
    await chromium(binary, tmp_path / "profile2", f"--screenshot={ARTIFACTS / 'hub-transparency-fr.png'}", f"{hub.url}/transparency")
    assert (ARTIFACTS / "hub-transparency-fr.png").stat().st_size > 10_000


async def test_a_notice_from_before_languages_shows_as_the_english_one_it_is(register) -> None:
    hub, gateway, http = register
    old = {k: v for k, v in build_notice(parse_policy(BILINGUAL.replace('["fr", "en"]', '["en"]').split("[policy.translations.en]")[0] + BILINGUAL.split(
        'what = "Particules fines (PM2,5)"\n')[1], path="rue.toml"), CONFIG, channels=CHANNELS).items() if k not in ("languages", "translations")}
    status, _, _ = await post_cose(http, f"{hub.url}/oxp/v1/notice", gateway.notice(old))
    assert status == 200
    async with http.get(f"{hub.url}/transparency") as resp:
        page = await resp.text()
    assert '<div id="pole-0007-en" lang="en" class="notice-language">' in page and "<details" not in page
    assert "<strong>Run by:</strong> Ville de Montréal" in page

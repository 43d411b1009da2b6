"""The transparency register shows every channel of a notice's items (OXP §7.3), says when a notice came abridged, and shows a first-form notice as before."""

from __future__ import annotations

import html
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.privacy.notice import abridgements
from hub.app import RunningHub, run_hub
from tests.hub.gateways import SimGateway, enrol, post_cose
from tests.hub.test_register_languages import NOTICE as FIRST_LANGUAGES
from tests.privacy.test_notice_size import notice_of


@pytest.fixture
async def register(tmp_path: Path) -> AsyncIterator[tuple[RunningHub, aiohttp.ClientSession]]:
    async with run_hub(state_dir=tmp_path / "hub", admin_token="admin-secret") as hub, aiohttp.ClientSession() as http:
        yield hub, http


async def published(hub: RunningHub, http: aiohttp.ClientSession, notice: dict[str, Any]) -> str:
    """The register page after a gateway of its own published ``notice`` (taken: 200)."""
    gateway = SimGateway("energy-0001")
    await enrol(http, hub.url, gateway, await hub.create_token())
    status, body, _ = await post_cose(http, f"{hub.url}/oxp/v1/notice", gateway.notice(notice))
    assert status == 200, body
    async with http.get(f"{hub.url}/transparency") as resp:
        assert resp.status == 200
        return html.unescape(await resp.text())


def languages(page: str) -> list[str]:
    """The page's parts in each language of the notice: the default one first, then each translation."""
    return page.split('class="notice-language"')[1:]


async def test_every_channel_of_an_item_is_shown_in_every_language(register) -> None:
    hub, http = register
    page = await published(hub, http, notice_of(3))
    english, french = languages(page)
    for part in (english, french):
        assert all(f"<code>meter-{i}/voltage_l1</code>" in part for i in (1, 2, 3))
        assert part.count("<code>meter-") == 3 * 36
    assert "Consommation des bâtiments de la ville" in french and "too long" not in page


async def test_an_abridged_notice_counts_what_it_does_not_list_and_says_why_in_each_language(register) -> None:
    hub, http = register
    notice = notice_of(20)
    shorter = next(abridgements(notice))
    shorter["abridged"].update(full_bytes=90_000, limit_bytes=64_512)
    english, french = languages(await published(hub, http, shorter))
    assert "<code>meter-1/voltage_l1</code> <span class=\"muted\">and 19 more channels</span>" in english
    assert "et 19 autres canaux" in french
    assert "shown here shortened, without the lists of channels. It covers 720 channels that leave the device" in english
    assert "abrégé ici, sans les listes de canaux. Il porte sur 720 canaux" in french


async def test_a_notice_of_the_first_form_one_item_per_channel_is_shown_as_before(register) -> None:
    hub, http = register
    first = {**FIRST_LANGUAGES, "data": [{k: v for k, v in d.items() if k != "channels"} for d in FIRST_LANGUAGES["data"]]}
    first["translations"] = {"en": {**FIRST_LANGUAGES["translations"]["en"]}}
    french, english = languages(await published(hub, http, first))
    for part in (french, english):
        assert "<code>ped-1/mac</code>" in part and "<code>pm-1/pm2_5</code>" in part
    assert "more channel" not in english and "shortened" not in english

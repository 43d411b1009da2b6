"""A notice of many channels: alike channels share one item, it fits a signed message, and one that does not is published abridged.

The channels are the shipped SDM630 profile's, declared by the real Modbus driver, 36 a meter.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from drivers.registry import load_driver
from drivers.sdk import DeviceContext
from edge.localapi.view import technician_view
from edge.notice import NOTICE_BYTES, NoticePublisher, notice_bytes
from edge.privacy import Policy, build_notice, parse_policy, render_notice_html
from edge.privacy.notice import MAX_STORED_NOTICE_BYTES, abridgements, notice_channels, notice_in, stored_notice_bytes
from edge.protocol import MAX_STATUS_BYTES, open_status, seal_status
from edge.protocol.types import Channel, Reading
from hub.reports import check_notice_message, notice_problem

ENGLISH = """
[policy]
name = "energy use of the city's buildings"
version = "3"
organisation = "City of Testing"
contact = "energy@testing.example"
purpose = "Know what the city's buildings use"
retention = "Two years on the hub."

[channels."meter-*/*"]
rule = "keep"
purpose = "Energy use of the city's buildings"
"""
POLICY = ENGLISH.replace('version = "3"\n', 'version = "3"\nnotice_languages = ["en", "fr"]\n') + """
[policy.translations.fr]
organisation = "Ville de Testing"
purpose = "Savoir ce que consomment les bâtiments de la ville"
retention = "Deux ans sur le serveur de la ville."

[policy.translations.fr.channels."meter-*/*"]
purpose = "Consommation des bâtiments de la ville"
"""


def sdm630_channels(meters: int) -> list[Channel]:
    """What ``meters`` SDM630 meters, meter-1 ... meter-N, declare through the Modbus driver."""
    modbus = load_driver("modbus")
    channels: list[Channel] = []
    for i in range(1, meters + 1):
        ctx = DeviceContext(device_id=f"meter-{i}", options={"profile": "eastron-sdm630"}, address=i, poll_interval=1.0,
                            logger=logging.getLogger("test"))
        channels.extend(modbus(ctx).channels())
    return channels


def config(meters: int) -> SimpleNamespace:
    return SimpleNamespace(
        gateway=SimpleNamespace(id="town-hall-energy", site="Town hall plant room", latitude=None, longitude=None),
        devices=[SimpleNamespace(name=f"meter-{i}", driver="modbus") for i in range(1, meters + 1)],
    )


def policy(text: str = POLICY) -> Policy:
    return parse_policy(text, path="energy.toml")


def notice_of(meters: int, p: Policy | None = None) -> dict[str, Any]:
    return build_notice(p or policy(), config(meters), channels=sdm630_channels(meters), generated_ms=1_795_737_600_000)


def test_alike_channels_share_one_item_that_names_them_all_its_first_as_channel() -> None:
    notice = notice_of(20)
    assert len(notice["data"]) == 36
    for item in notice["data"]:
        assert item["channel"] == item["channels"][0] and item["device"] == "meter-1", "an item of the first form, for a reader of §7.3's first form"
        assert item["channels"] == [f"meter-{i}/{item['channel'].split('/')[1]}" for i in range(1, 21)]
    assert notice_problem(notice) is None
    fr = notice_in(notice, "fr")
    assert [d["channels"] for d in fr["data"]] == [d["channels"] for d in notice["data"]], "a translation's items take the notice's channel lists"
    assert "channels" not in notice["translations"]["fr"]["data"][0], "the lists are not said twice"
    assert fr["data"][0]["purpose"] == "Consommation des bâtiments de la ville"


def test_channels_alike_but_for_their_unit_or_rule_stay_apart() -> None:
    text = POLICY + '\n[channels."meter-2/voltage_l1"]\nrule = "quantize"\nstep = 1.0\npurpose = "Energy use of the city\'s buildings"\n'
    notice = notice_of(3, policy(text))
    voltage = [d for d in notice["data"] if d["channel"].endswith("/voltage_l1")]
    assert [d["channels"] for d in voltage] == [["meter-1/voltage_l1", "meter-3/voltage_l1"], ["meter-2/voltage_l1"]]
    assert "quantize" not in voltage[0]["leaves_as"].lower() and voltage[0]["leaves_as"] != voltage[1]["leaves_as"]


@pytest.mark.parametrize(("meters", "share_en", "share_en_fr"), [(20, 0.45, 0.65), (28, 0.6, 0.8)])
def test_twenty_and_twenty_eight_sdm630_meters_fit_a_signed_message_with_room(meters: int, share_en: float, share_en_fr: float) -> None:
    english, bilingual = notice_bytes(notice_of(meters, policy(ENGLISH))), notice_bytes(notice_of(meters))
    print(f"{meters} SDM630 meters, {meters * 36} channels: {english:,} bytes in English, {bilingual:,} in English and French, of {NOTICE_BYTES:,}")
    assert english <= NOTICE_BYTES * share_en and bilingual <= NOTICE_BYTES * share_en_fr


def test_the_room_left_for_the_envelope_holds_the_longest_device_id_and_largest_numbers() -> None:
    key = Ed25519PrivateKey.generate()
    device_id = "d" * 64
    notice = {"schema": "x" * 16, "pad": ""}
    notice["pad"] = "p" * (NOTICE_BYTES - notice_bytes(notice) - 2)  # a text over 255 bytes has a length header 2 bytes longer
    assert notice_bytes(notice) == NOTICE_BYTES
    sealed = seal_status({"ts_ms": 2**63 - 1, "notice": notice, "boot_epoch": 2**64 - 1, "report_seq": 2**64 - 1},
                         device_id=device_id, private_key=key)
    assert len(sealed) <= MAX_STATUS_BYTES
    assert open_status(sealed, key.public_key())["notice"] == notice


def test_the_local_page_lists_every_channel_under_its_device() -> None:
    page = render_notice_html(notice_of(3), "fr")
    for i in range(1, 4):
        assert page.count(f"<code>meter-{i}/") == 36
    assert page.count("<h3>") == 3


def publish(notice: dict[str, Any], limit: int) -> tuple[list[Mapping[str, Any]], NoticePublisher]:
    """What a publisher with room for ``limit`` bytes sends to a hub that takes everything."""
    sent: list[Mapping[str, Any]] = []

    async def send(message: Mapping[str, Any]) -> bool:
        sent.append(message)
        return True

    the_policy = policy()
    publisher = NoticePublisher(lambda: the_policy, lambda _: notice, send, limit=limit)

    async def until_taken() -> None:
        task = asyncio.create_task(publisher.run())
        try:
            async with asyncio.timeout(10):
                while publisher.pending:
                    await asyncio.sleep(0.01)
        finally:
            task.cancel()

    asyncio.run(until_taken())
    return sent, publisher


def test_a_notice_that_fits_goes_whole() -> None:
    notice = notice_of(20)
    sent, publisher = publish(notice, NOTICE_BYTES)
    assert sent == [notice] and publisher.notice() is notice


@pytest.mark.parametrize(
    ("limit", "left_out"),
    [
        (30_000, ["channel lists"]),
        (15_000, ["channel lists", "translations"]),
        (2_000, ["channel lists", "translations", "data items", "devices"]),
    ],
)
def test_a_notice_over_the_limit_goes_abridged_said_once_and_still_true(caplog, limit: int, left_out: list[str]) -> None:
    notice = notice_of(20)
    with caplog.at_level(logging.ERROR, logger="ocn.notice"):
        sent, publisher = publish(notice, limit)
        assert publisher.published() is sent[0]  # decided once per policy: asked again, it is not said again
    [shorter] = sent
    assert notice_bytes(shorter) <= limit
    abridged = shorter["abridged"]
    assert abridged == {"left_out": left_out, "channels": 720, "withheld": 0, "devices": 20, "full_bytes": notice_bytes(notice), "limit_bytes": limit}
    check_notice_message({"device_id": "town-hall-energy", "ts_ms": 1, "notice": shorter})
    assert shorter["policy"] == notice["policy"] and shorter["accountable"] == notice["accountable"]
    for item in shorter["data"]:
        assert "channels" not in item and item["channel_count"] == 20
    assert publisher.notice() is notice, "the local page keeps the whole notice"
    [line] = [r.getMessage() for r in caplog.records]
    assert f"the transparency notice is {notice_bytes(notice):,} bytes, over the {limit:,}" in line
    assert "own notice page shows it whole" in line and "spread the devices over more gateways" in line


def test_a_notice_no_form_of_which_fits_is_not_published_and_the_publisher_does_not_stop(caplog) -> None:
    with caplog.at_level(logging.ERROR, logger="ocn.notice"):
        sent, publisher = publish(notice_of(2), 200)
    assert sent == [] and publisher.published() is None
    [line] = [r.getMessage() for r in caplog.records]
    assert "no shorter form of it fits the 200 a notice may take" in line


def test_each_abridged_form_is_shorter_than_the_one_before() -> None:
    notice = notice_of(20)
    sizes = [notice_bytes(notice)] + [notice_bytes(shorter) for shorter in abridgements(notice)]
    print("whole, then abridged:", ", ".join(f"{s:,}" for s in sizes))
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    assert all(notice_channels(d) == [d["channel"]] for d in list(abridgements(notice))[0]["data"])


def test_the_technician_page_hides_every_personal_channel_of_an_item_and_lists_each_channel_of_the_policy() -> None:
    receivers = [Channel(f"gps-{i}/{axis}", unit=axis[:3], resolution=1e-7, personal=True) for i in (1, 2) for axis in ("latitude", "longitude")]
    text = ENGLISH.split("[channels.")[0] + '[channels."gps-*/*"]\nrule = "generalize_location"\ngrid = "250m"\n'
    gps = SimpleNamespace(gateway=config(0).gateway, devices=[SimpleNamespace(name=f"gps-{i}", driver="nmea-gps") for i in (1, 2)])
    notice = build_notice(policy(text), gps, channels=receivers, generated_ms=0)
    assert [d["channels"] for d in notice["data"]] == [["gps-1/latitude", "gps-2/latitude"], ["gps-1/longitude", "gps-2/longitude"]]
    latest = {c.id: Reading(c.id, 1, 43.6452, c.unit) for c in receivers}
    status = {"devices": {"gps-1": {"driver": "nmea-gps"}, "gps-2": {"driver": "nmea-gps"}}}
    view = technician_view(status, notice, latest)
    assert all(not device["values"] for device in view["devices"]), "no position of either receiver is shown"
    assert [row["channel"] for row in view["policy"]] == ["gps-1/latitude", "gps-2/latitude", "gps-1/longitude", "gps-2/longitude"]


def test_a_notice_the_envelope_refuses_after_all_is_said_once_and_the_publisher_runs_on(caplog) -> None:
    calls = 0

    async def send(message: Mapping[str, Any]) -> bool:
        nonlocal calls
        calls += 1
        raise ValueError("status report is 70000 bytes, over the OXP/2 limit of 65536")

    the_policy = policy()
    publisher = NoticePublisher(lambda: the_policy, lambda _: notice_of(1), send)

    async def run() -> bool:
        task = asyncio.create_task(publisher.run())
        async with asyncio.timeout(10):
            while publisher.pending:
                await asyncio.sleep(0.01)
        running = not task.done()
        task.cancel()
        return running

    with caplog.at_level(logging.ERROR, logger="ocn.notice"):
        assert asyncio.run(run()), "the publisher still runs, waiting for the next policy"
    assert calls == 1
    [record] = caplog.records
    assert record.getMessage() == "the transparency notice could not be sealed; it is not published until the policy changes"


def test_a_notice_that_fits_a_signed_message_but_not_what_a_register_stores_is_not_published_and_said_once(caplog) -> None:
    # A hub refuses a notice whose JSON would exceed MAX_STORED_NOTICE_BYTES (413 too_large, OXP §7.3), and a refused
    # notice is sent again and again: the gateway says why once instead, and keeps it on its own page.
    notice = {**notice_of(1), "purpose": "\x02" * 25_000}  # 25 KB signed, 150 KB as JSON
    assert notice_bytes(notice) <= NOTICE_BYTES < MAX_STORED_NOTICE_BYTES < stored_notice_bytes(notice)
    with caplog.at_level(logging.ERROR, logger="ocn.notice"):
        sent, publisher = publish(notice, NOTICE_BYTES)
        assert publisher.published() is None
    assert sent == []
    [line] = [r.getMessage() for r in caplog.records]
    assert f"{stored_notice_bytes(notice):,} as the JSON a hub's register stores" in line and "control characters" in line

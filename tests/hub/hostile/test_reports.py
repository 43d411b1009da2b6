"""Status reports and notices: checked against their schema before they are stored, and refused when replayed (OXP §7)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edge.notice import NOTICE_BYTES, notice_bytes
from edge.protocol import MAX_STATUS_BYTES, seal_status
from hub.app import RunningHub, run_hub
from hub.ingest import NOTICE_BURST, NOTICES_PER_DAY, REPORT_BURST
from hub.reports import MAX_STORED_NOTICE_BYTES, stored_notice_bytes
from tests.hub.gateways import T0, SimGateway, enrol, post_cose
from tests.privacy.test_notice_size import notice_of

NOTICE: dict[str, Any] = {
    "schema": "ocn-edge/notice/v1",
    "place": {"gateway_id": "pole-0042", "site": "King St W & Spadina Ave", "latitude": 43.6452, "longitude": -79.3957},
    "accountable": {"organisation": "City of Toronto", "contact": "privacy@toronto.ca"},
    "purpose": "Air quality on King St",
    "data": [{"channel": "pm-1/pm2_5", "what": "Fine particulate matter", "personal": False, "process": ["de-identified"],
              "leaves_as": "1-minute averages", "purpose": "air quality"}],
    "policy": {"name": "demo", "version": "1", "digest": "ab" * 32, "signed_by": None},
}


def notice(gateway: SimGateway, body: Any, **fields: Any) -> bytes:
    """A notice message as a gateway seals it; ``fields`` add boot_epoch and report_seq (or anything else)."""
    return seal_status({"ts_ms": T0, "notice": body, **fields}, device_id=gateway.device_id, private_key=gateway.private_key)


async def post(http: aiohttp.ClientSession, hub: RunningHub, path: str, data: bytes) -> tuple[int, dict[str, Any]]:
    status, body, _ = await post_cose(http, f"{hub.url}/oxp/v1/{path}", data)
    return status, body


# --- schema -----------------------------------------------------------------------------


async def test_a_malformed_notice_is_refused_naming_the_field_and_the_register_still_answers(
    running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway
) -> None:
    status, body = await post(http, running_hub, "notice", notice(gateway, {"place": "downtown", "data": [1, 2]}))
    assert (status, body["error"]) == (400, "malformed")
    assert "'notice.place'" in body["detail"] and "'downtown'" in body["detail"] and "map" in body["detail"]
    assert await running_hub.store.notices() == []
    async with http.get(f"{running_hub.url}/transparency") as resp:
        assert resp.status == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"data": [1, 2]}, "notice.data[0]"),
        ({"place": {"latitude": "north"}}, "notice.place.latitude"),
        ({"place": {"latitude": 91.0}}, "notice.place.latitude"),
        ({"data": [{"process": "aggregated"}]}, "notice.data[0].process"),
        ({"privacy_budget": {"epsilon": float("nan")}}, "notice.privacy_budget.epsilon"),
        ({"future": {"bytes": b"\x00"}}, "notice.future.bytes"),
        ({"future": 2**70}, "notice.future"),
        ([1, 2], "notice"),
    ],
)
async def test_a_notice_whose_field_does_not_fit_is_refused_with_that_field(
    running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway, body: Any, field: str
) -> None:
    status, answer = await post(http, running_hub, "notice", notice(gateway, body))
    assert (status, answer["error"]) == (400, "malformed")
    assert answer["detail"].startswith(f"field '{field}' = ")


async def test_unknown_keys_of_a_notice_are_kept_and_published(running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway) -> None:
    body = {**NOTICE, "later_field": {"anything": [1, "two", None, True]}}
    status, _ = await post(http, running_hub, "notice", notice(gateway, body, later_key="ignored"))
    assert status == 200
    async with http.get(f"{running_hub.url}/transparency.json") as resp:
        assert (await resp.json())["notices"][0]["notice"] == body
    async with http.get(f"{running_hub.url}/transparency") as resp:
        assert resp.status == 200 and "King St W &amp; Spadina Ave" in await resp.text()


async def test_a_notice_stored_before_the_checks_is_shown_as_unreadable_not_as_a_500(
    running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway
) -> None:
    # What a hub without the checks stored; the register must still answer.
    await running_hub.store.add_notice("pole-0042", {"place": "downtown", "data": [1, 2]}, received_ms=T0)
    await running_hub.store.add_notice("pole-7", {**NOTICE, "place": {**NOTICE["place"], "site": "Queen St"}}, received_ms=T0)
    async with http.get(f"{running_hub.url}/transparency") as resp:
        page = await resp.text()
        assert resp.status == 200
    assert "Queen St" in page
    assert "cannot be shown" in page and "notice.place" in page


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"spool_bytes": "lots"}, "spool_bytes"),
        ({"errors": "pm-1 silent"}, "errors"),
        ({"errors": ["ok", 3]}, "errors[1]"),
        ({"boot_epoch": -1}, "boot_epoch"),
        ({"boot_epoch": 2**64}, "boot_epoch"),
        ({"policy_digest": "07" * 32}, "policy_digest"),
        ({"software_version": None}, "software_version"),
        ({"ts_ms": 2**63}, "ts_ms"),
        ({"device_health": ["pm-1"]}, "device_health"),
        ({"device_health": {"pm-1": {"health": 3}}}, "device_health.pm-1.health"),
        ({"device_health": {"pm-1": {"health": "ok\nfailing"}}}, "device_health.pm-1.health"),
    ],
)
async def test_a_status_report_whose_field_does_not_fit_is_refused_with_that_field(
    running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway, fields: dict[str, Any], field: str
) -> None:
    status, answer = await post(http, running_hub, "status", gateway.status(**fields))
    assert (status, answer["error"]) == (400, "malformed")
    assert answer["detail"].startswith(f"field '{field}' = ")
    device = await running_hub.store.device("pole-0042")
    assert device is not None and device.status_ms is None


@pytest.fixture
async def hub_on_either_engine(db_url: str, tmp_path: Path, http: aiohttp.ClientSession) -> AsyncIterator[tuple[RunningHub, SimGateway]]:
    """A hub on SQLite or PostgreSQL with pole-0042 enrolled: U+0000 is refused by the PostgreSQL columns only."""
    async with run_hub(db=db_url, state_dir=tmp_path / "hub", admin_token="admin-secret") as hub:
        gateway = SimGateway("pole-0042")
        await enrol(http, hub.url, gateway, await hub.create_token())
        yield hub, gateway


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"software_version": "0.1.0\x00"}, "software_version"),
        ({"software_version": "0.1.0\nforged line"}, "software_version"),
        ({"applied_etag": "\x00"}, "applied_etag"),
        ({"errors": ["pm-1 \x00 silent"]}, "errors[0]"),
    ],
)
async def test_a_status_report_with_u0000_or_a_control_character_in_stored_text_is_400_on_either_engine(
    hub_on_either_engine: tuple[RunningHub, SimGateway], http: aiohttp.ClientSession, fields: dict[str, Any], field: str
) -> None:
    # PostgreSQL refuses U+0000 in text: without the check this was a 500 there and stored on SQLite.
    running_hub, gateway = hub_on_either_engine
    status, answer = await post(http, running_hub, "status", gateway.status(**fields))
    assert (status, answer["error"]) == (400, "malformed")
    assert answer["detail"].startswith(f"field '{field}' = ")
    assert "control characters" in answer["detail"] or "U+0000" in answer["detail"]
    device = await running_hub.store.device("pole-0042")
    assert device is not None and device.status_ms is None and device.software_version == "0.1.0"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"site": "King St\x00W"}, "notice.site"),
        ({**NOTICE, "place": {**NOTICE["place"], "site": "King\x00"}}, "notice.place.site"),
        ({**NOTICE, "later": {"note": ["a", "b\x00"]}}, "notice.later.note[1]"),
        ({**NOTICE, "later": {"k\x00ey": 1}}, "notice.later"),
        ({**NOTICE, "k\x00ey": 1}, "notice"),
    ],
)
async def test_a_notice_with_u0000_anywhere_in_its_json_is_400_and_the_register_is_unchanged(
    hub_on_either_engine: tuple[RunningHub, SimGateway], http: aiohttp.ClientSession, body: Any, field: str
) -> None:
    # The notice is stored as JSON; PostgreSQL's jsonb refuses \u0000 in a string or a key.
    running_hub, gateway = hub_on_either_engine
    status, answer = await post(http, running_hub, "notice", notice(gateway, body))
    assert (status, answer["error"]) == (400, "malformed")
    assert answer["detail"].startswith(f"field '{field}' = ") and "U+0000" in answer["detail"]
    assert await running_hub.store.notices() == []


async def test_a_notice_with_newlines_in_its_text_is_still_taken(hub_on_either_engine: tuple[RunningHub, SimGateway], http: aiohttp.ClientSession) -> None:
    running_hub, gateway = hub_on_either_engine
    body = {**NOTICE, "purpose": "Air quality on King St\nand Spadina Ave"}
    status, _ = await post(http, running_hub, "notice", notice(gateway, body))
    assert status == 200
    async with http.get(f"{running_hub.url}/transparency.json") as resp:
        assert (await resp.json())["notices"][0]["notice"] == body


# --- size ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "later",
    [
        "\x01" * 50_000,  # each control character is stored as \u0001: six bytes for one
        [5.960464477539063e-08] * 14_000,  # a float16 in three bytes, stored as 21 characters
    ],
    ids=["control-characters", "float16"],
)
async def test_a_notice_that_would_take_more_than_twice_its_signed_limit_as_json_is_413_and_nothing_is_stored(
    running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway, later: Any
) -> None:
    # docs/threat-model.md H26: a signed notice of under 64 KiB that the register would have stored as 300 KB or more.
    body = {**NOTICE, "later": later}
    data = notice(gateway, body, boot_epoch=1, report_seq=1)
    assert len(data) <= MAX_STATUS_BYTES and stored_notice_bytes(body) > 2 * MAX_STORED_NOTICE_BYTES
    status, answer = await post(http, running_hub, "notice", data)
    assert (status, answer["error"]) == (413, "too_large")
    assert answer["detail"].startswith("field 'notice' = ") and "bytes as JSON" in answer["detail"], answer
    assert await running_hub.store.notices() == []
    # Refused before its freshness was recorded: the gateway's next notice, numbered the same, is taken.
    assert (await post(http, running_hub, "notice", notice(gateway, NOTICE, boot_epoch=1, report_seq=1)))[0] == 200


async def test_the_largest_notices_a_gateway_sends_are_stored(running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway) -> None:
    # A gateway's notice is text: as JSON it takes 1.1 to 1.2 times its signed size (1.5 for this one, a third of whose
    # characters are newlines, two characters each in JSON), inside twice the signed limit.
    filled = {"schema": "ocn-edge/notice/v1", "purpose": "p\n" * ((NOTICE_BYTES - 64) // 2)}
    bilingual = notice_of(28)  # 28 SDM630 meters, 1,008 channels, in English and French
    for seq, body in enumerate((filled, bilingual), start=1):
        assert notice_bytes(body) <= NOTICE_BYTES
        assert stored_notice_bytes(body) <= MAX_STORED_NOTICE_BYTES, (seq, stored_notice_bytes(body), notice_bytes(body))
        assert (await post(http, running_hub, "notice", notice(gateway, body, boot_epoch=1, report_seq=seq)))[0] == 200
    assert len(await running_hub.store.notices()) == 2


async def test_a_notice_body_over_the_signed_message_limit_is_413_before_it_is_read_as_a_message(
    running_hub: RunningHub, http: aiohttp.ClientSession
) -> None:
    # §7.3: a signed notice, like a status report, is at most 64 KiB, which a receiver enforces before anything else
    # (the hub read up to 256 KiB of a notice and parsed it before open_status refused it).
    status, answer, _ = await post_cose(http, f"{running_hub.url}/oxp/v1/notice", b"\xd2" + b"\x00" * MAX_STATUS_BYTES)
    assert (status, answer["error"]) == (413, "too_large"), answer


async def test_a_report_seq_without_a_boot_epoch_is_refused(running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway) -> None:
    status, answer = await post(http, running_hub, "notice", notice(gateway, NOTICE, report_seq=1))
    assert (status, answer["error"]) == (400, "malformed")
    assert answer["detail"] == "field 'boot_epoch' = None: expected an unsigned integer (required with 'report_seq')"


async def test_a_notice_sent_as_a_status_report_is_refused_as_the_wrong_type(running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway) -> None:
    status, answer = await post(http, running_hub, "status", notice(gateway, NOTICE))
    assert (status, answer["error"], answer["reason"]) == (400, "malformed", "wrong_type")


async def test_unknown_keys_of_a_status_report_are_ignored(running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway) -> None:
    status, _ = await post(http, running_hub, "status", gateway.status(spool_batches=4, later={"x": b"\x00"}, report_seq=0))
    assert status == 200
    device = await running_hub.store.device("pole-0042")
    assert device is not None and device.spool_batches == 4


# --- freshness --------------------------------------------------------------------------


async def test_a_replayed_status_report_is_refused_and_the_tampered_state_stays(
    running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway
) -> None:
    ok = gateway.status(errors=[], report_seq=1)
    assert (await post(http, running_hub, "status", ok))[0] == 200
    assert (await post(http, running_hub, "status", gateway.status(errors=["enclosure: tampered"], report_seq=2)))[0] == 200
    status, answer = await post(http, running_hub, "status", ok)
    assert (status, answer["error"]) == (409, "stale")
    assert "boot 1, report 1" in answer["detail"] and "boot 1, report 2" in answer["detail"]
    device = await running_hub.store.device("pole-0042")
    assert device is not None and device.errors == ("enclosure: tampered",)


async def test_a_replayed_notice_is_refused_and_the_newer_notice_stays_published(
    running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway
) -> None:
    old = notice(gateway, {**NOTICE, "purpose": "old"}, boot_epoch=1, report_seq=0)
    assert (await post(http, running_hub, "notice", old))[0] == 200
    assert (await post(http, running_hub, "notice", notice(gateway, NOTICE, boot_epoch=1, report_seq=1)))[0] == 200
    status, answer = await post(http, running_hub, "notice", old)
    assert (status, answer["error"]) == (409, "stale")
    [latest, _] = await running_hub.store.notices()
    assert latest.notice["purpose"] == NOTICE["purpose"]


async def test_status_reports_and_notices_share_one_sequence_per_boot(running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway) -> None:
    assert (await post(http, running_hub, "status", gateway.status(report_seq=5)))[0] == 200
    # A notice from before that report (same boot, lower number) is refused like a status report would be.
    assert (await post(http, running_hub, "notice", notice(gateway, NOTICE, boot_epoch=1, report_seq=4)))[0] == 409
    assert (await post(http, running_hub, "notice", notice(gateway, NOTICE, boot_epoch=1, report_seq=6)))[0] == 200


async def test_a_new_boot_starts_its_count_again(running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway) -> None:
    assert (await post(http, running_hub, "status", gateway.status(report_seq=50)))[0] == 200
    gateway.boot_epoch = 2
    assert (await post(http, running_hub, "status", gateway.status(report_seq=0)))[0] == 200
    gateway.boot_epoch = 1
    assert (await post(http, running_hub, "status", gateway.status(report_seq=51)))[0] == 409


async def test_a_gateway_without_freshness_still_reports_until_it_sends_freshness(
    running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway
) -> None:
    # A gateway one version older: no report_seq. Its reports and notices are taken, repeats included.
    legacy = gateway.status(spool_batches=1)
    assert (await post(http, running_hub, "status", legacy))[0] == 200
    assert (await post(http, running_hub, "status", legacy))[0] == 200
    assert (await post(http, running_hub, "notice", gateway.notice(NOTICE)))[0] == 200
    # A report from an earlier boot than one already seen is a replay even without report_seq.
    gateway.boot_epoch = 2
    assert (await post(http, running_hub, "status", gateway.status()))[0] == 200
    assert (await post(http, running_hub, "status", legacy))[0] == 409
    # Once it has sent a report_seq (it was upgraded), reports without one from that boot are replays.
    assert (await post(http, running_hub, "status", gateway.status(report_seq=0)))[0] == 200
    assert (await post(http, running_hub, "status", gateway.status()))[0] == 409
    assert (await post(http, running_hub, "notice", gateway.notice(NOTICE)))[0] == 409
    # Software rolled back on a later boot reports again.
    gateway.boot_epoch = 3
    assert (await post(http, running_hub, "status", gateway.status()))[0] == 200


async def test_a_gateway_with_freshness_reports_to_a_hub_that_ignores_it(running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway) -> None:
    # The other direction of one version apart: the new fields are unknown keys to an older hub,
    # which takes any report map (§7 as it was); here the fields ride next to every field it knows.
    report = gateway.status(report_seq=3, spool_batches=2)
    assert (await post(http, running_hub, "status", report))[0] == 200
    device = await running_hub.store.device("pole-0042")
    assert device is not None and device.spool_batches == 2


async def test_the_whole_uint_range_of_boot_epoch_and_report_seq_is_kept_exactly(db_url: str, tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with run_hub(db=db_url, state_dir=tmp_path / "hub", admin_token="admin-secret") as hub:
        gateway = SimGateway("pole-0042", boot_epoch=2**64 - 1)
        await enrol(http, hub.url, gateway, await hub.create_token())
        top = gateway.status(report_seq=2**64 - 2)
        assert (await post(http, hub, "status", top))[0] == 200
        assert (await post(http, hub, "status", gateway.status(report_seq=2**64 - 1)))[0] == 200
        assert (await post(http, hub, "status", top))[0] == 409
        assert (await post(http, hub, "status", gateway.status(report_seq=2**64 - 1)))[0] == 409


async def test_a_replay_raced_against_the_original_on_two_hubs_is_stored_once(db_url: str, tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with (
        run_hub(db=db_url, state_dir=tmp_path / "a", admin_token="admin-secret") as first,
        run_hub(db=db_url, state_dir=tmp_path / "b", admin_token="admin-secret") as second,
    ):
        gateway = SimGateway("pole-0042")
        await enrol(http, first.url, gateway, await first.create_token())
        data = notice(gateway, NOTICE, boot_epoch=1, report_seq=0)
        answers = await asyncio.gather(*(post(http, hub, "notice", data) for hub in (first, second) * 5))
        assert sorted(status for status, _ in answers) == [200] + [409] * 9
        assert len(await first.store.notices()) == 1


# --- rate ---------------------------------------------------------------------------------


async def test_a_device_sending_verified_reports_or_notices_faster_than_allowed_is_answered_429_and_nothing_more_is_stored(
    running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway
) -> None:
    # The reproduction (docs/threat-model.md H26): one enrolled device sent 300 fresh notices in 0.8 s, all stored and published.
    seq = 0
    for _ in range(REPORT_BURST):
        seq += 1
        assert (await post(http, running_hub, "status", gateway.status(report_seq=seq)))[0] == 200
    seq += 1
    status, answer, headers = await post_cose(http, f"{running_hub.url}/oxp/v1/status", gateway.status(report_seq=seq))
    assert (status, answer["error"]) == (429, "rate_limited") and int(headers["Retry-After"]) >= 1
    assert "status reports" in answer["detail"]
    for _ in range(NOTICE_BURST + 5):
        seq += 1
        await post(http, running_hub, "notice", notice(gateway, NOTICE, boot_epoch=1, report_seq=seq))
    assert len(await running_hub.store.notices()) == NOTICE_BURST
    seq += 1
    status, body, headers = await post_cose(http, f"{running_hub.url}/oxp/v1/notice", notice(gateway, NOTICE, boot_epoch=1, report_seq=seq))
    assert (status, body["error"]) == (429, "rate_limited") and "notices" in body["detail"]
    assert 500 <= int(headers["Retry-After"]) <= 600, "after the burst, one notice in ten minutes: each is stored for good"


async def test_a_device_s_notices_are_limited_per_day_by_what_the_hub_has_stored_whatever_its_process_remembers(
    hub_on_either_engine: tuple[RunningHub, SimGateway], http: aiohttp.ClientSession
) -> None:
    # docs/threat-model.md H26: each hub process keeps its own burst, and a restart gives it again; what the register
    # stored in the last 24 hours bounds it across processes and restarts. This hub's process has seen no notice yet.
    running_hub, gateway = hub_on_either_engine
    now = int(time.time() * 1000)
    await running_hub.store.add_notice(gateway.device_id, NOTICE, received_ms=now - 25 * 3_600_000)  # over a day ago
    for _ in range(NOTICES_PER_DAY - 1):
        await running_hub.store.add_notice(gateway.device_id, NOTICE, received_ms=now - 3_600_000)
    assert (await post(http, running_hub, "notice", notice(gateway, NOTICE, boot_epoch=1, report_seq=1)))[0] == 200
    status, body, headers = await post_cose(http, f"{running_hub.url}/oxp/v1/notice", notice(gateway, NOTICE, boot_epoch=1, report_seq=2))
    assert (status, body["error"]) == (429, "rate_limited") and "in the last 24 hours" in body["detail"], body
    assert int(headers["Retry-After"]) == 600
    assert len(await running_hub.store.notices(device_id=gateway.device_id, limit=1000)) == NOTICES_PER_DAY + 1


async def test_one_device_s_many_notices_do_not_push_the_others_out_of_the_public_register(
    hub_on_either_engine: tuple[RunningHub, SimGateway], http: aiohttp.ClientSession
) -> None:
    # The register lists each gateway by its latest notice; it listed the newest 200 notices (the JSON: 1000), so one
    # device publishing within its limits could push every quieter gateway off the page in a day or two.
    running_hub, gateway = hub_on_either_engine
    await running_hub.store.add_notice(gateway.device_id, {**NOTICE, "purpose": "the quiet gateway's notice"}, received_ms=T0)
    for n in range(250):
        await running_hub.store.add_notice("pole-7", {**NOTICE, "purpose": f"notice {n}", "place": {**NOTICE["place"], "site": "Queen St"}},
                                           received_ms=T0 + 1 + n)
    async with http.get(f"{running_hub.url}/transparency.json") as resp:
        listed = (await resp.json())["notices"]
    assert [(n["device_id"], n["notice"]["purpose"]) for n in listed] == [("pole-7", "notice 249"), (gateway.device_id, "the quiet gateway's notice")]
    async with http.get(f"{running_hub.url}/transparency") as resp:
        page = await resp.text()
    assert "the quiet gateway&#39;s notice" in page or "the quiet gateway's notice" in page
    assert "notice 249" in page and "notice 248" not in page

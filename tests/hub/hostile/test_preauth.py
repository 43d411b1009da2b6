"""Nothing costly before authentication, heavy work bounded: the hub refuses hostile envelopes
cheaply, charges no device for a forged batch, and answers a full queue or a device over its
readings budget with a retryable 429/503 that a real gateway waits out without losing data."""

from __future__ import annotations

import asyncio
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

import aiohttp
import cbor2
import pytest

from edge.protocol import MEDIA_TYPE, seal_status
from edge.protocol.compression import compress
from edge.protocol.envelope import H_BOOT, H_CODEC, H_CREATED, H_DEVICE, H_POLICY, H_SEQ, H_VERSION, _sign
from edge.protocol.preauth import ALG, EDDSA, KID, OXP_BATCH, OXP_STATUS
from edge.spool import Spool
from edge.transport import open_transport
from edge.uplink import Uplink
from hub.app import IngestSettings, RunningHub, run_hub
from hub.jsonbody import json_depth
from hub.ratelimit import RateLimiter, ReadingsBudget, client_address, parse_networks
from tests.hub.gateways import SimGateway, enrol
from tests.pipeline.conftest import seal_readings

ENDPOINTS = ["batches", "status", "notice"]


def colliding_bignum_map(size: int) -> bytes:
    """A CBOR map of big integers (tag 2) whose hashes collide in CPython: quadratic to build as a dict."""
    keys: list[bytes] = []
    item = 0
    while sum(map(len, keys)) < size:
        item += 1
        keys.append(cbor2.dumps(cbor2.CBORTag(2, (item * (2**61 - 1) * 2**600 + 5).to_bytes(100, "big"))) + b"\x00")
    return bytes([0xBA]) + len(keys).to_bytes(4, "big") + b"".join(keys)


def protected_for(gateway: SimGateway, *, status: bool = False) -> dict:
    label = OXP_STATUS if status else OXP_BATCH
    return {ALG: EDDSA, KID: gateway.key_id, label: {H_VERSION: 2, H_DEVICE: gateway.device_id}}


async def post(
    http: aiohttp.ClientSession, hub: RunningHub, endpoint: str, data: bytes, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], Any]:
    async with http.post(f"{hub.url}/oxp/v1/{endpoint}", data=data, headers={"Content-Type": MEDIA_TYPE, **(headers or {})}) as resp:
        return resp.status, await resp.json(content_type=None), resp.headers


async def still_serving(http: aiohttp.ClientSession, hub: RunningHub, gateway: SimGateway, seq: int) -> None:
    async with http.get(f"{hub.url}/oxp/v1/hub-key") as resp:
        assert resp.status == 200
    status, ack, _ = await post(http, hub, "batches", gateway.batch(seq))
    assert (status, ack["status"]) == (200, "stored")


# --- nothing costly before authentication --------------------------------------------------


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_a_megabyte_of_colliding_bignum_keys_is_refused_and_the_hub_keeps_serving(
    running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway, endpoint: str
) -> None:
    limit = {"batches": 1 << 20, "status": 64 << 10, "notice": 64 << 10}[endpoint]  # a notice is a status-type message (§7.3)
    protected = cbor2.dumps(protected_for(gateway, status=endpoint != "batches"))
    # In the unprotected map, where no byte string bounds it: the reader stops at the first tag.
    data = b"\xd2\x84" + cbor2.dumps(protected) + colliding_bignum_map(limit - 400) + b"\x40" + cbor2.dumps(bytes(64))
    assert len(data) <= limit
    status, body, _ = await post(http, running_hub, endpoint, data)
    assert (status, body["error"], body["reason"]) == (400, "malformed", "malformed") and "tag 2" in body["detail"]
    await still_serving(http, running_hub, gateway, 1)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
async def test_a_tag_30_rational_of_huge_integers_in_the_protected_header_is_malformed(
    running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway, endpoint: str
) -> None:
    rational = cbor2.CBORTag(30, [3**5000, 7**4000])
    data = _sign(protected_for(gateway, status=endpoint != "batches") | {99: rational}, b"", gateway.private_key)
    status, body, _ = await post(http, running_hub, endpoint, data)
    assert (status, body["error"]) == (400, "malformed") and "tag 30" in body["detail"]
    await still_serving(http, running_hub, gateway, 1)


@pytest.mark.parametrize("endpoint", ["status", "notice"])
@pytest.mark.parametrize(
    "item", [2**70, -(2**70), cbor2.CBORTag(30, [3**3000, 7**2000]), cbor2.CBORTag(1, 1767225600)], ids=["bignum", "negative-bignum", "rational", "date"]
)
async def test_big_integers_and_tagged_items_in_a_signed_status_or_notice_body_are_4xx(
    running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway, endpoint: str, item: object
) -> None:
    message = {"ts_ms": item} if endpoint == "status" else {"ts_ms": 1, "notice": {"schema": item}}
    status, body, _ = await post(http, running_hub, endpoint, seal_status(message, device_id=gateway.device_id, private_key=gateway.private_key))
    assert 400 <= status < 500, body
    await still_serving(http, running_hub, gateway, 1)


async def test_forged_batches_spend_no_device_quota(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with run_hub(state_dir=tmp_path, admin_token="x", rate=0.01, burst=2) as hub:
        gateway = SimGateway("pole-0042")
        await enrol(http, hub.url, gateway, await hub.create_token())
        impostor = SimGateway("pole-0042")
        for seq in range(1, 6):
            forged = bytearray(impostor.batch(seq))
            at = forged.find(impostor.key_id)
            forged[at : at + 8] = gateway.key_id  # the enrolled key id, a signature that cannot verify
            status, body, _ = await post(http, hub, "batches", bytes(forged))
            assert (status, body["error"]) == (401, "bad_signature")
        for seq in (1, 2):  # the device's whole burst is still its own
            status, ack, _ = await post(http, hub, "batches", gateway.batch(seq))
            assert (status, ack["status"]) == (200, "stored")
        status, body, headers = await post(http, hub, "batches", gateway.batch(3))
        assert (status, body["error"]) == (429, "rate_limited") and int(headers["Retry-After"]) >= 1


async def test_only_a_batch_the_device_signed_marks_it_failing(running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway) -> None:
    impostor = SimGateway(gateway.device_id)
    forged = bytearray(impostor.batch(1))
    at = forged.find(impostor.key_id)
    forged[at : at + 8] = gateway.key_id
    unsupported = _sign({ALG: EDDSA, KID: gateway.key_id, OXP_BATCH: {H_VERSION: 3, H_DEVICE: gateway.device_id}}, b"", impostor.private_key)
    for data, answer in ((bytes(forged), (401, "bad_signature")), (unsupported, (400, "malformed"))):
        status, body, _ = await post(http, running_hub, "batches", data)
        assert (status, body["error"]) == answer
        assert gateway.device_id not in running_hub.hub.faults.failing()
    signed_but_bad = _sign(protected_for(gateway), b"", gateway.private_key)  # the device's own key, a header missing its fields
    status, body, _ = await post(http, running_hub, "batches", signed_but_bad)
    assert (status, body["error"]) == (400, "malformed")
    assert running_hub.hub.faults.failing() == {gateway.device_id: "malformed"}


async def test_an_enrolment_body_nested_8000_deep_is_400(running_hub: RunningHub, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{running_hub.url}/oxp/v1/enrol", data="[" * 8000 + "]" * 8000, headers={"Content-Type": "application/json"}) as resp:
        body = await resp.json()
    assert (resp.status, body["error"]) == (400, "malformed") and "deeper" in body["detail"]


@pytest.mark.parametrize("version", ["0.1\x00", "0.1\r\nforged: line", "\x7f"])
async def test_an_enrolment_whose_software_version_holds_a_control_character_is_400_and_enrols_nothing(
    db_url: str, tmp_path: Path, http: aiohttp.ClientSession, version: str
) -> None:
    # PostgreSQL refuses U+0000 in text: without the check this was a 500 there and stored on SQLite.
    async with run_hub(db=db_url, state_dir=tmp_path / "hub", admin_token="admin-secret") as hub:
        gateway = SimGateway("pole-nul")
        body = gateway.enrol_body(await hub.create_token(), software_version=version)
        async with http.post(f"{hub.url}/oxp/v1/enrol", json=body) as resp:
            answer = await resp.json()
        assert (resp.status, answer["error"]) == (400, "malformed")
        assert answer["detail"].startswith("field 'software_version' = ") and "control characters" in answer["detail"]
        assert await hub.store.device("pole-nul") is None
        await enrol(http, hub.url, gateway, body["token"])  # the token was not spent: the same one enrols a good body


# --- the per-address limit -------------------------------------------------------------------


async def test_an_address_sending_refused_messages_is_limited_and_a_trusted_proxy_names_the_client(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    settings = IngestSettings(address_rate=0.01, address_burst=3, trusted_proxies=("127.0.0.1/32",))
    async with run_hub(state_dir=tmp_path, admin_token="x", ingest=settings) as hub:
        attacker, neighbour = {"X-Forwarded-For": "203.0.113.7"}, {"X-Forwarded-For": "198.51.100.1, 203.0.113.9"}
        for _ in range(3):
            status, _, _ = await post(http, hub, "batches", b"\xd2\x84garbage", attacker)
            assert status == 400
        for endpoint in ENDPOINTS:
            status, body, headers = await post(http, hub, endpoint, b"\xd2\x84garbage", attacker)
            assert (status, body["error"]) == (429, "rate_limited") and "203.0.113.7" in body["detail"] and int(headers["Retry-After"]) >= 1
        async with http.post(f"{hub.url}/oxp/v1/enrol", json={}, headers=attacker) as resp:
            assert resp.status == 429
        # Another client behind the same proxy is counted apart (the nearest untrusted hop names it).
        status, _, _ = await post(http, hub, "batches", b"\xd2\x84garbage", neighbour)
        assert status == 400


async def test_without_a_trusted_proxy_x_forwarded_for_is_ignored(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with run_hub(state_dir=tmp_path, admin_token="x", ingest=IngestSettings(address_rate=0.01, address_burst=2)) as hub:
        for n in range(2):
            status, _, _ = await post(http, hub, "status", b"\x00", {"X-Forwarded-For": f"203.0.113.{n}"})
            assert status == 400
        status, body, _ = await post(http, hub, "status", b"\x00", {"X-Forwarded-For": "203.0.113.99"})
        assert (status, body["error"]) == (429, "rate_limited") and "127.0.0.1" in body["detail"]


async def test_refused_enrolment_attempts_are_charged_to_their_address_and_enrolments_are_not(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with run_hub(state_dir=tmp_path, admin_token="x", ingest=IngestSettings(address_rate=0.01, address_burst=2)) as hub:
        token = await hub.create_token(uses=5)
        for n in range(5):
            await enrol(http, hub.url, SimGateway(f"pole-{n}"), token)
        answers = []
        for _ in range(3):
            async with http.post(f"{hub.url}/oxp/v1/enrol", json=SimGateway("pole-9").enrol_body("wrong-token")) as resp:
                answers.append(resp.status)
        assert answers == [401, 401, 429]


# --- bounded work: the queue and the readings budget ------------------------------------------


async def test_a_full_queue_answers_503_busy_with_retry_after_and_work_resumes(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with run_hub(state_dir=tmp_path, admin_token="x", ingest=IngestSettings(workers=1, queue=0)) as hub:
        gateway = SimGateway("pole-0042")
        await enrol(http, hub.url, gateway, await hub.create_token())
        release = threading.Event()
        blocker = asyncio.create_task(hub.hub.workers.run(release.wait))
        while hub.hub.workers.admitted == 0:
            await asyncio.sleep(0)
        try:
            # A batch of 1,000 readings is decoded by a worker (a small one is checked on the loop: hub.ingest.INLINE_READINGS).
            for endpoint, data in (("batches", gateway.batch(1, n=1000)), ("status", gateway.status())):
                status, body, headers = await post(http, hub, endpoint, data)
                assert (status, body["error"], headers["Retry-After"]) == (503, "busy", "1")
        finally:
            release.set()
            await blocker
        assert gateway.device_id not in hub.hub.faults.failing()  # a busy hub is not the device's fault
        await still_serving(http, hub, gateway, 1)


def huge_declared_batch(gateway: SimGateway, readings: int, *, devices: list[str] | None = None) -> bytes:
    """A validly signed batch of a few hundred bytes whose body declares ``readings`` boolean readings at one time."""
    body = cbor2.dumps([0, devices or [""], [[2, "door", 0, None, readings, bytes(readings), [6, bytes((readings + 7) // 8)]]]])
    header = {H_VERSION: 2, H_DEVICE: gateway.device_id, H_BOOT: 1, H_SEQ: 1, H_POLICY: b"", H_CODEC: 1, H_CREATED: int(time.time() * 1000)}
    return _sign({ALG: EDDSA, KID: gateway.key_id, OXP_BATCH: header}, compress(body, "zstd"), gateway.private_key)


async def test_a_tiny_batch_declaring_a_million_readings_is_429_without_decoding_them(
    running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway
) -> None:
    data = huge_declared_batch(gateway, 1_000_000)
    assert len(data) < 1000
    tracemalloc.start()
    try:
        status, body, headers = await post(http, running_hub, "batches", data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (status, body["error"]) == (429, "readings_budget") and "1000000 readings in" in body["detail"]
    assert int(headers["Retry-After"]) >= 1
    # The body (about 1.1 MB once decompressed) is weighed, not decoded: a million readings would take hundreds of MiB.
    assert peak < 16 << 20
    # Told to wait, the device is refused the same way until the wait is over, before anything is verified or
    # decompressed (OXP §4.4): sent again as fast as answered, each costs a lookup. A bad signature shows nothing was checked.
    for again in (data, data[:-1] + bytes([data[-1] ^ 1])):
        status, refused, headers = await post(http, running_hub, "batches", again)
        assert (status, refused["error"], refused["detail"]) == (429, "readings_budget", body["detail"]) and int(headers["Retry-After"]) >= 1
    other = SimGateway("pole-0043")
    await enrol(http, running_hub.url, other, await running_hub.create_token())
    await still_serving(http, running_hub, other, 1)


async def test_a_body_far_larger_than_its_readings_is_charged_by_its_size(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with run_hub(state_dir=tmp_path, admin_token="x", ingest=IngestSettings(readings_burst=1000)) as hub:
        gateway = SimGateway("pole-0042")
        await enrol(http, hub.url, gateway, await hub.create_token())
        # One reading, and a megabyte of device names no series uses.
        data = huge_declared_batch(gateway, 1, devices=[""] + ["x" * 1000] * 1000)
        status, body, _ = await post(http, hub, "batches", data)
        assert (status, body["error"]) == (429, "readings_budget") and "declares 1 readings" in body["detail"]


async def test_a_gateway_over_its_readings_budget_is_slowed_and_delivers_everything(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    settings = IngestSettings(readings_rate=100.0, readings_burst=120)
    async with run_hub(state_dir=tmp_path / "hub", admin_token="x", ingest=settings) as hub:
        spool = await Spool.open(tmp_path / "spool.db", max_bytes=50_000_000)
        await spool.begin_boot()
        gateway = SimGateway("pole-0042")
        await enrol(http, hub.url, gateway, await hub.create_token())
        now_ms = int(time.time() * 1000)
        for n in range(5):
            spool.put(seal_readings(gateway.private_key, spool, 50, start_ms=now_ms + n * 50_000), readings=50)
        uplink = Uplink(spool=spool, transport=open_transport(hub.url, timeout_s=10.0), private_key=gateway.private_key, device_id="pole-0042",
                        status_interval_s=0, backoff_initial_s=0.01, backoff_max_s=0.05, idle_poll_s=0.05)
        task = asyncio.create_task(uplink.run())
        try:
            async with asyncio.timeout(60):
                while spool.stats()["batches"]:
                    await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await uplink.aclose()
            await spool.close()
        assert (await hub.counters("pole-0042"))["readings_stored"] == 250
        assert uplink.counters.retries >= 1 and "readings_budget" in uplink.counters.last_error
        assert uplink.counters.batches_quarantined == 0


async def test_a_gateway_answered_busy_waits_and_delivers(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    async with run_hub(state_dir=tmp_path / "hub", admin_token="x", ingest=IngestSettings(workers=1, queue=0)) as hub:
        spool = await Spool.open(tmp_path / "spool.db", max_bytes=50_000_000)
        await spool.begin_boot()
        gateway = SimGateway("pole-0042")
        await enrol(http, hub.url, gateway, await hub.create_token())
        # 500 readings: decoded by a worker (a small batch is checked on the loop: hub.ingest.INLINE_READINGS).
        spool.put(seal_readings(gateway.private_key, spool, 500, start_ms=int(time.time() * 1000) - 500_000), readings=500)
        release = threading.Event()
        blocker = asyncio.create_task(hub.hub.workers.run(release.wait))
        uplink = Uplink(spool=spool, transport=open_transport(hub.url, timeout_s=10.0), private_key=gateway.private_key, device_id="pole-0042",
                        status_interval_s=0, backoff_initial_s=0.01, backoff_max_s=0.05, idle_poll_s=0.05)
        task = asyncio.create_task(uplink.run())
        try:
            async with asyncio.timeout(30):
                while uplink.counters.retries == 0:
                    await asyncio.sleep(0.02)
                assert "busy" in uplink.counters.last_error
                release.set()
                await blocker
                while spool.stats()["batches"]:
                    await asyncio.sleep(0.05)
        finally:
            release.set()
            task.cancel()
            await asyncio.gather(task, blocker, return_exceptions=True)
            await uplink.aclose()
            await spool.close()
        assert (await hub.counters("pole-0042"))["readings_stored"] == 500
        assert uplink.counters.batches_quarantined == 0


# --- the limits themselves, on a given clock ------------------------------------------------


def test_a_new_device_may_send_its_burst_then_waits_at_its_readings_rate() -> None:
    budget = ReadingsBudget(rate=1000, burst=100_000, ceiling=1_000_000)
    assert budget.wait("d", 100_000, now=0.0) == 0.0
    budget.take("d", 100_000, now=0.0)
    assert budget.wait("d", 20_000, now=0.0) == pytest.approx(20.0)
    assert budget.wait("d", 20_000, now=20.0) == 0.0


def test_every_batch_the_protocol_allows_is_accepted_after_a_wait() -> None:
    budget = ReadingsBudget(rate=1000, burst=100_000, ceiling=1_000_000)
    wait = budget.wait("d", 1_000_000, now=0.0)
    assert wait == pytest.approx(900.0)
    assert budget.wait("d", 1_000_000, now=wait) == 0.0


def test_a_device_that_has_shown_a_higher_rate_refills_faster_up_to_headroom_times_the_floor() -> None:
    budget = ReadingsBudget(rate=10, burst=1000, ceiling=1_000_000, headroom=4.0)
    day = 86_400.0
    for hour in range(24):  # 30 readings a second on average over a day, above the floor of 10
        budget.take("busy", 30 * 3600, now=3600.0 * hour)
    budget.take("quiet", 1000, now=day)  # a device that has just spent its burst
    budget.take("busy", budget.ceiling, now=day)

    def refill_rate(device: str) -> float:
        return 400 / (budget.wait(device, 800, now=day) - budget.wait(device, 400, now=day))

    # The quiet device refills at the floor, the busy one at 4 x the floor (not 4 x its 30 a second).
    assert (refill_rate("quiet"), refill_rate("busy")) == pytest.approx((10.0, 40.0))


def test_peek_does_not_charge_and_check_does() -> None:
    limiter = RateLimiter(rate=1.0, burst=2)
    assert [limiter.peek("a", now=0.0) for _ in range(5)] == [0.0] * 5
    assert [limiter.check("a", now=0.0) for _ in range(3)] == [0.0, 0.0, 1.0]
    assert limiter.peek("a", now=0.0) == 1.0


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("127.0.0.1", ["203.0.113.7"], "203.0.113.7"),
        ("127.0.0.1", ["198.51.100.1, 203.0.113.7"], "203.0.113.7"),  # the left hop is the client's word
        ("127.0.0.1", ["203.0.113.7", "127.0.0.1"], "203.0.113.7"),  # trusted hops are skipped
        ("127.0.0.1", ["not-an-address"], "127.0.0.1"),
        ("127.0.0.1", [], "127.0.0.1"),
        ("192.0.2.5", ["203.0.113.7"], "192.0.2.5"),  # an untrusted peer's header is ignored
    ],
)
def test_the_client_address_comes_from_x_forwarded_for_only_through_a_trusted_proxy(peer: str, forwarded: list[str], client: str) -> None:
    assert client_address(peer, forwarded, parse_networks(["127.0.0.1/32"])) == client


@pytest.mark.parametrize(
    ("text", "depth"),
    [(b"1", 0), (b"[]", 1), (b'{"a": [1, {"b": []}]}', 4), (b'["[[[[", "\\"[[["]', 1), (b"[" * 8000, 33)],
)
def test_json_depth_counts_brackets_outside_strings_and_stops_past_the_limit(text: bytes, depth: int) -> None:
    assert json_depth(text, stop_after=32) == depth


"""OXP v1 on the wire: enrolment, verified ingest exactly once, status reports and notices."""

from __future__ import annotations

import asyncio
import tomllib
from urllib.parse import urlsplit

import aiohttp

from edge.demo import DEMO_POLICY
from edge.protocol import MEDIA_TYPE
from edge.protocol.desired import verify_document
from hub.app import RunningHub
from hub.database import sqlite_path
from tests.hub.gateways import SimGateway, enrol, post_cose


async def test_a_batch_is_acked_as_stored_and_its_readings_are_kept(running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway) -> None:
    status, ack, _ = await post_cose(http, f"{running_hub.url}/oxp/v1/batches", gateway.batch(1, n=30))
    assert status == 200
    assert ack == {"device_id": "pole-0042", "key_id": gateway.key_id.hex(), "boot_epoch": 1, "seq": 1, "status": "stored"}
    assert await running_hub.counters("pole-0042") == {"readings_stored": 30, "batches_stored": 1, "duplicates": 0}


async def test_a_replayed_batch_gets_the_same_ack_marked_duplicate_and_is_stored_once(
    running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway
) -> None:
    data = gateway.batch(1)
    _, first, _ = await post_cose(http, f"{running_hub.url}/oxp/v1/batches", data)
    _, again, _ = await post_cose(http, f"{running_hub.url}/oxp/v1/batches", data)
    assert {**first, "status": "duplicate"} == again
    assert await running_hub.counters("pole-0042") == {"readings_stored": 30, "batches_stored": 1, "duplicates": 1}


async def test_a_batch_from_an_unknown_key_is_refused_with_403(running_hub: RunningHub, http: aiohttp.ClientSession) -> None:
    status, body, _ = await post_cose(http, f"{running_hub.url}/oxp/v1/batches", SimGateway("stranger").batch(1))
    assert (status, body["error"]) == (403, "unknown_device")


async def test_a_revoked_device_is_refused_with_403_revoked(running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway) -> None:
    assert await running_hub.set_device_status("pole-0042", "revoked")
    status, body, _ = await post_cose(http, f"{running_hub.url}/oxp/v1/batches", gateway.batch(1))
    assert (status, body["error"]) == (403, "revoked")


async def test_a_pending_device_is_refused_until_city_it_approves_it(running_hub: RunningHub, http: aiohttp.ClientSession) -> None:
    gw = SimGateway("pole-7")
    answer = await enrol(http, running_hub.url, gw, await running_hub.create_token(approve=False))
    assert answer["status"] == "pending"
    status, _, _ = await post_cose(http, f"{running_hub.url}/oxp/v1/batches", gw.batch(1))
    assert status == 403
    await running_hub.set_device_status("pole-7", "active")
    status, _, _ = await post_cose(http, f"{running_hub.url}/oxp/v1/batches", gw.batch(1))
    assert status == 200


async def test_a_batch_signed_by_another_key_under_an_enrolled_key_id_is_401(running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway) -> None:
    forged = bytearray(gateway.batch(1))
    forged[-10] ^= 0x01  # inside the signature
    status, body, _ = await post_cose(http, f"{running_hub.url}/oxp/v1/batches", bytes(forged))
    assert (status, body["error"]) == (401, "bad_signature")


async def test_a_body_of_the_wrong_media_type_is_415(running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway) -> None:
    async with http.post(f"{running_hub.url}/oxp/v1/batches", data=gateway.batch(1), headers={"Content-Type": "application/json"}) as resp:
        assert (resp.status, (await resp.json())["error"]) == (415, "unsupported_media_type")


async def test_a_body_over_one_mebibyte_is_413(running_hub: RunningHub, http: aiohttp.ClientSession) -> None:
    status, body, _ = await post_cose(http, f"{running_hub.url}/oxp/v1/batches", b"\x00" * (1024 * 1024 + 1))
    assert (status, body["error"]) == (413, "too_large")


async def test_a_malformed_body_is_400_with_a_reason(running_hub: RunningHub, http: aiohttp.ClientSession) -> None:
    status, body, _ = await post_cose(http, f"{running_hub.url}/oxp/v1/batches", b"\xd2\x84")
    assert (status, body["error"], body["reason"]) == (400, "malformed", "truncated")


async def test_a_device_sending_faster_than_its_rate_limit_gets_429_with_retry_after(tmp_path, http: aiohttp.ClientSession) -> None:
    from hub.app import run_hub

    async with run_hub(state_dir=tmp_path, admin_token="x", rate=1.0, burst=2) as hub:
        gw = SimGateway("pole-1")
        await enrol(http, hub.url, gw, await hub.create_token())
        answers = [await post_cose(http, f"{hub.url}/oxp/v1/batches", gw.batch(seq)) for seq in range(3)]
    assert [a[0] for a in answers] == [200, 200, 429]
    assert answers[2][1]["error"] == "rate_limited" and int(answers[2][2]["Retry-After"]) >= 1


async def test_enrolment_with_a_bad_token_is_401_and_a_taken_device_id_is_409(
    running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway
) -> None:
    async with http.post(f"{running_hub.url}/oxp/v1/enrol", json=SimGateway("pole-9").enrol_body("nope")) as resp:
        assert (resp.status, (await resp.json())["error"]) == (401, "bad_token")
    token = await running_hub.create_token()
    async with http.post(f"{running_hub.url}/oxp/v1/enrol", json=SimGateway("pole-0042").enrol_body(token)) as resp:
        assert (resp.status, (await resp.json())["error"]) == (409, "conflict")


async def test_enrolment_stores_the_token_only_as_a_hash(running_hub: RunningHub, http: aiohttp.ClientSession) -> None:
    token = await running_hub.create_token()
    db = sqlite_path(running_hub.store.url)
    await enrol(http, running_hub.url, SimGateway("pole-3"), token)
    with open(db, "rb") as f:
        assert token.encode() not in f.read()


async def test_a_status_report_updates_the_fleet_and_returns_the_signed_desired_document(
    running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway
) -> None:
    policy = tomllib.loads(DEMO_POLICY.read_text())
    await running_hub.set_desired("fleet", "default", {"config": {"batch": {"span": "5m"}}, "policy": policy})
    await running_hub.set_desired("device", "pole-0042", {"config": {"batch": {"span": "1m"}}})
    status, answer, headers = await post_cose(http, f"{running_hub.url}/oxp/v1/status", gateway.status(spool_batches=3, errors=["pm-1 silent"]))
    assert status == 200 and answer["ok"] is True and answer["etag"]
    document = verify_document(answer["desired"], running_hub.hub.signing_key.public_key())
    assert document["config"] == {"batch": {"span": "1m"}} and document["policy"] == policy
    assert document["etag"] == answer["etag"]
    device = await running_hub.store.device("pole-0042")
    assert device is not None and device.spool_batches == 3 and device.errors == ("pm-1 silent",)


async def test_a_status_report_naming_the_current_etag_gets_no_document_again(
    running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway
) -> None:
    await running_hub.set_desired("fleet", "default", {"config": {"batch": {"span": "5m"}}})
    _, first, _ = await post_cose(http, f"{running_hub.url}/oxp/v1/status", gateway.status())
    headers = {"Content-Type": MEDIA_TYPE, "If-None-Match": f'"{first["etag"]}"'}
    async with http.post(f"{running_hub.url}/oxp/v1/status", data=gateway.status(), headers=headers) as resp:
        again = await resp.json()
    assert again == {"ok": True, "desired": None, "etag": first["etag"]}


async def test_a_signed_notice_is_published_in_the_transparency_register(running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway) -> None:
    notice = {"site": "King St W & Spadina Ave", "operator": "City of Toronto", "sensors": [{"channel": "pm-1/pm2_5", "purpose": "air quality"}]}
    status, answer, _ = await post_cose(http, f"{running_hub.url}/oxp/v1/notice", gateway.notice(notice))
    assert status == 200 and answer["ok"] is True
    async with http.get(f"{running_hub.url}/transparency.json") as resp:
        register = await resp.json()
    assert register["notices"][0]["device_id"] == "pole-0042" and register["notices"][0]["notice"] == notice


class PostgresLink:
    """A TCP relay between the hub and PostgreSQL on loopback, so a test can cut the database off and bring it back."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.server: asyncio.base_events.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.writers):
            writer.close()
        await self.server.wait_closed()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def test_a_database_outage_answers_503_with_retry_after_and_the_hub_recovers(
    postgres_url: tuple[str, str, str], tmp_path, http: aiohttp.ClientSession, caplog
) -> None:
    from hub.app import run_hub
    from tests.hub.conftest import drop_schema

    caplog.set_level("INFO", logger="ocn.hub")
    url, dsn, schema = postgres_url
    parts = urlsplit(url)
    link = PostgresLink((parts.hostname or "127.0.0.1", parts.port or 5432))
    await link.up()
    credentials = (parts.username or "postgres") + (f":{parts.password}" if parts.password else "")
    relayed = parts._replace(netloc=f"{credentials}@127.0.0.1:{link.port}").geturl()
    try:
        async with run_hub(state_dir=tmp_path, db=relayed, admin_token="x") as hub:
            gw = SimGateway("pole-1")
            await enrol(http, hub.url, gw, await hub.create_token())
            assert (await post_cose(http, f"{hub.url}/oxp/v1/batches", gw.batch(0)))[0] == 200
            await link.down()
            status, body, headers = await post_cose(http, f"{hub.url}/oxp/v1/batches", gw.batch(1))
            assert (status, body["error"], headers["Retry-After"]) == (503, "unavailable", "10")
            await link.up()
            for _ in range(20):  # the pool reconnects on its own
                status, ack, _ = await post_cose(http, f"{hub.url}/oxp/v1/batches", gw.batch(1))
                if status == 200:
                    break
                await asyncio.sleep(0.1)
            assert status == 200 and ack["status"] == "stored"
            assert (await hub.counters("pole-1"))["batches_stored"] == 2
        # Said once each way, in our words: not asyncpg's "ConnectionDoesNotExistError: connection was closed in the middle of operation".
        said = [(r.getMessage(), getattr(r, "error", None)) for r in caplog.records if r.name == "ocn.hub" and "database" in r.getMessage()]
        assert [message for message, _ in said] == ["database unavailable; answering 503", "database available again"], said
        assert said[0][1] in ("the connection to PostgreSQL was closed in the middle of a query (the server stopped or restarted?)",
                              "the connection to PostgreSQL is not usable (closed, or in the middle of another operation)",
                              "cannot reach the database: connection refused (nothing listens there: is it running?)"), said
    finally:
        if link.server is not None and link.server.is_serving():
            await link.down()
        await drop_schema(dsn, schema)


async def test_a_device_sending_bad_batches_is_logged_once_when_it_starts_and_once_when_it_recovers(
    running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway, caplog
) -> None:
    caplog.set_level("INFO", logger="ocn.hub.ingest")
    misnamed = SimGateway("another-pole", private_key=gateway.private_key)  # signed by the device, naming another
    for seq in range(1, 6):
        await post_cose(http, f"{running_hub.url}/oxp/v1/batches", misnamed.batch(seq))
    await post_cose(http, f"{running_hub.url}/oxp/v1/batches", gateway.batch(1))
    lines = [(r.getMessage(), getattr(r, "error", None) or getattr(r, "after_error", None)) for r in caplog.records if r.name == "ocn.hub.ingest"]
    assert lines == [("device batches refused", "malformed"), ("device batches accepted again", "malformed")]


async def test_a_batch_of_hundreds_of_kilobytes_arrives_whole_and_is_stored(running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway) -> None:
    import random

    from edge.protocol import BatchHeader, seal_batch
    from edge.protocol.types import Channel, Reading

    rng = random.Random(1)
    channel = Channel("meter-1/noise", unit="V")  # no resolution: raw floats, which barely compress
    readings = [Reading(channel.id, 1_790_000_000_000 + i, rng.random(), "V") for i in range(40_000)]
    header = BatchHeader(device_id="pole-0042", key_id=gateway.key_id, boot_epoch=1, seq=9, policy_digest=b"", codec="zstd", created_ms=1)
    data = seal_batch(header, [channel], readings, gateway.private_key)
    assert len(data) > 200_000
    status, ack, _ = await post_cose(http, f"{running_hub.url}/oxp/v1/batches", data)
    assert (status, ack["status"]) == (200, "stored")
    stored = await running_hub.store.readings(channel="meter-1/noise", limit=100_000)
    assert [r.value for r in stored] == [r.value for r in readings]

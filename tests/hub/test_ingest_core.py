"""The ingest core without a wire: sealed bytes in, typed outcomes out, no HTTP anywhere (hub.ingest)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.protocol import Answer, Status, raw_public_key
from edge.util.clock import now_ms
from hub.auth import secret_hash
from hub.faults import DeviceFaults
from hub.ingest import Acked, Ingest, NoticeTaken, Refused, ReportTaken
from hub.keycache import KeyCache
from hub.ratelimit import RateLimiter, ReadingsBudget
from hub.store import Store
from hub.workers import Workers
from tests.hub.gateways import SimGateway


@pytest.fixture
async def ingest(store: Store) -> AsyncIterator[Ingest]:
    workers = Workers(workers=1, queue=4)
    try:
        yield Ingest(store=store, keys=KeyCache(store), limiter=RateLimiter(rate=50.0, burst=200),
                     readings=ReadingsBudget(rate=1000.0, burst=100_000, ceiling=1_000_000), workers=workers,
                     faults=DeviceFaults(), signing_key=Ed25519PrivateKey.generate())
    finally:
        workers.close()


async def enrolled(store: Store, device_id: str = "pole-0042") -> SimGateway:
    gateway = SimGateway(device_id)
    await store.create_token(secret_hash("t"), uses=1, expires_ms=now_ms() + 60_000, approve=True, fleet="default", note="", now_ms=now_ms())
    await store.enrol(secret_hash("t"), device_id=device_id, public_key=raw_public_key(gateway.private_key),
                      key_id=gateway.key_id, software_version="0.1.0", now_ms=now_ms())
    return gateway


async def test_a_batch_is_acked_by_its_identity_and_a_replay_as_a_duplicate(ingest: Ingest) -> None:
    gateway = await enrolled(ingest.store)
    first = await ingest.batch(gateway.batch(1))
    assert first == Acked("pole-0042", gateway.key_id, 1, 1, "stored")
    assert first.document() == {"device_id": "pole-0042", "key_id": gateway.key_id.hex(), "boot_epoch": 1, "seq": 1, "status": "stored"}
    assert await ingest.batch(gateway.batch(1)) == Acked("pole-0042", gateway.key_id, 1, 1, "duplicate")


async def test_bytes_that_are_no_message_are_refused_malformed_with_the_reason_and_charged_to_the_sender(ingest: Ingest) -> None:
    refused = await ingest.batch(b"\xd2\x84")
    assert isinstance(refused, Refused)
    assert (refused.answer, refused.status, refused.reason, refused.charged) == (Answer.MALFORMED, Status.INVALID, "truncated", True)
    assert refused.document() == {"error": "malformed", "detail": refused.detail, "reason": "truncated"}


async def test_a_batch_of_a_key_nobody_enrolled_is_refused_unknown_device_and_charged(ingest: Ingest) -> None:
    refused = await ingest.batch(SimGateway("pole-9").batch(1))
    assert isinstance(refused, Refused)
    assert (refused.answer, refused.status, refused.charged) == (Answer.UNKNOWN_DEVICE, Status.FORBIDDEN, True)


async def test_a_batch_signed_by_another_key_under_a_known_key_id_is_a_bad_signature_that_marks_no_fault(ingest: Ingest) -> None:
    gateway = await enrolled(ingest.store)
    forger = SimGateway("pole-0042")
    sealed = bytearray(forger.batch(1))
    at = sealed.index(forger.key_id)
    sealed[at : at + 8] = gateway.key_id  # the key id of the enrolled device, the signature of another
    refused = await ingest.batch(bytes(sealed))
    assert isinstance(refused, Refused)
    assert (refused.answer, refused.status, refused.charged) == (Answer.BAD_SIGNATURE, Status.UNAUTHENTICATED, True)
    assert ingest.faults.failing() == {}


async def test_a_status_report_is_recorded_and_its_replay_refused_stale_without_charge(ingest: Ingest) -> None:
    gateway = await enrolled(ingest.store)
    report = gateway.status(report_seq=1)
    assert await ingest.status_report(report) == ReportTaken(desired=None, etag="")
    replay = await ingest.status_report(report)
    assert isinstance(replay, Refused)
    assert (replay.answer, replay.status, replay.charged) == (Answer.STALE, Status.CONFLICT, False)


async def test_a_notice_is_registered_and_a_message_without_one_is_refused_malformed(ingest: Ingest) -> None:
    gateway = await enrolled(ingest.store)
    taken = await ingest.notice(gateway.notice({"purpose": "air quality"}))
    assert isinstance(taken, NoticeTaken)
    refused = await ingest.notice(gateway.status(report_seq=5))
    assert isinstance(refused, Refused)
    assert (refused.answer, refused.reason) == (Answer.MALFORMED, "malformed")


async def test_a_device_over_its_batch_rate_is_refused_before_its_batch_is_verified(ingest: Ingest, monkeypatch: pytest.MonkeyPatch) -> None:
    gateway = await enrolled(ingest.store)
    ingest.limiter = RateLimiter(rate=0.001, burst=1)  # one batch, then a long wait
    assert isinstance(await ingest.batch(gateway.batch(1)), Acked)
    jobs: list[object] = []
    run = ingest.workers.run

    async def counted(job: Callable[..., object], *args: object) -> object:
        jobs.append(job)
        return await run(job, *args)

    monkeypatch.setattr(ingest.workers, "run", counted)
    refused = await ingest.batch(gateway.batch(2))
    assert isinstance(refused, Refused) and refused.answer == Answer.RATE_LIMITED and not refused.charged
    assert refused.retry_after_s is not None and refused.retry_after_s > 0
    assert jobs == []  # no signature checked, nothing decompressed: a flood under one key costs a lookup each

"""Fuzzing the ingest endpoints: whatever arrives, the answer is a 4xx and the hub keeps serving."""

from __future__ import annotations

import json
import random
from typing import Any

import aiohttp
import cbor2
import pytest

from edge.protocol import MEDIA_TYPE
from hub.app import RunningHub
from tests.hub.gateways import SimGateway, post_cose

CASES = 150


def random_cbor(rng: random.Random, depth: int = 0) -> Any:
    choice = rng.randrange(10 if depth < 4 else 6)
    if choice == 0:
        return rng.randrange(-(2**64), 2**64)
    if choice == 1:
        return rng.random() * 10 ** rng.randrange(-5, 30)
    if choice == 2:
        return rng.randbytes(rng.randrange(0, 80))
    if choice == 3:
        return "".join(chr(rng.randrange(32, 0x2FFF)) for _ in range(rng.randrange(0, 20)))
    if choice == 4:
        return rng.choice([None, True, False, cbor2.undefined])
    if choice == 5:
        return cbor2.CBORTag(rng.choice([0, 1, 2, 18, 24, 55799, rng.randrange(2**32)]), rng.randrange(100))
    if choice == 6:
        return [random_cbor(rng, depth + 1) for _ in range(rng.randrange(0, 6))]
    if choice == 7:
        return {rng.choice([1, 3, 4, -65537, "x", rng.randrange(-100, 100)]): random_cbor(rng, depth + 1) for _ in range(rng.randrange(0, 6))}
    if choice == 8:
        return cbor2.CBORTag(18, [random_cbor(rng, depth + 1) for _ in range(4)])
    # A COSE_Sign1 whose protected header names an enrolled-looking key but whose parts are random.
    content_type = rng.choice(["application/vnd.ocn.oxp-batch", "application/vnd.ocn.oxp-status+cbor"])
    protected = cbor2.dumps({1: -8, 3: content_type, 4: rng.randbytes(8), -65537: random_cbor(rng, depth + 1)})
    return cbor2.CBORTag(18, [protected, {}, rng.randbytes(rng.randrange(0, 200)), rng.randbytes(64)])


def bodies(kind: str, rng: random.Random, real: bytes) -> list[bytes]:
    if kind == "random bytes":
        return [rng.randbytes(rng.randrange(0, 2000)) for _ in range(CASES)]
    if kind == "random CBOR":
        out = []
        for _ in range(CASES):
            try:
                out.append(cbor2.dumps(random_cbor(rng)))
            except (ValueError, TypeError, OverflowError):
                continue
        return out
    if kind == "truncated batches":
        return [real[:n] for n in sorted(rng.sample(range(len(real)), min(CASES, len(real))))]
    if kind == "bit-flipped batches":
        out = []
        for _ in range(CASES):
            flipped = bytearray(real)
            for _ in range(rng.randrange(1, 4)):
                flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
            out.append(bytes(flipped))
        return out
    raise AssertionError(kind)


@pytest.mark.parametrize("endpoint", ["batches", "status", "notice"])
@pytest.mark.parametrize("kind", ["random bytes", "random CBOR", "truncated batches", "bit-flipped batches"])
async def test_fuzzed_bodies_get_only_4xx_and_the_hub_stays_live(
    running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway, kind: str, endpoint: str
) -> None:
    rng = random.Random(f"{kind}/{endpoint}")
    real = gateway.batch(1, n=60) if endpoint == "batches" else gateway.status(errors=["x"] * 3)
    answers = []
    for body in bodies(kind, rng, real):
        async with http.post(f"{running_hub.url}/oxp/v1/{endpoint}", data=body, headers={"Content-Type": MEDIA_TYPE}) as resp:
            await resp.read()
            answers.append(resp.status)
    assert answers and all(400 <= s < 500 for s in answers if s != 200), sorted(set(answers))
    status, ack, _ = await post_cose(http, f"{running_hub.url}/oxp/v1/batches", gateway.batch(2))
    assert status == 200 and ack["status"] == "stored"


async def test_batches_signed_with_a_key_not_enrolled_under_that_key_id_are_401(
    running_hub: RunningHub, http: aiohttp.ClientSession, gateway: SimGateway
) -> None:
    impostor = SimGateway("pole-0042")
    data = bytearray(impostor.batch(1))
    # Put the enrolled key id in the protected header: the signature then cannot verify.
    index = data.find(impostor.key_id)
    data[index : index + 8] = gateway.key_id
    status, body, _ = await post_cose(http, f"{running_hub.url}/oxp/v1/batches", bytes(data))
    assert (status, body["error"]) == (401, "bad_signature")


async def test_fuzzed_enrolment_requests_get_only_4xx(running_hub: RunningHub, http: aiohttp.ClientSession) -> None:
    rng = random.Random("enrol")
    statuses = set()
    for _ in range(CASES):
        body: Any = {k: random_cbor(rng) for k in rng.sample(["token", "device_id", "public_key", "software_version"], rng.randrange(5))}
        try:
            payload = json.dumps(body, default=repr)
        except (ValueError, TypeError):
            payload = "{"
        async with http.post(f"{running_hub.url}/oxp/v1/enrol", data=payload, headers={"Content-Type": "application/json"}) as resp:
            statuses.add(resp.status)
    assert statuses and all(400 <= s < 500 for s in statuses), statuses

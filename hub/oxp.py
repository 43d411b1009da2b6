"""The OXP v1 endpoints a gateway talks to: enrol, batches, status and transparency notices."""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.protocol import (
    MAX_BATCH_BYTES,
    MAX_READINGS,
    MAX_STATUS_BYTES,
    Batch,
    BatchHeader,
    ProtocolError,
    declared_readings,
    decode_body,
    key_id,
    open_status,
    read_envelope,
    signature_verifies,
    verify_batch,
)
from edge.protocol.desired import sign_document
from edge.protocol.errors import show
from hub.auth import secret_hash
from hub.bounds import split_readings
from hub.fleet import desired_document
from hub.jsonbody import BodyError, read_bounded, read_json
from hub.ratelimit import client_address, retry_after
from hub.reports import ReportError, check_notice_message, check_status_report, freshness
from hub.state import HUB, Hub
from hub.store import DeviceKey, EnrolError, IncomingBatch
from hub.workers import Busy

__all__ = ["routes", "MAX_NOTICE_BYTES"]

log = logging.getLogger("ocn.hub.oxp")

COSE_MEDIA = "application/cose"
MAX_NOTICE_BYTES = 256 * 1024
MAX_ENROL_BYTES = 16 * 1024
# A real body takes 2 to 4 bytes per reading; one far larger than its readings is charged by its size.
BODY_BYTES_PER_READING = 64
DEVICE_ID_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")

routes = web.RouteTableDef()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def compact_json(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer without the spaces of json.dumps' default separators: a gateway on a metered
    link receives one per batch, so every byte of it is paid for many times a day."""
    # Bytes, not text: aiohttp would add "; charset=utf-8", a parameter RFC 8259 does not define.
    body = json.dumps(data, separators=(",", ":")).encode()
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


def problem(status: int, code: str, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> web.Response:
    """An OXP error answer: JSON {"error": code, "detail": sentence}."""
    return compact_json({"error": code, "detail": detail, **extra}, status=status, headers=headers)


def protocol_problem(exc: ProtocolError) -> web.Response:
    if exc.reason == "too_large":
        return problem(413, "too_large", exc.detail)
    if exc.reason == "bad_signature":
        return problem(401, "bad_signature", exc.detail)
    return problem(400, "malformed", exc.detail, reason=exc.reason)


async def read_body(request: web.Request, limit: int) -> bytes | web.Response:
    """The whole request body, or a 415/413 answer; stops reading as soon as the body passes ``limit``."""
    if request.content_type != COSE_MEDIA:
        return problem(415, "unsupported_media_type", f"Content-Type {request.content_type!r}: expected {COSE_MEDIA}; cose-type=\"cose-sign1\"")
    try:
        return await read_bounded(request, limit=limit)
    except BodyError as exc:
        return problem(exc.status, exc.code, exc.detail)


def client_of(request: web.Request) -> str:
    """The client address the per-address limit counts (X-Forwarded-For only from a trusted proxy)."""
    return client_address(request.remote, request.headers.getall("X-Forwarded-For", []), request.app[HUB].trusted_proxies)


def address_refusal(hub: Hub, address: str) -> web.Response | None:
    """429 while ``address`` has used up its unauthenticated requests; None otherwise (nothing is charged here)."""
    wait = hub.addresses.peek(address)
    if wait <= 0:
        return None
    return problem(429, "rate_limited", f"client {address} sent more unauthenticated or refused requests than this hub allows; retry later",
                   headers={"Retry-After": retry_after(wait)})


def busy(exc: Busy) -> web.Response:
    """503 busy: the ingest workers and their queue are full; a retryable answer, never a stall."""
    return problem(503, "busy", f"the hub is at its limit of ingest work ({exc}); retry later", headers={"Retry-After": "1"})


def public_key_of(device: DeviceKey) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(device.public_key)


def refuse_device(device: DeviceKey | None, kid: bytes) -> web.Response | None:
    """403 unless the key belongs to an active device."""
    if device is None:
        return problem(403, "unknown_device", f"key id {kid.hex()} is not enrolled at this hub; enrol with `ocn-edge enrol`")
    if device.status == "revoked":
        return problem(403, "revoked", f"key id {kid.hex()} of device {device.device_id!r} was revoked by city IT")
    if device.status != "active":
        return problem(403, "unknown_device", f"device {device.device_id!r} is enrolled but awaits approval by city IT")
    return None


async def signed_sender(request: web.Request, limit: int) -> tuple[DeviceKey, dict[str, Any]] | web.Response:
    """Read a signed status-type message (status report or notice) of at most ``limit`` bytes,
    verify it and find its active sender; or the error answer.

    Nothing costly runs before the signature verifies: the key id comes from the strict
    envelope reader, verification and decoding run on the ingest workers. A client address
    whose messages fail here is charged its per-address limit.
    """
    hub = request.app[HUB]
    address = client_of(request)
    refusal = address_refusal(hub, address)
    if refusal is not None:
        return refusal
    sender = await _verified_report(request, hub, limit)
    if isinstance(sender, web.Response) and sender.status != 503:
        hub.addresses.check(address)
    return sender


async def _verified_report(request: web.Request, hub: Hub, limit: int) -> tuple[DeviceKey, dict[str, Any]] | web.Response:
    data = await read_body(request, limit)
    if isinstance(data, web.Response):
        return data
    try:
        kid = read_envelope(data, limit=limit).kid
    except ProtocolError as exc:
        return protocol_problem(exc)
    device = await hub.keys.get(kid)
    refusal = refuse_device(device, kid)
    if refusal is not None:
        return refusal
    assert device is not None
    try:
        report = await hub.workers.run(open_status, data, public_key_of(device))
    except Busy as exc:
        return busy(exc)
    except ProtocolError as exc:
        return protocol_problem(exc)
    if report.get("device_id") != device.device_id:
        return problem(400, "malformed", f"message names device {report.get('device_id')!r} but is signed by {device.device_id!r}")
    return device, report


@routes.post("/oxp/v1/batches")
async def post_batch(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    address = client_of(request)
    refusal = address_refusal(hub, address)
    if refusal is not None:
        return refusal
    data = await read_body(request, MAX_BATCH_BYTES)
    if isinstance(data, web.Response):
        hub.addresses.check(address)
        return data
    try:
        kid = read_envelope(data, limit=MAX_BATCH_BYTES).kid
    except ProtocolError as exc:
        hub.addresses.check(address)
        return protocol_problem(exc)
    device = await hub.keys.get(kid)
    answer, verified = await ingest(hub, data, device, kid)
    if not verified:  # refused at the key or before the signature verified: the sender is not authenticated
        hub.addresses.check(address)
    if verified:  # only a batch the device signed may mark it faulty: a forged one names a kid it cannot sign for
        assert device is not None
        if answer.status == 200:
            hub.faults.cleared(device.device_id)
        elif answer.status not in (429, 503):  # a device catching up, or a busy hub, is not a fault of the device
            body = json.loads(answer.body)  # type: ignore[arg-type]
            hub.faults.failed(device.device_id, body["error"], body["detail"])
    return answer


def _verify_and_weigh(data: bytes, public_key: Ed25519PublicKey) -> tuple[BatchHeader, bytes, int]:
    """On a worker: verify, decompress, and count the readings the body declares (without decoding them)."""
    header, body = verify_batch(data, public_key)
    return header, body, declared_readings(body)


async def ingest(hub: Hub, data: bytes, device: DeviceKey | None, kid: bytes) -> tuple[web.Response, bool]:
    """Verify, decode and store one batch from the holder of ``kid``; the OXP answer, and whether
    the batch's signature verified (only then does the answer say anything about the device).

    The order bounds what a sender who is not the device can cost: the signature is checked
    before any per-device limit is charged (a forged batch spends no device's quota), and
    the readings a batch declares are weighed against the device's readings budget before
    any of them is decoded.
    """
    refusal = refuse_device(device, kid)
    if refusal is not None:
        return refusal, False
    assert device is not None
    try:
        header, body, declared = await hub.workers.run(_verify_and_weigh, data, public_key_of(device))
    except Busy as exc:
        return busy(exc), False
    except ProtocolError as exc:
        # A bad signature is the sender's; anything else may be a batch the device signed badly (a second,
        # linear check of the signature tells which).
        return protocol_problem(exc), exc.reason != "bad_signature" and signature_verifies(data, public_key_of(device))
    if header.device_id != device.device_id:
        return problem(400, "malformed", f"batch names device {header.device_id!r} but key id {kid.hex()} is enrolled as {device.device_id!r}"), True
    wait = hub.limiter.check(device.device_id)
    if wait > 0:
        return problem(429, "rate_limited", f"device {device.device_id!r} sends faster than this hub allows; retry later",
                       headers={"Retry-After": retry_after(wait)}), True
    weight = max(declared, len(body) // BODY_BYTES_PER_READING)
    if declared <= MAX_READINGS:  # more is malformed: decode_body says so without decoding
        wait = hub.readings.wait(device.device_id, weight)
        if wait > 0:
            return problem(429, "readings_budget", f"batch declares {declared} readings in {len(body)} decoded bytes, more than device "
                           f"{device.device_id!r} may send now at its readings rate; retry later", headers={"Retry-After": retry_after(wait)}), True
    try:
        channels, readings = await hub.workers.run(decode_body, body)
    except Busy as exc:
        return busy(exc), True
    except ProtocolError as exc:
        return protocol_problem(exc), True
    hub.readings.take(device.device_id, weight)
    batch = Batch(header, channels, readings)
    h = batch.header
    received = now_ms()
    kept, quarantined = split_readings(batch.readings, created_ms=h.created_ms, now_ms=received)
    status = await hub.store.store_batch(
        IncomingBatch(
            device_id=device.device_id, key_id=h.key_id, boot_epoch=h.boot_epoch, seq=h.seq, created_ms=h.created_ms,
            received_ms=received, policy_digest=h.policy_digest, codec=h.codec, counters=h.counters,
            channels=batch.channels, readings=kept, size=len(data), quarantined=quarantined,
        )
    )
    ack: dict[str, Any] = {"device_id": device.device_id, "key_id": h.key_id.hex(), "boot_epoch": h.boot_epoch, "seq": h.seq, "status": status}
    if status == "stored" and quarantined:  # OXP §8.5: readings kept apart, by reason; said by the ack that stored the batch
        ack["quarantined"] = dict(sorted(Counter(q.reason for q in quarantined).items()))
    return compact_json(ack), True


@routes.post("/oxp/v1/enrol")
async def post_enrol(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    address = client_of(request)
    refusal = address_refusal(hub, address)
    if refusal is not None:
        return refusal
    answer = await _enrol(request, hub)
    # A refused attempt is charged to its address (guessing tokens costs it its budget); one that
    # enrols spent a token, which bounds it already, so an installer enrolling a fleet from one
    # network is not slowed.
    if answer.status != 201:
        hub.addresses.check(address)
    return answer


async def _enrol(request: web.Request, hub: Hub) -> web.Response:
    try:
        body = await read_json(request, limit=MAX_ENROL_BYTES, what="enrolment request")
    except BodyError as exc:
        return problem(exc.status, exc.code, exc.detail)
    if not isinstance(body, dict):
        return problem(400, "malformed", "enrolment request is not a JSON object")
    token, device_id, public_b64 = body.get("token"), body.get("device_id"), body.get("public_key")
    version = body.get("software_version", "")
    if not isinstance(token, str) or not token:
        return problem(400, "malformed", "field 'token': expected the enrolment token city IT gave you")
    if not isinstance(device_id, str) or not DEVICE_ID_RE.match(device_id):
        return problem(400, "malformed", f"field 'device_id' = {device_id!r}: expected 1-64 lowercase letters, digits and '-'")
    if not isinstance(version, str) or len(version) > 100 or any(unicodedata.category(c) == "Cc" for c in version):
        return problem(400, "malformed", f"field 'software_version' = {show(version)}: expected one line of at most 100 characters, without control characters")
    try:
        raw_key = base64.urlsafe_b64decode(str(public_b64) + "=" * (-len(str(public_b64)) % 4))
        public_key = Ed25519PublicKey.from_public_bytes(raw_key)
    except (binascii.Error, ValueError):
        return problem(400, "malformed", "field 'public_key': expected base64url of the raw 32-byte Ed25519 public key")
    kid = key_id(public_key)
    try:
        outcome = await hub.store.enrol(secret_hash(token), device_id=device_id, public_key=raw_key, key_id=kid, software_version=version, now_ms=now_ms())
    except EnrolError as exc:
        return problem(409 if exc.code == "conflict" else 401, exc.code, exc.detail)
    hub.keys.forget(kid)
    log.info("device enrolled", extra={"device": device_id, "key_id": kid.hex(), "status": outcome.status})
    return compact_json({"device_id": outcome.device_id, "key_id": outcome.key_id.hex(), "status": outcome.status}, status=201)


async def admit_report(hub: Hub, device: DeviceKey, message: dict[str, Any], check: Callable[[dict[str, Any]], None], what: str) -> web.Response | None:
    """400 for a verified status report or notice that does not fit its schema, 409 for one not newer than the
    last one accepted from its key (a replay, OXP §7.2); None once it is admitted and its freshness recorded."""
    try:
        check(message)
    except ReportError as exc:
        return problem(400, "malformed", exc.detail, reason=exc.reason)
    fresh = freshness(message)
    mark = await hub.store.claim_freshness(device.key_id, device.device_id, fresh, now_ms=now_ms())
    if mark is None:
        return None
    return problem(409, "stale", f"{what} of {fresh.describe()} is not newer than the last one accepted from key id "
                   f"{device.key_id.hex()} ({mark.describe()}): a replay, or overtaken by a newer one")


@routes.post("/oxp/v1/status")
async def post_status(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    sender = await signed_sender(request, MAX_STATUS_BYTES)
    if isinstance(sender, web.Response):
        return sender
    device_key, report = sender
    refusal = await admit_report(hub, device_key, report, check_status_report, "status report")
    if refusal is not None:
        return refusal
    await hub.store.record_status(device_key.device_id, report, received_ms=now_ms())
    device = await hub.store.device(device_key.device_id)
    assert device is not None
    document, etag = await desired_document(hub.store, device)
    unchanged = document is None or request.headers.get("If-None-Match", "").strip('"') == etag
    desired = None if unchanged else sign_document(document, hub.signing_key)  # type: ignore[arg-type]
    return compact_json({"ok": True, "desired": desired, "etag": etag}, headers={"ETag": f'"{etag}"'} if etag else None)


@routes.post("/oxp/v1/notice")
async def post_notice(request: web.Request) -> web.Response:
    """A transparency notice: a signed COSE_Sign1 status-type message whose map carries ``notice`` (the JSON object)."""
    hub = request.app[HUB]
    sender = await signed_sender(request, MAX_NOTICE_BYTES)
    if isinstance(sender, web.Response):
        return sender
    device_key, message = sender
    refusal = await admit_report(hub, device_key, message, check_notice_message, "notice")
    if refusal is not None:
        return refusal
    notice_id = await hub.store.add_notice(device_key.device_id, message["notice"], received_ms=now_ms())
    return compact_json({"ok": True, "id": notice_id})


@routes.get("/oxp/v1/hub-key")
async def get_hub_key(request: web.Request) -> web.Response:
    """The public key desired documents are signed with (PEM), for gateways to pin."""
    key = request.app[HUB].signing_key.public_key()
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return web.Response(body=pem, content_type="application/x-pem-file", headers={"X-Key-Id": key_id(key).hex()})

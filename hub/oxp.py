"""The OXP v1 endpoints over HTTP (§8, §9): enrol, batches, status and transparency notices.

Batches, status reports and notices are taken by the transport-free core (hub.ingest); this
module reads the request body, keeps the per-address limit of a client's unauthenticated or
refused requests, and writes the core's outcome as the answer §8.2 defines.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import unicodedata
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge.protocol import DEVICE_ID_RE, DEVICE_ID_RULE, MAX_BATCH_BYTES, MAX_STATUS_BYTES, Answer, key_id
from edge.protocol.errors import show
from edge.util.clock import now_ms
from hub.auth import secret_hash
from hub.brokerauth import BROKER_PASSWORDS, device_password
from hub.ingest import MAX_NOTICE_BYTES, Refused
from hub.jsonbody import BodyError, read_bounded, read_json
from hub.metrics import METRICS
from hub.models import EnrolError
from hub.ratelimit import client_address, retry_after
from hub.signatures import acceptable_key
from hub.state import HUB, Hub

__all__ = ["routes"]

log = logging.getLogger("ocn.hub.oxp")

COSE_MEDIA = "application/cose"
MAX_ENROL_BYTES = 16 * 1024

routes = web.RouteTableDef()
T = TypeVar("T")


def compact_json(data: Any, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON answer without the spaces of json.dumps' default separators: a gateway on a metered
    link receives one per batch, so every byte of it is paid for many times a day."""
    # Bytes, not text: aiohttp would add "; charset=utf-8", a parameter RFC 8259 does not define.
    body = json.dumps(data, separators=(",", ":")).encode()
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


def problem(answer: Answer, detail: str, *, headers: dict[str, str] | None = None) -> web.Response:
    """An OXP error answer (§8.2): JSON {"error": code, "detail": sentence} with the answer's status."""
    return compact_json({"error": str(answer), "detail": detail}, status=answer.status, headers=headers)


def refusal(refused: Refused) -> web.Response:
    """The HTTP form of a refusal from the ingest core: its status, its fields and, for a wait, Retry-After."""
    headers = None if refused.retry_after_s is None else {"Retry-After": retry_after(refused.retry_after_s)}
    return compact_json(refused.document(), status=refused.status, headers=headers)


async def read_body(request: web.Request, limit: int) -> bytes | web.Response:
    """The whole request body, or a 415/413 answer; stops reading as soon as the body passes ``limit``."""
    if request.content_type != COSE_MEDIA:
        return problem(Answer.UNSUPPORTED_MEDIA_TYPE, f"Content-Type {request.content_type!r}: expected {COSE_MEDIA}; cose-type=\"cose-sign1\"")
    try:
        return await read_bounded(request, limit=limit)
    except BodyError as exc:
        return compact_json({"error": exc.code, "detail": exc.detail}, status=exc.status)


# How long an answer to a device that sends again within a wait it was told is held (hub.ingest.Refused.ignored_wait),
# and one to a client address over its allowance of refused requests.
IGNORED_WAIT_PAUSE_S = 1.0
# Answers to addresses over their allowance held at once, hub-wide in this process; beyond them they go out at once.
# Each held request's unread body stops at aiohttp's read buffer (tens of KiB) with reading paused: 64 bound it to a few MiB.
MAX_HELD = 64
_held = 0


async def _hold(request: web.Request, seconds: float = IGNORED_WAIT_PAUSE_S) -> None:
    """Hold a refusal a moment (an address over its allowance, its body left unread and the connection closed after
    it; or a device sending again within a wait it was told), at most MAX_HELD at once, with reading paused.

    Otherwise a sender of 1 MiB bodies back to back is refused hundreds of times a second, each
    a new connection the hub accepts, parses and closes; held, a connection makes one a second.
    """
    global _held
    if _held >= MAX_HELD:
        return
    _held += 1
    transport = request.transport
    try:
        if transport is not None:
            transport.pause_reading()  # what it sends meanwhile waits in the kernel, not in the hub
        await asyncio.sleep(seconds)
    finally:
        _held -= 1
        if transport is not None and not transport.is_closing():
            transport.resume_reading()  # a body read whole keeps its connection for the next request


def client_of(request: web.Request) -> str:
    """The client address the per-address limit counts (X-Forwarded-For only from a trusted proxy)."""
    return client_address(request.remote, request.headers.getall("X-Forwarded-For", []), request.app[HUB].trusted_proxies)


def address_refusal(hub: Hub, address: str) -> web.Response | None:
    """429 while ``address`` has used up its unauthenticated requests; None otherwise (nothing is charged here)."""
    wait = hub.addresses.peek(address)
    if wait <= 0:
        return None
    return problem(Answer.RATE_LIMITED, f"client {address} sent more unauthenticated or refused requests than this hub allows; retry later",
                   headers={"Retry-After": retry_after(wait)})


async def signed_message(request: web.Request, limit: int, take: Callable[[bytes], Awaitable[T | Refused]]) -> T | web.Response:
    """Read a signed message of at most ``limit`` bytes and hand it to the ingest core; its outcome, or the error answer.

    A client address whose message is refused before its sender is known (hub.ingest.Refused.charged),
    or whose body is refused unread, is charged its per-address limit.
    """
    hub = request.app[HUB]
    kind = request.path.rsplit("/", 1)[-1]  # batches, status, notice: the series' label
    address = client_of(request)
    answer = address_refusal(hub, address)
    if answer is not None:
        request.app[METRICS].ingested(kind, answer)
        await _hold(request)
        return answer
    data = await read_body(request, limit)
    if isinstance(data, web.Response):
        hub.addresses.check(address)
        request.app[METRICS].ingested(kind, data)
        return data
    outcome = await take(data)
    request.app[METRICS].ingested(kind, outcome)
    if isinstance(outcome, Refused):
        if outcome.charged:
            hub.addresses.check(address)
        if outcome.ignored_wait and outcome.retry_after_s:
            # Sent again within a wait it was told (OXP §8.3): answered after a pause, so a sender ignoring
            # Retry-After back to back makes a few requests a second, not hundreds; held like any refusal, so the
            # bodies read for them (up to 1 MiB each, under a key anyone can name) are bounded by MAX_HELD too.
            await _hold(request, min(IGNORED_WAIT_PAUSE_S, outcome.retry_after_s))
        return refusal(outcome)
    return outcome


@routes.post("/oxp/v1/batches")
async def post_batch(request: web.Request) -> web.Response:
    outcome = await signed_message(request, MAX_BATCH_BYTES, request.app[HUB].ingest.batch)
    return outcome if isinstance(outcome, web.Response) else compact_json(outcome.document())


@routes.post("/oxp/v1/enrol")
async def post_enrol(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    address = client_of(request)
    refused = address_refusal(hub, address)
    if refused is not None:
        await _hold(request)
        return refused
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
        return compact_json({"error": exc.code, "detail": exc.detail}, status=exc.status)
    if not isinstance(body, dict):
        return problem(Answer.MALFORMED, "enrolment request is not a JSON object")
    token, device_id, public_b64 = body.get("token"), body.get("device_id"), body.get("public_key")
    version = body.get("software_version", "")
    if not isinstance(token, str) or not token:
        return problem(Answer.MALFORMED, "field 'token': expected the enrolment token city IT gave you")
    if not isinstance(device_id, str) or not DEVICE_ID_RE.match(device_id):
        return problem(Answer.MALFORMED, f"field 'device_id' = {device_id!r}: expected {DEVICE_ID_RULE}")
    if not isinstance(version, str) or len(version) > 100 or any(unicodedata.category(c) == "Cc" for c in version):
        return problem(Answer.MALFORMED, f"field 'software_version' = {show(version)}: expected one line of at most 100 characters, without control characters")
    try:
        raw_key = base64.urlsafe_b64decode(str(public_b64) + "=" * (-len(str(public_b64)) % 4))
        public_key = Ed25519PublicKey.from_public_bytes(raw_key)
    except (binascii.Error, ValueError):
        return problem(Answer.MALFORMED, "field 'public_key': expected base64url of the raw 32-byte Ed25519 public key")
    if not acceptable_key(raw_key):
        # The hub verifies with libsodium, which refuses such a key: the device's batches could never be taken.
        return problem(Answer.MALFORMED, "field 'public_key': not a key an Ed25519 key generator makes (a small-order or non-canonical point,"
                       " which this hub cannot verify signatures under); make a new device key with `ocn-edge keygen`")
    kid = key_id(public_key)
    try:
        outcome = await hub.store.enrol(secret_hash(token), device_id=device_id, public_key=raw_key, key_id=kid, software_version=version, now_ms=now_ms())
    except EnrolError as exc:
        return problem(exc.code, exc.detail)
    hub.keys.forget(kid)
    log.info("device enrolled", extra={"device": device_id, "key_id": kid.hex(), "status": outcome.status})
    answer = {"device_id": outcome.device_id, "key_id": outcome.key_id.hex(), "status": outcome.status}
    if request.app.get(BROKER_PASSWORDS):
        # OXP §9: the gateway's password on the broker, valid once the device is approved (hub.brokerauth).
        answer["broker_password"] = device_password(hub.signing_key, outcome.key_id)
    return compact_json(answer, status=201)


@routes.post("/oxp/v1/status")
async def post_status(request: web.Request) -> web.Response:
    known = request.headers.get("If-None-Match", "").strip('"')
    ingest = request.app[HUB].ingest
    outcome = await signed_message(request, MAX_STATUS_BYTES, lambda data: ingest.status_report(data, known_etag=known))
    if isinstance(outcome, web.Response):
        return outcome
    return compact_json({"ok": True, "desired": outcome.desired, "etag": outcome.etag}, headers={"ETag": f'"{outcome.etag}"'} if outcome.etag else None)


@routes.get("/oxp/v1/desired/{device_id}")
async def get_desired_etag(request: web.Request) -> web.Response:
    """A long poll for a device's desired ETag (§8.4): 304 while it equals If-None-Match for up to ``wait`` seconds, else 200 {"etag"}.

    Unauthenticated, so it tells only the ETag (a digest), never the document: the gateway fetches
    that with a signed status report.  An unknown or unapproved device id is charged to the address.
    """
    hub = request.app[HUB]
    address = client_of(request)
    answer = address_refusal(hub, address)
    if answer is not None:
        return answer
    device_id = request.match_info["device_id"]
    known = request.headers.get("If-None-Match", "").strip().removeprefix("W/").strip('"')
    try:
        wait = float(request.query.get("wait", "0"))
    except ValueError:
        wait = -1.0
    if not DEVICE_ID_RE.match(device_id) or not 0 <= wait <= 3600:
        hub.addresses.check(address)
        return problem(Answer.MALFORMED, f"expected /oxp/v1/desired/<device id>?wait=<seconds, 0 to 3600>, got {show(request.path_qs)}")

    def gone() -> bool:
        return request.transport is None or request.transport.is_closing()

    etag = await hub.ingest.desired_changed(device_id, known, wait_s=wait, gone=gone)
    if etag is None:
        hub.addresses.check(address)
        return problem(Answer.UNKNOWN_DEVICE, f"no approved device {device_id!r} is enrolled at this hub")
    if etag == known and "If-None-Match" in request.headers:  # 304 answers a conditional request only (RFC 9110 §15.4.5)
        return web.Response(status=304, headers={"ETag": f'"{etag}"'})
    return compact_json({"etag": etag}, headers={"ETag": f'"{etag}"'})


@routes.post("/oxp/v1/notice")
async def post_notice(request: web.Request) -> web.Response:
    """A transparency notice: a signed COSE_Sign1 status-type message whose map carries ``notice`` (the JSON object)."""
    outcome = await signed_message(request, MAX_NOTICE_BYTES, request.app[HUB].ingest.notice)
    return outcome if isinstance(outcome, web.Response) else compact_json({"ok": True, "id": outcome.id})


@routes.get("/oxp/v1/hub-key")
async def get_hub_key(request: web.Request) -> web.Response:
    """The public key desired documents are signed with (PEM), for gateways to pin."""
    key = request.app[HUB].ingest.signer.key().public_key()  # the current key of a rotation (hub.hubkey)
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return web.Response(body=pem, content_type="application/x-pem-file", headers={"X-Key-Id": key_id(key).hex()})

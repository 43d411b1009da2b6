"""The hub's receiving end of OXP, whatever the wire: a signed message's bytes in, a typed outcome out.

A transport (HTTP in hub/oxp.py; MQTT next) reads the bytes, hands them to :class:`Ingest` and
turns the outcome into its own answer: an :class:`Acked` batch, a :class:`ReportTaken` status
report or :class:`NoticeTaken` notice, or a :class:`Refused` message with its answer code
(edge.protocol.reasons), detail and wait. Nothing here knows a request, a header or a status line.

The order of checks bounds what a sender who is not the device can cost: the key id comes from
the strict envelope reader (no general CBOR decoder touches unauthenticated bytes), the
signature is checked before any per-device limit is charged (a forged batch spends no device's
quota), and the readings a batch declares are weighed against the device's readings budget
before any of them is decoded. Verification and decoding run on the ingest workers. A database
that fails raises out of these methods; the transport answers that as unavailable.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.protocol import (
    MAX_BATCH_BYTES,
    MAX_READINGS,
    MAX_STATUS_BYTES,
    Answer,
    Batch,
    BatchHeader,
    ProtocolError,
    Reason,
    Status,
    open_status,
    read_envelope,
    signature_verifies,
)
from edge.protocol.codec import decode_weighed, weigh_body
from edge.protocol.compression import content_size, decompress
from edge.protocol.envelope import verify_envelope
from edge.protocol.preauth import Envelope
from edge.util.clock import now_ms
from hub.bounds import split_readings
from hub.faults import DeviceFaults
from hub.fleet import TRUST_KEY, desired_document
from hub.hubkey import DesiredSigner
from hub.keycache import KeyCache
from hub.models import DeviceKey, IncomingBatch
from hub.ratelimit import RateLimiter, ReadingsBudget
from hub.reports import ReportError, check_notice_message, check_status_report, freshness
from hub.signatures import DeviceKeyCheck, device_key
from hub.store import NOTICE_WINDOW_MS, SOFTWARE_SCOPE, Store
from hub.workers import Busy, Workers

__all__ = ["Acked", "Ingest", "NoticeTaken", "Refused", "ReportTaken", "MAX_NOTICE_BYTES"]

# A notice is a status-type message, of at most a status report's size (§7.3, §6.7): read no more of a body than that.
# (Until 2026-12 the hub read up to 256 KiB of it, and open_status then refused anything over 64 KiB.)
MAX_NOTICE_BYTES = MAX_STATUS_BYTES
# A real body takes 2 to 4 bytes per reading; one far larger than its readings is charged by its size.
BODY_BYTES_PER_READING = 64
BUSY_RETRY_S = 1.0
# Verified status reports and notices each device may send (per second, at once): a gateway reports every minute or so
# and sends a notice at start and after a policy change; without a limit one enrolled device stored 300 notices of
# 60 KB in 0.8 s, all published in the register (docs/threat-model.md H26).  Every notice taken is stored for good, so
# after ten at once (a technician restarting a gateway while commissioning it) one in ten minutes: at most 154 a
# day, of at most MAX_STORED_NOTICE_BYTES each (about 19 MiB a day).
REPORT_RATE, REPORT_BURST = 1.0, 60
NOTICE_RATE, NOTICE_BURST = 1 / 600, 10
# The same bound kept in the database over 24 hours, so that it holds across hub processes and restarts (the limiter
# above is each process's own, and a restart gives the burst again): the burst and a day's notices at NOTICE_RATE.
NOTICES_PER_DAY = NOTICE_BURST + round(NOTICE_WINDOW_MS / 1000 * NOTICE_RATE)
DESIRED_TTL_S = 2.0  # how stale a device's desired ETag may be when a batch ack or a long poll reads it
# A batch this small is verified, weighed and decoded on the event loop, not in a worker: the work is a
# fraction of a millisecond (one signature, a body of at most INLINE_BODY_BYTES and INLINE_READINGS readings),
# less than the two hand-offs to a worker thread and back, each of which waits its turn on a loop that is busy
# when the hub is (bench.hostile: docs/architecture.md, "Heavy work off the event loop").  Anything larger, or
# a payload that does not say how large it decompresses, goes to the workers as before.
INLINE_BATCH_BYTES = 4 * 1024
INLINE_BODY_BYTES = 16 * 1024
INLINE_READINGS = 200
WATCH_CHECK_S = 1.0  # how often a long poll looks again
MAX_WATCH_S = 60.0  # the longest a long poll is held
MAX_WATCHES = 8192  # long polls held at once; more are answered at once


@dataclass(frozen=True, slots=True)
class Refused:
    """A message the hub does not take.

    ``reason`` is the §4.3 reason (or the schema's) behind a ``malformed`` answer, when one
    says more. ``retry_after_s``: how long the sender should wait before sending it again.
    ``charged``: the refusal counts against the sender's allowance of unauthenticated or
    refused messages (per client address over HTTP), because nothing the sender proved
    makes it the device's.  ``ignored_wait``: found before verification, for a device that
    sends again within a wait it was told; the HTTP binding holds such an answer a moment
    (hub.oxp), so sending them back to back costs the sender time rather than the hub work.
    """

    answer: Answer
    detail: str
    retry_after_s: float | None = None
    reason: str | None = None
    charged: bool = False
    ignored_wait: bool = False

    @property
    def status(self) -> Status:
        return self.answer.status

    def document(self) -> dict[str, Any]:
        """The answer's fields (§8.2): error, detail and, for a malformed message, the reason."""
        found: dict[str, Any] = {"error": str(self.answer), "detail": self.detail}
        if self.reason is not None:
            found["reason"] = str(self.reason)
        return found


@dataclass(frozen=True, slots=True)
class Acked:
    """A batch the hub durably stored (``status`` "stored") or already held ("duplicate"), named by its identity (§8.1)."""

    device_id: str
    key_id: bytes
    boot_epoch: int
    seq: int
    status: str
    quarantined: Mapping[str, int] = field(default_factory=dict)  # readings kept apart, by reason (§8.5)
    readings: int = field(default=0, compare=False)  # readings this ack stored (0 for a duplicate): the hub's metrics, not the wire
    desired_etag: str = ""  # the ETag of the device's desired document, when it has one (§8.4): a gateway without it asks

    def document(self) -> dict[str, Any]:
        """The ack's fields in the order §8.1 shows them."""
        ack: dict[str, Any] = {"device_id": self.device_id, "key_id": self.key_id.hex(), "boot_epoch": self.boot_epoch, "seq": self.seq,
                               "status": self.status}
        if self.quarantined:
            ack["quarantined"] = dict(self.quarantined)
        if self.desired_etag:
            ack["desired_etag"] = self.desired_etag
        return ack


@dataclass(frozen=True, slots=True)
class ReportTaken:
    """A status report the hub recorded, and the device's desired document: signed if the device lacks it, else None (§8.4)."""

    desired: dict[str, Any] | None
    etag: str


@dataclass(frozen=True, slots=True)
class NoticeTaken:
    """A transparency notice the hub put in its register under ``id``."""

    id: int


def _protocol_refusal(exc: ProtocolError, *, charged: bool) -> Refused:
    answer = Answer.of(exc.reason)
    return Refused(answer, exc.detail, reason=exc.reason if answer is Answer.MALFORMED else None, charged=charged)


def _busy(exc: Busy, *, charged: bool) -> Refused:
    """The ingest workers and their queue are full: a retryable answer, never a stall."""
    return Refused(Answer.BUSY, f"the hub is at its limit of ingest work ({exc}); retry later", retry_after_s=BUSY_RETRY_S, charged=charged)


def _refuse_device(device: DeviceKey | None, kid: bytes) -> Refused | None:
    """Refused unless the key belongs to an active device."""
    if device is None:
        return Refused(Answer.UNKNOWN_DEVICE, f"key id {kid.hex()} is not enrolled at this hub; enrol with `ocn-edge enrol`", charged=True)
    if device.status == "revoked":
        return Refused(Answer.REVOKED, f"key id {kid.hex()} of device {device.device_id!r} was revoked by city IT", charged=True)
    if device.status != "active":
        return Refused(Answer.UNKNOWN_DEVICE, f"device {device.device_id!r} is enrolled but awaits approval by city IT", charged=True)
    return None


def _public_key(device: DeviceKey) -> DeviceKeyCheck:
    """An enrolled device's key as its signatures are checked (hub.signatures: libsodium, made once a key)."""
    return device_key(device.public_key)


# A verified batch's header, the size of its decompressed body, the body's CBOR document (read once) and the readings it
# declares (what the batch is weighed by before the document is decoded).
Checked = tuple[BatchHeader, int, Any, int]


def _verify_and_weigh(envelope: Envelope, public_key: DeviceKeyCheck) -> Checked:
    """On a worker: verify the batch's envelope (read once, by the strict reader, to find its key), decompress, and count
    the readings the body declares (without decoding them)."""
    header, payload = verify_envelope(envelope, public_key)
    return (header, *_weigh(payload, header.codec))


def _weigh(payload: bytes, codec: str) -> tuple[int, Any, int]:
    """On a worker: decompress a verified payload and count the readings its body declares; its CBOR is read once, here."""
    body = decompress(payload, codec)
    return (len(body), *weigh_body(body))


def _verify_all(items: Sequence[tuple[Envelope, DeviceKeyCheck]]) -> list[Checked | ProtocolError]:
    """On a worker: :func:`_verify_and_weigh` for each of a group, its outcome or the error that refused it."""
    checked: list[Checked | ProtocolError] = []
    for envelope, public_key in items:
        try:
            checked.append(_verify_and_weigh(envelope, public_key))
        except ProtocolError as exc:
            checked.append(exc)
    return checked


def _acked(device: DeviceKey, header: BatchHeader, incoming: IncomingBatch, status: str, desired_etag: str = "") -> Acked:
    """The ack of a batch the store took: OXP §8.5's readings kept apart, by reason, said by the ack that stored it only."""
    apart = dict(sorted(Counter(q.reason for q in incoming.quarantined).items())) if status == "stored" and incoming.quarantined else {}
    return Acked(device.device_id, header.key_id, header.boot_epoch, header.seq, status, apart,
                 readings=len(incoming.readings) if status == "stored" else 0, desired_etag=desired_etag)


async def _verified(workers: Workers, data: bytes, envelope: Envelope, public_key: DeviceKeyCheck) -> Checked:
    """A batch's header, decompressed body and declared readings (``envelope``: ``data`` as the strict reader read it),
    checked on the loop when small (see INLINE_BATCH_BYTES), else on a worker; raises ProtocolError or Busy."""
    if len(data) > INLINE_BATCH_BYTES:
        return await workers.run(_verify_and_weigh, envelope, public_key)
    header, payload = verify_envelope(envelope, public_key)
    size = content_size(payload, header.codec)
    if size is None or size > INLINE_BODY_BYTES:
        return (header, *await workers.run(_weigh, payload, header.codec))
    return (header, *_weigh(payload, header.codec))


class Ingest:
    """Batches, status reports and notices from gateways, checked, limited and stored; one per hub process.

    ``limiter`` counts batches and ``readings`` readings per device, charged only once a
    signature verifies; ``faults`` hears whether each batch a device signed was taken.
    """

    def __init__(self, *, store: Store, keys: KeyCache, limiter: RateLimiter, readings: ReadingsBudget, workers: Workers,
                 faults: DeviceFaults, signing_key: Ed25519PrivateKey, signer: DesiredSigner | None = None) -> None:
        self.store = store
        self.keys = keys
        self.limiter = limiter
        self.readings = readings
        self.workers = workers
        self.faults = faults
        self.signing_key = signing_key
        self.signer = signer or DesiredSigner(None, signing_key)  # desired documents: the current key of a rotation (hub.hubkey)
        self.reports = RateLimiter(rate=REPORT_RATE, burst=REPORT_BURST)  # verified status reports per device
        self.notices = RateLimiter(rate=NOTICE_RATE, burst=NOTICE_BURST)  # verified notices per device
        # device id -> (monotonic s when read, ETag): batches and watches read a device's ETag at most every DESIRED_TTL_S.
        self._etags: dict[str, tuple[float, str]] = {}
        # device id -> (monotonic s until which it was told to wait, readings it was told it may not send yet): see _early_refusal.
        self._told_to_wait: dict[str, tuple[float, str]] = {}
        self._refreshing: dict[str, asyncio.Task[str | None]] = {}  # background reads of stale ETags, one per device
        self._watching = 0
        self._closing = asyncio.Event()

    async def batch(self, data: bytes, *, topic_device: str | None = None) -> Acked | Refused:
        """Verify, weigh, decode and store one sealed batch; the ack that names it, or why not.

        ``topic_device``: the device a transport's address names (MQTT's topic), refused unless it is the key's."""
        sender = await self._claimed_sender(data, MAX_BATCH_BYTES, topic_device)
        if isinstance(sender, Refused):
            return sender
        device, envelope = sender
        outcome, verified = await self._batch(data, device, envelope)
        return await self._heard(device, outcome, verified)

    async def batches(self, messages: Sequence[tuple[bytes, str | None]]) -> list[Acked | Refused | Exception]:
        """:meth:`batch` for several batches at once (``(data, topic_device)`` each), the outcomes in their order; for a
        batch the store failed to take, the error (where :meth:`batch` raises it, a database that is down).

        The same checks in the same order, but the group's signatures are checked (and bodies decompressed) in one
        hand-off to a worker thread, where the signature checks run beside the event loop, and the batches that pass
        are stored with one call of the store (Store.store_batches: one transaction).  For a transport that takes
        many small batches at once (MQTT, hub.mqtt): per batch, the hand-offs and the commits were most of the cost."""
        outcomes: list[Acked | Refused | Exception | None] = [None] * len(messages)
        claimed: list[tuple[int, DeviceKey, bytes]] = []
        # Each batch's envelope is read once, by the strict reader: its key id picks the key, and the signature is checked
        # on what it read (verify_envelope), not on the bytes read again.
        envelopes: list[Envelope | ProtocolError] = []
        for data, _ in messages:
            try:
                envelopes.append(read_envelope(data, limit=MAX_BATCH_BYTES))
            except ProtocolError as exc:
                envelopes.append(exc)
        await self.keys.fetch(envelope.kid for envelope in envelopes if isinstance(envelope, Envelope))
        for i, ((_, topic_device), envelope) in enumerate(zip(messages, envelopes, strict=True)):
            if isinstance(envelope, ProtocolError):
                sender: tuple[DeviceKey, bytes] | Refused = _protocol_refusal(envelope, charged=True)
            else:
                sender = await self._sender(envelope.kid, topic_device)
            early = sender if isinstance(sender, Refused) else self._early_refusal(sender[0].device_id)
            if early is not None:
                outcomes[i] = early
            else:
                assert not isinstance(sender, Refused)
                claimed.append((i, *sender))
        checks: list[Checked | ProtocolError] | Busy
        try:
            checks = await self.workers.run(_verify_all, [(self._envelope(envelopes[i]), _public_key(device)) for i, device, _ in claimed]) if claimed else []
        except Busy as exc:
            checks = exc
        verified: dict[int, tuple[DeviceKey, bool]] = {}
        storing: list[tuple[int, DeviceKey, BatchHeader, IncomingBatch]] = []
        for n, (i, device, kid) in enumerate(claimed):
            data = messages[i][0]
            check = checks if isinstance(checks, Busy) else checks[n]
            if isinstance(check, Busy):
                outcomes[i] = _busy(check, charged=True)
                continue
            if isinstance(check, ProtocolError):
                refused = self._unverified(check, self._envelope(envelopes[i]), _public_key(device))
                outcomes[i], verified[i] = refused, (device, not refused.charged)
                continue
            verified[i] = (device, True)
            decoded = await self._decoded(check, device, kid)
            if isinstance(decoded, Refused):
                outcomes[i] = decoded
            else:
                storing.append((i, device, check[0], self._incoming(decoded, device, size=len(data))))
        stored = await self.store.store_batches([incoming for *_, incoming in storing]) if storing else []
        taken: dict[int, tuple[BatchHeader, IncomingBatch, str]] = {}
        for (i, _, header, incoming), status in zip(storing, stored, strict=True):
            if isinstance(status, Exception):
                outcomes[i] = status
            else:
                taken[i] = (header, incoming, status)
        # The desired ETags of devices none is remembered for (the first batch of each since the hub started), read for the
        # group at once: two reads, where desired_etag reads five a device, each waiting its turn on the loop.
        unknown = list(dict.fromkeys(verified[i][0].device_id for i in taken if verified[i][0].device_id not in self._etags))
        if len(unknown) > 1:
            await self._read_etags(unknown)
        # Told to the devices' fault records in the group's order, as _heard does; an ack made once, with its ETag.
        for i, (device, signed) in verified.items():
            if i in taken:
                self.faults.cleared(device.device_id)
                outcomes[i] = _acked(device, *taken[i], desired_etag=await self._ack_etag(device.device_id) or "")
                continue
            outcome = outcomes[i]
            if isinstance(outcome, Refused) and signed:
                outcomes[i] = await self._heard(device, outcome, signed)
        return [outcome for outcome in outcomes if outcome is not None]

    async def _heard(self, device: DeviceKey, outcome: Acked | Refused, verified: bool) -> Acked | Refused:
        """The outcome told to the device's fault record; an ack with the device's desired ETag."""
        # Only a batch the device signed may mark it faulty: a forged one names a kid it cannot sign for.
        if verified:
            if isinstance(outcome, Acked):
                self.faults.cleared(device.device_id)
                etag = await self._ack_etag(device.device_id)
                if etag:
                    outcome = dataclasses.replace(outcome, desired_etag=etag)
            elif outcome.status not in (Status.SLOW_DOWN, Status.UNAVAILABLE):  # a device catching up, or a busy hub, is not its fault
                self.faults.failed(device.device_id, str(outcome.answer), outcome.detail)
        return outcome

    async def _batch(self, data: bytes, device: DeviceKey, envelope: Envelope) -> tuple[Acked | Refused, bool]:
        """The outcome, and whether the batch's signature verified (only then does the outcome say anything about the device)."""
        early = self._early_refusal(device.device_id)
        if early is not None:
            return early, False
        public_key = _public_key(device)
        try:
            checked = await _verified(self.workers, data, envelope, public_key)
        except Busy as exc:
            return _busy(exc, charged=True), False
        except ProtocolError as exc:
            refused = self._unverified(exc, envelope, public_key)
            return refused, not refused.charged
        decoded = await self._decoded(checked, device, envelope.kid)
        if isinstance(decoded, Refused):
            return decoded, True
        return await self._store(decoded, device, size=len(data)), True

    @staticmethod
    def _unverified(exc: ProtocolError, envelope: Envelope, public_key: DeviceKeyCheck) -> Refused:
        """The refusal of a batch that failed its checks; charged unless the device signed it."""
        # A bad signature is the sender's; anything else may be a batch the device signed badly (a second,
        # linear check of the signature tells which).
        verified = exc.reason != Reason.BAD_SIGNATURE and signature_verifies(envelope, public_key)
        return _protocol_refusal(exc, charged=not verified)

    @staticmethod
    def _envelope(read: Envelope | ProtocolError) -> Envelope:
        """The envelope of a batch that was claimed (only a batch whose envelope was read is)."""
        assert isinstance(read, Envelope)
        return read

    async def _decoded(self, checked: Checked, device: DeviceKey, kid: bytes) -> Batch | Refused:
        """A verified batch limited, weighed against the device's readings budget and decoded; or why not."""
        header, size, body, declared = checked
        if header.device_id != device.device_id:
            return Refused(Answer.MALFORMED, f"batch names device {header.device_id!r} but key id {kid.hex()} is enrolled as {device.device_id!r}")
        wait = self.limiter.check(device.device_id)
        if wait > 0:
            return Refused(Answer.RATE_LIMITED, f"device {device.device_id!r} sends faster than this hub allows; retry later", retry_after_s=wait)
        weight = max(declared, size // BODY_BYTES_PER_READING)
        if declared <= MAX_READINGS:  # more is malformed: decode_weighed says so without decoding
            wait = self.readings.wait(device.device_id, weight)
            if wait > 0:
                detail = (f"batch declares {declared} readings in {size} decoded bytes, more than device "
                          f"{device.device_id!r} may send now at its readings rate; retry later")
                self._told_to_wait[device.device_id] = (time.monotonic() + wait, detail)
                return Refused(Answer.READINGS_BUDGET, detail, retry_after_s=wait)
        try:
            if declared <= INLINE_READINGS and size <= INLINE_BODY_BYTES:
                channels, readings = decode_weighed(body)
            else:
                channels, readings = await self.workers.run(decode_weighed, body)
        except Busy as exc:
            return _busy(exc, charged=False)
        except ProtocolError as exc:
            return _protocol_refusal(exc, charged=False)
        self.readings.take(device.device_id, weight)
        return Batch(header, channels, readings)

    def _early_refusal(self, device_id: str) -> Refused | None:
        """The refusal a device would get after verification, found before it, so a flood of batches under one key costs
        a lookup each, not a signature check and a decompression: a device sending faster than its batch rate, or sending
        again before the wait a readings-budget refusal gave it has passed (OXP §4.4, §8.3: it must wait Retry-After;
        what it sends meanwhile is refused the same way).  Only looked at, never charged: only a verified batch of the device
        sets either (a forged batch must not spend the device's allowance)."""
        wait = self.limiter.peek(device_id)
        if wait > 0:
            return Refused(Answer.RATE_LIMITED, f"device {device_id!r} sends faster than this hub allows; retry later", retry_after_s=wait,
                           ignored_wait=True)
        told = self._told_to_wait.get(device_id)
        if told is not None:
            left = told[0] - time.monotonic()
            if left > 0:
                return Refused(Answer.READINGS_BUDGET, told[1], retry_after_s=left, ignored_wait=True)
            del self._told_to_wait[device_id]
        return None

    async def _store(self, batch: Batch, device: DeviceKey, *, size: int) -> Acked:
        incoming = self._incoming(batch, device, size=size)
        return _acked(device, batch.header, incoming, await self.store.store_batch(incoming))

    @staticmethod
    def _incoming(batch: Batch, device: DeviceKey, *, size: int) -> IncomingBatch:
        """The batch as the store takes it: the readings within the time bounds, and those kept apart (hub.bounds)."""
        h = batch.header
        received = now_ms()
        kept, quarantined = split_readings(batch.readings, created_ms=h.created_ms, now_ms=received)
        return IncomingBatch(
            device_id=device.device_id, key_id=h.key_id, boot_epoch=h.boot_epoch, seq=h.seq, created_ms=h.created_ms,
            received_ms=received, policy_digest=h.policy_digest, codec=h.codec, counters=h.counters,
            channels=batch.channels, readings=kept, size=size, quarantined=quarantined,
        )

    async def status_report(self, data: bytes, *, known_etag: str = "", topic_device: str | None = None) -> ReportTaken | Refused:
        """Verify, check and record a status report; the device's desired document unless it holds ``known_etag`` already."""
        sender = await self._verified_report(data, MAX_STATUS_BYTES, topic_device)
        if isinstance(sender, Refused):
            return sender
        device_key, report = sender
        refusal = self._over_rate(self.reports, device_key.device_id, "status reports") or await self._admit(
            device_key, report, check_status_report, "status report")
        if refusal is not None:
            return refusal
        await self.store.record_status(device_key.device_id, report, received_ms=now_ms())
        update = report.get("software_update")  # OPTIONAL (OXP §7); the rollout counts it (hub.rollout), the dashboard shows it
        if isinstance(update, dict) and isinstance(update.get("state"), str) and update["state"]:
            outcome = {key: value[:500] for key in ("state", "version", "reason", "running") if isinstance(value := update.get(key), str)}
            await self.store.record_software_update(device_key.device_id, outcome, received_ms=now_ms())
        device = await self.store.device(device_key.device_id)
        assert device is not None
        document, etag = await desired_document(self.store, device)
        self._etags[device.device_id] = (time.monotonic(), etag)
        if document is None:
            # Nothing desired: a gateway that reports a document in force gets the signed clear (OXP §8.4), which a gateway
            # that has seen a signed issue time requires; one without a document in force needs nothing.
            applied = report.get("applied_etag")
            desired = self.signer.sign_clear(device.device_id) if isinstance(applied, str) and applied else None
        else:
            desired = None if known_etag == etag else self.signer.sign(document)
        return ReportTaken(desired, etag)

    async def desired_etag(self, device_id: str) -> str | None:
        """The ETag of an active device's desired document ("": none), read at most DESIRED_TTL_S ago; None for no such device."""
        now = time.monotonic()
        cached = self._etags.get(device_id)
        if cached is not None and now - cached[0] < DESIRED_TTL_S:
            return cached[1]
        device = await self.store.device(device_id)
        if device is None or device.status != "active":
            self._etags.pop(device_id, None)
            return None
        _, etag = await desired_document(self.store, device)
        self._etags[device_id] = (now, etag)
        return etag

    async def _read_etags(self, device_ids: list[str]) -> None:
        """Remember the ETags of the active devices among ``device_ids``, as desired_etag would read them one by one: their
        rows in one read, the documents that apply to them in another.  A device not found or not active is left for
        desired_etag to say so."""
        devices = [device for device in await self.store.devices_named(device_ids) if device.status == "active"]
        keys = list(dict.fromkeys(key for device in devices for key in (
            ("fleet", device.fleet), ("device", device.device_id), (SOFTWARE_SCOPE, device.device_id), TRUST_KEY)))
        known: dict[tuple[str, str], tuple[dict[str, Any], int] | None] = dict(await self.store.desired_for(keys))
        for key in keys:
            known.setdefault(key, None)  # none set: desired_document reads nothing
        now = time.monotonic()
        for device in devices:
            _, etag = await desired_document(self.store, device, known=known)
            self._etags[device.device_id] = (now, etag)

    def remember_etag(self, device_id: str, etag: str) -> None:
        """A device's ETag its caller has just read from the store (the MQTT side reads those of every device it serves at
        once, every second): batch acks and long polls take it without a read of their own for DESIRED_TTL_S."""
        self._etags[device_id] = (time.monotonic(), etag)

    async def _ack_etag(self, device_id: str) -> str | None:
        """The ETag a batch ack carries: the cached one at once, read again in the background once stale.

        Reading it on the batch's path would add two store reads to one batch in DESIRED_TTL_S of
        each device, each a hand-off to a reader thread that waits its turn on a busy loop; a gateway
        that misses a change in one ack sees it in the next, or through its long poll (OXP §8.4).
        """
        cached = self._etags.get(device_id)
        if cached is None:
            return await self.desired_etag(device_id)
        if time.monotonic() - cached[0] >= DESIRED_TTL_S and device_id not in self._refreshing:
            task = asyncio.create_task(self.desired_etag(device_id), name=f"desired-etag:{device_id}")
            self._refreshing[device_id] = task
            task.add_done_callback(lambda done: self._refreshed(device_id, done))
        return cached[1]

    def _refreshed(self, device_id: str, task: asyncio.Task[str | None]) -> None:
        self._refreshing.pop(device_id, None)
        if not task.cancelled() and task.exception() is not None:
            self._etags.pop(device_id, None)  # read again, on the path, by the next batch (a store that is down says so there)

    async def desired_changed(self, device_id: str, known_etag: str, *, wait_s: float, gone: Callable[[], bool] = lambda: False) -> str | None:
        """The device's ETag once it differs from ``known_etag``, or ``known_etag`` after ``wait_s``; None for no such device.

        A long poll (OXP §8.4): a gateway learns of a new document within seconds while sending about one
        request a minute.  Desired documents may be set by another process (``ocn-edge hub desired set``),
        so the store is read again every WATCH_CHECK_S (through the ETag cache).  Beyond MAX_WATCHES
        waiting at once, or while the hub stops, the answer comes at once.
        """
        etag = await self.desired_etag(device_id)
        if etag is None or etag != known_etag or self._watching >= MAX_WATCHES:
            return etag
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(wait_s, 0.0), MAX_WATCH_S)
        self._watching += 1
        try:
            while etag == known_etag and not gone() and not self._closing.is_set():
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    async with asyncio.timeout(min(WATCH_CHECK_S, left)):
                        await self._closing.wait()
                except TimeoutError:
                    pass
                etag = await self.desired_etag(device_id)
        finally:
            self._watching -= 1
        return etag

    def stop_watches(self) -> None:
        """Answer every waiting long poll now: the hub is stopping and must not wait out their minute."""
        self._closing.set()
        for task in list(self._refreshing.values()):
            task.cancel()

    async def notice(self, data: bytes, *, topic_device: str | None = None) -> NoticeTaken | Refused:
        """Verify, check and register a transparency notice: a status-type message whose map carries ``notice`` (§7.3)."""
        sender = await self._verified_report(data, MAX_NOTICE_BYTES, topic_device)
        if isinstance(sender, Refused):
            return sender
        device_key, message = sender
        refusal = self._over_rate(self.notices, device_key.device_id, "notices") or await self._admit(
            device_key, message, check_notice_message, "notice")
        if refusal is not None:
            return refusal
        nid = await self.store.add_notice(device_key.device_id, message["notice"], received_ms=now_ms(), daily_limit=NOTICES_PER_DAY)
        if nid is None:
            return Refused(Answer.RATE_LIMITED, f"device {device_key.device_id!r} has published {NOTICES_PER_DAY} notices in the last 24 hours, "
                           "as many as this hub keeps in a day; retry later", retry_after_s=1 / NOTICE_RATE)
        return NoticeTaken(nid)

    async def _claimed_sender(self, data: bytes, limit: int, topic_device: str | None = None) -> tuple[DeviceKey, Envelope] | Refused:
        """The enrolled, active device whose key id a message of at most ``limit`` bytes names, and the message's envelope —
        not yet verified: the strict pre-authentication reader (OXP §4.4) and the key lookup only.  Refusals are charged.

        A key enrolled to another device than ``topic_device`` is refused: a device that may publish under another's id,
        through a broker without ACLs (OXP §8.6)."""
        try:
            envelope = read_envelope(data, limit=limit)
        except ProtocolError as exc:
            return _protocol_refusal(exc, charged=True)
        sender = await self._sender(envelope.kid, topic_device)
        return sender if isinstance(sender, Refused) else (sender[0], envelope)

    async def _sender(self, kid: bytes, topic_device: str | None) -> tuple[DeviceKey, bytes] | Refused:
        """:meth:`_claimed_sender` once the key id is read."""
        device = await self.keys.get(kid)
        if device is not None and topic_device is not None and device.device_id != topic_device:
            return Refused(Answer.MALFORMED, f"topic names device {topic_device!r} but key id {kid.hex()} is enrolled as another device", charged=True)
        refusal = _refuse_device(device, kid)
        if refusal is not None:
            return refusal
        assert device is not None
        return device, kid

    async def _verified_report(self, data: bytes, limit: int, topic_device: str | None = None) -> tuple[DeviceKey, dict[str, Any]] | Refused:
        """A signed status-type message of at most ``limit`` bytes, verified, and its active sender.

        Every refusal here but a busy hub's is charged: the sender has not shown it is the device.
        """
        sender = await self._claimed_sender(data, limit, topic_device)
        if isinstance(sender, Refused):
            return sender
        device, _ = sender
        try:
            report = await self.workers.run(open_status, data, _public_key(device))
        except Busy as exc:
            return _busy(exc, charged=False)
        except ProtocolError as exc:
            return _protocol_refusal(exc, charged=True)
        if report.get("device_id") != device.device_id:
            return Refused(Answer.MALFORMED, f"message names device {report.get('device_id')!r} but is signed by {device.device_id!r}", charged=True)
        return device, report

    @staticmethod
    def _over_rate(limiter: RateLimiter, device_id: str, what: str) -> Refused | None:
        """429 for a verified message its device sends faster than ``limiter`` allows (charged only once verified, so a
        forged one spends nothing); None otherwise."""
        wait = limiter.check(device_id)
        if wait <= 0:
            return None
        return Refused(Answer.RATE_LIMITED, f"device {device_id!r} sends {what} faster than this hub allows; retry later", retry_after_s=wait)

    async def _admit(self, device: DeviceKey, message: dict[str, Any], check: Callable[[dict[str, Any]], None], what: str) -> Refused | None:
        """Refused for a verified message that does not fit its schema, or is not newer than the last one accepted from
        its key (a replay, OXP §7.2); None once it is admitted and its freshness recorded."""
        try:
            check(message)
        except ReportError as exc:
            return Refused(Answer.of(exc.reason), exc.detail, reason=exc.reason)  # 413 too_large for a notice too big to store
        fresh = freshness(message)
        mark = await self.store.claim_freshness(device.key_id, device.device_id, fresh, now_ms=now_ms())
        if mark is None:
            return None
        return Refused(Answer.STALE, f"{what} of {fresh.describe()} is not newer than the last one accepted from key id "
                       f"{device.key_id.hex()} ({mark.describe()}): a replay, or overtaken by a newer one")

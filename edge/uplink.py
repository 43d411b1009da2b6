"""Delivers spooled batches to the hub oldest first, one in flight, and forgets each only when its ack names it.

This is delivery, not the wire: the order, the window of one, retry and backoff, the daily
byte budget and ack → spool live here; the bytes travel through a `Transport`
(`edge.transport`), which answers each exchange with an ack or a typed refusal.  Every
refusal short of a final one is retried with capped exponential backoff and full jitter
(the hub's ``Retry-After`` wins), so an outage of days ends with the backlog delivered
oldest first.  A batch the hub refuses for good (malformed, bad signature, too large) moves
to the spool's quarantine, counted and reported.  The hub is told about the spool backlog
and the loss counters in a signed status report every few minutes, and at once when the hub
names a desired ETag this gateway was not offered (in a batch ack, or the answer to the
long poll held on it): that report's answer brings the document.  Retry rules and the
byte budget: docs/spool-and-uplink.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.protocol import seal_status
from edge.protocol.reasons import Answer
from edge.spool import Spool, StoredBatch
from edge.statusreport import ReportFacts, status_report
from edge.transport import Ack, DesiredOffer, DesiredWatch, Refused, Taken, Transport, UplinkError
from edge.util.backoff import Backoff
from edge.util.clock import now_ms
from edge.util.logonce import LogOnce

__all__ = ["Uplink", "UplinkCounters", "UplinkError"]

log = logging.getLogger("ocn.uplink")

_DAY_MS = 86_400_000
_SPOOL_RETRY_S = 5.0
_OUTAGE_LOG_S = 300.0
# A long poll held by the hub for under a minute (proxies commonly drop idle requests at 60 s): about
# 210 bytes a minute, 0.3 MB a day, to learn of a new desired document within seconds.
DESIRED_WAIT_S = 55.0
# Polls at least this far apart, even when the hub answers at once (it holds too many, or the answer was news).
_DESIRED_POLL_MIN_S = 5.0
# How long an idle uplink sleeps before it looks at the spool again on its own.  Every stored batch wakes it
# (``wake``, the batcher's ``on_stored``), so this only bounds how long acked batches wait for their deletion
# to be committed when no batch comes to take it along, and is a safety net: a wake-up after seconds of sleep
# costs ~200 µs of CPU here (bench.wakeups), and at 5 s these were ~5 % of the CPU of a gateway polling one
# meter a second.
IDLE_POLL_S = 60.0
# A failed delivery is tried again after a delay drawn uniformly from 0 to BACKOFF_INITIAL_S * 2**n (n failures
# before it), at most BACKOFF_MAX_S (see the Backoff made in Uplink.__init__).
BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 300.0


@dataclass(slots=True)
class UplinkCounters:
    """Totals since the uplink started."""

    batches_sent: int = 0  # sends of a batch, retries included
    batches_acked: int = 0
    readings_acked: int = 0
    batches_quarantined: int = 0
    retries: int = 0
    bytes_sent: int = 0  # batch bytes, retries included
    overhead_bytes: int = 0  # all else carried, both ways: status reports, notices, framing, the hub's answers
    status_sent: int = 0
    last_error: str = ""
    last_ack_ms: int = 0
    last_latency_s: float = 0.0  # from sending a batch to the hub's answer, last delivery (the metrics' uplink latency)


def _acks(ack: Ack, batch: StoredBatch) -> bool:
    """True only if the ack identifies exactly this batch as durably stored."""
    return (ack.device_id, ack.key_id, ack.boot_epoch, ack.seq) == (
        batch.id.device_id, batch.id.key_id, batch.id.boot_epoch, batch.id.seq
    )


def _awaits_approval(refusal: Refused) -> bool:
    """The hub knows this gateway's key but city IT has not approved it yet (403 unknown_device, OXP §8.2)."""
    return refusal.code == Answer.UNKNOWN_DEVICE and "awaits approval" in refusal.message


class Uplink:
    """Delivers the spool to one hub through ``transport`` and reports the gateway's status there."""

    def __init__(
        self,
        *,
        spool: Spool,
        transport: Transport,
        private_key: Ed25519PrivateKey,
        device_id: str,
        daily_budget: int = 0,
        status_facts: Callable[[], ReportFacts] | None = None,
        status_interval_s: float = 300.0,
        on_desired: Callable[[object, str], None] | None = None,
        backoff_initial_s: float = BACKOFF_INITIAL_S,
        backoff_max_s: float = BACKOFF_MAX_S,
        idle_poll_s: float = IDLE_POLL_S,
        desired_wait_s: float = DESIRED_WAIT_S,
        clock_ms: Callable[[], int] = now_ms,
        rng: random.Random | None = None,
    ) -> None:
        self.transport = transport
        self.device_id = device_id
        self.daily_budget = daily_budget
        self.counters = UplinkCounters()
        self.desired: object = None
        # None until the first offer: even an empty ETag ("the hub holds no document") is news then.
        self.desired_etag: str | None = None
        self._spool = spool
        self._private_key = private_key
        self._status_facts = status_facts
        self._status_interval_s = status_interval_s
        self._on_desired = on_desired
        self._idle_poll_s = idle_poll_s
        self._desired_wait_s = desired_wait_s
        self._report_now = asyncio.Event()  # the hub holds a desired document we have not seen: report (and fetch it) now
        self._clock_ms = clock_ms
        self._rng = rng or random.Random()
        # Full jitter: many gateways that lost the hub together must not come back in step.
        self._backoff = Backoff(backoff_initial_s, backoff_max_s, jitter=1.0, rng=self._rng)
        self._faults = LogOnce(log)
        self._wake = asyncio.Event()
        # A clean stop (finish_sending): no new batch is sent, and the one on its way is let get its answer first.
        self._stopping = False
        self._settled = asyncio.Event()  # set while no batch is between its send and its answer's bookkeeping
        self._settled.set()
        self._down_since: float | None = None
        self._outage_logged = False
        self._outage_answered = False  # the outage under way is a hub answering "not now", not one out of reach
        self._last_outage_log = -_OUTAGE_LOG_S
        self._outages_not_logged = 0
        self._budget_day = -1
        self._budget_used = 0
        self._budget_logged = False
        self._report_lock = asyncio.Lock()
        self._report_seq = 0  # per boot: an uplink lives within one boot epoch of its spool
        transport.listen(self._desired_offered)

    @property
    def hub_url(self) -> str:
        return self.transport.hub

    def stats(self) -> dict[str, Any]:
        """Counters for the status line and the local API."""
        return dict(dataclasses.asdict(self.counters), reachable=self.reachable, hub=self.hub_url)

    @property
    def reachable(self) -> bool:
        """False from the first failed delivery until the next ack."""
        return self._down_since is None

    def wake(self, _stored: StoredBatch | None = None) -> None:
        """A batch was stored: send now instead of at the next poll (the batcher's ``on_stored``)."""
        self._wake.set()

    # -- lifecycle ---------------------------------------------------------------------

    async def run(self) -> None:
        """Deliver batches and send status reports until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._deliver_forever())
            if self._status_interval_s > 0:
                group.create_task(self._report_forever())
                # The document comes with a status report's answer, so without reports there is nothing to watch for.
                if self._on_desired is not None and isinstance(self.transport, DesiredWatch) and self._desired_wait_s > 0:
                    group.create_task(self._watch_desired_forever(self.transport))

    async def finish_sending(self, grace_s: float) -> None:
        """Send no new batch from now on, and give the batch on its way up to ``grace_s`` to be answered and its ack kept.

        A clean stop calls it before it seals what memory holds: a batch cancelled after the hub stored it, before its ack
        was kept, stays in the spool and is sent again at the next start (the hub answers "duplicate"); and the batch the
        stop seals is not started on, only to be cancelled in the middle.  What is left waits in the spool.  A batch "on its
        way" includes its connection: with the hub out of reach the stop waits out ``grace_s``.  One-shot: this uplink
        sends nothing more; ``aclose`` follows (a reload or restart builds a new one).
        """
        self._stopping = True
        self._wake.set()
        try:
            async with asyncio.timeout(grace_s):
                await self._settled.wait()
        except TimeoutError:
            log.info("stopping: the batch on its way got no answer in time; it stays in the spool", extra={"waited_s": grace_s})

    async def aclose(self) -> None:
        """Close the transport; unsent batches stay in the spool.

        A status report or notice already waiting or on its way is let finish first: a report that
        brings a new desired config makes the gateway restart, which closes this uplink while
        the report queued behind it is still to be sent.
        """
        async with self._report_lock:
            await self.transport.aclose()

    # -- batches -----------------------------------------------------------------------

    async def _deliver_forever(self) -> None:
        while True:
            if self._stopping:
                await asyncio.Event().wait()  # stopping: nothing more is sent; cancelled with the uplink
            self._wake.clear()
            try:
                # The spool's figures in memory say whether a batch waits: an idle uplink then wakes without a
                # worker thread's round trip (two of them every idle poll were most of its cost).
                batch = await asyncio.to_thread(self._spool.lease_oldest) if self._spool.waiting else None
                if batch is None:
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                    # cancel that arrives just as the event is set, and shutdown would hang.
                    try:
                        async with asyncio.timeout(self._idle_poll_s):
                            await self._wake.wait()
                    except TimeoutError:
                        # No batch for a while: the deletions of the last acked ones are committed on their own.
                        # Until then they ride on the next batch's commit (Spool.ack), one commit and one fsync
                        # per batch instead of two; a restart meanwhile sends them once more ("duplicate").
                        if self._spool.acks_pending:
                            await asyncio.to_thread(self._spool.flush_acks)
                    continue
                try:
                    finished = await self._deliver(batch)
                finally:
                    self._spool.release(batch)
                # Only a batch taken to its end (acked, or quarantined: a write) shows the spool usable;
                # a read that works while writes fail would announce a recovery every retry (or a stop).
                if finished:
                    self._faults.recovered("spool", "spool usable again; delivery resumed")
            except (OSError, sqlite3.Error) as exc:
                # The spool cannot be read or written (I/O error, disk full): the batches stay where they are.
                # An ack never lands here: the spool keeps its deletion pending until the disk takes it.
                self._faults.failure("spool", "cannot read or update the spool; delivery paused", level=logging.ERROR,
                                     extra={"error": str(exc)})
                await asyncio.sleep(_SPOOL_RETRY_S)

    async def _deliver(self, batch: StoredBatch) -> bool:
        """Send one batch until it is acked or quarantined (True), or the uplink is stopping (False: it stays in the spool)."""
        while True:
            await self._within_budget(len(batch.data))
            if self._stopping:
                return False
            self._settled.clear()
            try:
                refusal = await self._send_once(batch)
            finally:
                self._settled.set()
            if refusal is None:
                return True
            if self._stopping:
                return False  # not acked, and the gateway stops: no backoff, the batch waits in the spool
            await self._back_off(refusal, batch)

    async def _send_once(self, batch: StoredBatch) -> Refused | None:
        """One try and what follows from its answer: None when the batch was acked or quarantined, else the refusal."""
        self.counters.batches_sent += 1
        self.counters.bytes_sent += len(batch.data)
        self._spend(len(batch.data))
        sent = time.monotonic()
        outcome = await self.transport.send_batch(batch.data)
        self.counters.last_latency_s = round(time.monotonic() - sent, 6)
        self._carried(outcome.overhead_bytes)
        if isinstance(outcome, Ack):
            if not _acks(outcome, batch):
                outcome = Refused(False, "", "hub acked a different batch than the one sent")
            else:
                await asyncio.to_thread(self._spool.ack, batch, budget=self._budget_state())
                self.counters.batches_acked += 1
                self.counters.readings_acked += batch.readings
                self.counters.last_ack_ms = self._clock_ms()
                self._recovered()
                self._desired_news(outcome.desired_etag)
                return None
        if outcome.final:
            await asyncio.to_thread(self._spool.quarantine, batch, reason=outcome.code, detail=outcome.message)
            self.counters.batches_quarantined += 1
            self._recovered()
            return None
        return outcome

    async def _back_off(self, refusal: Refused, batch: StoredBatch) -> None:
        self.counters.retries += 1
        self.counters.last_error = refusal.message
        now = time.monotonic()
        if _awaits_approval(refusal):
            # The hub answered: it is reachable, and the fix is city IT's approval, not the network.
            self._faults.failure("approval", "awaiting approval at the hub; batches wait in the spool until city IT approves "
                                 "this gateway (ocn-edge hub device approve)", extra={"hub": self.hub_url})
        elif self._down_since is None:
            self._down_since = now
            # A flapping hub would log an outage every few seconds: at most one report per _OUTAGE_LOG_S,
            # and the ones held back are counted in the next (LogOnce would add an "intermittent" line).
            self._outage_logged = now - self._last_outage_log >= _OUTAGE_LOG_S
            # A hub that answered (503 busy or unavailable, 429) is not unreachable: the line says which, for whoever reads it.
            self._outage_answered = bool(refusal.code)
            if self._outage_logged:
                self._last_outage_log = now
                log.warning(
                    "hub answers but takes no batches now; batches wait in the spool" if self._outage_answered
                    else "hub unreachable; batches wait in the spool",
                    extra={"hub": self.hub_url, "error": refusal.message, "outages_not_logged": self._outages_not_logged},
                )
                self._outages_not_logged = 0
            else:
                self._outages_not_logged += 1
        log.debug("retrying batch", extra={"batch": str(batch.id), "error": refusal.message})
        delay = self._backoff.next()
        if refusal.retry_after is not None:
            # The hub said when: obey, spread by up to 10 % so a fleet does not return in step.
            delay = refusal.retry_after * (1.0 + 0.1 * self._rng.random())
        await asyncio.sleep(delay)

    def _recovered(self) -> None:
        self._backoff.reset()
        self._faults.recovered("approval", "approved at the hub; delivery resumed", extra={"hub": self.hub_url})
        if self._down_since is not None:
            if self._outage_logged:
                log.info(
                    "hub takes batches again" if self._outage_answered else "hub reachable again",
                    extra={"hub": self.hub_url, "down_s": round(time.monotonic() - self._down_since, 1)},
                )
            self._down_since = None

    # -- daily byte budget -------------------------------------------------------------

    def _today(self) -> int:
        return self._clock_ms() // _DAY_MS

    def _budget_state(self) -> tuple[int, int] | None:
        return (self._budget_day, self._budget_used) if self.daily_budget > 0 else None

    def _refresh_budget(self) -> None:
        today = self._today()
        if today != self._budget_day:
            self._budget_day = today
            self._budget_used = self._spool.budget_used(today)
            self._budget_logged = False

    def _carried(self, overhead: int) -> None:
        """Framing and answers the transport reports for an exchange: billed like the message on a metered link."""
        self.counters.overhead_bytes += overhead
        self._spend(overhead)

    def _spend(self, size: int) -> None:
        if self.daily_budget > 0:
            self._refresh_budget()
            self._budget_used += size

    def budget_left(self) -> int | None:
        """Bytes today's budget still allows (None: no budget): what a software download may use (edge.update.updater)."""
        if self.daily_budget <= 0:
            return None
        self._refresh_budget()
        return max(0, self.daily_budget - self._budget_used)

    def spent_elsewhere(self, size: int) -> None:
        """Bytes another user of the link (a software download) took from today's budget."""
        self._spend(size)

    async def _within_budget(self, size: int) -> None:
        """Wait for the next UTC day if sending ``size`` bytes would overspend today's budget."""
        if self.daily_budget <= 0:
            return
        while True:
            self._refresh_budget()
            # A batch larger than the whole budget still goes out first thing in the day, or it would block forever.
            if self._budget_used == 0 or self._budget_used + size <= self.daily_budget:
                return
            if not self._budget_logged:
                self._budget_logged = True
                log.warning(
                    "daily byte budget used up; sending resumes tomorrow (UTC)",
                    extra={"budget_bytes": self.daily_budget, "used_bytes": self._budget_used},
                )
            until_midnight = ((self._budget_day + 1) * _DAY_MS - self._clock_ms()) / 1000
            await asyncio.sleep(max(0.05, min(until_midnight, 1.0)))

    def _over_budget(self) -> bool:
        if self.daily_budget <= 0:
            return False
        self._refresh_budget()
        return self._budget_used >= self.daily_budget

    # -- status reports and notices ----------------------------------------------------

    async def _report_forever(self) -> None:
        while True:
            try:
                await self.send_status()
            except (ValueError, TypeError) as exc:
                # A status field that cannot be encoded is a bug to fix, not a reason to stop sending batches.
                self._faults.failure("report", "cannot build the status report", level=logging.ERROR, extra={"error": str(exc)})
            else:
                self._faults.recovered("report", "status report built again", level=logging.DEBUG)
            # asyncio.timeout, not wait_for (see _deliver_forever).
            try:
                async with asyncio.timeout(self._status_interval_s * (0.9 + 0.2 * self._rng.random())):
                    await self._report_now.wait()
            except TimeoutError:
                pass
            self._report_now.clear()

    def _desired_news(self, etag: str | None) -> None:
        """The hub named its desired ETag (in an ack or a long poll's answer): report now if it is one we were not offered."""
        if etag is not None and etag != self.desired_etag:
            self._report_now.set()

    async def _watch_desired_forever(self, watch: DesiredWatch) -> None:
        """Hold a long poll on the desired ETag, so a change reaches the gateway in seconds whatever the batch span."""
        retry = Backoff(_DESIRED_POLL_MIN_S, 300.0, jitter=1.0, rng=self._rng)
        while True:
            if self._over_budget():
                await asyncio.sleep(60.0)
                continue
            started = time.monotonic()
            news = await watch.watch_desired(self.device_id, self.desired_etag or "", self._desired_wait_s)
            self._carried(news.overhead_bytes)
            if news.unsupported:
                log.debug("the hub offers no desired-state wait; desired documents come with status reports", extra={"hub": self.hub_url})
                return
            if news.error:
                # Delivery says when the hub is unreachable; this only waits, longer each time, and asks again.
                log.debug("desired-state wait failed", extra={"error": news.error})
                await asyncio.sleep(retry.next())
                continue
            retry.reset()
            self._desired_news(news.etag)
            await asyncio.sleep(max(0.0, _DESIRED_POLL_MIN_S - (time.monotonic() - started)))

    def status_report(self) -> dict[str, Any]:
        """The status report as it would be signed now (edge.statusreport builds it)."""
        if self._status_facts is not None:
            facts = self._status_facts()
        else:
            facts = ReportFacts(errors=[self.counters.last_error] if not self.reachable else [])
        return status_report(
            self._spool.stats_record(), device_id=self.device_id, ts_ms=self._clock_ms(), boot_epoch=self._spool.boot_epoch, facts=facts
        )

    async def _send_signed(self, message: Mapping[str, Any], what: str, send: Callable[[bytes], Awaitable[Taken | Refused]]) -> bool:
        """Seal ``message`` as a signed OXP status-type message and send it; True if the hub took it.

        Each message carries this boot's epoch and the next number of its report sequence
        (OXP §7.2), so the hub can refuse a captured one replayed later.  One is in flight at a
        time and numbered when sealed: a report never overtakes the one numbered before it.
        A refusal only waits for the next round (logged at debug).
        """
        async with self._report_lock:
            fresh = dict(message, boot_epoch=self._spool.boot_epoch, report_seq=self._report_seq)
            self._report_seq += 1
            data = seal_status(fresh, device_id=self.device_id, private_key=self._private_key)
            self._carried(len(data))
            outcome = await send(data)
            self._carried(outcome.overhead_bytes)
        if isinstance(outcome, Refused):
            if outcome.code == Answer.STALE:
                # Not newer than one the hub already took from this key: the boot epoch went back (a spool
                # replaced under the same key) or another gateway holds this key. Sending again cannot help.
                self._faults.failure("stale", f"the hub refuses this gateway's {what} as stale", extra={"detail": outcome.message[:300]})
            log.debug(f"{what} not taken", extra={"error": outcome.message})
            return False
        return True

    async def send_status(self) -> bool:
        """Send one signed status report; True if the hub took it.  Failures only wait for the next round."""
        if self._over_budget():
            return False
        report = await asyncio.to_thread(self.status_report)
        if not await self._send_signed(report, "status report", self.transport.send_status):
            return False
        self.counters.status_sent += 1
        return True

    async def send_notice(self, notice: Mapping[str, Any]) -> bool:
        """Publish the transparency notice to the hub's public register; True if the hub took it."""
        if self._over_budget():
            return False
        message = {"device_id": self.device_id, "ts_ms": self._clock_ms(), "notice": dict(notice)}
        return await self._send_signed(message, "notice", self.transport.publish_notice)

    def _desired_offered(self, offer: DesiredOffer) -> None:
        """The transport's listener: a new offer goes on to the applier, the same one again does not.

        The same ETag signed again (a later issue time, OXP §8.4) goes on too: the applier skips it when it is in force,
        and applies it when an older copy was ignored (the hub's clock was behind), or when an unsigned clear came first."""
        if offer.etag == self.desired_etag and offer.signed == self.desired:
            return
        self.desired, self.desired_etag = offer.signed, offer.etag
        if self._on_desired is not None:
            self._on_desired(offer.signed, offer.etag)

"""Sends spooled batches to the hub oldest first, one in flight, and forgets each only when its ack names it.

Every failure short of a permanent rejection is retried with capped
exponential backoff and full jitter (``Retry-After`` wins for 429 and 503), so
an outage of days ends with the backlog delivered oldest first.  A batch the
hub rejects for good (400 malformed, 401 bad signature, 413 too large) moves
to the spool's quarantine, counted and reported.  The hub is told about the
spool backlog and the loss counters in a signed status report every few
minutes.  Retry rules and the byte budget: docs/spool-and-uplink.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import sqlite3
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge import __version__
from edge.protocol import MEDIA_TYPE, seal_status
from edge.spool import Spool, StoredBatch

__all__ = ["Uplink", "UplinkCounters", "UplinkError", "tls_context"]

log = logging.getLogger("ocn.uplink")

# A hub answers these for a batch that will never be accepted, however often it is sent.
_PERMANENT = {400: "malformed", 401: "bad_signature", 413: "too_large"}
_MAX_RETRY_AFTER_S = 86400.0
_DAY_MS = 86_400_000
_SPOOL_RETRY_S = 5.0
_OUTAGE_LOG_S = 300.0
# An ack is a few hundred bytes; a reply larger than this is garbage and is not read further.
_MAX_REPLY_BYTES = 64 * 1024


class UplinkError(Exception):
    """The uplink is configured in a way that cannot work; the message names the setting."""


@dataclass(slots=True)
class UplinkCounters:
    """Totals since the uplink started."""

    batches_sent: int = 0  # POSTs of a batch, retries included
    batches_acked: int = 0
    readings_acked: int = 0
    batches_quarantined: int = 0
    retries: int = 0
    bytes_sent: int = 0  # batch bytes, retries included
    overhead_bytes: int = 0  # all else carried, both ways: status reports, notices, HTTP headers, the hub's answers
    status_sent: int = 0
    last_error: str = ""
    last_ack_ms: int = 0


def tls_context(ca: str | Path | None) -> ssl.SSLContext:
    """A client TLS context that trusts only ``ca`` (a PEM bundle), or the system store when None."""
    if ca is None or str(ca) == "":
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise UplinkError(f"uplink ca = {str(ca)!r}: cannot read a PEM CA bundle there ({exc})") from exc


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Outcome:
    """What one POST of a batch came to."""

    ACKED = "acked"
    REJECTED = "rejected"
    RETRY = "retry"

    def __init__(self, kind: str, error: str = "", *, code: str = "", retry_after: float | None = None) -> None:
        self.kind = kind
        self.error = error
        self.code = code
        self.retry_after = retry_after


class Uplink:
    """Delivers the spool to one hub over OXP v1 and reports the gateway's status there."""

    def __init__(
        self,
        *,
        spool: Spool,
        hub_url: str,
        private_key: Ed25519PrivateKey,
        device_id: str,
        ca: str | Path | None = None,
        timeout_s: float = 30.0,
        daily_budget: int = 0,
        status_provider: Callable[[], Mapping[str, Any]] | None = None,
        status_interval_s: float = 300.0,
        on_desired: Callable[[Any, str], None] | None = None,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 300.0,
        idle_poll_s: float = 5.0,
        clock_ms: Callable[[], int] = _now_ms,
        rng: random.Random | None = None,
    ) -> None:
        if not hub_url.startswith(("http://", "https://")):
            raise UplinkError(f"uplink hub = {hub_url!r}: expected an http:// or https:// URL")
        self.hub_url = hub_url.rstrip("/")
        self.device_id = device_id
        self.daily_budget = daily_budget
        self.counters = UplinkCounters()
        self.desired: Any = None
        # None until the first answer: even an empty ETag ("the hub holds no document") is news then.
        self.desired_etag: str | None = None
        self._spool = spool
        self._private_key = private_key
        self._ssl = tls_context(ca) if self.hub_url.startswith("https://") else None
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._status_provider = status_provider
        self._status_interval_s = status_interval_s
        self._on_desired = on_desired
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._idle_poll_s = idle_poll_s
        self._clock_ms = clock_ms
        self._rng = rng or random.Random()
        self._session: aiohttp.ClientSession | None = None
        self._wake = asyncio.Event()
        self._attempt = 0
        self._down_since: float | None = None
        self._outage_logged = False
        self._last_outage_log = -_OUTAGE_LOG_S
        self._outages_not_logged = 0
        self._budget_day = -1
        self._budget_used = 0
        self._budget_logged = False
        self._report_lock = asyncio.Lock()
        self._report_seq = 0  # per boot: an uplink lives within one boot epoch of its spool
        self._stale_logged = False

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

    async def aclose(self) -> None:
        """Close the HTTP session; unsent batches stay in the spool.

        A status report or notice already waiting or on its way is let finish first: a report that
        brings a new desired config makes the gateway restart, which closes this uplink while
        the report queued behind it is still to be sent.
        """
        async with self._report_lock:
            if self._session is not None:
                await self._session.close()
                self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else False)
            # trust_env: a city network that only lets traffic out through a proxy sets HTTPS_PROXY.
            self._session = aiohttp.ClientSession(
                connector=connector,
                trust_env=True,
                timeout=self._timeout,
                headers={"User-Agent": f"ocn-edge/{__version__}"},
                # The hub answers small JSON and no content negotiation happens: Accept and
                # Accept-Encoding would only add 45 bytes to every batch on a metered link.
                skip_auto_headers=("Accept", "Accept-Encoding"),
            )
        return self._session

    # -- batches -----------------------------------------------------------------------

    async def _deliver_forever(self) -> None:
        spool_failing = False
        while True:
            self._wake.clear()
            try:
                batch = await asyncio.to_thread(self._spool.lease_oldest)
                if batch is None:
                    await asyncio.to_thread(self._spool.flush_acks)
                    # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                    # cancel that arrives just as the event is set, and shutdown would hang.
                    try:
                        async with asyncio.timeout(self._idle_poll_s):
                            await self._wake.wait()
                    except TimeoutError:
                        pass
                    continue
                try:
                    await self._deliver(batch)
                finally:
                    self._spool.release(batch)
                # Only a batch taken to its end (acked, or quarantined: a write) shows the spool usable;
                # a read that works while writes fail would announce a recovery every retry.
                if spool_failing:
                    spool_failing = False
                    log.info("spool usable again; delivery resumed")
            except (OSError, sqlite3.Error) as exc:
                # The spool cannot be read or written (I/O error, disk full): the batches stay where they are.
                # An ack never lands here: the spool keeps its deletion pending until the disk takes it.
                if not spool_failing:
                    log.error("cannot read or update the spool; delivery paused", extra={"error": str(exc)})
                spool_failing = True
                await asyncio.sleep(_SPOOL_RETRY_S)

    async def _deliver(self, batch: StoredBatch) -> None:
        """Send one batch until it is acked or quarantined."""
        while True:
            await self._within_budget(len(batch.data))
            outcome = await self._post_batch(batch)
            if outcome.kind == _Outcome.ACKED:
                await asyncio.to_thread(self._spool.ack, batch, budget=self._budget_state())
                self.counters.batches_acked += 1
                self.counters.readings_acked += batch.readings
                self.counters.last_ack_ms = self._clock_ms()
                self._recovered()
                return
            if outcome.kind == _Outcome.REJECTED:
                await asyncio.to_thread(
                    self._spool.quarantine, batch, reason=outcome.code, detail=outcome.error
                )
                self.counters.batches_quarantined += 1
                self._recovered()
                return
            await self._back_off(outcome, batch)

    async def _post_batch(self, batch: StoredBatch) -> _Outcome:
        self.counters.batches_sent += 1
        self.counters.bytes_sent += len(batch.data)
        self._spend(len(batch.data))
        url = f"{self.hub_url}/oxp/v1/batches"
        try:
            async with self._http().post(url, data=batch.data, headers={"Content-Type": MEDIA_TYPE}) as resp:
                body = await resp.content.read(_MAX_REPLY_BYTES)
                self._spend_framing(resp, len(body))
                return self._judge(batch, resp, body)
        except TimeoutError:
            return _Outcome(_Outcome.RETRY, "timed out waiting for the hub")
        except aiohttp.ClientConnectorCertificateError as exc:
            return _Outcome(_Outcome.RETRY, f"TLS certificate not trusted: {exc.certificate_error}")
        except aiohttp.ClientError as exc:
            return _Outcome(_Outcome.RETRY, f"{type(exc).__name__}: {exc}")
        except OSError as exc:
            return _Outcome(_Outcome.RETRY, f"{type(exc).__name__}: {exc}")

    def _judge(self, batch: StoredBatch, resp: aiohttp.ClientResponse, body: bytes) -> _Outcome:
        document = _json_object(body)
        if resp.status == 200:
            if document is None:
                return _Outcome(_Outcome.RETRY, "hub answered 200 without a JSON ack")
            if not _ack_names(document, batch):
                return _Outcome(_Outcome.RETRY, "hub acked a different batch than the one sent")
            return _Outcome(_Outcome.ACKED)
        code = str(document.get("error", "")) if document else ""
        detail = str(document.get("detail", "")) if document else body[:200].decode("utf-8", "replace")
        if resp.status in _PERMANENT and (code or resp.status == 413):
            return _Outcome(_Outcome.REJECTED, detail, code=code or _PERMANENT[resp.status])
        retry_after = _retry_after(resp.headers.get("Retry-After")) if resp.status in (429, 503) else None
        reason = f"hub answered {resp.status}" + (f" {code}" if code else "") + (f": {detail}" if detail else "")
        return _Outcome(_Outcome.RETRY, reason, code=code, retry_after=retry_after)

    async def _back_off(self, outcome: _Outcome, batch: StoredBatch) -> None:
        self.counters.retries += 1
        self.counters.last_error = outcome.error
        now = time.monotonic()
        if self._down_since is None:
            self._down_since = now
            # A flapping hub would log an outage every few seconds: at most one report per _OUTAGE_LOG_S.
            self._outage_logged = now - self._last_outage_log >= _OUTAGE_LOG_S
            if self._outage_logged:
                self._last_outage_log = now
                log.warning(
                    "hub unreachable; batches wait in the spool",
                    extra={"hub": self.hub_url, "error": outcome.error, "outages_not_logged": self._outages_not_logged},
                )
                self._outages_not_logged = 0
            else:
                self._outages_not_logged += 1
        log.debug("retrying batch", extra={"batch": str(batch.id), "error": outcome.error})
        if outcome.retry_after is not None:
            # The hub said when: obey, spread by up to 10 % so a fleet does not return in step.
            delay = outcome.retry_after * (1.0 + 0.1 * self._rng.random())
        else:
            ceiling = min(self._backoff_max_s, self._backoff_initial_s * 2.0**self._attempt)
            delay = self._rng.uniform(0.0, ceiling)  # "full jitter"
        self._attempt += 1
        await asyncio.sleep(delay)

    def _recovered(self) -> None:
        self._attempt = 0
        if self._down_since is not None:
            if self._outage_logged:
                log.info(
                    "hub reachable again",
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

    def _spend_framing(self, resp: aiohttp.ClientResponse, body_bytes: int) -> None:
        """Count what HTTP carried around a message: the request line and headers, and the whole answer.

        On a metered link they are billed like the batch (about 380 bytes an exchange with the
        reference hub). TLS records, TCP and IP headers are not counted.
        """
        sent = received = 0
        # A redirect (a hub moved behind a 307/308) is one more exchange each: its request, the
        # message sent again (counted here; the first copy was counted before sending) and its answer.
        for hop, answer in enumerate((*resp.history, resp)):
            info = answer.request_info
            sent += len(f"{info.method} {info.url.raw_path_qs} HTTP/1.1\r\n") + 2
            sent += sum(len(name) + len(value) + 4 for name, value in info.headers.items())
            if hop:
                sent += _content_length(info.headers)
            received += len(f"HTTP/{answer.version.major}.{answer.version.minor} {answer.status} {answer.reason or ''}\r\n") + 2
            received += sum(len(name) + len(value) + 4 for name, value in answer.raw_headers)
            received += body_bytes if answer is resp else _content_length(answer.headers)
        self.counters.overhead_bytes += sent + received
        self._spend(sent + received)

    def _spend(self, size: int) -> None:
        if self.daily_budget > 0:
            self._refresh_budget()
            self._budget_used += size

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

    # -- status reports ----------------------------------------------------------------

    async def _report_forever(self) -> None:
        report_failing = False
        while True:
            try:
                await self.send_status()
            except (ValueError, TypeError) as exc:
                # A status field that cannot be encoded is a bug to fix, not a reason to stop sending batches.
                if not report_failing:
                    log.error("cannot build the status report", extra={"error": str(exc)})
                report_failing = True
            else:
                report_failing = False
            await asyncio.sleep(self._status_interval_s * (0.9 + 0.2 * self._rng.random()))

    def status_report(self) -> dict[str, Any]:
        """The status report as it would be signed now: spool backlog, loss counters, boot epoch, digests."""
        stats = self._spool.stats_record()
        report: dict[str, Any] = {
            "device_id": self.device_id,
            "ts_ms": self._clock_ms(),
            "software_version": __version__,
            "boot_epoch": self._spool.boot_epoch,
            "unclean_stops": stats.unclean_stops,
            "spool_batches": stats.batches,
            "spool_bytes": stats.bytes,
            "spool_oldest_age_s": stats.oldest_age_s,
            "readings_dropped": stats.readings_dropped,
            "batches_dropped": stats.batches_dropped,
            "batches_quarantined": stats.batches_quarantined,
            "readings_quarantined": stats.readings_quarantined,
            "policy_digest": b"",
            "config_digest": b"",
            "errors": [self.counters.last_error] if self._down_since is not None else [],
        }
        if self._status_provider is not None:
            report.update(self._status_provider())
        return report

    def _over_budget(self) -> bool:
        if self.daily_budget <= 0:
            return False
        self._refresh_budget()
        return self._budget_used >= self.daily_budget

    async def _post_signed(self, path: str, message: Mapping[str, Any], what: str) -> dict[str, Any] | None:
        """Seal ``message`` as a signed OXP status-type message, POST it, and return the hub's JSON
        answer when it says ok; None (logged at debug: the caller retries later) otherwise.

        Each message carries this boot's epoch and the next number of its report sequence
        (OXP §7.2), so the hub can refuse a captured one replayed later.  One is in flight at a
        time and numbered when sealed: a report never overtakes the one numbered before it.
        """
        async with self._report_lock:
            fresh = dict(message, boot_epoch=self._spool.boot_epoch, report_seq=self._report_seq)
            self._report_seq += 1
            data = seal_status(fresh, device_id=self.device_id, private_key=self._private_key)
            self.counters.overhead_bytes += len(data)
            self._spend(len(data))
            try:
                async with self._http().post(
                    f"{self.hub_url}{path}", data=data, headers={"Content-Type": MEDIA_TYPE}
                ) as resp:
                    body = await resp.content.read(_MAX_REPLY_BYTES)
                    self._spend_framing(resp, len(body))
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                log.debug(f"{what} not delivered", extra={"error": f"{type(exc).__name__}: {exc}"})
                return None
        document = _json_object(body)
        if resp.status == 409 and not self._stale_logged:
            # Not newer than one the hub already took from this key: the boot epoch went back (a spool
            # replaced under the same key) or another gateway holds this key. Sending again cannot help.
            self._stale_logged = True
            log.warning(f"the hub refuses this gateway's {what} as stale", extra={"detail": str((document or {}).get("detail", ""))[:300]})
        if resp.status != 200 or document is None or document.get("ok") is not True:
            log.debug(f"{what} refused", extra={"status": resp.status})
            return None
        return document

    async def send_status(self) -> bool:
        """Send one signed status report; True if the hub took it.  Failures only wait for the next round."""
        if self._over_budget():
            return False
        report = await asyncio.to_thread(self.status_report)
        document = await self._post_signed("/oxp/v1/status", report, "status report")
        if document is None:
            return False
        self.counters.status_sent += 1
        etag = str(document.get("etag", ""))
        if etag != self.desired_etag:
            self.desired, self.desired_etag = document.get("desired"), etag
            if self._on_desired is not None:
                self._on_desired(self.desired, etag)
        return True

    async def send_notice(self, notice: Mapping[str, Any]) -> bool:
        """Publish the transparency notice to the hub's public register; True if the hub took it."""
        if self._over_budget():
            return False
        message = {"device_id": self.device_id, "ts_ms": self._clock_ms(), "notice": dict(notice)}
        return await self._post_signed("/oxp/v1/notice", message, "notice") is not None


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        document = json.loads(body)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _ack_names(ack: Mapping[str, Any], batch: StoredBatch) -> bool:
    """True only if the ack identifies exactly this batch as durably stored."""
    return (
        ack.get("status") in ("stored", "duplicate")
        and ack.get("device_id") == batch.id.device_id
        and ack.get("key_id") == batch.id.key_id.hex()
        and type(ack.get("boot_epoch")) is int
        and ack.get("boot_epoch") == batch.id.boot_epoch
        and type(ack.get("seq")) is int
        and ack.get("seq") == batch.id.seq
    )


def _content_length(headers: Mapping[str, str]) -> int:
    """The Content-Length a message declares, 0 if none or unreadable."""
    try:
        return max(0, int(headers.get("Content-Length", "0")))
    except ValueError:
        return 0


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date); None if absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), _MAX_RETRY_AFTER_S)

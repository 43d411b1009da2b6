"""The northbound export: released, public readings published to a city's MQTT broker, as SenML and as SensorThings.

How a reading gets there (docs/fleet.md, "Exporting to the city's broker"):

1. ``store_batch`` writes one outbox row per chunk it stores (one channel's readings of one batch) in the
   transaction that stores the batch, while an export lease ran within the last day (hub.engines.sql).
2. One hub process holds the export lease (taken and renewed every ``LEASE_RENEW_S``, lapsing ``LEASE_TTL_S``
   after its holder stops renewing it); the others wait, so several processes on one database do not export a
   reading twice in normal operation.
3. The holder reads the oldest ``ROUND_CHUNKS`` outbox rows (memory stays bounded however long the broker was
   away), publishes each chunk's messages at QoS 1 in outbox order and deletes a row only once the broker
   acknowledged (PUBACK) every message made of it.  A broker outage delays the export and loses nothing.

Messages:

- SenML (RFC 8428): one pack per chunk on the topic template (default ``ocn/{device}/{channel}``), the records
  hub.opendata's ``/data/readings.senml.json`` gives for the same readings (``to_senml_records``).
- SensorThings MQTT extension: one message per Observation on ``v1.1/Datastreams(<id>)/Observations``, the JSON
  ``/sta/v1.1/Observations(<id>)`` gives for it (hub.sensorthings), with the same ids.

Personal channels are never exported: the outbox query returns no readings for their chunks (the filter is in its
SQL, hub.engines.sql.export_pending_query).  Delivery is at least once: a crash between a PUBACK and the delete, or
a lease taken over from a process that stalled, publishes a message again; a subscriber may see one twice, never
miss one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiomqtt
import cbor2
from aiohttp import web

from edge.util.backoff import Backoff
from edge.util.clock import now_ms
from hub.brokerurl import check_broker, connection
from hub.models import StoredReading
from hub.opendata import to_senml_records
from hub.sensorthings import Catalog
from hub.store import Store

if TYPE_CHECKING:
    from hub.metrics import HubMetrics

__all__ = ["DEFAULT_TOPIC", "EXPORTER", "FORMATS", "STA_TOPIC", "ExportSettings", "Exporter", "parse_formats"]

log = logging.getLogger("ocn.hub.export")

# The library's own logger: disabled and attached to no hierarchy, so none of its text reaches a log.
_LIBRARY_LOG = logging.Logger("export-mqtt-library")
_LIBRARY_LOG.disabled = True

FORMATS = ("senml", "sensorthings")
DEFAULT_TOPIC = "ocn/{device}/{channel}"
STA_TOPIC = "v1.1/Datastreams({id})/Observations"
LEASE_TTL_S = 30.0
LEASE_RENEW_S = 10.0
POLL_S = 1.0
# Chunks taken per round: a batch's chunk is typically a few KiB (a channel's readings of one batch).
ROUND_CHUNKS = 128
# Publishes awaiting their PUBACK at once.
IN_FLIGHT = 64
# A chunk of at most this many readings has its messages built on the event loop (well under a millisecond for SenML).
INLINE_READINGS = 256
_PLACEHOLDERS = ("{device}", "{channel}")


def parse_formats(text: str) -> tuple[str, ...]:
    """``--export-formats``: a comma-separated choice among FORMATS, at least one."""
    chosen = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown or not chosen:
        raise ValueError(f"--export-formats {text!r}: expected one or both of {', '.join(FORMATS)}, comma-separated")
    return chosen


@dataclass(frozen=True)
class ExportSettings:
    """Where and how the hub exports (``--export-*`` options)."""

    broker: str
    """``mqtt://[user@]host[:port]`` or ``mqtts://…`` of the city's broker."""
    password_file: str = ""
    """A file holding the broker password of the user the URL names."""
    ca: str = ""
    """A PEM CA bundle to check an mqtts broker against (default: the system store)."""
    client_id: str = ""
    """The MQTT client id (default ocn-hub-export-<host name>-<pid>)."""
    topic: str = DEFAULT_TOPIC
    """The SenML topic template: ``{device}`` and ``{channel}`` are filled in (a channel id's ``/`` makes more levels)."""
    formats: tuple[str, ...] = FORMATS
    """What is published: ``senml``, ``sensorthings`` or both."""
    public_url: str = ""
    """The hub's address as SensorThings clients reach it, for ``@iot.selfLink`` (default: the address it serves on)."""

    def __post_init__(self) -> None:
        check_broker(self.broker, options="--export", password_file=self.password_file, ca=self.ca, user_named=True,
                     expected="mqtt://[USER@]HOST[:PORT] or mqtts://…, e.g. mqtts://broker.city.example:8883")
        bare = self.topic
        for placeholder in _PLACEHOLDERS:
            bare = bare.replace(placeholder, "x")
        if not self.topic or self.topic.startswith(("$", "/")) or any(ch in bare for ch in "+#{}\0") or "//" in bare or bare.endswith("/"):
            raise ValueError(f"--export-topic {self.topic!r}: expected a topic like {DEFAULT_TOPIC} (levels not empty, no + or #, not starting "
                             "with $ or /; {device} and {channel} are the only placeholders)")
        parse_formats(",".join(self.formats))
        if self.public_url and urlsplit(self.public_url).scheme not in ("http", "https"):
            raise ValueError(f"--export-public-url {self.public_url!r}: expected the hub's address, e.g. https://hub.city.example")

    def senml_topic(self, device_id: str, channel: str) -> str:
        return self.topic.replace("{device}", device_id).replace("{channel}", channel)

    def client(self) -> aiomqtt.Client:
        return aiomqtt.Client(
            **connection(self.broker, password_file=self.password_file, ca=self.ca),
            identifier=self.client_id or f"ocn-hub-export-{socket.gethostname()}-{os.getpid()}",
            logger=_LIBRARY_LOG,
            # 3.1.1: what every broker a city runs speaks (FROST's included); nothing here needs 5's properties.
            protocol=aiomqtt.ProtocolVersion.V311,
            clean_session=True,
            keepalive=30,
            timeout=10.0,
            max_inflight_messages=IN_FLIGHT,
        )


def _readings(row: Sequence[Any]) -> list[StoredReading]:
    """The readings of one outbox row's chunk (none for a personal or deleted chunk), ids as the open-data APIs give them."""
    _, chunk_id, channel_id, device_id, name, unit, first_ms, _, data = row
    if chunk_id is None:
        return []
    offsets, values, qualities = cbor2.loads(bytes(data))
    base = chunk_id << 16
    return [StoredReading(base | i, channel_id, device_id, name, first_ms + offset, values[i], unit, None if qualities is None else qualities[i])
            for i, offset in enumerate(offsets)]


def _json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


async def _lost(client: aiomqtt.Client) -> None:
    """Return never; raise aiomqtt.MqttError when the connection is lost."""
    async for _ in client.messages:
        pass
    raise aiomqtt.MqttError("the broker closed the connection")


class Exporter:
    """One hub process's side of the export: it takes the lease when it can and, holding it, empties the outbox to the broker."""

    def __init__(self, store: Store, settings: ExportSettings, *, unavailable: tuple[type[BaseException], ...] = (),
                 metrics: HubMetrics | None = None) -> None:
        """``unavailable``: the errors of a database that is down."""
        self.store = store
        self.settings = settings
        self._unavailable = unavailable
        self._metrics = metrics
        self.holder = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self._catalog = Catalog(store, "", [], [])
        self.holding = False
        self._held = asyncio.Event()  # set while this process holds the lease
        self.connected = asyncio.Event()
        self.published = 0  # messages the broker acknowledged, for tests and the log
        self._down_since: float | None = None
        self._database_down = False
        self._ever_connected = False

    # --- the lease --------------------------------------------------------------------

    async def keep_lease(self) -> None:
        """Take or renew the export lease every LEASE_RENEW_S until cancelled."""
        while True:
            try:
                held = await self.store.hold_export_lease(self.holder, now_ms=now_ms(), ttl_ms=int(LEASE_TTL_S * 1000))
            except self._unavailable as exc:
                self._database(exc)  # said once; the lease is not this process's until the database answers again
                held = False
            else:
                self._database(None)
            if held != self.holding and not self._database_down:
                if held:
                    log.info("this hub process exports now (it holds the export lease)")
                else:
                    log.info("another hub process exports; this one waits for its lease to lapse")
            self.holding = held
            if held:
                self._held.set()
            else:
                self._held.clear()
            await asyncio.sleep(LEASE_RENEW_S)

    async def aclose(self) -> None:
        """Give the lease up, so another hub process takes over at once."""
        if self.holding:
            self.holding = False
            self._held.clear()
            try:
                await self.store.release_export_lease(self.holder, now_ms=now_ms())
            except self._unavailable:
                pass  # it lapses after LEASE_TTL_S

    def _database(self, error: BaseException | None) -> None:
        if error is not None and not self._database_down:
            self._database_down = True
            log.error("database unavailable; the export waits", extra={"error": f"{type(error).__name__}: {error}"})
        elif error is None and self._database_down:
            self._database_down = False
            log.info("database available again; the export goes on")

    # --- the broker -------------------------------------------------------------------

    async def run(self, *, public_url: str) -> None:
        """Export until cancelled: a lost broker is logged once, retried with backoff, and its return logged once.

        ``public_url`` is the address the hub serves on, the base of SensorThings links unless the settings name another."""
        self._catalog = Catalog(self.store, f"{(self.settings.public_url or public_url).rstrip('/')}/sta/v1.1", [], [])
        lease = asyncio.create_task(self.keep_lease(), name="hub-export-lease")
        backoff = Backoff(0.5, 30.0, jitter=1.0)
        try:
            while True:
                error = await self._session(backoff)
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    if self._metrics is not None:
                        self._metrics.export_up.set(0)
                    log.warning("city broker unreachable; readings wait in the export outbox",
                                extra={"broker": self.settings.broker, "error": f"{type(error).__name__}: {error}"})
                await asyncio.sleep(backoff.next())
        finally:
            lease.cancel()
            await asyncio.gather(lease, return_exceptions=True)

    async def _session(self, backoff: Backoff) -> BaseException:
        """One connection to the broker, from connecting to losing it; what ended it."""
        ended: BaseException = aiomqtt.MqttError("the broker closed the connection")
        try:
            async with self.settings.client() as client:
                self.connected.set()
                backoff.reset()
                if self._metrics is not None:
                    self._metrics.export_up.set(1)
                if self._down_since is not None:
                    log.info("city broker reachable again; exporting the outbox",
                             extra={"broker": self.settings.broker, "down_s": round(time.monotonic() - self._down_since, 1)})
                    self._down_since = None
                elif not self._ever_connected:
                    log.info("exporting to the city's broker", extra={"broker": self.settings.broker, "formats": ",".join(self.settings.formats)})
                self._ever_connected = True
                async with asyncio.TaskGroup() as group:
                    # The exporter subscribes to nothing: waiting for a message ends when the connection does, so a broker
                    # lost while nothing is exported is noticed (and said, and counted) at once, not at the next publish.
                    group.create_task(_lost(client))
                    while True:
                        if not self.holding:
                            await self._held.wait()
                        elif not await self._round(client):
                            await asyncio.sleep(POLL_S)
        except* (aiomqtt.MqttError, OSError) as group_error:
            ended = group_error.exceptions[0]
        finally:
            self.connected.clear()
        return ended

    async def _round(self, client: aiomqtt.Client) -> bool:
        """Publish the oldest outbox rows and delete those the broker acknowledged; False when there was nothing to do."""
        try:
            rows = await self.store.export_pending(limit=ROUND_CHUNKS)
        except self._unavailable as exc:
            self._database(exc)
            return False
        self._database(None)
        if not rows:
            return False
        slots = asyncio.Semaphore(IN_FLIGHT)

        async def publish(topic: str, payload: bytes) -> None:
            try:
                await client.publish(topic, payload, qos=1)
            finally:
                slots.release()

        # One chunk's messages are built at a time, and a message is handed over only when one of IN_FLIGHT slots is
        # free: memory holds the round's chunks, one chunk's messages and IN_FLIGHT unacknowledged ones.  The tasks
        # start in outbox order and each sends at once, so the broker gets the messages in that order.
        sent: list[tuple[int, list[tuple[asyncio.Task[None], str]]]] = []
        try:
            for row in rows:
                tasks: list[tuple[asyncio.Task[None], str]] = []
                sent.append((row[0], tasks))
                # A chunk of a few hundred readings is built faster than a thread hop; a big one on a thread, off the loop.
                messages = self._messages(row) if row[1] is None or row[7] <= INLINE_READINGS else await asyncio.to_thread(self._messages, row)
                for topic, payload, kind in messages:
                    await slots.acquire()
                    tasks.append((asyncio.create_task(publish(topic, payload)), kind))
            await asyncio.gather(*(task for _, tasks in sent for task, _ in tasks), return_exceptions=True)
        except BaseException:  # cancelled (the hub stops): nothing is deleted, and no publish outlives the round
            for _, tasks in sent:
                for task, _ in tasks:
                    task.cancel()
            raise
        done: list[int] = []
        acknowledged: list[str] = []
        failure: BaseException | None = None
        for outbox_id, tasks in sent:
            errors = [task.exception() for task, _ in tasks if task.exception() is not None]
            if errors:
                failure = failure or errors[0]
                continue
            done.append(outbox_id)
            acknowledged.extend(kind for _, kind in tasks)
        try:
            await self.store.export_done(done)
        except self._unavailable as exc:
            # Acknowledged but still in the outbox: published again once the database is back (duplicates, never a loss).
            self._database(exc)
            return False
        self.published += len(acknowledged)  # counted once out of the outbox: a test that sees the count sees the rows gone
        if self._metrics is not None:
            for kind in acknowledged:
                self._metrics.exported.labels(kind).inc()
        if failure is not None:
            raise failure
        return True

    def _messages(self, row: Sequence[Any]) -> list[tuple[str, bytes, str]]:
        """One outbox row's messages as (topic, payload, format); none for a personal or deleted chunk."""
        readings = _readings(row)
        if not readings:
            return []
        first = readings[0]
        out: list[tuple[str, bytes, str]] = []
        if "senml" in self.settings.formats:
            out.append((self.settings.senml_topic(first.device_id, first.channel), _json(to_senml_records(readings, json_numbers=True)), "senml"))
        if "sensorthings" in self.settings.formats:
            topic = STA_TOPIC.format(id=first.channel_id)
            out.extend((topic, _json(self._catalog.render("Observations", r.id, r)), "sensorthings") for r in readings)
        return out


EXPORTER = web.AppKey("exporter", Exporter)

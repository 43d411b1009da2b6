"""The hub's MQTT side of OXP (§8.6): batches, status reports and notices taken from a broker, answers pushed back.

Every hub process subscribes with one MQTT 5 shared subscription (``$share/ocn-hub/…``), so the
broker hands each message to one of them; the bytes go to the same transport-free ingest core
as HTTP's (hub.ingest), and its outcome is published on the device's answer topic with the
message's correlation data.  The store dedupes on batch identity, so a batch a gateway sends
twice, to two processes, is stored once.  Desired state is pushed too: each process looks at
the desired ETag of the devices it has heard from about every second and publishes a new
signed document, retained, on ``oxp/v1/<device id>/desired`` when it changed.

The broker is trusted to enforce who may publish where (per-device credentials and ACLs,
hub.brokerauth), but nothing here depends on it: the device a topic names must be the device
whose key signed the message, or the message is refused.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import socket
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import aiomqtt
from aiohttp import web
from paho.mqtt.client import MQTT_ERR_SUCCESS, Client, MQTTMessage, error_string
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.protocol import DEVICE_ID_RE, Answer
from edge.protocol.compact import batch_name, compact_ack, named_ack
from edge.util.backoff import Backoff
from edge.util.mqttsocket import BrokerSocket
from edge.util.sockets import no_delay
from hub.brokerauth import BrokerAccess
from hub.brokerurl import check_broker, connection
from hub.fleet import TRUST_KEY, desired_document
from hub.ingest import Acked, NoticeTaken, Refused, ReportTaken
from hub.models import Device
from hub.state import Hub
from hub.store import SOFTWARE_SCOPE

__all__ = ["MQTT_INGEST", "MqttIngest", "MqttSettings", "SHARE_GROUP"]

log = logging.getLogger("ocn.hub.mqtt")

# The library's own logger: disabled and attached to no hierarchy, so none of its text reaches a log.
_LIBRARY_LOG = logging.Logger("mqtt-library")
_LIBRARY_LOG.disabled = True

SHARE_GROUP = "ocn-hub"
TOPIC_ROOT = "oxp/v1"
SESSION_EXPIRY_S = 3600
# Messages the broker may have in flight to one hub process at once (MQTT 5 receive maximum).
RECEIVE_MAXIMUM = 256
# Status reports and notices taken at once (batches go in groups, below): most of a message's time is spent waiting for
# the store, and the ingest workers and their queue bound the CPU work below this.
CONCURRENT = RECEIVE_MAXIMUM
# Batches are taken in groups of up to GROUP, checked and stored together (Ingest.batches): per batch, a task, a hand-off
# to a worker and a store transaction each cost more than checking and storing it.  GROUPS groups at once, so one is
# checked while the other waits for its commit (bench.mqtt_hub: larger groups cost less CPU a batch; a single group at a
# time left the checks waiting on the commit and acked fewer batches a second).
GROUP = 128
GROUPS = 2
DESIRED_CHECK_S = 1.0
STOP_WAIT_S = 5.0  # how long a stopping hub lets messages being taken reach the store
UNAVAILABLE_RETRY_S = 10.0
# The series label the hub's metrics give each kind, as over HTTP (the last part of the path).
_METRIC_KINDS = {"batch": "batches", "status": "status", "notice": "notice"}
# Correlation data this long asks for the compact batch ack (edge.protocol.compact, OXP §8.6); 8 bytes for JSON.
COMPACT_CORRELATION_BYTES = 4
_ROOT = tuple(TOPIC_ROOT.split("/"))
_KINDS = {"batch": "ack", "status": "status/ack", "notice": "status/ack"}  # the topic each kind is answered on


@dataclass(frozen=True)
class MqttSettings:
    """How a hub process reaches the broker (``--mqtt-*`` options)."""

    broker: str
    """``mqtt://[user@]host[:port]`` or ``mqtts://…``; the user defaults to ``ocn-hub``."""
    client_id: str = ""
    """The MQTT client id; stable across restarts so the broker keeps the session. Default: ocn-hub-<host name>-<pid>."""
    password_file: str = ""
    """A file holding the broker password of the hub's user."""
    ca: str = ""
    """A PEM CA bundle to check an mqtts broker against (default: the system store)."""
    manage_access: bool = True
    """Keep the broker's device credentials and ACLs in step with enrolment (Mosquitto's dynamic-security plugin, hub.brokerauth)."""

    def __post_init__(self) -> None:
        check_broker(self.broker, options="--mqtt", password_file=self.password_file, ca=self.ca,
                     expected="mqtt://HOST[:PORT] or mqtts://HOST[:PORT], e.g. mqtts://broker.example.org:8883")

    @property
    def user(self) -> str:
        parts = urlsplit(self.broker)
        return unquote(parts.username) if parts.username else "ocn-hub"

    def client(self) -> aiomqtt.Client:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        properties.ReceiveMaximum = RECEIVE_MAXIMUM
        return aiomqtt.Client(
            **{**connection(self.broker, password_file=self.password_file, ca=self.ca), "username": self.user},
            identifier=self.client_id or f"ocn-hub-{socket.gethostname()}-{os.getpid()}",
            logger=_LIBRARY_LOG,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            keepalive=30,
            timeout=10.0,
            properties=properties,
        )


Taken = tuple[str, str, bytes, bytes | None]
"""A message taken from the broker: its device (the topic's), kind (batch, status, notice), payload and correlation data."""


def _taken(topic: str, payload: object, properties: Properties | None) -> Taken | None:
    """What a message on one of the hub's topics carries; None for any other topic."""
    key = getattr(properties, "CorrelationData", None)
    return _taken_as(topic, payload, bytes(key) if isinstance(key, bytes | bytearray) else None)


def _taken_as(topic: str, payload: object, correlation: bytes | None) -> Taken | None:
    """:func:`_taken` of a message whose correlation data is read already."""
    parts = topic.split("/")
    if len(parts) < 4 or (parts[0], parts[1]) != _ROOT or not DEVICE_ID_RE.match(parts[2]) or parts[3] not in _KINDS:
        return None
    return parts[2], parts[3], bytes(payload) if isinstance(payload, bytes | bytearray) else b"", correlation


def _answer_properties(correlation: bytes | None) -> Properties | None:
    if correlation is None:
        return None
    properties = Properties(PacketTypes.PUBLISH)
    properties.CorrelationData = correlation
    return properties


def _answer(kind: str, outcome: Acked | ReportTaken | NoticeTaken | Refused, correlation: bytes | None, data: bytes = b"") -> tuple[bytes, Properties | None]:
    """The answer's payload and properties (OXP §8.6): to a batch sent without correlation data, the named ack, or a refusal
    in JSON carrying the batch's name (its payload ``data`` hashed) as correlation data; to 4 bytes of correlation data,
    the compact ack (without correlation data, it names the batch); else the JSON document with the message's correlation data."""
    payload, key = _reply(kind, outcome, correlation, data)
    return payload, _answer_properties(key)


def _reply(kind: str, outcome: Acked | ReportTaken | NoticeTaken | Refused, correlation: bytes | None, data: bytes) -> tuple[bytes, bytes | None]:
    """:func:`_answer`'s payload and the correlation data its properties carry."""
    if kind == "batch" and isinstance(outcome, Acked) and (correlation is None or len(correlation) == COMPACT_CORRELATION_BYTES):
        extras: dict[str, Any] = {}
        if outcome.quarantined:
            extras["quarantined"] = dict(outcome.quarantined)
        if outcome.desired_etag:
            extras["desired_etag"] = outcome.desired_etag
        if correlation is None:
            return named_ack(batch_name(data), outcome.boot_epoch, outcome.seq, outcome.status, extras), None
        return compact_ack(outcome.boot_epoch, outcome.seq, outcome.status, extras), None
    if kind == "batch" and correlation is None:
        correlation = batch_name(data)
    return json.dumps(_document(outcome), separators=(",", ":")).encode(), correlation


def _document(outcome: Acked | ReportTaken | NoticeTaken | Refused) -> dict[str, Any]:
    """The answer as JSON, the fields of HTTP's answer body (§8.1, §8.4); a wait travels as ``retry_after`` (§8.6)."""
    if isinstance(outcome, Refused):
        document = outcome.document()
        if outcome.retry_after_s is not None:
            document["retry_after"] = round(outcome.retry_after_s, 3)
        return document
    if isinstance(outcome, Acked):
        return outcome.document()
    if isinstance(outcome, ReportTaken):
        return {"ok": True, "desired": outcome.desired, "etag": outcome.etag}
    return {"ok": True, "id": outcome.id}


class MqttIngest:
    """One hub process's subscription to every device's messages on the broker, and the answers and desired state it publishes."""

    def __init__(
        self, hub: Hub, settings: MqttSettings, *, unavailable: tuple[type[BaseException], ...] = (), counted: Callable[[str, object], None] | None = None
    ) -> None:
        """``unavailable``: the errors of a database that is down (answered ``unavailable``); ``counted`` hears each outcome (the hub's metrics)."""
        self.hub = hub
        self._counted = counted
        self.settings = settings
        self._unavailable = unavailable
        self._client: aiomqtt.Client | None = None
        self._socket: BrokerSocket | None = None  # the current connection's socket, which batches are answered through
        self._slots = asyncio.Semaphore(CONCURRENT)
        self._tasks: set[asyncio.Task[None]] = set()
        # Batches taken from the broker that no group has started on, each with the connection it came on (and is answered on).
        self._waiting: list[tuple[aiomqtt.Client, Taken]] = []
        self._groups = 0  # groups of batches on their way (_take_group)
        self._published: dict[str, str] = {}  # device id -> the desired ETag it was last offered
        # device id -> (its fleet and the two documents its desired state is made of, the document and ETag made of them)
        self._computed: dict[str, tuple[tuple[object, ...], dict[str, Any] | None, str]] = {}
        self.access = BrokerAccess(hub.store, hub.signing_key, hub_user=settings.user) if settings.manage_access else None
        self.connected = asyncio.Event()
        self._down_since: float | None = None
        self.taken = 0  # messages answered, for tests and the log

    async def run(self) -> None:
        """Keep the session with the broker until cancelled; a lost broker is logged once and reconnected to with backoff."""
        backoff = Backoff(0.5, 30.0, jitter=1.0)
        self._down_since = None
        while True:
            error = await self._session(backoff)
            if self.access is not None and self.access.rights_changed:
                # The broker disconnects a client whose roles change (the hub's first start on a broker): reconnect now.
                self.access.rights_changed = False
                continue
            if self._down_since is None:
                self._down_since = time.monotonic()
                log.warning(
                    "broker unreachable; gateways' batches wait in their spools",
                    extra={"broker": self.settings.broker, "error": f"{type(error).__name__}: {error}"},
                )
            await asyncio.sleep(backoff.next())

    async def _session(self, backoff: Backoff) -> BaseException:
        """One connection to the broker, from connecting to losing it; what ended it."""
        ended: BaseException = aiomqtt.MqttError("the broker closed the connection")
        try:
            async with self.settings.client() as client:
                no_delay(client._client.socket())  # paho's socket, under aiomqtt
                sock = BrokerSocket(client, take=functools.partial(self._offered, client))
                sock.install()
                self._hear(client)
                kinds = [(f"$share/{SHARE_GROUP}/{TOPIC_ROOT}/+/{kind}", 1) for kind in _KINDS]
                await client.subscribe(kinds + (self.access.subscriptions() if self.access is not None else []))
                self._client, self._socket = client, sock
                self.connected.set()
                backoff.reset()
                if self._down_since is not None:
                    log.info("broker reachable again", extra={"broker": self.settings.broker, "down_s": round(time.monotonic() - self._down_since, 1)})
                    self._down_since = None
                async with asyncio.TaskGroup() as group:
                    group.create_task(self._push_desired_forever(client))
                    if self.access is not None:
                        group.create_task(self.access.keep(client))
                    # The broker's answers to the hub's access commands, and OXP messages read before _hear took over.
                    async for message in client.messages:
                        if self.access is not None and self.access.answered(message):
                            continue
                        taken = _taken(message.topic.value, message.payload, message.properties)
                        if taken is not None:
                            self._took(client, taken)
                    raise aiomqtt.MqttError("the broker closed the connection")
        except* (aiomqtt.MqttError, OSError) as group_error:
            ended = group_error.exceptions[0]
        finally:
            self._client = self._socket = None
            self.connected.clear()
        return ended

    def _offered(self, client: aiomqtt.Client, topic: str, payload: bytes, correlation: bytes | None, qos: int) -> bool:
        """A message the broker socket read on ``client``, before paho: taken (and acknowledged by the socket) if it is on
        one of the hub's topics, else left to paho."""
        taken = _taken_as(topic, payload, correlation)
        if taken is None:
            return False
        self._took(client, taken)
        return True

    def _hear(self, client: aiomqtt.Client) -> None:
        """Take OXP messages from paho as it reads them, straight into a group of batches or a task: aiomqtt hands each
        message on through a Message, a queue, a task and a wait of its own, about a tenth of the hub's time a batch
        (bench.mqtt_hub).  Any other message goes on to aiomqtt as before.  (Most never reach paho: the broker socket
        takes them first, _offered; those it leaves to paho, behind one it does not take, come this way.)"""
        to_aiomqtt = client._client.on_message

        def on_message(paho_client: Client, userdata: Any, message: MQTTMessage) -> None:
            try:
                topic = message.topic
            except UnicodeDecodeError:
                topic = ""
            taken = _taken(topic, message.payload, getattr(message, "properties", None))
            if taken is not None:
                self._took(client, taken)
            elif to_aiomqtt is not None:
                to_aiomqtt(paho_client, userdata, message)

        client._client.on_message = on_message

    def _took(self, client: aiomqtt.Client, taken: Taken) -> None:
        """A message taken from the broker on ``client``: a batch waits for a group, a report or notice gets a task."""
        if taken[1] == "batch":
            self._waiting.append((client, taken))
            if self._groups < GROUPS:
                # Counted from now, not from when it starts: a burst read before it runs starts one group.
                self._groups += 1
                self._start(self._take_group()).add_done_callback(self._group_done)
        else:
            self._start(self._take(client, taken))

    def _start(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _group_done(self, _: asyncio.Task[None]) -> None:
        self._groups -= 1

    async def aclose(self) -> None:
        """Let the messages being taken reach the store, a little while; what is left is cancelled and sent again by its gateway."""
        if self._tasks:
            _, late = await asyncio.wait(self._tasks, timeout=STOP_WAIT_S)
            for task in late:
                task.cancel()
            if late:
                await asyncio.wait(late)

    async def _take(self, client: aiomqtt.Client, taken: Taken) -> None:
        """One status report or notice, taken and answered."""
        device_id, kind, data, correlation = taken
        async with self._slots:
            try:
                outcome: Acked | ReportTaken | NoticeTaken | Refused | BaseException = await self._outcome(device_id, kind, data)
            except self._unavailable as exc:
                outcome = exc
            self._answer(client, taken, outcome)

    async def _take_group(self) -> None:
        """The batches waiting, GROUP at most, until none is left: checked and stored together by the ingest core (one
        signature-checking hand-off, one store transaction), each answered once the transaction holding it committed.

        Up to GROUPS groups are on their way at once, so one is checked while another waits for its commit."""
        while self._waiting:
            group, self._waiting = self._waiting[:GROUP], self._waiting[GROUP:]
            try:
                outcomes: list[Acked | Refused | BaseException] = list(
                    await self.hub.ingest.batches([(data, device_id) for _, (device_id, _, data, _) in group])
                )
            except self._unavailable as exc:
                outcomes = [exc] * len(group)
            for (client, taken), outcome in zip(group, outcomes, strict=True):
                self._answer(client, taken, outcome)

    def _answer(self, client: aiomqtt.Client, taken: Taken, found: Acked | ReportTaken | NoticeTaken | Refused | BaseException) -> None:
        """Publish the answer to one message (an error of a database that is down answered ``unavailable``, logged once)."""
        device_id, kind, data, correlation = taken
        if isinstance(found, BaseException):
            if not isinstance(found, self._unavailable):
                # A fault of the hub's, not the message's: said, and not answered (its gateway sends it again).
                log.error("message not taken: a fault in the hub", extra={"device": device_id, "error": f"{type(found).__name__}: {found}"})
                return
            if not self.hub.database_down:
                log.error("database unavailable; answering unavailable", extra={"error": f"{type(found).__name__}: {found}"})
                self.hub.database_down = True
            outcome: Acked | ReportTaken | NoticeTaken | Refused = Refused(
                Answer.UNAVAILABLE, "the hub's database is unavailable; retry later", retry_after_s=UNAVAILABLE_RETRY_S
            )
        else:
            outcome = found
            if self.hub.database_down:
                self.hub.database_down = False
                log.info("database available again")
        if self._counted is not None:
            self._counted(_METRIC_KINDS[kind], outcome)
        payload, key = _reply(kind, outcome, correlation, data)
        if self._client is not client:
            # The connection it came on is gone: no answer can go out on it, and the gateway sends the bytes again.
            return
        if isinstance(outcome, Acked | ReportTaken):
            # Heard from: its desired state is watched from now on, starting from what this answer offers.
            self._published.setdefault(device_id, outcome.desired_etag if isinstance(outcome, Acked) else outcome.etag)
        # Handed to the MQTT client (paho, under aiomqtt) without waiting for the broker's PUBACK, which aiomqtt's publish
        # would: the slot is free for the next message at once, and an answer lost with the connection is no loss, since
        # the gateway hears no answer and sends the same bytes again (the store takes them as a duplicate).  For the same
        # reason a batch's answer goes at QoS 0: no packet id, no PUBACK from the gateway (6 bytes a batch on its link).
        # A batch sent without correlation data asks for its answer on the device's own topic, which the gateway subscribes
        # to once the broker grants it (hub.brokerauth does); a hub that does not keep the broker's ACLs answers on ``…/ack``.
        by_name = kind == "batch" and correlation is None and self.access is not None
        answer_topic = f"{TOPIC_ROOT}/{device_id}" if by_name else f"{TOPIC_ROOT}/{device_id}/{_KINDS[kind]}"
        # A batch's answer is written by the broker socket itself, not through paho's packet objects (edge.util.mqttsocket).
        if kind == "batch" and self._socket is not None:
            if not self._socket.answer(answer_topic, payload, key):
                log.debug("answer not published", extra={"device": device_id, "error": "the connection is closing"})
        else:
            sent = client._client.publish(answer_topic, payload, qos=0 if kind == "batch" else 1, properties=_answer_properties(key))
            if sent.rc != MQTT_ERR_SUCCESS:
                log.debug("answer not published", extra={"device": device_id, "error": error_string(sent.rc)})
        self.taken += 1

    async def _outcome(self, device_id: str, kind: str, data: bytes) -> Acked | ReportTaken | NoticeTaken | Refused:
        """The ingest core's outcome; the key must be the device's the topic names, or the message is refused (``malformed``)."""
        ingest = self.hub.ingest
        if kind == "batch":
            return await ingest.batch(data, topic_device=device_id)
        if kind == "status":
            return await ingest.status_report(data, topic_device=device_id)
        return await ingest.notice(data, topic_device=device_id)

    async def _push_desired_forever(self, client: aiomqtt.Client) -> None:
        """About every second: publish a new signed desired document, retained, to each device heard from whose ETag changed."""
        while True:
            await asyncio.sleep(DESIRED_CHECK_S)
            if not self._published:
                continue
            try:
                await self._push_desired(client)
            except self._unavailable:
                pass  # the ingest side logs the outage; the next round looks again

    async def _push_desired(self, client: aiomqtt.Client) -> None:
        """One look at every device heard from: two reads (each device's status and fleet, the desired documents) whatever
        their number, where one read a device would cost a thousand a second at a thousand gateways; the devices' whole rows
        are read only in a round where some device's document must be made again.  The ETags found are handed to the
        ingest core, so batch acks carry them without reading them again."""
        store, ingest = self.hub.store, self.hub.ingest
        fleets = await store.device_fleets()
        known: dict[tuple[str, str], tuple[dict[str, Any], int] | None] = dict(await store.desired_documents())
        devices: dict[str, Device] | None = None
        for device_id, offered in list(self._published.items()):
            status, fleet = fleets.get(device_id, ("", ""))
            inputs = _desired_inputs(known, device_id, fleet)
            cached = self._computed.get(device_id)
            if status == "active" and cached is not None and cached[0] == inputs:
                document, etag = cached[1], cached[2]
            else:
                if devices is None:
                    devices = {device.device_id: device for device in await store.devices()}
                device = devices.get(device_id)
                if device is None or device.status != "active":
                    del self._published[device_id]  # revoked or gone: nothing more is pushed to it
                    self._computed.pop(device_id, None)
                    continue
                document, etag = await desired_document(store, device, known=known)
                self._computed[device_id] = (_desired_inputs(known, device_id, device.fleet), document, etag)
            ingest.remember_etag(device_id, etag)
            if etag == offered:
                continue
            # Nothing desired any more: the signed clear (OXP §8.4), retained like a document.
            signed = ingest.signer.sign_clear(device_id) if document is None else ingest.signer.sign(document)
            payload = json.dumps({"desired": signed, "etag": etag}, separators=(",", ":")).encode()
            await client.publish(f"{TOPIC_ROOT}/{device_id}/desired", payload, qos=1, retain=True)
            self._published[device_id] = etag
            log.debug("desired state pushed", extra={"device": device_id, "etag": etag})


def _desired_inputs(known: dict[tuple[str, str], tuple[dict[str, Any], int] | None], device_id: str, fleet: str) -> tuple[object, ...]:
    """What a device's desired document is made of: its fleet and the documents that apply to it (None for one not set,
    so desired_document reads nothing more)."""
    keys = (("fleet", fleet), ("device", device_id), (SOFTWARE_SCOPE, device_id), TRUST_KEY)
    for key in keys:
        known.setdefault(key, None)
    return (fleet, *(known[key] for key in keys))


MQTT_INGEST = web.AppKey("mqtt_ingest", MqttIngest)

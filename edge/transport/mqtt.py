"""OXP over MQTT (OXP §8.6): each message published at QoS 1 under ``oxp/v1/<device id>/…``, the hub's answer pushed back.

One persistent MQTT 5 session to the broker, kept by a task this module owns: it connects on
the first exchange, subscribes to the device's answer topics and reconnects with backoff when
the broker goes away (the session, and answers published meanwhile, survive on the broker).
Each message carries MQTT 5 correlation data, the first 4 bytes of its SHA-256, and the hub
echoes it: a late answer to an earlier copy of the same bytes still answers the resend, an
answer to anything else is ignored.  Four bytes (not the 8 of the binding's first form) also ask
a hub for the compact batch ack (edge.protocol.compact), which carries no correlation data but
names the batch; a hub that does not know it answers in JSON, which is taken as before.  Once
the broker allows topic aliases, each topic is sent once per connection and then as a 3-byte
alias.  When the broker lets the gateway subscribe to its own answer topic ``oxp/v1/<device id>``
(the hub that keeps the broker's ACLs grants it), a batch goes without correlation data, which
asks the hub to answer on that shorter topic with a named ack (the batch's 4-byte name, OXP §8.6
"Answers by name"); a hub that does not know it answers in JSON without correlation data, and
the gateway takes that as the sign to send correlation data again on this connection.  The hub
answers a batch at QoS 0 (a lost answer costs a resend it dedupes).  Together these bring the
framing of a batch and its ack to 11 bytes up and 29 down (OXP §8.6, "Framing").  Desired state
is pushed by the hub on ``…/desired`` the moment it changes and handed to the listener like the
answer to a status report.

The MQTT library (aiomqtt over paho-mqtt, see docs/architecture.md) is used here only, and its
logger is one that writes nowhere: what reaches the operator is the uplink's words.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit

import aiomqtt
import cbor2
from paho.mqtt.client import MQTTMessage
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.protocol import OXP_VERSION
from edge.protocol.compact import NAME_BYTES, CompactAckError, batch_name, read_compact_ack, read_named_ack
from edge.protocol.envelope import H_BOOT, H_SEQ, H_VERSION
from edge.protocol.preauth import COSE_SIGN1_TAG, KID, OXP_BATCH
from edge.protocol.reasons import Answer
from edge.transport.answers import FINAL_BATCH_CODES, FINAL_REPORT_CODES, ack_of
from edge.transport.contract import Ack, DesiredListener, DesiredOffer, Refused, Taken, TransportError, UplinkError
from edge.transport.http import HttpTransport
from edge.transport.tls import tls_context
from edge.util.backoff import Backoff
from edge.util.linkwords import broker_problem
from edge.util.mqttsocket import BrokerSocket, publish_properties
from edge.util.sockets import no_delay

__all__ = ["MqttTransport", "SESSION_EXPIRY_S", "correlation", "topic"]

log = logging.getLogger("ocn.uplink")

# The library's own logger: disabled and attached to no hierarchy, so none of its text reaches a log.
_LIBRARY_LOG = logging.Logger("mqtt-library")
_LIBRARY_LOG.disabled = True

TOPIC_ROOT = "oxp/v1"
# A broker keeps the session (subscriptions, answers not yet delivered) this long after the link drops.
SESSION_EXPIRY_S = 7 * 86400
# Answers and desired documents the broker may have in flight to a gateway at once (MQTT 5 receive maximum).
RECEIVE_MAXIMUM = 8
_MAX_ANSWER_BYTES = 64 * 1024
_MAX_RETRY_AFTER_S = 86400.0
_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
# Correlation data of this many bytes asks for the compact batch ack (OXP §8.6); the binding's first form sent 8.
COMPACT_CORRELATION_BYTES = 4
# The topic alias of each kind a gateway publishes (used only up to the broker's Topic Alias Maximum).
_ALIASES = {"batch": 1, "status": 2, "notice": 3}


def topic(device_id: str, kind: str) -> str:
    """The topic of one message kind of one device: ``oxp/v1/<device id>/<kind>`` (batch, ack, status, status/ack, notice, desired)."""
    return f"{TOPIC_ROOT}/{device_id}/{kind}"


def correlation(data: bytes, *, compact: bool = False) -> bytes:
    """The correlation data a message carries: the same bytes sent again are the same message.

    8 bytes of its SHA-256 in the binding's first form; ``compact``: 4 (the message's name, edge.protocol.compact), which
    also asks for the compact batch ack."""
    return batch_name(data) if compact else hashlib.sha256(data).digest()[:8]


def answers_topic(device_id: str) -> str:
    """Where a hub answers a batch sent without correlation data (OXP §8.6, "Answers by name"): the device's own topic."""
    return f"{TOPIC_ROOT}/{device_id}"


def publish_framing(topic_name: str, payload_bytes: int, properties_bytes: int, *, qos: int = 1) -> int:
    """Bytes an MQTT 5 PUBLISH adds around its payload, with the 4-byte PUBACK that answers it at QoS 1 (``topic_name`` "" for an alias)."""
    packet_id = 2 if qos else 0
    remaining = 2 + len(topic_name.encode()) + packet_id + _varint_len(properties_bytes) + properties_bytes + payload_bytes
    return 1 + _varint_len(remaining) + remaining - payload_bytes + (4 if qos else 0)


def _varint_len(n: int) -> int:
    size = 1
    while n >= 128:
        n //= 128
        size += 1
    return size


def _granted(code: ReasonCode | int) -> bool:
    """Whether a SUBACK's code for one topic filter grants it (below 0x80; 0x87: not authorised)."""
    return (code.value if isinstance(code, ReasonCode) else code) < 0x80


class _Answer(NamedTuple):
    """The hub's answer to one exchange, with what the transport counts of its framing."""

    document: dict[str, Any]
    payload_bytes: int
    properties_bytes: int
    topic: str
    qos: int


class _InFlight(NamedTuple):
    """A batch waiting for its answer: the identity an ack must name, and whether it went without correlation data."""

    boot_epoch: int
    seq: int
    key_id: bytes
    named: bool


class _SendAgain(Exception):
    """The answer to a batch sent without correlation data came from a hub that does not answer by name; the message says so."""


class _Dropped(Exception):
    """The broker's PUBACK says the message reaches no hub (refused, or nothing subscribes to it); the message says which."""


# PUBACK reason codes (MQTT 5 §3.4.2.1): from 0x80 the broker did not take the message; 0x10, it took it and delivered it to no one.
_NO_MATCHING_SUBSCRIBERS = 0x10
_HINTS = {
    0x87: "the broker's ACL does not let this gateway publish there; the hub grants it when city IT approves the gateway",
    0x97: "a quota on the broker is exhausted",
}


_NOUNS = {"batch": "batch", "status": "status report", "notice": "transparency notice"}


def _dropped_why(kind: str, reason: int) -> str:
    """What a person reads of a PUBACK that means no answer will come: the reason code, its MQTT name and what it points at."""
    what = _NOUNS.get(kind, kind)
    try:
        name = ReasonCode(PacketTypes.PUBACK, identifier=reason).getName()
    except (KeyError, ValueError):  # paho: a code no packet has, or one that PUBACK does not have
        name = "a reason code MQTT 5 does not define for PUBACK"
    if reason == _NO_MATCHING_SUBSCRIBERS:
        return (f"the broker took the {what} but no subscriber got it (PUBACK 0x10, {name}): no hub subscribes to it on the broker "
                "(none has connected, or its session there has expired)")
    hint = _HINTS.get(reason)
    return f"the broker refused the {what} (PUBACK 0x{reason:02X}, {name})" + (f": {hint}" if hint else "")


class MqttTransport:
    """OXP over MQTT 5 for one gateway: the broker at ``broker_url``, the hub's HTTP URL for its signing key."""

    def __init__(
        self, broker_url: str, *, hub_url: str, device_id: str, password_file: str | Path | None, ca: str | Path | None = None, timeout_s: float = 30.0
    ) -> None:
        parts = urlsplit(broker_url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise UplinkError(f'uplink broker = {broker_url!r}: expected an mqtt:// or mqtts:// URL like "mqtts://broker.example.org:8883"')
        if not device_id:
            raise UplinkError("uplink broker: the gateway id is needed as the MQTT client id and user name")
        # What logs and the status page show: a password in the URL never.
        self.broker_url = broker_url.replace(parts.netloc, (f"{parts.username}@" if parts.username else "") + parts.netloc.rsplit("@", 1)[-1], 1)
        self._host = parts.hostname
        self._port = parts.port or _DEFAULT_PORTS[parts.scheme]
        self._username = unquote(parts.username) if parts.username else device_id
        self._url_password = unquote(parts.password) if parts.password else None
        self._password_file = Path(password_file) if password_file else None
        self._tls = tls_context(ca) if parts.scheme == "mqtts" else None
        self._timeout_s = timeout_s
        self.device_id = device_id
        self._key_source = HttpTransport(hub_url, ca=ca, timeout_s=timeout_s) if hub_url else None
        self._on_desired: DesiredListener | None = None
        # Exchanges waiting for their answer, by correlation data (a batch's name, even when it is not sent).
        self._pending: dict[bytes, asyncio.Future[_Answer]] = {}
        # Exchanges whose PUBACK has not come, by connection and packet id (paho counts packet ids afresh on each connection, and an
        # exchange on a dropped one may still wait): the exchange's own future and what it sent.
        self._published: dict[tuple[BrokerSocket, int], tuple[asyncio.Future[_Answer], str]] = {}
        self._batches: dict[bytes, _InFlight] = {}  # batches in flight, by correlation data
        # On this connection: the broker granted the device its answer topic, and no answer showed a hub that ignores the ask.
        self._by_name = False
        self._socket: BrokerSocket | None = None  # the connection's, while it is up: batches are published through it
        self._inbox: _Inbox | None = None  # the current connection's
        self._alias_maximum = 0  # the broker's Topic Alias Maximum on this connection (CONNACK); 0: no aliases
        self._aliased: set[str] = set()  # topics whose alias the broker learnt on this connection
        self._up = asyncio.Event()
        self._session_task: asyncio.Task[None] | None = None
        self._abandoned: set[asyncio.Task[None]] = set()
        self.last_error = ""

    @property
    def hub(self) -> str:
        return self.broker_url

    def listen(self, on_desired: DesiredListener) -> None:
        self._on_desired = on_desired

    async def aclose(self) -> None:
        self._drop_session()
        if self._abandoned:
            # A session on a dead link may wait out its disconnect; shutting down does not.
            await asyncio.wait(self._abandoned, timeout=1.0)
        if self._key_source is not None:
            await self._key_source.aclose()

    # -- the session -------------------------------------------------------------------

    def _password(self) -> str | None:
        if self._url_password is not None or self._password_file is None:
            return self._url_password
        try:
            return self._password_file.read_text().strip()
        except OSError as exc:
            raise _NoCredentials(
                f"cannot read the broker password from {self._password_file} ({exc.strerror or exc}): enrol this gateway again (ocn-edge enrol) to get one"
            ) from None

    def _connect_properties(self) -> Properties:
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        properties.ReceiveMaximum = RECEIVE_MAXIMUM
        return properties

    async def _keep_session(self) -> None:
        """Connect, subscribe to this device's answers and desired state, hand each message on; reconnect when it drops."""
        backoff = Backoff(0.5, 60.0, jitter=1.0)
        while True:
            client: aiomqtt.Client | None = None
            sock: BrokerSocket | None = None
            try:
                client = aiomqtt.Client(
                    self._host,
                    self._port,
                    username=self._username,
                    password=self._password(),
                    identifier=self.device_id,
                    logger=_LIBRARY_LOG,
                    protocol=aiomqtt.ProtocolVersion.V5,
                    clean_start=False,
                    keepalive=60,
                    timeout=self._timeout_s,
                    properties=self._connect_properties(),
                    tls_context=self._tls,
                )
                self._hear_connack(client)
                inbox = self._inbox = _Inbox(self._arrived)
                client._client.on_message = inbox.from_paho
                async with client:
                    no_delay(client._client.socket())  # paho's socket, under aiomqtt
                    # Read ahead and written a pass at a time; the hub's answers taken before paho, and this gateway's messages
                    # published without it (edge.util.mqttsocket).
                    sock = BrokerSocket(client, take=inbox.take)
                    sock.acked = functools.partial(self._puback, sock)
                    sock.install()
                    topics = [topic(self.device_id, kind) for kind in ("ack", "status/ack", "desired")] + [answers_topic(self.device_id)]
                    codes = await client.subscribe([(name, 1) for name in topics])
                    # A broker whose ACL does not grant the answer topic (a hub before answers by name, or an ACL kept by hand)
                    # refuses that one filter: batches then carry correlation data, as before.
                    self._by_name = len(codes) == len(topics) and _granted(codes[-1])
                    self._socket = sock
                    self._up.set()
                    self.last_error = ""
                    backoff.reset()
                    inbox.open()
                    # Messages are handed over by the inbox in paho's on_message; aiomqtt's iteration ends when the connection does.
                    async for _ in client.messages:
                        pass
                    raise aiomqtt.MqttError("the broker closed the connection")
            except (aiomqtt.MqttError, _NoCredentials, OSError) as exc:
                self.last_error = _describe(exc)
            finally:
                if self._inbox is not None:
                    self._inbox.close()
                if sock is not None and self._socket is sock:
                    self._socket = None
                    self._up.clear()
                    self._by_name = False
                    for future in self._pending.values():
                        if not future.done():
                            future.set_exception(ConnectionError(self.last_error or "the connection to the broker dropped"))
            await asyncio.sleep(backoff.next())

    def _hear_connack(self, client: aiomqtt.Client) -> None:
        """Learn the broker's Topic Alias Maximum from its CONNACK, which aiomqtt does not pass on: paho's callback is
        wrapped on the client aiomqtt drives (its ``_client``), the one place paho hands the CONNACK's properties over."""
        paho = client._client
        library_on_connect = paho.on_connect

        def on_connect(*args: Any) -> None:
            properties = args[4] if len(args) > 4 else None
            self._alias_maximum = int(getattr(properties, "TopicAliasMaximum", 0) or 0)
            self._aliased = set()
            if library_on_connect is not None:
                library_on_connect(*args)

        paho.on_connect = on_connect

    def _drop_session(self) -> None:
        """Give up on the connection: the next exchange opens a new one (the broker keeps the session for it)."""
        task, self._session_task = self._session_task, None
        if self._inbox is not None:
            self._inbox.close()
        self._socket = None
        self._up.clear()
        if task is not None:
            task.cancel()
            self._abandoned.add(task)
            task.add_done_callback(self._abandoned.discard)

    async def _connected(self) -> BrokerSocket | Refused:
        if self._socket is not None:  # up: no timeout and wait a message
            return self._socket
        if self._session_task is None:
            self._session_task = asyncio.create_task(self._keep_session(), name="mqtt-session")
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._up.wait()
        except TimeoutError:
            return Refused(False, "", f"cannot reach the broker at {self.broker_url}: {self.last_error or 'timed out connecting'}")
        assert self._socket is not None
        return self._socket

    def _arrived(self, on: str, payload: bytes, key: bytes | None, qos: int) -> None:
        """A message on one of this device's topics: its topic, payload, correlation data and QoS."""
        if len(payload) > _MAX_ANSWER_BYTES:
            return
        # A named ack comes on the answer topic, or on ``…/ack`` from a hub that does not keep the broker's ACLs; it is told
        # by the name it starts with (which may be any 4 bytes, "{" too), not by its first byte.
        if key is None and on in (answers_topic(self.device_id), topic(self.device_id, "ack")) and self._named_ack_arrived(payload, on, qos):
            return
        if key is None and payload[:1] != b"{":
            if on == topic(self.device_id, "ack"):
                self._compact_ack_arrived(payload, qos)
            return
        try:
            document = json.loads(payload)
        except ValueError:
            document = None
        if not isinstance(document, dict):
            log.debug("ignored an answer that is not a JSON object", extra={"topic": on})
            return
        if on == topic(self.device_id, "desired"):
            if self._on_desired is not None:
                self._on_desired(DesiredOffer(document.get("desired"), str(document.get("etag", ""))))
            return
        if key is None:
            if on == topic(self.device_id, "ack"):
                self._unnamed_answer_arrived(document, len(payload), qos)
            return
        future = self._pending.get(key)
        if future is not None and not future.done():
            future.set_result(_Answer(document, len(payload), 3 + len(key), on, qos))

    def _answer_batch(self, key: bytes, in_flight: _InFlight, document: dict[str, Any], payload_bytes: int, on: str, qos: int) -> None:
        """Answer the batch in flight under ``key`` with an ack that names it (the fields the wire left out filled in from it)."""
        future = self._pending.get(key)
        if future is not None and not future.done():
            document.update(device_id=self.device_id, key_id=in_flight.key_id.hex())
            future.set_result(_Answer(document, payload_bytes, 0, on, qos))

    def _compact_ack_arrived(self, payload: bytes, qos: int) -> None:
        """A compact ack (OXP §8.6) names its batch instead of carrying correlation data: it answers the batch in flight it names."""
        try:
            document = read_compact_ack(payload)
        except CompactAckError as exc:
            log.debug("ignored an answer that is neither JSON nor a compact ack", extra={"error": str(exc)})
            return
        for key, in_flight in list(self._batches.items()):
            if (in_flight.boot_epoch, in_flight.seq) == (document["boot_epoch"], document["seq"]):
                self._answer_batch(key, in_flight, document, len(payload), topic(self.device_id, "ack"), qos)

    def _named_ack_arrived(self, payload: bytes, on: str, qos: int) -> bool:
        """A named ack (OXP §8.6, "Answers by name") starts with the name of the batch it acks, the first 4 bytes of its
        SHA-256: True if it names a batch in flight sent without correlation data (and answers it)."""
        in_flight = self._batches.get(payload[:NAME_BYTES])
        if in_flight is None or not in_flight.named:
            return False
        try:
            name, compact = read_named_ack(payload)
        except CompactAckError as exc:
            log.debug("ignored a named ack that is not one", extra={"error": str(exc)})
            return True
        if compact is not None and (compact["boot_epoch"], compact["seq"]) != (in_flight.boot_epoch, in_flight.seq):
            return True
        document: dict[str, Any] = compact if compact is not None else {"status": "stored"}
        document.update(boot_epoch=in_flight.boot_epoch, seq=in_flight.seq)
        self._answer_batch(name, in_flight, document, len(payload), on, qos)
        return True

    def _unnamed_answer_arrived(self, document: dict[str, Any], payload_bytes: int, qos: int) -> None:
        """A JSON answer on ``…/ack`` without correlation data: a hub that does not answer by name took a batch sent without it.

        From now on this connection's batches carry correlation data again.  An ack that names the batch in flight is taken;
        anything else (a refusal, which names nothing) could answer an earlier message, so the batch is sent again instead."""
        self._by_name = False
        for key, in_flight in list(self._batches.items()):
            if not in_flight.named:
                continue
            ack = ack_of(document, 0)
            names_it = ack is not None and (ack.key_id, ack.boot_epoch, ack.seq) == (in_flight.key_id, in_flight.boot_epoch, in_flight.seq)
            if names_it and ack is not None and ack.device_id == self.device_id:
                self._answer_batch(key, in_flight, document, payload_bytes, topic(self.device_id, "ack"), qos)
                continue
            future = self._pending.get(key)
            if future is not None and not future.done():
                future.set_exception(_SendAgain("the hub answered without naming the batch: sending it again with correlation data"))

    # -- exchanges ---------------------------------------------------------------------

    async def _exchange(self, kind: str, data: bytes) -> tuple[dict[str, Any], int] | Refused:
        """Publish ``data`` on this device's ``kind`` topic; the hub's answer and the framing carried both ways."""
        sock = await self._connected()
        if isinstance(sock, Refused):
            return sock
        key = correlation(data, compact=True)
        future: asyncio.Future[_Answer] = asyncio.get_running_loop().create_future()
        self._pending[key] = future
        batch = self._in_flight(data, key) if kind == "batch" else None
        named = batch is not None and batch.named
        name = topic(self.device_id, kind)
        sent_topic = name
        alias = _ALIASES[kind]
        aliased = alias <= self._alias_maximum
        if aliased:
            # The first publish on a connection names the topic and its alias; the broker maps the alias from then on.
            sent_topic = "" if name in self._aliased else name
            self._aliased.add(name)
        properties = _named_properties(alias if aliased else 0) if named else _properties(key, alias if aliased else 0)
        sent: tuple[BrokerSocket, int] | None = None  # the connection and packet id it went with
        entry = (future, kind)
        try:
            # Written by the broker socket, not paho, and not waiting for the broker's PUBACK: the hub's answer comes after
            # the broker took the message, and no answer within the timeout drops the connection.  A PUBACK that says no hub
            # will see the message (_puback) ends the wait at once, with the broker's reason.
            mid = sock.publish(sent_topic, data, properties, qos=1)
            if mid is None:
                raise ConnectionError("the connection to the broker is gone")
            sent = (sock, mid)
            self._published[sent] = entry
            async with asyncio.timeout(self._timeout_s):
                answer = await future
        except TimeoutError:
            # A link that drops without a reset leaves the connection looking open until keep-alive notices, a
            # minute or more later: sending the batch again on it would wait as long. Connect anew instead.
            self._drop_session()
            return Refused(False, "", f"no answer from the hub through the broker within {self._timeout_s:g} s")
        except (aiomqtt.MqttError, ConnectionError) as exc:
            return Refused(False, "", _describe(exc))
        except (_SendAgain, _Dropped) as exc:
            return Refused(False, "", str(exc))
        finally:
            if sent is not None and self._published.get(sent) is entry:
                del self._published[sent]
            if self._pending.get(key) is future:
                del self._pending[key]
            if batch is not None and self._batches.get(key) is batch:
                del self._batches[key]
        sent_properties = (0 if named else 3 + len(key)) + (3 if aliased else 0)
        overhead = (
            publish_framing(sent_topic, len(data), sent_properties)
            + publish_framing(answer.topic, answer.payload_bytes, answer.properties_bytes, qos=answer.qos)
            + answer.payload_bytes
        )
        return answer.document, overhead

    def _puback(self, sock: BrokerSocket, mid: int, reason: int) -> None:
        """The broker's PUBACK of a message published here: a reason code that means no hub will answer fails the exchange now,
        instead of at its timeout with the connection dropped (the broker is there; the batch stays in the spool and is sent again)."""
        published = self._published.pop((sock, mid), None)
        if published is None or (reason < 0x80 and reason != _NO_MATCHING_SUBSCRIBERS):
            return
        future, kind = published
        if not future.done():
            future.set_exception(_Dropped(_dropped_why(kind, reason)))

    def _in_flight(self, data: bytes, key: bytes) -> _InFlight | None:
        """Note a batch as in flight: the (boot epoch, seq) an ack names, and whether it goes without correlation data (when the
        broker granted the answer topic); None if its header cannot be read (the hub refuses it, with correlation data)."""
        identity = _batch_identity(data)
        if identity is None:
            return None
        batch = _InFlight(*identity, self._by_name)
        self._batches[key] = batch
        return batch

    async def send_batch(self, data: bytes) -> Ack | Refused:
        answer = await self._exchange("batch", data)
        if isinstance(answer, Refused):
            return answer
        document, overhead = answer
        if "error" in document:
            return _refusal(document, overhead, FINAL_BATCH_CODES)
        ack = ack_of(document, overhead)
        if ack is None:
            return Refused(False, "", "the hub answered with an ack that names no batch", overhead_bytes=overhead)
        return ack

    async def _send_report(self, kind: str, data: bytes) -> tuple[Taken | Refused, dict[str, Any] | None]:
        answer = await self._exchange(kind, data)
        if isinstance(answer, Refused):
            return answer, None
        document, overhead = answer
        if document.get("ok") is True:
            return Taken(overhead_bytes=overhead), document
        return _refusal(document, overhead, FINAL_REPORT_CODES), None

    async def send_status(self, data: bytes) -> Taken | Refused:
        outcome, document = await self._send_report("status", data)
        if document is not None and self._on_desired is not None:
            self._on_desired(DesiredOffer(document.get("desired"), str(document.get("etag", ""))))
        return outcome

    async def publish_notice(self, data: bytes) -> Taken | Refused:
        return (await self._send_report("notice", data))[0]

    async def fetch_hub_key(self) -> bytes:
        """From the hub's HTTP(S) URL, as over HTTP: the broker cannot vouch for the hub."""
        if self._key_source is None:
            raise TransportError("uplink hub is empty: the hub's key is fetched from its https URL, so desired documents are not applied")
        return await self._key_source.fetch_hub_key()


def _properties(key: bytes, alias: int) -> bytes:
    """A PUBLISH's properties, packed: its correlation data, and its topic alias unless 0."""
    return publish_properties(key, alias)


@functools.cache
def _named_properties(alias: int) -> bytes:
    """The properties of a batch sent without correlation data: its topic alias (none if 0) only, so made once."""
    return publish_properties(None, alias)


def _batch_identity(data: bytes) -> tuple[int, int, bytes] | None:
    """(boot epoch, seq, key id) of a batch this gateway sealed, or None if ``data`` is not a batch of this OXP version.

    These are the gateway's own signed bytes, read back to name their ack, so cbor2 reads them: about 3 us a batch, where
    the strict reader behind peek_header (made for bytes not yet authenticated) takes about 70."""
    try:
        envelope = cbor2.loads(data)
        if not isinstance(envelope, cbor2.CBORTag) or envelope.tag != COSE_SIGN1_TAG or len(envelope.value) != 4:
            return None
        protected = cbor2.loads(envelope.value[0])
        oxp, kid = protected[OXP_BATCH], protected[KID]
        boot_epoch, seq, version = oxp[H_BOOT], oxp[H_SEQ], oxp[H_VERSION]
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError):  # cbor2's CBORDecodeError is a ValueError
        return None
    if type(version) is not int or version != OXP_VERSION or type(boot_epoch) is not int or type(seq) is not int or type(kid) is not bytes:
        return None
    return boot_epoch, seq, kid


class _Inbox:
    """The messages of one connection, handed to ``arrived`` as they are read: most taken by the broker socket before paho
    (:meth:`take`), the rest from paho's ``on_message`` (:meth:`from_paho`), without aiomqtt's Message, queue, task and
    wait.  Messages read before the connection is up (its subscriptions settled) are held and handed over by :meth:`open`,
    as they waited in aiomqtt's queue; once the connection is given up, none is."""

    def __init__(self, arrived: Callable[[str, bytes, bytes | None, int], None]) -> None:
        self._arrived = arrived
        self._held: list[tuple[str, bytes, bytes | None, int]] | None = []
        self._closed = False

    def take(self, on: str, payload: bytes, key: bytes | None, qos: int) -> bool:
        """The broker socket's offer: every message on this connection is this device's (it subscribes to nothing else)."""
        if self._closed:
            return True  # acknowledged and dropped, as paho's on_message below drops it
        if self._held is None:
            self._arrived(on, payload, key, qos)
        else:
            self._held.append((on, payload, key, qos))
        return True

    def from_paho(self, client: Any, userdata: Any, message: MQTTMessage) -> None:
        """paho's ``on_message``, for a message the broker socket left to paho (a property it does not read, QoS 2)."""
        try:
            on = message.topic
        except UnicodeDecodeError:
            return
        key = getattr(message.properties, "CorrelationData", None)
        self.take(on, bytes(message.payload), bytes(key) if isinstance(key, bytes | bytearray) else None, message.qos)

    def open(self) -> None:
        held, self._held = self._held or [], None
        for message in held:
            if not self._closed:
                self._arrived(*message)

    def close(self) -> None:
        self._closed = True


class _NoCredentials(Exception):
    """The broker password cannot be read; the message says where it was looked for."""


def _refusal(document: dict[str, Any], overhead: int, final_codes: frozenset[Answer]) -> Refused:
    code, detail = str(document.get("error", "")), str(document.get("detail", ""))
    wait = document.get("retry_after")
    retry_after = min(max(float(wait), 0.0), _MAX_RETRY_AFTER_S) if isinstance(wait, int | float) and not isinstance(wait, bool) else None
    return Refused(code in final_codes, code, f"hub refused it: {code}" + (f": {detail}" if detail else ""), retry_after=retry_after, overhead_bytes=overhead)


def _describe(exc: BaseException) -> str:
    """Our words for why the broker link failed: our own messages as they are, a library's translated."""
    ours = isinstance(exc, _NoCredentials) or (isinstance(exc, ConnectionError) and exc.errno is None and bool(exc.args))
    return str(exc) if ours else broker_problem(exc)

"""The broker socket's own path (edge.util.mqttsocket, ``take``): the hub's messages taken and acknowledged before paho, the rest
left to paho in order, and answers written without paho; through a real broker."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.util.mqttsocket import BrokerSocket, _correlation

from .conftest import Broker

RESPONSES = "$CONTROL/dynamic-security/v1/response"
CONTROL = "$CONTROL/dynamic-security/v1"


async def _grant_oxp(broker: Broker) -> None:
    """The hub user's role may publish and receive on oxp/v1/# (the hub's own role grants that, hub.brokerauth); the broker
    disconnects the clients of a role it changes, this one too."""
    acls = [{"command": "addRoleACL", "rolename": "admin", "acltype": kind, "topic": "oxp/v1/#", "allow": True}
            for kind in ("publishClientSend", "publishClientReceive", "subscribePattern")]
    try:
        async with broker.hub_settings(client_id="take-grant").client() as client:
            await client.subscribe(RESPONSES, qos=1)
            client._client.publish(CONTROL, json.dumps({"commands": acls}), qos=1)
            async with asyncio.timeout(10):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    for response in json.loads(message.payload)["responses"]:
                        assert "error" not in response, response
                    break
    except aiomqtt.MqttError:
        pass  # disconnected once the role changed


async def _redelivered(broker: Broker, client_id: str) -> list[str]:
    """The topics of what the broker delivers again to the session of ``client_id`` within 1.5 s of reconnecting."""
    again: list[str] = []
    async with broker.hub_settings(client_id=client_id).client() as client:
        try:
            async with asyncio.timeout(1.5):
                async for message in client.messages:
                    again.append(message.topic.value)
        except TimeoutError:
            pass
    return again


def _properties(**values: object) -> Properties:
    properties = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(properties, name, value)
    return properties


@pytest.mark.parametrize("answers_qos", [0, 1])
async def test_the_hubs_messages_are_taken_before_paho_acknowledged_in_order_and_answers_written_whole(broker: Broker, answers_qos: int) -> None:
    await _grant_oxp(broker)
    taken: list[tuple[str, bytes, bytes | None]] = []

    qos_taken: dict[bytes, int] = {}

    def take(topic: str, payload: bytes, correlation: bytes | None, qos: int) -> bool:
        if not topic.endswith("/batch"):
            return False
        taken.append((topic, payload, correlation))
        qos_taken[payload] = qos
        return True

    sent: list[tuple[str, bytes, bytes | None]] = []
    through_paho: list[str] = []
    async with broker.hub_settings(client_id=f"take-test-{answers_qos}").client() as client:
        sock = BrokerSocket(client, take=take)
        sock.install()
        # As the hub does (MqttIngest._hear): a batch read behind a packet left to paho comes through paho's on_message.
        to_aiomqtt = client._client.on_message

        def on_message(paho_client: Any, userdata: Any, message: Any) -> None:
            properties = getattr(message, "properties", None)
            if not take(message.topic, message.payload, getattr(properties, "CorrelationData", None), message.qos) and to_aiomqtt is not None:
                to_aiomqtt(paho_client, userdata, message)
            else:
                through_paho.append(message.topic)

        client._client.on_message = on_message
        # The commands' answers go to paho.  At QoS 1 each sends everything read after it to paho too (its PUBACK must come
        # first); at QoS 0, as the broker's PUBACKs of the commands, it is read past.
        await client.subscribe([("oxp/v1/+/batch", 1), ("oxp/v1/+/ack", 1), (RESPONSES, answers_qos)])
        # Batches with every property a gateway's client may add, QoS 0 and 1, between commands whose answers paho takes.
        for n in range(120):
            key = n.to_bytes(4, "big") if n % 3 else None
            properties = {0: _properties(), 1: _properties(CorrelationData=key), 2: _properties(
                CorrelationData=key, UserProperty=[("a", "b"), ("c", "d")], ContentType="application/cose", MessageExpiryInterval=60,
                PayloadFormatIndicator=0, ResponseTopic="oxp/v1/x/ack")}[n % 3]
            topic, payload = f"oxp/v1/dev-{n % 7}/batch", bytes([n]) * (n * 37 % 900)
            client._client.publish(topic, payload, qos=n % 2, properties=properties)
            sent.append((topic, payload, key))
            if n % 10 == 0:
                command = {"commands": [{"command": "getClient", "username": f"nobody-{n}", "correlationData": str(n)}]}
                client._client.publish(CONTROL, json.dumps(command), qos=1)
        answered: list[int] = []
        acks: list[tuple[bytes, bytes | None]] = []

        async def answer_once_everything_is_in() -> None:
            # Answers written by the socket itself, after paho's packets: each arrives whole, with its correlation data.
            # Waited for on its own, not checked as each message arrives: the socket may take the last batch after paho
            # handed over the last answer, and a check made only on arrivals then never came true (a 20 s timeout, once
            # in a make test).
            while not (len(answered) == 12 and len(taken) == len(sent)):
                await asyncio.sleep(0.01)
            assert sock.answer("oxp/v1/dev-1/ack", b"\x82\x07\x02", b"\x01\x02\x03\x04")
            assert sock.answer("oxp/v1/dev-2/ack", b'{"status":"stored"}' * 40, None)

        answering = asyncio.ensure_future(answer_once_everything_is_in())
        try:
            async with asyncio.timeout(20):
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    if message.topic.matches(RESPONSES):
                        answered += [int(r["correlationData"]) for r in json.loads(message.payload)["responses"]]
                    else:
                        acks.append((message.payload, getattr(message.properties, "CorrelationData", None)))
                    if len(acks) == 2:
                        break
                await answering  # done: the acks came after its answers; raises what it raised
        finally:
            answering.cancel()
        # Every one, whole, and those of each QoS in the order sent (the broker keeps a publisher's order within a QoS).
        assert sorted(taken) == sorted(sent)
        assert qos_taken == {bytes([n]) * (n * 37 % 900): n % 2 for n in range(120)}  # each with the QoS it came at
        assert [m for m in taken if m in sent[0::2]] == sent[0::2] and [m for m in taken if m in sent[1::2]] == sent[1::2]
        if answers_qos == 0:
            assert len(through_paho) < len(sent) // 2  # most are taken before paho
        assert answered == list(range(0, 120, 10))  # the commands' answers, left to paho, in order
        assert acks == [(b"\x82\x07\x02", b"\x01\x02\x03\x04"), (b'{"status":"stored"}' * 40, None)]
    # The broker got a PUBACK for each QoS 1 batch taken: nothing is sent again to the same session.
    assert await _redelivered(broker, f"take-test-{answers_qos}") == []


async def test_messages_published_by_the_socket_arrive_whole_and_their_pubacks_never_reach_paho(broker: Broker) -> None:
    # As the gateway publishes its batches: QoS 1 (and 0) PUBLISHes written by the socket with packed properties, between
    # messages paho publishes itself; the broker's PUBACK of each of the socket's is taken by the socket, paho's go to paho.
    await _grant_oxp(broker)
    got: list[tuple[str, bytes, bytes | None, int]] = []

    def take(topic: str, payload: bytes, correlation: bytes | None, qos: int) -> bool:
        got.append((topic, payload, correlation, qos))
        return True

    async with broker.hub_settings(client_id="publish-test").client() as client:
        acked: list[tuple[int, int]] = []
        sock = BrokerSocket(client, take=take, acked=lambda mid, reason: acked.append((mid, reason)))
        sock.install()
        paho_pubacks: list[int] = []
        own: list[int] = []
        client._client.on_publish = lambda c, userdata, mid, reason, properties: paho_pubacks.append(mid)
        await client.subscribe("oxp/v1/dev-1/#", qos=1)
        sent: list[tuple[str, bytes, bytes | None, int]] = []
        for n in range(60):
            key = n.to_bytes(4, "big") if n % 2 else None
            packed = b"\0" if key is None else _properties(CorrelationData=key).pack()
            topic, payload = f"oxp/v1/dev-1/batch-{n % 3}", bytes([n]) * (n * 53 % 700)
            mid = sock.publish(topic, payload, packed, qos=1 if n % 4 else 0)
            assert mid is not None and bool(mid) == bool(n % 4)  # a packet id at QoS 1, 0 at QoS 0
            if mid:
                own.append(mid)
            sent.append((topic, payload, key, 1 if n % 4 else 0))
            if n % 10 == 0:
                info = client._client.publish("oxp/v1/dev-1/paho", f"paho-{n}", qos=1)
                sent.append(("oxp/v1/dev-1/paho", f"paho-{n}".encode(), None, 1))
                assert info.rc == 0
        async with asyncio.timeout(20):
            while len(got) < len(sent) or sock._own or len(paho_pubacks) < 6:
                await asyncio.sleep(0.02)
        # Each whole, with its correlation data and the QoS it was sent at, in the order sent (one publisher, one session).
        assert got == sent
        # The broker acknowledged every QoS 1 message of the socket's (none waits) and paho heard only of its own six.
        assert not sock._own and len(paho_pubacks) == 6 and not client._client._out_messages
        # Each of the socket's PUBACKs was handed on with its packet id and reason code: Success (there is a subscriber).
        assert sorted(acked) == sorted((mid, 0x00) for mid in own) and len(own) == 45
    # Nothing is sent again to the same session: every QoS 1 delivery to it was acknowledged.
    assert await _redelivered(broker, "publish-test") == []


async def test_the_brokers_reason_code_for_each_message_the_socket_publishes_is_handed_on(broker: Broker) -> None:
    # MQTT 5 PUBACK reason codes, as Mosquitto gives them: Success with a subscriber, No matching subscribers (0x10) without
    # one, and Not authorized (0x87) on a topic the client may not publish to; the message is dropped then.
    await _grant_oxp(broker)
    async with broker.hub_settings(client_id="reason-test").client() as client:
        acked: dict[int, int] = {}
        sock = BrokerSocket(client, take=lambda *_: True, acked=acked.__setitem__)
        sock.install()
        await client.subscribe("oxp/v1/dev-1/#", qos=1)
        mids = {where: sock.publish(where, b"x", b"\0", qos=1) for where in ("oxp/v1/dev-1/batch", "oxp/v1/nobody/batch", "elsewhere/batch")}
        async with asyncio.timeout(10):
            while len(acked) < 3:
                await asyncio.sleep(0.02)
        assert {where: acked[mid] for where, mid in mids.items() if mid} == {
            "oxp/v1/dev-1/batch": 0x00, "oxp/v1/nobody/batch": 0x10, "elsewhere/batch": 0x87}
        assert not sock._own


def test_properties_the_socket_does_not_read_are_left_to_paho() -> None:
    def packed(properties: Properties) -> bytes:
        data = properties.pack()
        return data[1:] if data[0] < 0x80 else data[2:]  # without the length (under 16 KiB: one or two bytes)

    key = _properties(CorrelationData=b"\x01\x02\x03\x04", UserProperty=[("a", "b")], SubscriptionIdentifier=5)
    assert _correlation(packed(key), 0, len(packed(key))) == (b"\x01\x02\x03\x04",)
    assert _correlation(b"", 0, 0) == (None,)
    alias = packed(_properties(TopicAlias=3))
    assert _correlation(alias, 0, len(alias)) is None  # a topic alias: paho's to resolve (or refuse)
    twice = packed(_properties(CorrelationData=b"\x01")) * 2
    assert _correlation(twice, 0, len(twice)) is None  # given twice: malformed, paho says so
    short = packed(_properties(CorrelationData=b"\x01\x02\x03\x04"))
    assert _correlation(short, 0, len(short) - 1) is None  # runs past the properties' length
    not_text = b"\x03\x00\x02\xff\xfe"
    assert _correlation(not_text, 0, len(not_text)) is None  # a content type that is not UTF-8

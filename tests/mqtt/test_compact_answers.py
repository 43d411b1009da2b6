"""OXP over MQTT, compact form (§8.6): the compact batch ack and its test vector, answers by name (a batch sent without
correlation data is answered on the device's own topic at QoS 0 with its 4-byte name), topic aliases, and gateways of the
binding's first form (8 bytes of correlation data, no aliases) still answered in JSON by this hub."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.protocol import Answer, peek_header
from edge.protocol.compact import CompactAckError, batch_name, compact_ack, named_ack, read_compact_ack, read_named_ack
from edge.spool import Spool
from edge.transport.mqtt import MqttTransport, _named_properties, _properties, correlation
from hub.brokerauth import device_acls
from hub.ingest import Acked, Refused
from hub.mqtt import _answer
from tests.mqtt.conftest import HUB_PASSWORD, HUB_USER
from tests.mqtt.test_oxp_over_mqtt import Gateway, client, granted, hub_on, seal

# OXP §8.6's test vector: the compact ack of boot epoch 7, seq 2, stored.
VECTOR = bytes.fromhex("83070200")
MINIMAL = Path(__file__).parents[2] / "docs" / "protocol" / "vectors" / "minimal.json"  # boot epoch 7, seq 1


def test_the_named_ack_of_the_minimal_vector_is_its_four_byte_name_and_a_duplicate_adds_the_compact_ack():
    data = bytes.fromhex(json.loads(MINIMAL.read_text())["expected"]["batch_hex"])
    assert batch_name(data) == bytes.fromhex("e98aa93c")  # OXP §8.6's vector
    assert named_ack(batch_name(data), 7, 1, "stored") == bytes.fromhex("e98aa93c")
    assert named_ack(batch_name(data), 7, 1, "duplicate") == bytes.fromhex("e98aa93c83070101")
    assert read_named_ack(bytes.fromhex("e98aa93c")) == (bytes.fromhex("e98aa93c"), None)
    assert read_named_ack(bytes.fromhex("e98aa93c83070101")) == (bytes.fromhex("e98aa93c"), {"boot_epoch": 7, "seq": 1, "status": "duplicate"})
    with pytest.raises(CompactAckError, match="4-byte name"):
        read_named_ack(b"\xe9\x8a")


def test_the_compact_ack_of_the_protocols_test_vector_is_four_bytes_and_reads_back():
    assert compact_ack(7, 2, "stored") == VECTOR
    assert read_compact_ack(VECTOR) == {"boot_epoch": 7, "seq": 2, "status": "stored"}
    quarantined = compact_ack(7, 300, "duplicate", {"quarantined": {"after_hub_clock": 2}, "desired_etag": "e1"})
    assert read_compact_ack(quarantined) == {"boot_epoch": 7, "seq": 300, "status": "duplicate", "quarantined": {"after_hub_clock": 2}, "desired_etag": "e1"}


@pytest.mark.parametrize(
    "items, says",
    [([7, 2], "3 or 4 items"), ([7, -1, 0], "unsigned"), ([7, 2, 2], "status 2"), ([7, 2, 0, [1]], "fourth item"), ({"seq": 2}, "array")],
)
def test_a_compact_ack_that_is_not_one_is_refused_with_what_is_wrong(items, says):
    with pytest.raises(CompactAckError, match=says):
        read_compact_ack(cbor2.dumps(items))


def test_the_hub_answers_a_batch_compactly_only_to_four_bytes_of_correlation_data():
    acked = Acked("pole-0042", bytes.fromhex("21fe31dfa154a261"), 7, 2, "stored")
    payload, properties = _answer("batch", acked, b"\x01\x02\x03\x04")
    assert (payload, properties) == (VECTOR, None)  # the ack names the batch: no correlation data
    payload, properties = _answer("batch", acked, b"\x01" * 8)
    assert json.loads(payload) == acked.document()
    assert getattr(properties, "CorrelationData", None) == b"\x01" * 8


def test_the_hub_answers_a_batch_without_correlation_data_by_the_batchs_name():
    data = b"the bytes of some batch"
    acked = Acked("pole-0042", bytes.fromhex("21fe31dfa154a261"), 7, 2, "stored")
    assert _answer("batch", acked, None, data) == (batch_name(data), None)
    refused, properties = _answer("batch", Refused(Answer.MALFORMED, "not a batch"), None, data)
    assert json.loads(refused)["error"] == "malformed"
    assert getattr(properties, "CorrelationData", None) == batch_name(data)  # the name the gateway matches a refusal by


async def test_a_gateway_of_the_first_form_gets_json_and_a_new_one_the_compact_ack_from_the_same_hub(broker, tmp_path):
    async with hub_on(broker, tmp_path / "hub") as (hub, taker):
        gateway = Gateway(tmp_path / "gw", "pole-0042")
        await gateway.enrol(hub)
        await granted(taker, "pole-0042")
        spool = await Spool.open(tmp_path / "old.db", max_bytes=1_000_000)
        await spool.begin_boot()
        answers: list[tuple[bytes, bytes | None]] = []
        try:
            # The first form of the binding, as a gateway one version older sends it: its own credentials, the full topic.
            async with client(broker, "pole-0042", gateway.password_file.read_text().strip(), "pole-0042") as old:
                await old.subscribe("oxp/v1/pole-0042/ack", qos=1)
                first, second = seal("pole-0042", gateway.key, spool, 5), seal("pole-0042", gateway.key, spool, 5)
                for data, compact in ((first, False), (second, True)):
                    properties = Properties(PacketTypes.PUBLISH)
                    properties.CorrelationData = correlation(data, compact=compact)
                    await old.publish("oxp/v1/pole-0042/batch", data, qos=1, properties=properties)
                    async with asyncio.timeout(10):
                        message = await anext(aiter(old.messages))
                    assert isinstance(message.payload, bytes)
                    answers.append((message.payload, getattr(message.properties, "CorrelationData", None)))
        finally:
            await spool.close()
        (json_answer, json_key), (cbor_answer, cbor_key) = answers
        assert json_key == correlation(first)
        a, b = peek_header(first), peek_header(second)
        assert json.loads(json_answer) == {"device_id": "pole-0042", "key_id": a.key_id.hex(), "boot_epoch": a.boot_epoch, "seq": a.seq, "status": "stored"}
        assert cbor_key is None
        assert read_compact_ack(cbor_answer) == {"boot_epoch": b.boot_epoch, "seq": b.seq, "status": "stored"}
        assert (await hub.counters("pole-0042"))["batches_stored"] == 2


async def test_a_gateway_pays_under_70_bytes_of_framing_for_a_batch_and_its_ack(broker, tmp_path):
    async with hub_on(broker, tmp_path / "hub") as (hub, taker):
        gateway = Gateway(tmp_path / "gw", "pole-0042")
        await gateway.enrol(hub)
        await granted(taker, "pole-0042")
        await gateway.open(hub.url, broker)
        try:
            gateway.put(1)
            await gateway.delivered()
            before = gateway.uplink.counters.overhead_bytes
            gateway.put(10)
            await gateway.delivered()
            framing = (gateway.uplink.counters.overhead_bytes - before) / 10
        finally:
            await gateway.close()
    # Topic aliases, no correlation data, the 4-byte named ack at QoS 0 on oxp/v1/pole-0042: 11 bytes up (the batch's
    # PUBLISH header) and 29 down (the PUBACK, the ack's PUBLISH). Full topics would add 22, a JSON ack about 90.
    assert framing == 40


async def test_a_batch_without_correlation_data_is_answered_on_the_devices_own_topic_at_qos_0_by_its_name(broker, tmp_path):
    async with hub_on(broker, tmp_path / "hub") as (hub, taker):
        gateway = Gateway(tmp_path / "gw", "pole-0042")
        await gateway.enrol(hub)
        await granted(taker, "pole-0042")
        spool = await Spool.open(tmp_path / "raw.db", max_bytes=1_000_000)
        await spool.begin_boot()
        try:
            async with client(broker, "pole-0042", gateway.password_file.read_text().strip(), "pole-0042") as device:
                codes = await device.subscribe([("oxp/v1/pole-0042", 1), ("oxp/v1/pole-0042/ack", 1)])
                assert [code.value if isinstance(code, ReasonCode) else code for code in codes] == [1, 1]  # hub.brokerauth grants the answer topic
                good = seal("pole-0042", gateway.key, spool, 5)
                bad = good[:-1] + bytes([good[-1] ^ 1])  # its signature broken: refused, finally
                answers = []
                for data in (good, good, bad):
                    await device.publish("oxp/v1/pole-0042/batch", data, qos=1)
                    async with asyncio.timeout(10):
                        answers.append(await anext(aiter(device.messages)))
        finally:
            await spool.close()
    header = peek_header(good)
    assert [(m.topic.value, m.qos, getattr(m.properties, "CorrelationData", None)) for m in answers] == [
        ("oxp/v1/pole-0042", 0, None),
        ("oxp/v1/pole-0042", 0, None),
        ("oxp/v1/pole-0042", 0, batch_name(bad)),
    ]
    assert answers[0].payload == batch_name(good)  # stored: the name alone
    assert read_named_ack(bytes(answers[1].payload)) == (batch_name(good), {"boot_epoch": header.boot_epoch, "seq": header.seq, "status": "duplicate"})
    assert json.loads(bytes(answers[2].payload))["error"] == "bad_signature"


async def test_a_named_ack_whose_name_starts_with_a_brace_is_taken_for_the_batch_not_read_as_json(tmp_path):
    # One batch name in 256 starts with "{", which also starts a JSON answer: the name decides, not the first byte.
    spool = await Spool.open(tmp_path / "brace.db", max_bytes=1_000_000)
    await spool.begin_boot()
    key = Ed25519PrivateKey.generate()
    try:
        data = next(d for d in (seal("pole-0042", key, spool, 3) for _ in range(5000)) if batch_name(d)[:1] == b"{")
    finally:
        await spool.close()
    transport = MqttTransport("mqtt://127.0.0.1:1", hub_url="", device_id="pole-0042", password_file=None)
    transport._by_name = True
    name = correlation(data, compact=True)
    future = asyncio.get_running_loop().create_future()
    transport._pending[name] = future  # as _exchange leaves a batch sent without correlation data waiting
    transport._in_flight(data, name)
    transport._arrived("oxp/v1/pole-0042", name, None, 0)  # as the broker socket hands it over (topic, payload, correlation, QoS)
    header = peek_header(data)
    assert future.done() and future.result().document == {
        "status": "stored", "boot_epoch": header.boot_epoch, "seq": header.seq, "device_id": "pole-0042", "key_id": header.key_id.hex(),
    }  # fmt: skip


async def test_a_device_role_an_older_hub_made_is_given_the_answer_topic(broker, tmp_path):
    ctrl = shutil.which("mosquitto_ctrl")
    assert ctrl is not None
    login = [ctrl, "-h", "127.0.0.1", "-p", str(broker.port), "-u", HUB_USER, "-P", HUB_PASSWORD, "dynsec"]
    subprocess.run([*login, "createRole", "oxp-device-pole-0042"], check=True, capture_output=True)
    for acl in device_acls("pole-0042"):
        if acl["topic"] != "oxp/v1/pole-0042":  # the role as the hub before answers by name made it
            subprocess.run([*login, "addRoleACL", "oxp-device-pole-0042", acl["acltype"], acl["topic"], "allow"], check=True, capture_output=True)
    async with hub_on(broker, tmp_path / "hub") as (hub, taker):
        gateway = Gateway(tmp_path / "gw", "pole-0042")
        await gateway.enrol(hub)
        await granted(taker, "pole-0042")
        async with client(broker, "pole-0042", gateway.password_file.read_text().strip(), "pole-0042") as device:
            codes = await device.subscribe("oxp/v1/pole-0042", qos=1)
    assert [code.value if isinstance(code, ReasonCode) else code for code in codes] == [1]


@pytest.mark.parametrize("alias", [0, 1, 3, 300])
@pytest.mark.parametrize("key", [None, b"\x01\x02\x03\x04", bytes(range(32)), b"k" * 200])
def test_a_publishs_properties_packed_by_the_transport_are_the_bytes_paho_packs(key: bytes | None, alias: int) -> None:
    # The broker socket writes the gateway's PUBLISHes with properties the transport packs itself: paho's bytes, to the byte.
    expected = Properties(PacketTypes.PUBLISH)
    if key is not None:
        expected.CorrelationData = key
    if alias:
        expected.TopicAlias = alias
    made = _named_properties(alias) if key is None else _properties(key, alias)
    assert made == expected.pack()

"""OXP over MQTT, compact form (§8.6): the compact batch ack and its test vector, topic aliases, and gateways of the
binding's first form (8 bytes of correlation data, no aliases) still answered in JSON by this hub."""

from __future__ import annotations

import asyncio
import json

import cbor2
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.protocol import peek_header
from edge.protocol.compact import CompactAckError, compact_ack, read_compact_ack
from edge.spool import Spool
from edge.transport.mqtt import correlation
from hub.ingest import Acked
from hub.mqtt import _answer
from tests.mqtt.test_oxp_over_mqtt import Gateway, client, granted, hub_on, seal

# OXP §8.6's test vector: the compact ack of boot epoch 7, seq 2, stored.
VECTOR = bytes.fromhex("83070200")


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
    # Topic aliases and the compact ack: about 22 bytes up and 35 down. Full topics would add 22, a JSON ack about 90.
    assert 40 < framing < 70

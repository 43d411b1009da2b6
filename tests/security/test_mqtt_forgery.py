"""Threat model (docs/threat-model.md): a hostile enrolled device on the broker forging another gateway's answers.

The hub's ack makes a gateway forget a batch, so an ack on another gateway's ``…/ack`` topic would make it drop
readings it never delivered, and a document on its ``…/desired`` topic would reach its applier. The broker's ACL
(hub/brokerauth.py) lets a device publish only its own batch, status and notice topics: both forgeries are dropped by
the broker, and the victim's first message is the hub's real answer. Real Mosquitto with dynamic security on loopback.
"""

from __future__ import annotations

import asyncio
import json

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.protocol.compact import compact_ack
from edge.spool import Spool
from edge.transport.mqtt import correlation
from tests.mqtt.test_oxp_over_mqtt import Gateway, client, granted, hub_on, seal


async def test_a_device_cannot_publish_an_ack_or_a_desired_document_to_another_gateway(broker, tmp_path) -> None:
    async with hub_on(broker, tmp_path / "hub") as (hub, taker):
        attacker, victim = Gateway(tmp_path / "a", "pole-0001"), Gateway(tmp_path / "b", "pole-0002")
        await attacker.enrol(hub)
        await victim.enrol(hub)
        await granted(taker, "pole-0001")
        await granted(taker, "pole-0002")
        spool = await Spool.open(tmp_path / "b.db", max_bytes=1_000_000)
        await spool.begin_boot()
        received: list[tuple[str, bytes]] = []
        try:
            async with client(broker, "pole-0002", victim.password_file.read_text().strip(), "pole-0002") as target, \
                    client(broker, "pole-0001", attacker.password_file.read_text().strip(), "pole-0001") as forger:
                await target.subscribe([("oxp/v1/pole-0002/ack", 1), ("oxp/v1/pole-0002/desired", 1)])
                real = seal("pole-0002", victim.key, spool, 5)
                # An ack for the batch the victim is about to send, and a desired document: QoS 1, so each publish has
                # been handled by the broker (routed to any subscriber, or dropped) before the next line runs.
                await forger.publish("oxp/v1/pole-0002/ack", compact_ack(spool.boot_epoch, 0, "stored"), qos=1)
                await forger.publish("oxp/v1/pole-0002/desired", json.dumps({"etag": "forged", "desired": None}).encode(), qos=1)
                properties = Properties(PacketTypes.PUBLISH)
                properties.CorrelationData = correlation(real)
                await target.publish("oxp/v1/pole-0002/batch", real, qos=1, properties=properties)
                async with asyncio.timeout(10):
                    async for message in target.messages:
                        assert isinstance(message.payload, bytes)
                        received.append((str(message.topic), message.payload))
                        break
        finally:
            await spool.close()
        # Anything the broker had let through would have been queued to the victim before the hub's answer.
        [(topic, payload)] = received
        assert topic == "oxp/v1/pole-0002/ack"
        answer = json.loads(payload)
        assert (answer["status"], answer["seq"]) == ("stored", 0), answer
        assert (await hub.counters("pole-0002"))["batches_stored"] == 1

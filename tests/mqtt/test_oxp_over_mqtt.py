"""OXP over MQTT end to end: a gateway's uplink → a real Mosquitto → the hub's ingest core → the store, and back.

The hub keeps the broker's credentials itself (hub.brokerauth): each gateway enrols over HTTP, gets its broker password in
the enrolment answer, and may connect once it is approved.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge.enrol import enrol
from edge.protocol import BatchHeader, key_id, load_private_key, seal_batch
from edge.protocol.desired import verify_document
from edge.protocol.types import Channel, Reading
from edge.spool import Spool
from edge.transport import open_transport
from edge.transport.mqtt import MqttTransport, correlation
from edge.uplink import Uplink
from hilsim.netproxy import UplinkProxy
from hub.app import RunningHub, run_hub
from hub.brokerauth import DEVICE_ROLE_PREFIX
from hub.database import open_store
from hub.mqtt import MQTT_INGEST, MqttIngest
from hub.tokens import create_token
from tests.hub.conftest import drop_schema
from tests.mqtt.conftest import HUB_PASSWORD, HUB_USER, Broker

CHANNEL = Channel("meter-1/voltage", unit="V", resolution=0.1)


def seal(device_id: str, key: Ed25519PrivateKey, spool: Spool, count: int) -> bytes:
    """A sealed batch of ``count`` readings under the spool's boot epoch and next sequence number."""
    start_ms = 1_790_000_000_000 + spool.stats()["batches"] * 100_000
    readings = tuple(Reading(CHANNEL.id, start_ms + i * 1000, 230.0 + (i % 7) / 10) for i in range(count))
    header = BatchHeader(
        device_id=device_id,
        key_id=key_id(key.public_key()),
        boot_epoch=spool.boot_epoch,
        seq=spool.allocate_seq(),
        policy_digest=b"\x01" * 32,
        codec="zstd",
        created_ms=start_ms,
        counters=spool.counters(),
    )
    return seal_batch(header, (CHANNEL,), readings, key)


class Gateway:
    """One enrolled gateway: its key, its spool and an uplink over MQTT (status reports only when asked)."""

    def __init__(self, directory: Path, device_id: str) -> None:
        self.directory = directory
        self.device_id = device_id
        self.spool: Spool
        self.key: Ed25519PrivateKey
        self.uplink: Uplink
        self.offers: list[str] = []
        self._task: asyncio.Task[None] | None = None

    @property
    def password_file(self) -> Path:
        return self.directory / "broker.password"

    async def enrol(self, hub: RunningHub, *, approve: bool = True) -> None:
        enrolment = await enrol(
            hub_url=hub.url, token=await hub.create_token(approve=approve), device_id=self.device_id, key_path=self.directory / "device.key"
        )
        self.key = load_private_key(enrolment.key_path)

    async def open(self, hub_url: str, broker: Broker, *, broker_url: str = "", timeout_s: float = 3.0) -> None:
        self.spool = await Spool.open(self.directory / "spool.db", max_bytes=50_000_000)
        await self.spool.begin_boot()
        transport = open_transport(hub_url, broker=broker_url or broker.url, device_id=self.device_id, broker_password=self.password_file,
                                   timeout_s=timeout_s)
        self.uplink = Uplink(
            spool=self.spool,
            transport=transport,
            private_key=self.key,
            device_id=self.device_id,
            status_interval_s=0,
            backoff_initial_s=0.05,
            backoff_max_s=0.5,
            idle_poll_s=0.05,
            on_desired=lambda _signed, etag: self.offers.append(etag),
        )
        self._task = asyncio.create_task(self.uplink.run())

    def put(self, batches: int, readings: int = 20) -> None:
        for _ in range(batches):
            self.spool.put(seal(self.device_id, self.key, self.spool, readings), readings=readings)
            self.uplink.wake()

    async def delivered(self, *, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while self.spool.stats()["batches"]:
                await asyncio.sleep(0.05)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            await self.uplink.aclose()
            await self.spool.close()


@contextlib.asynccontextmanager
async def hub_on(broker: Broker, state_dir: Path) -> AsyncIterator[tuple[RunningHub, MqttIngest]]:
    async with run_hub(state_dir=state_dir, mqtt=broker.hub_settings(client_id="hub-a")) as hub:
        assert hub.app is not None
        taker = hub.app[MQTT_INGEST]
        async with asyncio.timeout(10):
            await taker.connected.wait()
            assert taker.access is not None
            await taker.access.synced.wait()
        yield hub, taker


async def granted(taker: MqttIngest, device_id: str, *, present: bool = True) -> None:
    """Wait until the hub has granted (or removed) the device's broker access."""
    assert taker.access is not None
    async with asyncio.timeout(10):
        while (device_id in taker.access.granted) != present:
            await asyncio.sleep(0.05)


def client(broker: Broker, username: str, password: str, identifier: str) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username=username,
        password=password,
        identifier=identifier,
        protocol=aiomqtt.ProtocolVersion.V5,
        logger=logging.Logger("quiet"),
        timeout=5,
    )


async def test_readings_flow_from_the_gateway_through_the_broker_to_the_hub_and_are_stored_once(broker, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    async with hub_on(broker, tmp_path / "hub") as (hub, taker):
        gateway = Gateway(tmp_path / "gw", "pole-0042")
        await gateway.enrol(hub)
        assert gateway.password_file.read_text().strip()
        assert stat.S_IMODE(gateway.password_file.stat().st_mode) == 0o600  # the enrolment answer's password, for this user only
        await granted(taker, "pole-0042")
        await gateway.open(hub.url, broker)
        try:
            gateway.put(5)
            await gateway.delivered()
            assert await gateway.uplink.send_status()
        finally:
            await gateway.close()
        counters = await hub.counters("pole-0042")
        async with aiohttp.ClientSession() as http, http.get(f"{hub.url}/metrics") as resp:
            metrics = await resp.text()
    assert (counters["batches_stored"], counters["readings_stored"], counters["duplicates"]) == (5, 100, 0)
    assert gateway.uplink.counters.batches_acked == 5
    # The hub's metrics count what came over MQTT like what comes over HTTP.
    assert 'ocn_hub_ingest_total{kind="batches",reason="",result="stored"} 5.0' in metrics
    assert "ocn_hub_readings_stored_total 100.0" in metrics
    # MQTT frames a message in tens of bytes, where HTTP takes about 380 (OXP §8.1).
    assert 0 < gateway.uplink.counters.overhead_bytes
    # Only our words: the MQTT library's logger never reaches a handler.
    assert {record.name for record in caplog.records if not record.name.startswith("ocn")} <= {"asyncio"}


async def test_every_released_reading_is_stored_exactly_once_when_the_broker_and_the_hub_restart_mid_stream(broker, tmp_path):
    gateway = Gateway(tmp_path / "gw", "pole-0042")
    sent = 0
    async with hub_on(broker, tmp_path / "hub") as (hub, taker):
        await gateway.enrol(hub)
        await granted(taker, "pole-0042")
        await gateway.open(hub.url, broker)
        gateway.put(10)
        sent += 10
        await gateway.delivered()
        gateway.put(10)  # in flight while the broker dies without saving anything
        sent += 10
        broker.kill()
        gateway.put(5)
        sent += 5
        await broker.start()
        await gateway.delivered(timeout=30)
    gateway.put(10)  # the hub is down: these wait in the spool, or in the broker's session
    sent += 10
    async with hub_on(broker, tmp_path / "hub") as (hub, taker):
        await gateway.delivered(timeout=30)
        await gateway.close()
        counters = await hub.counters("pole-0042")
    assert (counters["batches_stored"], counters["readings_stored"]) == (sent, sent * 20)


async def hub_process(broker: Broker, state_dir: Path) -> tuple[asyncio.subprocess.Process, str]:
    """A real `ocn-edge hub` taking MQTT from the broker; its URL once it serves."""
    ocn_edge = Path(sys.executable).with_name("ocn-edge")
    proc = await asyncio.create_subprocess_exec(
        str(ocn_edge),
        "hub",
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        str(state_dir),
        "--admin-token",
        "t",
        "--log-level",
        "warning",
        "--mqtt-broker",
        f"mqtt://{HUB_USER}@127.0.0.1:{broker.port}",
        "--mqtt-password-file",
        str(broker.hub_password_file),
        "--mqtt-client-id",
        "hub-proc",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    async with asyncio.timeout(30):
        while (match := re.search(rb"OCN hub serving on (http://\S+)", line := await proc.stderr.readline())) is None:
            if not line:
                raise AssertionError(f"hub exited with {await proc.wait()}")
    return proc, match.group(1).decode()


async def test_every_released_reading_is_stored_exactly_once_when_the_hub_process_is_killed_mid_stream(broker, tmp_path):
    proc, url = await hub_process(broker, tmp_path / "hub")
    gateway = Gateway(tmp_path / "gw", "pole-0042")
    try:
        store = await open_store(f"sqlite:///{tmp_path / 'hub' / 'hub.db'}")
        try:
            token = await create_token(store, uses=1, expires_s=600, approve=True)
        finally:
            await store.close()
        enrolment = await enrol(hub_url=url, token=token, device_id="pole-0042", key_path=gateway.directory / "device.key")
        gateway.key = load_private_key(enrolment.key_path)
        await gateway.open(url, broker)
        gateway.put(10)
        await gateway.delivered()
        gateway.put(10)
        proc.kill()  # SIGKILL while batches are on their way: no goodbye to the broker, nothing flushed
        await proc.wait()
        gateway.put(5)
        proc, url = await hub_process(broker, tmp_path / "hub")
        await gateway.delivered(timeout=30)
    finally:
        await gateway.close()
        proc.terminate()
        await proc.wait()
    store = await open_store(f"sqlite:///{tmp_path / 'hub' / 'hub.db'}")
    try:
        device = await store.device("pole-0042")
    finally:
        await store.close()
    assert device is not None and (device.batches_stored, device.readings_stored) == (25, 500)


async def test_every_released_reading_is_stored_exactly_once_when_the_link_to_the_broker_is_cut_and_then_goes_silent(broker, tmp_path):
    async with hub_on(broker, tmp_path / "hub") as (hub, taker), UplinkProxy(upstream_port=broker.port) as link:
        gateway = Gateway(tmp_path / "gw", "pole-0042")
        await gateway.enrol(hub)
        await granted(taker, "pole-0042")
        await gateway.open(hub.url, broker, broker_url=f"mqtt://127.0.0.1:{link.port}")
        try:
            gateway.put(5)
            await gateway.delivered()
            link.set_mode("cut")  # connections reset: the link is down
            gateway.put(5)
            await asyncio.sleep(1.0)
            link.set_mode("blackhole")  # connections accepted, nothing answered: a link that died without a word
            gateway.put(5)
            await asyncio.sleep(1.5)
            link.set_mode("pass")
            await gateway.delivered(timeout=30)
        finally:
            await gateway.close()
        counters = await hub.counters("pole-0042")
    assert (counters["batches_stored"], counters["readings_stored"]) == (15, 300)


async def test_a_batch_the_broker_refuses_is_refused_at_once_with_the_brokers_reason_and_sent_again_once_allowed(broker, tmp_path):
    # An ACL that no longer lets the gateway publish its batches (kept by hand, say): Mosquitto drops each one and says so in its
    # PUBACK (0x87).  The gateway says that, at once, instead of waiting out its 60 s for an answer and dropping a good connection
    # each time; the batch stays in the spool and is stored once when the broker lets it through again.
    ctrl = shutil.which("mosquitto_ctrl")
    assert ctrl is not None
    login = [ctrl, "-h", "127.0.0.1", "-p", str(broker.port), "-u", HUB_USER, "-P", HUB_PASSWORD, "dynsec"]
    acl = [DEVICE_ROLE_PREFIX + "pole-0007", "publishClientSend", "oxp/v1/pole-0007/batch"]
    async with hub_on(broker, tmp_path / "hub") as (hub, taker):
        gateway = Gateway(tmp_path / "gw", "pole-0007")
        await gateway.enrol(hub)
        await granted(taker, "pole-0007")
        await gateway.open(hub.url, broker, timeout_s=60.0)
        try:
            gateway.put(1)
            await gateway.delivered()
            subprocess.run([*login, "removeRoleACL", *acl], check=True, capture_output=True)
            gateway.put(1)
            async with asyncio.timeout(10):  # far within the transport's 60 s
                while "0x87" not in gateway.uplink.counters.last_error:
                    await asyncio.sleep(0.05)
            assert gateway.uplink.counters.last_error == (
                "the broker refused the batch (PUBACK 0x87, Not authorized): the broker's ACL does not let this gateway publish there; "
                "the hub grants it when city IT approves the gateway")
            assert gateway.spool.stats()["batches"] == 1
            subprocess.run([*login, "addRoleACL", *acl, "allow"], check=True, capture_output=True)
            await gateway.delivered()
        finally:
            await gateway.close()
        counters = await hub.counters("pole-0007")
    assert (counters["batches_stored"], counters["readings_stored"], counters["duplicates"]) == (2, 40, 0)
    assert gateway.uplink.counters.batches_acked == 2


async def test_a_puback_that_means_no_hub_will_answer_ends_the_exchange_with_the_brokers_reason() -> None:
    transport = MqttTransport("mqtt://127.0.0.1:1", hub_url="", device_id="pole-0001", password_file=None)
    loop = asyncio.get_running_loop()
    old: Any = object()  # two connections' sockets: paho counts packet ids afresh on each
    new: Any = object()
    waiting = {name: loop.create_future() for name in ("a", "b", "c", "d", "e")}
    # As _exchange leaves each message waiting for the hub's answer, by connection and packet id.
    transport._published.update({(new, 1): (waiting["a"], "status"), (new, 2): (waiting["b"], "batch"), (new, 3): (waiting["c"], "batch"),
                                 (new, 4): (waiting["d"], "notice"), (old, 1): (waiting["e"], "batch")})
    transport._puback(new, 1, 0x10)  # No matching subscribers: the broker took it, no hub got it
    transport._puback(new, 2, 0x00)  # Success: the hub's answer is what counts
    transport._puback(new, 3, 0x97)  # Quota exceeded
    transport._puback(new, 4, 0x42)  # below 0x80 and not 0x10: nothing to say
    transport._puback(new, 9, 0x87)  # no exchange waits for packet 9 on this connection
    assert str(waiting["a"].exception()) == (
        "the broker took the status report but no subscriber got it (PUBACK 0x10, No matching subscribers): no hub subscribes to it "
        "on the broker (none has connected, or its session there has expired)")
    assert str(waiting["c"].exception()) == "the broker refused the batch (PUBACK 0x97, Quota exceeded): a quota on the broker is exhausted"
    assert not waiting["b"].done() and not waiting["d"].done() and not waiting["e"].done()  # packet 1 of the old connection is another
    assert transport._published == {(old, 1): (waiting["e"], "batch")}
    transport._puback(old, 1, 0xA0)  # a DISCONNECT's code, not a PUBACK's
    assert str(waiting["e"].exception()) == "the broker refused the batch (PUBACK 0xA0, a reason code MQTT 5 does not define for PUBACK)"


async def test_a_device_may_neither_publish_nor_read_under_another_devices_id(broker, tmp_path):
    async with hub_on(broker, tmp_path / "hub") as (hub, taker):
        own, other = Gateway(tmp_path / "a", "pole-0001"), Gateway(tmp_path / "b", "pole-0002")
        await own.enrol(hub)
        await other.enrol(hub)
        await granted(taker, "pole-0002")
        spool = await Spool.open(tmp_path / "a.db", max_bytes=1_000_000)
        await spool.begin_boot()
        try:
            async with client(broker, "pole-0001", own.password_file.read_text().strip(), "pole-0001") as device:
                # The broker refuses the subscription to another device's answers...
                codes = await device.subscribe("oxp/v1/pole-0002/ack", qos=1)
                assert codes and all((code.value if isinstance(code, ReasonCode) else code) >= 0x80 for code in codes)
                # ...and drops what it publishes under another device's id, so the hub never sees it.
                await device.publish("oxp/v1/pole-0002/batch", seal("pole-0001", own.key, spool, 5), qos=1)
                await device.publish("oxp/v1/pole-0001/batch", seal("pole-0001", own.key, spool, 5), qos=1)
                async with asyncio.timeout(10):
                    while taker.taken < 1:
                        await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)
            assert taker.taken == 1
        finally:
            await spool.close()
        assert (await hub.counters("pole-0002"))["batches_stored"] == 0


async def test_the_hub_refuses_a_batch_on_another_devices_topic_even_from_a_client_the_acl_lets_through(broker, tmp_path):
    async with hub_on(broker, tmp_path / "hub") as (hub, taker):
        own, other = Gateway(tmp_path / "a", "pole-0001"), Gateway(tmp_path / "b", "pole-0002")
        await own.enrol(hub)
        await other.enrol(hub)
        spool = await Spool.open(tmp_path / "a.db", max_bytes=1_000_000)
        await spool.begin_boot()
        answers: list[dict[str, object]] = []
        try:
            # The hub's own user may publish anywhere under oxp/v1: the ACL is out of the way.
            async with client(broker, HUB_USER, HUB_PASSWORD, "superuser-test") as superuser:
                await superuser.subscribe("oxp/v1/pole-0002/ack", qos=1)
                own_batch = seal("pole-0001", own.key, spool, 5)
                # Naming pole-0002's key id, with a signature its key did not make (the last byte is the signature's).
                signed = seal("pole-0002", other.key, spool, 5)
                forged = signed[:-1] + bytes([signed[-1] ^ 1])
                for data in (own_batch, forged):
                    properties = Properties(PacketTypes.PUBLISH)
                    properties.CorrelationData = correlation(data)
                    await superuser.publish("oxp/v1/pole-0002/batch", data, qos=1, properties=properties)
                async with asyncio.timeout(10):
                    async for message in superuser.messages:
                        assert isinstance(message.payload, bytes)
                        answers.append(json.loads(message.payload))
                        if len(answers) == 2:
                            break
        finally:
            await spool.close()
        assert sorted(str(a["error"]) for a in answers) == ["bad_signature", "malformed"]
        assert "enrolled as another device" in next(str(a["detail"]) for a in answers if a["error"] == "malformed")
        for device_id in ("pole-0001", "pole-0002"):
            assert (await hub.counters(device_id))["batches_stored"] == 0


async def connect_fails(broker: Broker, device_id: str, password: str) -> bool:
    try:
        async with client(broker, device_id, password, device_id):
            return False
    except aiomqtt.MqttError:
        return True


async def test_approving_a_device_grants_its_broker_access_and_revoking_removes_it(broker, tmp_path):
    async with hub_on(broker, tmp_path / "hub") as (hub, taker):
        gateway = Gateway(tmp_path / "gw", "pole-0042")
        await gateway.enrol(hub, approve=False)
        password = gateway.password_file.read_text().strip()
        assert await connect_fails(broker, "pole-0042", password)  # pending: not on the broker yet

        await hub.set_device_status("pole-0042", "active")
        await granted(taker, "pole-0042")
        async with client(broker, "pole-0042", password, "pole-0042") as connected:
            await hub.set_device_status("pole-0042", "revoked")
            # Revoking disconnects the device's session at once...
            with pytest.raises(aiomqtt.MqttError):
                async with asyncio.timeout(10):
                    async for _ in connected.messages:
                        pass
        # ...and its credentials no longer open one.
        await granted(taker, "pole-0042", present=False)
        assert await connect_fails(broker, "pole-0042", password)


async def test_a_desired_change_is_pushed_to_a_connected_gateway_without_a_status_report(broker, tmp_path):
    async with hub_on(broker, tmp_path / "hub") as (hub, taker):
        gateway = Gateway(tmp_path / "gw", "pole-0042")
        await gateway.enrol(hub)
        await granted(taker, "pole-0042")
        await gateway.open(hub.url, broker)
        try:
            gateway.put(1)
            await gateway.delivered()
            await hub.set_desired("device", "pole-0042", {"config": {"batch": {"span": "10s"}}})
            async with asyncio.timeout(10):
                while not gateway.offers:
                    await asyncio.sleep(0.05)
            assert gateway.uplink.counters.status_sent == 0
            assert gateway.uplink.desired_etag == gateway.offers[-1] != ""
            pushed = gateway.uplink.desired
            assert isinstance(pushed, dict) and isinstance(issued := pushed["document"]["issued_ms"], int)
            # Cleared: the hub pushes its signed clear (OXP §8.4), dated after the document, not a null a broker could forge.
            await hub.set_desired("device", "pole-0042", None)
            async with asyncio.timeout(10):
                while gateway.offers[-1] != "":
                    await asyncio.sleep(0.05)
            cleared = gateway.uplink.desired
            assert isinstance(cleared, dict)
            assert verify_document(cleared, hub.hub.ingest.signer.key().public_key()) == {
                "device_id": "pole-0042", "cleared": True, "issued_ms": cleared["document"]["issued_ms"]}
            assert cleared["document"]["issued_ms"] > issued
        finally:
            await gateway.close()


async def test_two_hub_processes_share_the_subscription_and_store_each_batch_once(broker, tmp_path, postgres_url):
    url, dsn, schema = postgres_url
    try:
        async with (
            run_hub(state_dir=tmp_path / "hub", db=url, mqtt=broker.hub_settings(client_id="hub-a")) as hub_a,
            run_hub(state_dir=tmp_path / "hub", db=url, mqtt=broker.hub_settings(client_id="hub-b")) as hub_b,
        ):
            assert hub_a.app is not None and hub_b.app is not None
            takers = [hub_a.app[MQTT_INGEST], hub_b.app[MQTT_INGEST]]
            gateway = Gateway(tmp_path / "gw", "pole-0042")
            await gateway.enrol(hub_a)
            await granted(takers[0], "pole-0042")
            await gateway.open(hub_a.url, broker)
            try:
                gateway.put(20)
                await gateway.delivered()
                # The same bytes twice more, as a gateway whose ack was lost sends them: stored once all the same.
                data = seal("pole-0042", gateway.key, gateway.spool, 10)
                properties = Properties(PacketTypes.PUBLISH)
                properties.CorrelationData = correlation(data)
                async with client(broker, HUB_USER, HUB_PASSWORD, "resender") as resender:
                    for _ in range(2):
                        await resender.publish("oxp/v1/pole-0042/batch", data, qos=1, properties=properties)
                async with asyncio.timeout(10):
                    while sum(t.taken for t in takers) < 22:
                        await asyncio.sleep(0.05)
            finally:
                await gateway.close()
            counters = await hub_a.counters("pole-0042")
    finally:
        await drop_schema(dsn, schema)
    assert (counters["batches_stored"], counters["readings_stored"]) == (21, 410)
    assert counters["duplicates"] >= 1  # the resent copy (a gateway's own resend after a slow ack adds more)
    # The broker spread the batches over both processes.
    assert all(t.taken > 0 for t in takers)

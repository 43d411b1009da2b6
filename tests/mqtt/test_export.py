"""The northbound export end to end: a gateway's batches → the hub → a real Mosquitto (the city's broker) → ``mosquitto_sub``.

The subscriber is an independent client (Mosquitto's own ``mosquitto_sub``) with a persistent session made before the
hub publishes, so it is handed every message the broker acknowledged, whenever it reads them.  What it reads is checked
against the hub's own open-data answers for the same readings: ``/data/readings.senml.json`` for SenML and
``/sta/v1.1`` for SensorThings.  A personal channel is stored beside the public ones in every batch and must never
appear.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from hub import export as export_module
from hub.app import RunningHub, run_hub
from hub.export import EXPORTER, Exporter, ExportSettings, parse_formats
from hub.mqtt import MQTT_INGEST
from tests.helpers.tools import require_tool
from tests.hub.conftest import drop_schema
from tests.hub.gateways import T0, SimGateway, enrol, post_cose
from tests.hub.test_personal import PERSONAL_NAMES, value_marks, with_personal
from tests.mqtt.conftest import Broker

DEVICE = "pole-7"  # the device tests.hub.test_personal's batches are sealed for
EXPORT_USER, EXPORT_PASSWORD = "ocn", "export-secret-for-tests"
READER_USER, READER_PASSWORD = "city-reader", "reader-secret-for-tests"
PUBLIC_CHANNELS = 3  # with_personal: 30 ordinary readings on three channels, two personal channels beside them
PER_BATCH = PUBLIC_CHANNELS + 30  # a SenML pack per public chunk, an Observation message per public reading
TOPICS = ("ocn/#", "v1.1/#")


def city_broker_config(directory: Path, *, tls: bool = False) -> Broker:
    """A broker as a city runs one: passwords, no anonymous clients, sessions kept across a restart; with ``tls``, only
    TLS, under a certificate for 127.0.0.1 from a CA of its own (``ca.pem``)."""
    require_tool("mosquitto")
    passwd = require_tool("mosquitto_passwd", package="mosquitto")
    directory.mkdir()
    users = directory / "passwords"
    subprocess.run([passwd, "-b", "-c", str(users), EXPORT_USER, EXPORT_PASSWORD], check=True, capture_output=True)
    subprocess.run([passwd, "-b", str(users), READER_USER, READER_PASSWORD], check=True, capture_output=True)
    (directory / "export.password").write_text(EXPORT_PASSWORD + "\n")
    running = Broker(directory)
    (directory / "mosquitto.conf").write_text(
        f"listener {running.port} 127.0.0.1\n"
        f"user {getpass.getuser()}\n"
        "allow_anonymous false\n"
        f"password_file {users}\n"
        "persistence true\n"
        f"persistence_location {directory}/\n"
        "max_queued_messages 0\n"
        "log_type error\nlog_type warning\n"
        + (f"certfile {directory / 'broker.pem'}\nkeyfile {directory / 'broker.key'}\n" if tls else "")
    )
    if tls:
        write_certificates(directory)
    return running


def write_certificates(directory: Path) -> None:
    """ca.pem (a CA made here) and broker.pem / broker.key (127.0.0.1, signed by it)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test city CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1)).add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
                         critical=True)
          .sign(ca_key, hashes.SHA256()))
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (directory / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "broker.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "broker.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))


@pytest.fixture
async def city_broker(tmp_path: Path) -> AsyncIterator[Broker]:
    running = city_broker_config(tmp_path / "city-broker")
    await running.start()
    try:
        yield running
    finally:
        running.stop()


def export_settings(broker: Broker, **options: Any) -> ExportSettings:
    return ExportSettings(f"mqtt://{EXPORT_USER}@127.0.0.1:{broker.port}", password_file=str(broker.directory / "export.password"), **options)


class Reader:
    """``mosquitto_sub`` on a persistent session (QoS 1) made before the hub publishes, so it is handed every message the
    broker acknowledged, and reconnecting on its own when the broker comes back."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.client_id = f"city-reader-{secrets.token_hex(3)}"
        self.lines: list[str] = []
        self.taken = 0
        self._process: asyncio.subprocess.Process | None = None
        self._collecting: asyncio.Task[None] | None = None

    def _command(self, *extra: str) -> list[str]:
        command = [
            require_tool("mosquitto_sub", package="mosquitto-clients"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.broker.port),
            "-u",
            READER_USER,
            "-P",
            READER_PASSWORD,
            "-i",
            self.client_id,
            "-c",
            "-q",
            "1",
        ]
        for topic in TOPICS:
            command += ["-t", topic]
        return command + list(extra)

    async def __aenter__(self) -> Reader:
        # The session and its subscriptions first (-E: leave once subscribed); then the reader, which may connect after the hub publishes.
        done = await asyncio.to_thread(subprocess.run, self._command("-E"), capture_output=True, timeout=20)
        assert done.returncode == 0, done.stderr
        self._process = await asyncio.create_subprocess_exec(*self._command("-v"), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
        self._collecting = asyncio.create_task(self._collect(self._process))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._process is not None and self._process.returncode is None:
            self._process.terminate()
            await self._process.wait()
        if self._collecting is not None:
            await asyncio.gather(self._collecting, return_exceptions=True)

    async def _collect(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            self.lines.append(line.decode().rstrip("\n"))

    async def read(self, count: int) -> list[tuple[str, Any]]:
        """The next ``count`` messages as (topic, JSON payload)."""
        await until(lambda: len(self.lines) >= self.taken + count, f"{count} messages reach the subscriber")
        out = []
        for line in self.lines[self.taken : self.taken + count]:
            topic, _, payload = line.partition(" ")
            out.append((topic, json.loads(payload)))
        self.taken += count
        return out

    async def read_distinct(self, count: int) -> list[tuple[str, Any]]:
        """``count`` different messages, each once, in the order they first came: across a broker restart the broker may hand
        a message the subscriber had not acknowledged yet to it again (QoS 1 between broker and subscriber)."""
        await until(lambda: len(set(self.lines[self.taken :])) >= count, f"{count} different messages reach the subscriber")
        lines = list(dict.fromkeys(self.lines[self.taken :]))
        assert len(lines) == count, lines[count:]
        self.taken = len(self.lines)
        out = []
        for line in lines:
            topic, _, payload = line.partition(" ")
            out.append((topic, json.loads(payload)))
        return out

    async def nothing_more(self) -> None:
        """Nothing else reaches the subscriber (looked at a second after everything expected arrived)."""
        await asyncio.sleep(1.0)
        assert self.lines[self.taken :] == []


@pytest.fixture
async def reader(city_broker: Broker) -> AsyncIterator[Reader]:
    async with Reader(city_broker) as subscribed:
        yield subscribed


async def until(condition: Callable[[], bool | Awaitable[bool]], what: str, timeout_s: float = 20.0) -> None:
    async with asyncio.timeout(timeout_s):
        while True:
            result = condition()
            if isinstance(result, Awaitable):
                result = await result
            if result:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(what)


async def get_json(http: aiohttp.ClientSession, url: str) -> Any:
    async with http.get(url) as resp:
        assert resp.status == 200, (url, await resp.text())
        return await resp.json(content_type=None)


async def send(http: aiohttp.ClientSession, hub: RunningHub, batch: bytes) -> None:
    status, body, _ = await post_cose(http, f"{hub.url}/oxp/v1/batches", batch)
    assert status == 200 and body["status"] == "stored", body


def resolved(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """SenML resolved records (RFC 8428 §4.6): (name, time, value, unit, quality), by time and name; base name and time applied."""
    out, bn, bt = [], "", 0.0
    for record in records:
        bn, bt = record.get("bn", bn), record.get("bt", bt)
        value = next(record[k] for k in ("v", "vs", "vb") if k in record)
        out.append((bn + record["n"], bt + record.get("t", 0), value, record.get("u"), record.get("q")))
    return sorted(out, key=lambda r: (r[1], r[0]))


def exporter_of(hub: RunningHub) -> Exporter:
    assert hub.app is not None
    return hub.app[EXPORTER]


async def check_against_hub(http: aiohttp.ClientSession, hub: RunningHub, messages: list[tuple[str, Any]], *, batches: int) -> None:
    """Every message is what the hub's own open-data APIs say about the same readings; nothing personal, nothing twice."""
    senml = [(topic, payload) for topic, payload in messages if topic.startswith("ocn/")]
    observations = [(topic, payload) for topic, payload in messages if topic.startswith("v1.1/")]
    assert len(senml) == PUBLIC_CHANNELS * batches and len(observations) == 30 * batches and len(senml) + len(observations) == len(messages)
    # Each SenML pack is exactly the hub's SenML export of its channel over its time span.
    for topic, pack in senml:
        channel = topic.removeprefix(f"ocn/{DEVICE}/")
        first_ms = round(pack[0]["bt"] * 1000)
        last_ms = first_ms + max(round(r.get("t", 0) * 1000) for r in pack)
        answer = await get_json(http, f"{hub.url}/data/readings.senml.json?device={DEVICE}&channel={quote(channel)}&since={first_ms}&until={last_ms + 1}")
        assert pack == answer, topic
    # Together, the packs resolve to the hub's SenML export of the whole window, reading for reading.
    whole = await get_json(http, f"{hub.url}/data/readings.senml.json?device={DEVICE}")
    assert resolved([r for _, pack in senml for r in pack]) == resolved(whole)
    # Each Observation is the one the SensorThings REST API gives, on its Datastream's topic, each once.
    rest: dict[int, tuple[int, Any]] = {}
    for stream in (await get_json(http, f"{hub.url}/sta/v1.1/Datastreams"))["value"]:
        page = await get_json(http, f"{hub.url}/sta/v1.1/Datastreams({stream['@iot.id']})/Observations?$top=10000")
        rest.update((o["@iot.id"], (stream["@iot.id"], o)) for o in page["value"])
    seen = {}
    for topic, observation in observations:
        stream_id, expected = rest[observation["@iot.id"]]
        assert topic == f"v1.1/Datastreams({stream_id})/Observations"
        assert observation == expected
        assert observation == await get_json(http, observation["@iot.selfLink"])
        seen[observation["@iot.id"]] = observation
    assert len(seen) == len(observations) == len(rest)
    # Nothing personal: no topic names a personal channel, no payload holds one of its values.
    everything = "\n".join(f"{topic} {json.dumps(payload, ensure_ascii=False)}" for topic, payload in messages).encode()
    text_marks = [m for m in value_marks(range(1, batches + 1)) if m.isascii()]  # the values as JSON spells them (not CBOR's binary64)
    for mark in [name.encode() for name in PERSONAL_NAMES] + text_marks:
        assert mark not in everything, mark


async def test_export_matches_the_hubs_senml_and_sensorthings_and_never_a_personal_channel(city_broker: Broker, reader: Reader, tmp_path: Path) -> None:
    async with run_hub(state_dir=tmp_path / "hub", admin_token="admin-secret", export=export_settings(city_broker)) as hub:
        async with aiohttp.ClientSession() as http:
            gateway = SimGateway(DEVICE)
            await enrol(http, hub.url, gateway, await hub.create_token())
            for seq in (1, 2, 3):
                await send(http, hub, with_personal(gateway, seq))
            messages = await reader.read(PER_BATCH * 3)
            await check_against_hub(http, hub, messages, batches=3)
            await reader.nothing_more()
            await until(lambda: exporter_of(hub).published == PER_BATCH * 3, "the exporter counts what the broker acknowledged")
            assert await hub.store.export_pending(limit=100) == []  # acknowledged rows leave the outbox
            async with http.get(f"{hub.url}/metrics") as resp:
                metrics = await resp.text()
            assert 'ocn_hub_export_messages_total{format="senml"} 9.0' in metrics
            assert 'ocn_hub_export_messages_total{format="sensorthings"} 90.0' in metrics
            assert "ocn_hub_export_broker_up 1.0" in metrics


async def test_a_broker_outage_delays_the_export_and_loses_nothing(
    city_broker: Broker, reader: Reader, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ocn.hub.export")
    async with run_hub(state_dir=tmp_path / "hub", admin_token="admin-secret", export=export_settings(city_broker, formats=("senml",))) as hub:
        exporter = exporter_of(hub)
        async with aiohttp.ClientSession() as http:
            gateway = SimGateway(DEVICE)
            await enrol(http, hub.url, gateway, await hub.create_token())
            await send(http, hub, with_personal(gateway, 1))
            await until(lambda: exporter.published == PUBLIC_CHANNELS, "the first batch is exported")
            city_broker.stop()  # the subscriber's session and what waits for it are saved
            for seq in (2, 3, 4):
                await send(http, hub, with_personal(gateway, seq))
            # While the broker is away the public chunks wait in the outbox (a personal chunk's row has nothing to publish and goes).
            await until(lambda: not exporter.connected.is_set(), "the exporter notices the broker is gone")
            pending = await hub.store.export_pending(limit=100)
            assert sum(row[1] is not None for row in pending) == 3 * PUBLIC_CHANNELS
            await city_broker.start()
            await until(lambda: exporter.published == 4 * PUBLIC_CHANNELS, "every batch is exported once the broker is back", timeout_s=40)
            # The exporter published each pack once (acknowledged once, out of the outbox once); the subscriber reads each.
            messages = await reader.read_distinct(4 * PUBLIC_CHANNELS)
            senml = [r for _, pack in messages for r in pack]
            assert resolved(senml) == resolved(await get_json(http, f"{hub.url}/data/readings.senml.json?device={DEVICE}"))
            assert len(resolved(senml)) == 4 * 30
            await asyncio.sleep(1.0)
            assert exporter.published == 4 * PUBLIC_CHANNELS and len(set(reader.lines)) == 4 * PUBLIC_CHANNELS  # nothing new came
    said = [r.getMessage() for r in caplog.records if r.name == "ocn.hub.export"]
    assert said.count("city broker unreachable; readings wait in the export outbox") == 1, said
    assert said.count("city broker reachable again; exporting the outbox") == 1, said


async def test_two_hub_processes_on_one_postgresql_export_each_reading_once(
    city_broker: Broker, reader: Reader, tmp_path: Path, postgres_url: tuple[str, str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both export; one holds the lease.  When it stops, the other takes over and exports what came since."""
    monkeypatch.setattr(export_module, "LEASE_RENEW_S", 0.2)
    url, dsn, schema = postgres_url
    # Two processes, two client ids: here both run in this one process, whose pid the default id is made of.
    settings, settings_b = export_settings(city_broker, client_id="export-a"), export_settings(city_broker, client_id="export-b")
    gateway = SimGateway(DEVICE)
    try:
        async with run_hub(db=url, state_dir=tmp_path / "hub-a", admin_token="admin-secret", export=settings) as a:
            await until(lambda: exporter_of(a).holding, "the first hub takes the lease")
            async with run_hub(db=url, state_dir=tmp_path / "hub-b", admin_token="admin-secret", export=settings_b) as b, aiohttp.ClientSession() as http:
                await enrol(http, a.url, gateway, await a.create_token())
                for seq in (1, 2, 3, 4):  # to both processes in turn
                    await send(http, a if seq % 2 else b, with_personal(gateway, seq))
                await until(lambda: exporter_of(a).published == 4 * PER_BATCH, "the lease holder exports every batch")
                assert exporter_of(b).published == 0 and not exporter_of(b).holding
                messages = await reader.read(4 * PER_BATCH)
                await check_against_hub(http, a, messages, batches=4)  # a exports: its links name its address
                await reader.nothing_more()
        # a stopped and gave the lease back: a process started now takes it at once and exports what it stores.
        async with run_hub(db=url, state_dir=tmp_path / "hub-b", admin_token="admin-secret", export=settings_b) as b, aiohttp.ClientSession() as http:
            for seq in (5, 6):
                await send(http, b, with_personal(gateway, seq))
            await until(lambda: exporter_of(b).published == 2 * PER_BATCH, "the next process takes the lease over and exports")
        messages = await reader.read(2 * PER_BATCH)
        minutes = {round(p[0]["bt"] * 1000 - T0) // 60_000 for t, p in messages if t.startswith("ocn/")}
        assert minutes == {5, 6}  # the batches of sequence 5 and 6 (tests.hub.gateways: seq minutes after T0), nothing again
        await reader.nothing_more()
    finally:
        await drop_schema(dsn, schema)


async def test_over_tls_the_broker_is_checked_against_the_ca_given(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ocn.hub.export")
    broker = city_broker_config(tmp_path / "tls-broker", tls=True)
    other = tmp_path / "other-ca"
    other.mkdir()
    write_certificates(other)  # a CA that did not sign the broker's certificate
    await broker.start()
    try:
        url = f"mqtts://{EXPORT_USER}@127.0.0.1:{broker.port}"
        password = str(broker.directory / "export.password")
        async with aiohttp.ClientSession() as http:
            async with run_hub(state_dir=tmp_path / "hub", admin_token="admin-secret",
                               export=ExportSettings(url, password_file=password, ca=str(other / "ca.pem"), formats=("senml",))) as hub:
                gateway = SimGateway(DEVICE)
                await enrol(http, hub.url, gateway, await hub.create_token())
                await send(http, hub, with_personal(gateway, 1))
                await until(lambda: any("unreachable" in r.getMessage() for r in caplog.records), "the unverified broker is refused")
                refused = next(r for r in caplog.records if "unreachable" in r.getMessage())
                assert "CERTIFICATE_VERIFY_FAILED" in refused.__dict__["error"]  # the log names the cause
                assert exporter_of(hub).published == 0 and not exporter_of(hub).connected.is_set()
                assert sum(row[1] is not None for row in await hub.store.export_pending(limit=100)) == PUBLIC_CHANNELS  # kept for later
            async with run_hub(state_dir=tmp_path / "hub", admin_token="admin-secret",
                               export=ExportSettings(url, password_file=password, ca=str(broker.directory / "ca.pem"), formats=("senml",))) as hub:
                await until(lambda: exporter_of(hub).published == PUBLIC_CHANNELS, "the batch stored while the broker was refused is exported")
                assert await hub.store.export_pending(limit=100) == []
    finally:
        broker.stop()


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"broker": "http://127.0.0.1:1883"}, "--export-broker 'http://127.0.0.1:1883'"),
        ({"broker": "mqtt://ocn:secret@127.0.0.1"}, "--export-broker: a password in the URL"),
        ({"broker": "mqtt://127.0.0.1", "password_file": "/etc/hostname"}, "--export-password-file '/etc/hostname': name the broker user"),
        ({"broker": "mqtt://ocn@127.0.0.1", "password_file": "/no/such/file"}, "--export-password-file '/no/such/file': no such file"),
        ({"broker": "mqtt://127.0.0.1", "ca": "/no/such/ca.pem"}, "--export-ca '/no/such/ca.pem'"),
        ({"broker": "mqtt://127.0.0.1", "topic": "ocn/+/{channel}"}, "--export-topic 'ocn/+/{channel}'"),
        ({"broker": "mqtt://127.0.0.1", "topic": "$SYS/{device}"}, "--export-topic '$SYS/{device}'"),
        ({"broker": "mqtt://127.0.0.1", "topic": "ocn/{site}/{channel}"}, "--export-topic 'ocn/{site}/{channel}'"),
        ({"broker": "mqtt://127.0.0.1", "public_url": "hub.example"}, "--export-public-url 'hub.example'"),
    ],
)
def test_export_options_refused_with_the_option_and_value_named(options: dict[str, str], named: str) -> None:
    broker = options.pop("broker")
    with pytest.raises(ValueError) as refused:
        ExportSettings(
            broker,
            password_file=options.get("password_file", ""),
            ca=options.get("ca", ""),
            topic=options.get("topic", "ocn/{device}/{channel}"),
            public_url=options.get("public_url", ""),
        )
    assert str(refused.value).startswith(named), str(refused.value)


def test_export_formats() -> None:
    assert parse_formats("senml") == ("senml",)
    assert parse_formats("sensorthings, senml") == ("sensorthings", "senml")
    for bad in ("", "csv", "senml,csv"):
        with pytest.raises(ValueError, match=f"^--export-formats {bad!r}: expected one or both of senml, sensorthings"):
            parse_formats(bad)


@pytest.mark.parametrize(
    ("arguments", "said"),
    [
        (["--export-broker", "mqtt://127.0.0.1", "--export-formats", "csv"],
         "ocn-edge hub: --export-formats 'csv': expected one or both of senml, sensorthings, comma-separated"),
        (["--export-ca", "/etc/ssl/ca.pem"], "ocn-edge hub: --export-ca '/etc/ssl/ca.pem': no --export-broker to use it with"),
    ],
)
def test_the_hub_command_says_what_is_wrong_with_its_export_options_and_exits(tmp_path: Path, arguments: list[str], said: str) -> None:
    done = subprocess.run([sys.executable, "-m", "edge.cli", "hub", "--state-dir", str(tmp_path), *arguments], capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stderr.strip()) == (2, said)


async def test_the_city_broker_killed_while_the_hub_ingests_over_mqtt_holds_the_export_in_the_outbox_and_loses_nothing(
    broker: Broker, city_broker: Broker, reader: Reader, tmp_path: Path
) -> None:
    """Two brokers, as a city may run them: the fleet's, through which gateways deliver, and the city platform's, to which the
    hub exports.  Only the city's dies (SIGKILL: nothing saved) and comes back; gateways keep delivering through the fleet's
    broker, the hub keeps storing and acking, and what it stores meanwhile waits in the outbox and is exported once."""
    # The subscriber's session on disk (a clean stop saves it), so it outlives the kill as a city's durable subscriber does.
    city_broker.stop()
    await city_broker.start()
    from tests.mqtt.test_oxp_over_mqtt import Gateway, granted  # the gateway of the MQTT end-to-end tests

    settings = export_settings(city_broker, formats=("senml",))
    async with run_hub(state_dir=tmp_path / "hub", admin_token="admin-secret", mqtt=broker.hub_settings(client_id="hub-a"), export=settings) as hub:
        assert hub.app is not None
        taker, exporter = hub.app[MQTT_INGEST], exporter_of(hub)
        await until(lambda: taker.connected.is_set() and taker.access is not None and taker.access.synced.is_set(), "the hub takes MQTT")
        gateway = Gateway(tmp_path / "gw", "pole-0042")
        await gateway.enrol(hub)
        assert taker is not None
        await granted(taker, "pole-0042")
        await gateway.open(hub.url, broker)
        try:
            gateway.put(2)
            await gateway.delivered()
            await until(lambda: exporter.published == 2, "the first batches are exported")  # one channel: a SenML pack a batch
            first = await reader.read_distinct(2)
            city_broker.kill()
            await until(lambda: not exporter.connected.is_set(), "the exporter notices the city's broker is gone")
            gateway.put(5)
            await gateway.delivered()  # ingest goes on: stored and acked through the fleet's broker
            assert (await hub.counters("pole-0042"))["batches_stored"] == 7
            pending = await hub.store.export_pending(limit=100)
            assert sum(row[1] is not None for row in pending) == 5 and exporter.published == 2
            await city_broker.start()
            await until(lambda: exporter.published == 7, "the outbox is exported once the city's broker is back", timeout_s=40)
            rest = await reader.read_distinct(5)
        finally:
            await gateway.close()
        async with aiohttp.ClientSession() as http:
            stored = await get_json(http, f"{hub.url}/data/readings.senml.json?device=pole-0042")
        exported = resolved([record for _, pack in first + rest for record in pack])
        assert exported == resolved(stored) and len(exported) == 7 * 20  # every stored reading, each once
        assert await hub.store.export_pending(limit=100) == []
        await reader.nothing_more()
        assert exporter.published == 7  # nothing exported twice

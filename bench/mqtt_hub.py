"""Hub ingest over MQTT: 1,000 simulated gateways sending 5-second batches of the reference station through a broker.

    .venv/bin/python -m bench.mqtt_hub [--gateways 1000] [--batches 8] [--connections 4]

A Mosquitto on loopback and a hub process (``ocn-edge hub --mqtt-broker``, SQLite unless --db)
as deployed; each gateway is enrolled with its own key, and its batches (17 readings each, one a channel: a
5-second window of the reference station, bench.codec) are sealed beforehand.  The gateways are
multiplexed over a few client connections (a bench user the broker lets publish anywhere, so the
hub's per-device broker access is left out with --mqtt-static-access); each gateway keeps one batch
in flight, as the uplink does, and sends its next the moment the ack for the last arrives, with 4
bytes of correlation data (the compact ack, OXP §8.6).  The hub does for each batch what it does
for a real gateway: takes it from its shared subscription, checks the topic against the key,
verifies, decodes, stores, acks.  Printed: batches/s acked, latency from publish to ack (p50/p99),
the hub process's CPU time per batch and the batches/s that CPU time allows on one core (the
clients and the broker share the machine's cores, so the observed rate is a floor).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import getpass
import logging
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import aiomqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bench.codec import Source, _channels_of, reference_station, windows
from bench.hub import cpu_seconds, drop_schema, ocn_edge, percentile, spawn_hub
from bench.mqtt_link import _free_port
from edge.protocol import BatchHeader, generate_keypair, key_id, raw_public_key, seal_batch
from edge.protocol.compact import read_compact_ack
from edge.protocol.types import Reading
from edge.transport.mqtt import correlation

_QUIET = logging.Logger("quiet")
_QUIET.disabled = True


class Gateway:
    """One simulated gateway: its id, key and sealed batches (boot epoch 1, seq 1…N), and the ack it waits for."""

    def __init__(self, index: int, groups: list[list[Reading]], source: Source) -> None:
        self.device_id = f"bench-{index:05d}"
        self.key: Ed25519PrivateKey = generate_keypair()
        self.batches: list[bytes] = []
        for seq, readings in enumerate(groups, start=1):
            header = BatchHeader(self.device_id, key_id(self.key), 1, seq, b"\x01" * 32, "zstd", readings[-1].ts_ms, {})
            self.batches.append(seal_batch(header, _channels_of(source, readings), readings, self.key))
        self.waiting: asyncio.Future[str] | None = None
        self.seq = 0


def _broker(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A Mosquitto on loopback that lets the bench's clients and the hub publish and subscribe anywhere."""
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosquitto).exists():
        raise SystemExit("needs mosquitto (apt-get install mosquitto)")
    port = _free_port()
    conf = directory / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 100000\nset_tcp_nodelay true\nuser {getpass.getuser()}\n")
    return subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), port


async def _hub(state: Path, db: str, port: int) -> tuple[asyncio.subprocess.Process, str]:
    (state / "hub.password").write_text("bench\n")
    return await spawn_hub(
        ocn_edge(), "hub", "--listen", "127.0.0.1:0", "--db", db, "--state-dir", str(state), "--admin-token", "bench",
        # No per-device limit (the bench measures capacity); the broker's access is the bench's (anonymous, on loopback).
        "--rate", "100000", "--burst", "1000000", "--log-level", "warning",
        "--mqtt-broker", f"mqtt://ocn-hub@127.0.0.1:{port}", "--mqtt-password-file", str(state / "hub.password"),
        "--mqtt-client-id", "bench-hub", "--mqtt-static-access",
    )  # fmt: skip


async def _enrol(url: str, token: str, gateways: list[Gateway]) -> None:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=32)) as http:

        async def one(gateway: Gateway) -> None:
            public = base64.urlsafe_b64encode(raw_public_key(gateway.key)).rstrip(b"=").decode()
            body = {"token": token, "device_id": gateway.device_id, "public_key": public, "software_version": "bench"}
            async with http.post(f"{url}/oxp/v1/enrol", json=body) as resp:
                assert resp.status == 201, await resp.text()

        await asyncio.gather(*(one(g) for g in gateways))


async def _connection(port: int, name: str, gateways: list[Gateway], latencies: list[float], ready: asyncio.Event, go: asyncio.Event) -> None:
    """One client connection carrying the batches of ``gateways``, each gateway one batch in flight."""
    by_id = {g.device_id: g for g in gateways}
    async with aiomqtt.Client("127.0.0.1", port, identifier=name, protocol=aiomqtt.ProtocolVersion.V5, logger=_QUIET, max_queued_outgoing_messages=0) as client:
        await client.subscribe([(f"oxp/v1/{g.device_id}/ack", 1) for g in gateways])

        async def answers() -> None:
            async for message in client.messages:
                gateway = by_id[message.topic.value.split("/")[2]]
                payload = message.payload if isinstance(message.payload, bytes) else b""
                ack = read_compact_ack(payload) if payload[:1] != b"{" else {"seq": -1, "status": payload.decode()}
                if gateway.waiting is not None and not gateway.waiting.done() and ack["seq"] == gateway.seq:
                    gateway.waiting.set_result(str(ack["status"]))

        async def send(gateway: Gateway) -> None:
            loop = asyncio.get_running_loop()
            for seq, data in enumerate(gateway.batches, start=1):
                gateway.seq, gateway.waiting = seq, loop.create_future()
                properties = Properties(PacketTypes.PUBLISH)
                properties.CorrelationData = correlation(data, compact=True)
                sent = time.perf_counter()
                await client.publish(f"oxp/v1/{gateway.device_id}/batch", data, qos=1, properties=properties)
                status = await asyncio.wait_for(gateway.waiting, 120)
                if status != "stored":
                    raise SystemExit(f"{gateway.device_id} seq {seq}: the hub answered {status}")
                latencies.append(time.perf_counter() - sent)

        reader = asyncio.create_task(answers())
        ready.set()
        await go.wait()
        try:
            await asyncio.gather(*(send(g) for g in gateways))
        finally:
            reader.cancel()


async def run(gateways: list[Gateway], connections: int, db: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        broker, port = _broker(state)
        proc: asyncio.subprocess.Process | None = None
        # A PostgreSQL database is used through a schema of this run's own, dropped after it (runs may follow each other).
        schema = f"bench_{secrets.token_hex(4)}" if db.startswith("postgresql") and "schema=" not in db else ""
        base, db = db, f"{db}{'&' if '?' in db else '?'}schema={schema}" if schema else db
        try:
            await asyncio.sleep(0.3)
            db = db or f"sqlite:///{state}/hub.db"
            token = subprocess.run(
                [ocn_edge(), "hub", "token", "create", "--db", db, "--state-dir", str(state), "--uses", str(len(gateways)), "--approve"],
                check=True, capture_output=True, text=True,
            ).stdout.strip()  # fmt: skip
            proc, url = await _hub(state, db, port)
            await _enrol(url, token, gateways)
            latencies: list[float] = []
            readies = [asyncio.Event() for _ in range(connections)]
            go = asyncio.Event()
            tasks = [asyncio.create_task(_connection(port, f"bench-{i}", gateways[i::connections], latencies, readies[i], go)) for i in range(connections)]
            await asyncio.gather(*(r.wait() for r in readies))
            await asyncio.sleep(1.0)  # the hub's first look at the store settles
            cpu0, client0, t0 = cpu_seconds(proc.pid), time.process_time(), time.perf_counter()
            go.set()
            await asyncio.gather(*tasks)
            elapsed = time.perf_counter() - t0
            cpu, client_cpu = cpu_seconds(proc.pid) - cpu0, time.process_time() - client0
        finally:
            if proc is not None:
                proc.terminate()
                await proc.wait()
            broker.terminate()
            broker.wait()
            if schema:
                await drop_schema(base, schema)
    batches = len(latencies)
    return {
        "batches": batches, "elapsed": elapsed, "batches_s": batches / elapsed, "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000, "hub_ms_per_batch": cpu / batches * 1000, "client_cpu_s": client_cpu,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=1000, help="simulated gateways (default 1000)")
    parser.add_argument("--batches", type=int, default=8, help="5-second batches each gateway sends (default 8)")
    parser.add_argument("--connections", type=int, default=4, help="client connections the gateways share (default 4)")
    parser.add_argument("--db", default="", help="the hub's database URL (default: SQLite in a temporary directory)")
    args = parser.parse_args()
    station = reference_station(max(1.0, args.batches * 5 / 3600 + 0.5))
    groups = windows(station, 5)
    t0 = time.perf_counter()
    gateways = [Gateway(i, [groups[(i * 7 + b) % len(groups)] for b in range(args.batches)], station) for i in range(args.gateways)]
    print(f"sealed {args.gateways * args.batches} batches of {args.gateways} gateways in {time.perf_counter() - t0:.1f} s "
          f"(~{sum(map(len, gateways[0].batches)) // args.batches} bytes, {len(groups[0])} readings each)")  # fmt: skip
    r = asyncio.run(run(gateways, args.connections, args.db))
    print(f"\n{'batches':>8} {'seconds':>8} {'batches/s':>10} {'p50 ms':>7} {'p99 ms':>7} {'hub CPU ms/batch':>17} {'batches/s a hub core allows':>28}")
    print(
        f"{r['batches']:>8.0f} {r['elapsed']:>8.1f} {r['batches_s']:>10,.0f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} "
        f"{r['hub_ms_per_batch']:>17.3f} {1000 / r['hub_ms_per_batch']:>28,.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

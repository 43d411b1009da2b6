"""Link bytes per reading, HTTP against MQTT, at batch spans of 5 s, 60 s and 5 minutes.

    .venv/bin/python -m bench.mqtt_link [--batches N] [--hours H] [--spans S ...]

The reference station's readings (bench.codec) are sealed into real OXP/2 batches at each span
and delivered by the gateway's own Uplink, once over HTTP to a hub on loopback and once over
MQTT through a Mosquitto (``/usr/sbin/mosquitto``, dynamic-security plugin) the same hub takes
them from.  Between the gateway and its hub, or its broker, sits a TCP relay that counts every
byte each way: what a metered link carries besides TLS, TCP and IP.  The connection's set-up
(HTTP: none besides TCP; MQTT: CONNECT, SUBSCRIBE and their answers) is counted apart from the
steady state, measured from the second batch on.  MQTT's keep-alive adds 4 bytes a minute
(PINGREQ and PINGRESP), not in the figures.  The hub runs as a process of its own, so the CPU
time of this process over the steady state of a second run of the same batches, straight to the
hub or broker, is the gateway's delivery (uplink, spool, transport, and the kernel's socket work
for them), from the first batch's ack (so connecting, TCP and MQTT's CONNECT and SUBSCRIBE, is left out on both
wires) until the uplink is closed (MQTT's DISCONNECT about 1 ms of CPU, HTTP's session close 0.5 ms, once a row); no
keep-alive (60 s) falls in it.  Latency from reading to hub storage, p50 and p99 over every reading: how long the
reading waits in its batch (from its time stamp to the end of its span, when the batcher seals
it) plus the batch's delivery measured in the direct run (from the uplink handing it to the
transport to the hub's ack, which the hub sends once the batch is stored).  Nothing passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import getpass
import glob
import logging
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import aiomqtt

from bench.codec import KEY, Source, _channels_of, _header, reference_station, windows
from bench.hub import ocn_edge, percentile, spawn_hub
from bench.oxp_state import CountingRelay
from edge.protocol import key_id, raw_public_key, seal_batch
from edge.spool import Spool
from edge.transport import Ack, Refused, Taken, Transport, open_transport
from edge.transport.contract import DesiredListener
from edge.uplink import Uplink

SPANS = (("5 s", 5), ("60 s", 60), ("5 min", 300))
DEVICE = "pole-0042"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Mosquitto:
    """A broker on loopback with the hub's user as its dynamic-security admin."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        plugins = glob.glob("/usr/lib/*/mosquitto_dynamic_security.so")
        ctrl = shutil.which("mosquitto_ctrl")
        if not plugins or ctrl is None:
            raise SystemExit("needs mosquitto with its dynamic-security plugin (apt-get install mosquitto)")
        subprocess.run([ctrl, "dynsec", "init", str(self.directory / "dynsec.json"), "ocn-hub", "bench"], check=True, capture_output=True)
        (self.directory / "hub.password").write_text("bench\n")
        conf = self.directory / "mosquitto.conf"
        conf.write_text(
            # set_tcp_nodelay: Mosquitto would hold an ack behind the PUBACK before it for the gateway's delayed TCP ack, ~40 ms.
            f"listener {self.port} 127.0.0.1\nallow_anonymous false\nuser {getpass.getuser()}\nset_tcp_nodelay true\n"
            f"plugin {plugins[0]}\nplugin_opt_config_file {self.directory / 'dynsec.json'}\n"
        )
        self.process = subprocess.Popen(
            [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait()


def _batches(source: Source, span_s: int, count: int, spool: Spool, waits: list[list[float]] | None = None) -> tuple[list[int], int]:
    """Seal ``count`` batches of ``span_s`` into ``spool``; (the size of each, readings).  ``waits`` gets, per batch, how long
    each of its readings waited for the end of its span (seconds)."""
    sizes: list[int] = []
    readings = 0
    span_ms = span_s * 1000
    for group in windows(source, span_s)[:count]:
        if waits is not None:
            sealed_ms = (group[0].ts_ms // span_ms + 1) * span_ms
            waits.append([(sealed_ms - r.ts_ms) / 1000 for r in group])
        seq = spool.allocate_seq()
        base = _header(seq, "zstd", group[-1].ts_ms)
        header = type(base)(base.device_id, key_id(KEY), spool.boot_epoch, seq, base.policy_digest, base.codec, base.created_ms, base.counters)
        data = seal_batch(header, _channels_of(source, group), group, KEY)
        spool.put(data, readings=len(group))
        sizes.append(len(data))
        readings += len(group)
    return sizes, readings


async def _deliver(uplink: Uplink, total: int) -> None:
    """Run the uplink until ``total`` batches are acked."""
    task = asyncio.create_task(uplink.run())
    while uplink.counters.batches_acked < total:
        await asyncio.sleep(0.2)  # seldom: this loop's CPU is not the gateway's
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await uplink.aclose()


async def _hub(state: Path, broker: Mosquitto | None) -> tuple[asyncio.subprocess.Process, str]:
    """A hub process of its own (so this process's CPU time is the gateway's), taking MQTT too when there is a broker."""
    options = (
        ["--mqtt-broker", f"mqtt://ocn-hub@127.0.0.1:{broker.port}", "--mqtt-password-file", str(state / "hub.password"), "--mqtt-client-id", "bench-hub"]
        if broker is not None
        else []
    )
    return await spawn_hub(
        ocn_edge(), "hub", "--listen", "127.0.0.1:0", "--db", f"sqlite:///{state}/hub.db", "--state-dir", str(state),
        "--admin-token", "bench", "--rate", "1000", "--log-level", "warning", *options,
    )


async def _granted(broker: Mosquitto, password: str) -> None:
    """Wait until the hub has given the device its broker access (hub.brokerauth)."""
    quiet = logging.Logger("quiet")
    quiet.disabled = True
    for _ in range(200):
        try:
            async with aiomqtt.Client(
                "127.0.0.1", broker.port, username=DEVICE, password=password, identifier=DEVICE, logger=quiet, protocol=aiomqtt.ProtocolVersion.V5
            ):
                return
        except aiomqtt.MqttError:
            await asyncio.sleep(0.05)
    raise SystemExit("the hub never gave the device its broker access")


async def measure(source: Source, span_s: int, count: int, *, mqtt: bool) -> dict[str, float]:
    """Per batch (steady state): bytes besides the batch gateway → hub, bytes hub → gateway; link bytes and gateway CPU per reading."""
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        broker = Mosquitto(state) if mqtt else None
        if broker is not None:
            broker.start()
            await asyncio.sleep(0.3)
        proc: asyncio.subprocess.Process | None = None
        try:
            token = subprocess.run(
                [ocn_edge(), "hub", "token", "create", "--db", f"sqlite:///{state}/hub.db", "--state-dir", str(state), "--uses", "1", "--approve"],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            proc, url = await _hub(state, broker)
            async with aiohttp.ClientSession() as http:
                body = {"token": token, "device_id": DEVICE, "public_key": base64.urlsafe_b64encode(raw_public_key(KEY)).rstrip(b"=").decode()}
                async with http.post(f"{url}/oxp/v1/enrol", json=body) as resp:
                    assert resp.status == 201, await resp.text()
                    password = (await resp.json()).get("broker_password", "")
            if broker is not None:
                await _granted(broker, password)
                (state / "broker.password").write_text(password)
                relay = CountingRelay("127.0.0.1", broker.port)
                transport = open_transport(url, broker=f"mqtt://127.0.0.1:{await relay.start()}", device_id=DEVICE, broker_password=state / "broker.password")
            else:
                host, port = url.removeprefix("http://").rsplit(":", 1)
                relay = CountingRelay(host, int(port))
                transport = open_transport(f"http://127.0.0.1:{await relay.start()}")
            spool = await Spool.open(state / "spool.db", max_bytes=1 << 30)
            await spool.begin_boot()
            sizes, readings = _batches(source, span_s, count, spool)
            batches = len(sizes)
            counted = _Timed(transport, relay)
            uplink = Uplink(spool=spool, transport=counted, private_key=KEY, device_id=DEVICE, status_interval_s=0)
            await _deliver(uplink, batches)
            assert counted.setup is not None
            setup_up, setup_down, _ = counted.setup
            await relay.close()
            # The same batches again (new sequence numbers), straight to the hub or broker: the CPU time without the relay's.
            direct = CountingRelay("127.0.0.1", 0)
            if broker is not None:
                transport = open_transport(url, broker=f"mqtt://127.0.0.1:{broker.port}", device_id=DEVICE, broker_password=state / "broker.password")
            else:
                transport = open_transport(url)
            waits: list[list[float]] = []
            _batches(source, span_s, count, spool, waits)
            timed = _Timed(transport, direct)
            delivery = timed.took
            uplink = Uplink(spool=spool, transport=timed, private_key=KEY, device_id=DEVICE, status_interval_s=0)
            await _deliver(uplink, batches)
            assert timed.setup is not None
            cpu = time.process_time() - timed.setup[2]
            await spool.close()
        finally:
            if proc is not None:
                proc.terminate()
                await proc.wait()
            if broker is not None:
                broker.stop()
    steady = batches - 1
    first_size, size = sizes[0], sum(sizes)
    # Each reading's wait in its batch plus its batch's delivery (the first batch's includes connecting: left out).
    latencies = sorted(wait + took for group, took in zip(waits[1:], delivery[1:], strict=False) for wait in group)
    steady_readings = readings * steady / batches
    return {
        "batch": (size - first_size) / steady,
        "up": (relay.up - setup_up - (size - first_size)) / steady,
        "down": (relay.down - setup_down) / steady,
        "per_reading": (relay.up - setup_up + relay.down - setup_down) / steady_readings,
        "readings": readings / batches,
        "setup": setup_up + setup_down - first_size,
        "cpu_per_1000": cpu / steady_readings * 1000 * 1000,
        "p50_s": percentile(latencies, 0.5),
        "p99_s": percentile(latencies, 0.99),
        "delivery_ms": percentile(delivery[1:], 0.5) * 1000,
    }


class _Timed:
    """A transport that notes how long each batch it sends takes to be acked, in order (the uplink sends one at a time), and
    the relay's counts and the process's CPU time the moment the first is acked (the set-up, and where measuring starts)."""

    def __init__(self, inner: Transport, relay: CountingRelay) -> None:
        self.inner = inner
        self.relay = relay
        self.took: list[float] = []
        self.setup: tuple[int, int, float] | None = None

    @property
    def hub(self) -> str:
        return self.inner.hub

    def listen(self, on_desired: DesiredListener) -> None:
        self.inner.listen(on_desired)

    async def send_batch(self, data: bytes) -> Ack | Refused:
        started = time.perf_counter()
        outcome = await self.inner.send_batch(data)
        if isinstance(outcome, Ack):
            self.took.append(time.perf_counter() - started)
            if self.setup is None:
                self.setup = (self.relay.up, self.relay.down, time.process_time())
        return outcome

    async def send_status(self, data: bytes) -> Taken | Refused:
        return await self.inner.send_status(data)

    async def publish_notice(self, data: bytes) -> Taken | Refused:
        return await self.inner.publish_notice(data)

    async def fetch_hub_key(self) -> bytes:
        return await self.inner.fetch_hub_key()

    async def aclose(self) -> None:
        await self.inner.aclose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30, help="batches per span and transport (default 30)")
    parser.add_argument("--hours", type=float, default=3.0, help="hours of the reference station to draw batches from (default 3)")
    parser.add_argument("--spans", type=int, nargs="+", choices=[s for _, s in SPANS], help="only these spans, in seconds (default all)")
    args = parser.parse_args()
    station = reference_station(args.hours)
    print(f"{station.name}; {args.batches} batches per row; bytes counted by a relay between gateway and hub or broker (no TLS, TCP or IP)\n")
    # set-up: the bytes until the first ack, besides its batch (MQTT: CONNECT, SUBSCRIBE, their answers and the first exchange)
    head = (
        f"{'span':6} {'wire':5} {'rd/batch':>8} {'batch B':>8} {'framing up B':>13} {'down B':>7} {'link B/reading':>15} {'set-up B':>9} {'CPU ms/1k rd':>13}"
        f" {'delivery ms':>12} {'latency p50 s':>14} {'p99 s':>6}"
    )
    print(head)
    print("-" * len(head))
    for label, span in SPANS:
        if args.spans and span not in args.spans:
            continue
        for wire in ("HTTP", "MQTT"):
            f = asyncio.run(measure(station, span, args.batches, mqtt=wire == "MQTT"))
            row = f"{f['readings']:>8.0f} {f['batch']:>8.0f} {f['up']:>13.0f} {f['down']:>7.0f} {f['per_reading']:>15.2f} {f['setup']:>9.0f}"
            row += f" {f['cpu_per_1000']:>13.1f} {f['delivery_ms']:>12.1f} {f['p50_s']:>14.1f} {f['p99_s']:>6.1f}"
            print(f"{label:6} {wire:5} {row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Link bytes per reading, HTTP against MQTT, at batch spans of 5 s, 60 s and 5 minutes.

    .venv/bin/python -m bench.mqtt_link [--batches N] [--hours H]

The reference station's readings (bench.codec) are sealed into real OXP/2 batches at each span
and delivered by the gateway's own Uplink, once over HTTP to a hub on loopback and once over
MQTT through a Mosquitto (``/usr/sbin/mosquitto``, dynamic-security plugin) the same hub takes
them from.  Between the gateway and its hub, or its broker, sits a TCP relay that counts every
byte each way: what a metered link carries besides TLS, TCP and IP.  The connection's set-up
(HTTP: none besides TCP; MQTT: CONNECT, SUBSCRIBE and their answers) is counted apart from the
steady state, measured from the second batch on.  MQTT's keep-alive adds 4 bytes a minute
(PINGREQ and PINGRESP), not in the figures.  Nothing passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import getpass
import glob
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp

from bench.codec import KEY, Source, _channels_of, _header, reference_station, windows
from bench.oxp_state import CountingRelay
from edge.protocol import key_id, raw_public_key, seal_batch
from edge.spool import Spool
from edge.transport import open_transport
from edge.uplink import Uplink
from hub.app import run_hub
from hub.brokerauth import device_password
from hub.mqtt import MQTT_INGEST, MqttSettings

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
            f"listener {self.port} 127.0.0.1\nallow_anonymous false\nuser {getpass.getuser()}\n"
            f"plugin {plugins[0]}\nplugin_opt_config_file {self.directory / 'dynsec.json'}\n"
        )
        self.process = subprocess.Popen(
            [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait()


def _batches(source: Source, span_s: int, count: int, spool: Spool) -> tuple[list[int], int]:
    """Seal ``count`` batches of ``span_s`` into ``spool``; (the size of each, readings)."""
    sizes: list[int] = []
    readings = 0
    for group in windows(source, span_s)[:count]:
        seq = spool.allocate_seq()
        base = _header(seq, "zstd", group[-1].ts_ms)
        header = type(base)(base.device_id, key_id(KEY), spool.boot_epoch, seq, base.policy_digest, base.codec, base.created_ms, base.counters)
        data = seal_batch(header, _channels_of(source, group), group, KEY)
        spool.put(data, readings=len(group))
        sizes.append(len(data))
        readings += len(group)
    return sizes, readings


async def _deliver(uplink: Uplink, total: int, relay: CountingRelay) -> tuple[int, int]:
    """Run the uplink until ``total`` batches are acked; the relay's counts once the first was (the set-up)."""
    task = asyncio.create_task(uplink.run())
    setup: tuple[int, int] | None = None
    while uplink.counters.batches_acked < total:
        if setup is None and uplink.counters.batches_acked >= 1:
            setup = (relay.up, relay.down)
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await uplink.aclose()
    return setup or (relay.up, relay.down)


async def measure(source: Source, span_s: int, count: int, *, mqtt: bool) -> dict[str, float]:
    """Per batch (steady state): bytes besides the batch gateway → hub, bytes hub → gateway; link bytes per reading; set-up bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        broker = Mosquitto(state) if mqtt else None
        if broker is not None:
            broker.start()
            await asyncio.sleep(0.3)
        settings = MqttSettings(f"mqtt://ocn-hub@127.0.0.1:{broker.port}", client_id="bench-hub", password_file=str(state / "hub.password")) if broker else None
        try:
            async with run_hub(state_dir=state / "hub", mqtt=settings) as hub:
                token = await hub.create_token()
                async with aiohttp.ClientSession() as http:
                    body = {"token": token, "device_id": DEVICE, "public_key": base64.urlsafe_b64encode(raw_public_key(KEY)).rstrip(b"=").decode()}
                    async with http.post(f"{hub.url}/oxp/v1/enrol", json=body) as resp:
                        assert resp.status == 201, await resp.text()
                if broker is not None:
                    assert hub.app is not None
                    access = hub.app[MQTT_INGEST].access
                    assert access is not None
                    while DEVICE not in access.granted:
                        await asyncio.sleep(0.05)
                    (state / "broker.password").write_text(device_password(hub.hub.signing_key, key_id(KEY.public_key())))
                    relay = CountingRelay("127.0.0.1", broker.port)
                    transport = open_transport(
                        hub.url, broker=f"mqtt://127.0.0.1:{await relay.start()}", device_id=DEVICE, broker_password=state / "broker.password"
                    )
                else:
                    host, port = hub.url.removeprefix("http://").rsplit(":", 1)
                    relay = CountingRelay(host, int(port))
                    transport = open_transport(f"http://127.0.0.1:{await relay.start()}")
                spool = await Spool.open(state / "spool.db", max_bytes=1 << 30)
                await spool.begin_boot()
                sizes, readings = _batches(source, span_s, count, spool)
                batches = len(sizes)
                uplink = Uplink(spool=spool, transport=transport, private_key=KEY, device_id=DEVICE, status_interval_s=0, idle_poll_s=0.01)
                setup_up, setup_down = await _deliver(uplink, batches, relay)
                await relay.close()
                await spool.close()
        finally:
            if broker is not None:
                broker.stop()
    steady = batches - 1
    first_size, size = sizes[0], sum(sizes)
    up_besides = (relay.up - setup_up - (size - first_size)) / steady
    down = (relay.down - setup_down) / steady
    return {
        "batch": (size - first_size) / steady,
        "up": up_besides,
        "down": down,
        "per_reading": (relay.up - setup_up + relay.down - setup_down) / (readings * steady / batches),
        "readings": readings / batches,
        "setup": setup_up + setup_down - first_size,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30, help="batches per span and transport (default 30)")
    parser.add_argument("--hours", type=float, default=3.0, help="hours of the reference station to draw batches from (default 3)")
    args = parser.parse_args()
    station = reference_station(args.hours)
    print(f"{station.name}; {args.batches} batches per row; bytes counted by a relay between gateway and hub or broker (no TLS, TCP or IP)\n")
    # set-up: the bytes until the first ack, besides its batch (MQTT: CONNECT, SUBSCRIBE, their answers and the first exchange)
    head = f"{'span':6} {'wire':5} {'rd/batch':>8} {'batch B':>8} {'framing up B':>13} {'down B':>7} {'link B/reading':>15} {'set-up B':>9}"
    print(head)
    print("-" * len(head))
    for label, span in SPANS:
        for wire in ("HTTP", "MQTT"):
            f = asyncio.run(measure(station, span, args.batches, mqtt=wire == "MQTT"))
            row = f"{f['readings']:>8.0f} {f['batch']:>8.0f} {f['up']:>13.0f} {f['down']:>7.0f} {f['per_reading']:>15.2f} {f['setup']:>9.0f}"
            print(f"{label:6} {wire:5} {row}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

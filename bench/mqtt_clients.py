"""MQTT client libraries side by side: memory and CPU of aiomqtt and of paho-mqtt 2.x, publishing OXP-sized messages at QoS 1.

    .venv/bin/python -m bench.mqtt_clients [--messages N] [--size BYTES]

A Mosquitto (``/usr/sbin/mosquitto``) is started on a free 127.0.0.1 port; each client runs in a
fresh interpreter, connects with MQTT 5, and publishes N messages one at a time, each waiting for
its PUBACK (the uplink keeps one batch in flight).  Printed per client: the resident memory its
import and connection add to a bare interpreter, and the process CPU time per 1,000 messages.
paho-mqtt runs with its own network thread (``loop_start``), as a program without asyncio would
use it; aiomqtt drives paho from the asyncio loop.  Nothing passes or fails on time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = r"""
import asyncio, json, logging, os, sys, time  # asyncio and logging: the gateway has them loaded already

def rss_kib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024

kind, port, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
base = rss_kib()
payload = os.urandom(size)
if kind == "paho":
    import paho.mqtt.client as mqtt
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-paho", protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", port)
    client.loop_start()
    loaded = rss_kib()
    cpu = time.process_time()
    for _ in range(count):
        client.publish("oxp/v1/bench/batch", payload, qos=1).wait_for_publish(10)
    cpu = time.process_time() - cpu
    peak = rss_kib()
    client.loop_stop()
    client.disconnect()
else:
    import aiomqtt

    async def run():
        quiet = logging.Logger("quiet")
        quiet.disabled = True
        async with aiomqtt.Client("127.0.0.1", port, identifier="bench-aiomqtt", protocol=aiomqtt.ProtocolVersion.V5, logger=quiet) as client:
            loaded = rss_kib()
            cpu = time.process_time()
            for _ in range(count):
                await client.publish("oxp/v1/bench/batch", payload, qos=1)
            return loaded, time.process_time() - cpu, rss_kib()

    loaded, cpu, peak = asyncio.run(run())
print(json.dumps({"base": base, "loaded": loaded, "peak": peak, "cpu": cpu}))
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=5000, help="messages each client publishes (default 5000)")
    parser.add_argument("--size", type=int, default=640, help="payload bytes, a 5-minute batch of the reference station (default 640)")
    args = parser.parse_args()
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(mosquitto).exists():
        print("needs mosquitto (apt-get install mosquitto)", file=sys.stderr)
        return 2
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        broker = subprocess.Popen([mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.3)
            print(f"{args.messages} QoS 1 publishes of {args.size} bytes, one in flight, to Mosquitto on loopback")
            print(f"{'client':<10} {'import+connect RSS':>20} {'peak RSS':>10} {'CPU per 1,000':>14}  (RSS beyond an interpreter with asyncio loaded)")
            for kind in ("aiomqtt", "paho"):
                out = subprocess.run(
                    [sys.executable, "-c", _CHILD, kind, str(port), str(args.messages), str(args.size)], capture_output=True, text=True, check=True
                ).stdout
                figures = json.loads(out)
                label = "aiomqtt" if kind == "aiomqtt" else "paho-mqtt"
                print(
                    f"{label:<10} {(figures['loaded'] - figures['base']) / 1024:>17.1f} MiB {(figures['peak']) / 1024:>6.1f} MiB "
                    f"{figures['cpu'] / args.messages * 1000 * 1000:>11.0f} ms"
                )
        finally:
            broker.terminate()
            broker.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())

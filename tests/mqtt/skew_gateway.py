"""A gateway for the version-skew test (tests/mqtt/test_version_skew.py), run as a process of its own against whichever
source tree comes first on its PYTHONPATH: this tree's, or an older commit's.  It uses only what both have: enrol, seal
batches into a spool, deliver them with the uplink over HTTP or MQTT, and print what was acked as one JSON line.

    python tests/mqtt/skew_gateway.py HUB_URL TOKEN DEVICE_ID DIRECTORY BATCHES [BROKER_URL]
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from edge.enrol import enrol
from edge.protocol import BatchHeader, key_id, load_private_key, seal_batch
from edge.protocol.types import Channel, Reading
from edge.spool import Spool
from edge.transport import open_transport
from edge.uplink import Uplink

CHANNEL = Channel("meter-1/voltage", unit="V", resolution=0.1)
READINGS = 20
DEADLINE_S = 60.0


async def deliver(hub_url: str, token: str, device_id: str, directory: Path, batches: int, broker: str) -> dict[str, object]:
    directory.mkdir(parents=True, exist_ok=True)
    enrolment = await enrol(hub_url=hub_url, token=token, device_id=device_id, key_path=directory / "device.key")
    key = load_private_key(enrolment.key_path)
    spool = await Spool.open(directory / "spool.db", max_bytes=50_000_000)
    await spool.begin_boot()
    for n in range(batches):
        start_ms = 1_790_000_000_000 + n * 100_000
        readings = tuple(Reading(CHANNEL.id, start_ms + i * 1000, 230.0 + (i % 7) / 10) for i in range(READINGS))
        header = BatchHeader(device_id=device_id, key_id=key_id(key.public_key()), boot_epoch=spool.boot_epoch, seq=spool.allocate_seq(),
                             policy_digest=b"\x01" * 32, codec="zstd", created_ms=start_ms, counters=spool.counters())
        spool.put(seal_batch(header, (CHANNEL,), readings, key), readings=READINGS)
    transport = open_transport(hub_url, broker=broker, device_id=device_id, broker_password=directory / "broker.password" if broker else None,
                               timeout_s=3.0)
    uplink = Uplink(spool=spool, transport=transport, private_key=key, device_id=device_id, status_interval_s=0, backoff_initial_s=0.05,
                    backoff_max_s=0.5, idle_poll_s=0.05)
    task = asyncio.create_task(uplink.run())
    try:
        async with asyncio.timeout(DEADLINE_S):
            while spool.stats()["batches"]:
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await uplink.aclose()
        await spool.close()
    import edge

    return {"device_id": device_id, "acked": uplink.counters.batches_acked, "source": str(Path(edge.__file__).resolve().parents[1])}


def main(argv: list[str]) -> int:
    hub_url, token, device_id, directory, batches = argv[:5]
    print(json.dumps(asyncio.run(deliver(hub_url, token, device_id, Path(directory), int(batches), argv[5] if len(argv) > 5 else ""))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

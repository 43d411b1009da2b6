"""Delivery needs only the transport contract: an in-memory transport (no HTTP) gets the same order, retries and quarantine."""

from __future__ import annotations

import asyncio

from edge.protocol import open_status, peek_header
from edge.spool import Spool
from edge.transport import Ack, DesiredListener, DesiredOffer, Refused, Taken
from edge.uplink import Uplink
from tests.pipeline.conftest import seal_readings


class MemoryTransport:
    """A transport that answers from a script: "ack", "busy" (retry later) or "reject" (final), then acks."""

    hub = "memory://hub"

    def __init__(self, script: list[str] | None = None) -> None:
        self.script = list(script or [])
        self.acked: list[int] = []
        self.statuses: list[bytes] = []
        self.on_desired: DesiredListener | None = None

    def listen(self, on_desired: DesiredListener) -> None:
        self.on_desired = on_desired

    async def send_batch(self, data: bytes) -> Ack | Refused:
        step = self.script.pop(0) if self.script else "ack"
        if step == "busy":
            return Refused(False, "busy", "hub busy", retry_after=0.01)
        if step == "reject":
            return Refused(True, "malformed", "payload is not an OXP batch")
        header = peek_header(data)
        self.acked.append(header.seq)
        return Ack(header.device_id, bytes(header.key_id), header.boot_epoch, header.seq, duplicate=False)

    async def send_status(self, data: bytes) -> Taken | Refused:
        self.statuses.append(data)
        return Taken()

    async def publish_notice(self, data: bytes) -> Taken | Refused:
        return Taken()

    async def fetch_hub_key(self) -> bytes:
        return b""

    async def aclose(self) -> None:
        pass


def make_uplink(spool: Spool, device_key, transport: MemoryTransport, **options) -> Uplink:
    return Uplink(spool=spool, transport=transport, private_key=device_key, device_id="pole-0042", status_interval_s=0,
                  backoff_initial_s=0.01, backoff_max_s=0.05, idle_poll_s=0.05, **options)


async def deliver(uplink: Uplink, spool: Spool) -> None:
    task = asyncio.create_task(uplink.run())
    try:
        async with asyncio.timeout(10):
            while spool.stats()["batches"]:
                await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await uplink.aclose()


async def test_another_transport_gets_the_backlog_oldest_first_with_retries_and_quarantine(spool, device_key):
    stored = [spool.put(seal_readings(device_key, spool, 5), readings=5) for _ in range(4)]
    transport = MemoryTransport(["busy", "ack", "reject"])
    uplink = make_uplink(spool, device_key, transport)
    await deliver(uplink, spool)
    assert transport.acked == [stored[0].id.seq, stored[2].id.seq, stored[3].id.seq]
    [(kept, reason, _)] = spool.quarantined()
    assert (kept.data, reason) == (stored[1].data, "malformed")
    assert (uplink.counters.retries, uplink.counters.batches_acked, uplink.counters.batches_quarantined) == (1, 3, 1)


async def test_a_pushed_desired_document_reaches_the_applier_once_per_etag(spool, device_key):
    offers: list[tuple[object, str]] = []
    transport = MemoryTransport()
    make_uplink(spool, device_key, transport, on_desired=lambda signed, etag: offers.append((signed, etag)))
    assert transport.on_desired is not None
    for etag in ("e1", "e1", "e2"):
        transport.on_desired(DesiredOffer({"document": etag}, etag))
    assert offers == [({"document": "e1"}, "e1"), ({"document": "e2"}, "e2")]


async def test_a_status_report_goes_out_sealed_through_the_transport(spool, device_key):
    transport = MemoryTransport()
    uplink = make_uplink(spool, device_key, transport)
    assert await uplink.send_status()
    [data] = transport.statuses
    report = open_status(data, device_key.public_key())
    assert (report["device_id"], report["boot_epoch"], report["report_seq"]) == ("pole-0042", spool.boot_epoch, 0)

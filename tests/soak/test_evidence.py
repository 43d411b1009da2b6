"""Reading a finished soak back: a batch the hub stored and the spool still holds is counted once, as stored."""

from __future__ import annotations

from pathlib import Path

from bench.soak.evidence import hub_batch_ids, library_words, log_lines_near, spool_leftovers
from edge.protocol import BatchHeader, generate_keypair, key_id, open_batch, seal_batch
from edge.protocol.types import Channel, Reading
from edge.spool import Spool
from hub.database import open_store
from hub.models import IncomingBatch

T0 = 1_790_000_000_000
VOLTS = Channel("m-1/volts", unit="V", resolution=0.1)
GATEWAY = "soak-gw"


async def test_a_batch_the_hub_stored_before_the_stop_cut_its_ack_is_not_counted_again_as_waiting(tmp_path: Path) -> None:
    key = generate_keypair()
    spool = await Spool.open(tmp_path / "spool.db", max_bytes=1_000_000)
    boot = await spool.begin_boot()
    sealed = []
    for n in range(3):
        readings = [Reading(VOLTS.id, T0 + n * 10_000 + i * 1000, 230.0 + n + i / 10, "V") for i in range(5)]
        header = BatchHeader(device_id=GATEWAY, key_id=key_id(key), boot_epoch=boot.boot_epoch, seq=spool.allocate_seq(),
                             policy_digest=b"\x01" * 32, codec="zstd", created_ms=readings[0].ts_ms, counters=spool.counters())
        data = seal_batch(header, (VOLTS,), readings, key)
        spool.put(data, readings=len(readings))
        sealed.append(data)
    await spool.mark_clean_shutdown()
    await spool.close()

    # The hub stored the second batch (its POST finished after the gateway stopped waiting), and a batch of another device
    # with the same epoch and seq as the third: only this gateway's own identities count.
    store = await open_store(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        for data, device in ((sealed[1], GATEWAY), (sealed[2], "another-gw")):
            batch = open_batch(data, key.public_key())
            h = batch.header
            assert await store.store_batch(IncomingBatch(
                device_id=device, key_id=h.key_id if device == GATEWAY else b"\x07" * 8, boot_epoch=h.boot_epoch, seq=h.seq,
                created_ms=h.created_ms, received_ms=T0 + 60_000, policy_digest=h.policy_digest, codec=h.codec, counters=h.counters,
                channels=batch.channels, readings=batch.readings, size=len(data))) == "stored"
    finally:
        await store.close()

    delivered = hub_batch_ids(tmp_path / "hub.db", GATEWAY)
    assert delivered == {(key_id(key), boot.boot_epoch, open_batch(sealed[1], key.public_key()).header.seq)}
    waiting, already, counters = await spool_leftovers(tmp_path / "spool.db", 1_000_000, key.public_key(), delivered)
    assert already == 1
    assert [v for _, v in waiting[VOLTS.id]] == [230.0, 230.1, 230.2, 230.3, 230.4, 232.0, 232.1, 232.2, 232.3, 232.4]
    assert counters["unclean_stops"] == 0


def test_beside_an_unexplained_reading_are_the_gateways_log_lines_nearest_its_time_in_the_order_logged(tmp_path: Path) -> None:
    (tmp_path / "gateway-1.log").write_text(
        "ts=2026-12-07T18:09:10.000Z level=info logger=ocn.runtime msg=\"gateway started\"\n"
        "ts=2026-12-07T18:09:14.000Z level=debug logger=ocn.bus msg=\"unit 1 on rs485-1 (meter-1) failed again (no reply within 0.5 s)\"\n"
        "a line without a time, e.g. a traceback's\n"
        "ts=2026-12-07T18:09:14.000Z level=info logger=ocn.uplink msg=\"hub answers again\"\n")
    (tmp_path / "gateway-2.log").write_text("ts=2026-12-07T18:09:13.500Z level=warning logger=ocn.runtime msg=\"device restarted\"\n"
                                            "ts=2026-12-07T18:09:30.000Z level=info logger=ocn.runtime msg=\"later\"\n")
    t = 1_796_666_954_576  # 2026-12-07T18:09:14.576Z
    near = log_lines_near(tmp_path, [t, t + 60_000], within_ms=3000, limit=2)
    assert near[t] == ['gateway-1.log: ts=2026-12-07T18:09:14.000Z level=debug logger=ocn.bus msg="unit 1 on rs485-1 (meter-1) failed again '
                       '(no reply within 0.5 s)"', 'gateway-1.log: ts=2026-12-07T18:09:14.000Z level=info logger=ocn.uplink msg="hub answers again"']
    assert near[t + 60_000] == []
    assert len(log_lines_near(tmp_path, [t], within_ms=3000)[t]) == 3  # 18:09:10.000 is 4.6 s away


def test_a_librarys_words_in_the_gateways_log_are_found_and_ours_are_not(tmp_path: Path) -> None:
    ours = ('ts=2026-12-07T20:56:44.471Z level=warning logger=ocn.uplink msg="hub unreachable; batches wait in the spool" '
            'error="cannot connect to the hub at 127.0.0.1:38421: connection refused (nothing listens there: is it running?)"')
    theirs = [  # as the soak at e9ed3a8 logged them, and what else a library says
        'ts=2026-12-07T20:56:44.471Z level=warning logger=ocn.uplink msg="hub unreachable; batches wait in the spool" '
        'error="ClientOSError: [Errno None] Can not write request body for http://127.0.0.1:38421/oxp/v1/batches"',
        'ts=2026-12-07T21:03:46.142Z level=warning logger=ocn.uplink msg="hub unreachable" error="ClientConnectorError: Cannot connect"',
        'ts=2026-12-07T21:03:47.000Z level=error logger=ocn.bus msg="port lost ([Errno 5] Input/output error)"',
        'ts=2026-12-07T21:03:48.000Z level=warning logger=ocn.uplink msg="broker: MqttCodeError: [code:135] Not authorized"',
        # and their sentences without the class name
        'ts=2026-12-07T21:03:49.000Z level=warning logger=ocn.uplink msg="hub unreachable" error="Cannot connect to host 10.0.0.1:443"',
        'ts=2026-12-07T21:03:50.000Z level=warning logger=ocn.uplink msg="broker unreachable" error="[code:134] Bad user name or password"',
        'ts=2026-12-07T21:03:51.000Z level=error logger=ocn.bus msg="bus not open: Modbus Error: [Connection] Not connected"',
        'ts=2026-12-07T21:03:52.000Z level=warning logger=ocn.uplink msg="broker unreachable" error="[Errno -2] Name or service not known"',
        'ts=2026-12-07T21:03:53.000Z level=warning logger=ocn.uplink msg="broker unreachable" error="[SSL: CERTIFICATE_VERIFY_FAILED] x"',
    ]
    (tmp_path / "gateway-1.log").write_text("\n".join([ours, *theirs]) + "\n")
    assert library_words(tmp_path) == [f"gateway-1.log: {line}" for line in theirs]

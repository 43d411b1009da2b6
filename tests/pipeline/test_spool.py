"""The spool keeps sealed batches durably, oldest first, until an ack names them, within its quota."""

from __future__ import annotations

import logging

import pytest

from edge.spool import ACK_GROUP, Spool, SpoolError, StoredBatch
from tests.pipeline.conftest import seal_readings


def put(spool: Spool, data: bytes, *, readings: int) -> StoredBatch:
    """``spool.put`` where the spool has room: the batch it stored."""
    stored = spool.put(data, readings=readings)
    assert stored is not None, "the spool refused the batch"
    return stored


async def test_a_stored_batch_is_there_after_reopening_without_a_clean_shutdown(tmp_path, device_key):
    spool = await Spool.open(tmp_path / "spool.db", max_bytes=1_000_000)
    await spool.begin_boot()
    data = seal_readings(device_key, spool, 10)
    spool.put(data, readings=10)
    await spool.close()

    reopened = await Spool.open(tmp_path / "spool.db", max_bytes=1_000_000)
    [batch] = reopened.oldest(5)
    assert batch.data == data
    assert batch.readings == 10
    assert reopened.check() == []


async def test_batches_come_out_oldest_first(spool, device_key):
    sent = [seal_readings(device_key, spool, 3) for _ in range(4)]
    for data in sent:
        spool.put(data, readings=3)
    assert [b.data for b in spool.oldest(10)] == sent
    assert [b.id.seq for b in spool.oldest(10)] == [0, 1, 2, 3]


async def test_ack_forgets_only_the_named_batch(spool, device_key):
    first = spool.put(seal_readings(device_key, spool, 2), readings=2)
    second = spool.put(seal_readings(device_key, spool, 2), readings=2)
    assert spool.ack(first) is True
    assert [b.row for b in spool.oldest(10)] == [second.row]
    assert spool.ack(first) is False
    assert spool.stats()["batches"] == 1


async def test_a_new_boot_epoch_starts_each_run_and_sequence_numbers_restart(tmp_path, device_key):
    spool = await Spool.open(tmp_path / "spool.db", max_bytes=1_000_000)
    assert (await spool.begin_boot()).boot_epoch == 1
    assert [spool.allocate_seq() for _ in range(3)] == [0, 1, 2]
    await spool.mark_clean_shutdown()
    await spool.close()
    spool = await Spool.open(tmp_path / "spool.db", max_bytes=1_000_000)
    boot = await spool.begin_boot()
    assert (boot.boot_epoch, boot.unclean_stop, boot.unclean_stops_total) == (2, False, 0)
    assert spool.allocate_seq() == 0


async def test_a_run_that_never_marked_a_clean_shutdown_counts_as_an_unclean_stop(tmp_path):
    for _ in range(2):
        spool = await Spool.open(tmp_path / "spool.db", max_bytes=1_000_000)
        await spool.begin_boot()
        await spool.close()
    spool = await Spool.open(tmp_path / "spool.db", max_bytes=1_000_000)
    boot = await spool.begin_boot()
    assert (boot.boot_epoch, boot.unclean_stop, boot.unclean_stops_total) == (3, True, 2)
    assert spool.counters()["unclean_stops"] == 2


async def test_drop_oldest_makes_room_and_counts_the_dropped_readings_persistently(tmp_path, device_key):
    spool = await Spool.open(tmp_path / "spool.db", max_bytes=1_000_000)
    await spool.begin_boot()
    batches = [seal_readings(device_key, spool, 50 + i) for i in range(5)]
    spool.max_bytes = sum(len(b) for b in batches[2:])  # room for exactly the newest three
    for i, data in enumerate(batches):
        spool.put(data, readings=50 + i)
    kept = [b.data for b in spool.oldest(10)]
    assert kept == batches[2:]
    assert spool.stats()["bytes"] <= spool.max_bytes
    await spool.close()
    reopened = await Spool.open(tmp_path / "spool.db", max_bytes=1_000_000)
    assert reopened.counters()["batches_dropped"] == 2
    assert reopened.counters()["readings_dropped"] == 50 + 51


async def test_refuse_newest_keeps_the_old_batches_and_counts_the_refused_one(tmp_path, device_key):
    spool = await Spool.open(tmp_path / "spool.db", max_bytes=1_000_000, when_full="refuse_newest")
    await spool.begin_boot()
    first, second = seal_readings(device_key, spool, 40), seal_readings(device_key, spool, 41)
    spool.max_bytes = len(first) + len(second) // 2
    assert spool.put(first, readings=40) is not None
    assert spool.put(second, readings=41) is None
    assert [b.data for b in spool.oldest(10)] == [first]
    assert spool.counters()["readings_dropped"] == 41


async def test_drop_oldest_spares_the_batch_being_sent(tmp_path, device_key):
    spool = await Spool.open(tmp_path / "spool.db", max_bytes=1_000_000)
    await spool.begin_boot()
    batches = [seal_readings(device_key, spool, 30) for _ in range(3)]
    spool.put(batches[0], readings=30)
    spool.put(batches[1], readings=30)
    in_flight = spool.lease_oldest()
    assert in_flight is not None
    spool.max_bytes = len(batches[0]) + len(batches[2]) + 10
    spool.put(batches[2], readings=30)
    assert [b.data for b in spool.oldest(10)] == [in_flight.data, batches[2]]


async def test_a_quarantined_batch_leaves_the_queue_is_kept_and_counted(spool, device_key):
    batch = spool.put(seal_readings(device_key, spool, 7), readings=7)
    spool.quarantine(batch, reason="malformed", detail="payload is not OXP/1")
    assert spool.oldest(10) == []
    [(kept, reason, detail)] = spool.quarantined()
    assert (kept.data, reason, detail) == (batch.data, "malformed", "payload is not OXP/1")
    stats = spool.stats()
    assert (stats["batches_quarantined"], stats["readings_quarantined"], stats["quarantine_batches"]) == (1, 7, 1)


async def test_stats_report_the_backlog_and_the_age_of_the_oldest_batch(tmp_path, device_key):
    now = [1_790_000_100_000]
    spool = await Spool.open(tmp_path / "spool.db", max_bytes=1_000_000, clock_ms=lambda: now[0])
    await spool.begin_boot()
    data = seal_readings(device_key, spool, 12, start_ms=1_790_000_000_000)
    spool.put(data, readings=12)
    stats = spool.stats()
    assert (stats["batches"], stats["bytes"], stats["readings"]) == (1, len(data), 12)
    assert stats["oldest_age_s"] == pytest.approx(100.0)


async def test_an_unknown_when_full_policy_is_refused_with_the_accepted_values(tmp_path):
    with pytest.raises(SpoolError, match="when_full = 'drop_newest': expected one of drop_oldest, refuse_newest"):
        await Spool.open(tmp_path / "spool.db", max_bytes=1000, when_full="drop_newest")


async def test_a_file_that_is_not_a_spool_is_refused_naming_it(tmp_path):
    path = tmp_path / "spool.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(SpoolError) as refused:
        await Spool.open(path, max_bytes=1000)
    # SQLite's words and code, not Python's class name ("DatabaseError: file is not a database").
    assert str(refused.value) == f"spool {path}: cannot open the spool database: file is not a database (SQLITE_NOTADB)"


async def test_acks_are_committed_in_groups_with_the_next_write(tmp_path, device_key):
    spool = await Spool.open(tmp_path / "spool.db", max_bytes=10_000_000)
    await spool.begin_boot()
    stored = [put(spool, seal_readings(device_key, spool, 2), readings=2) for _ in range(ACK_GROUP + 1)]
    observer = await Spool.open(tmp_path / "spool.db", max_bytes=10_000_000)
    for batch in stored[: ACK_GROUP - 1]:
        spool.ack(batch)
    assert len(spool.oldest(100)) == 2
    assert len(observer.oldest(100)) == ACK_GROUP + 1  # not yet on disk: a crash now means a resend
    spool.ack(stored[ACK_GROUP - 1])
    assert len(observer.oldest(100)) == 1
    await observer.close()
    await spool.close()


async def test_an_acked_batch_is_not_offered_again_before_its_delete_is_committed(spool, device_key):
    first = spool.put(seal_readings(device_key, spool, 2), readings=2)
    second = spool.put(seal_readings(device_key, spool, 2), readings=2)
    assert spool.lease_oldest() == first
    spool.ack(first)
    assert spool.lease_oldest() == second
    assert spool.stats()["batches"] == 1
    assert spool.ack(first) is False


async def test_a_full_spool_is_logged_once_when_it_fills_and_once_when_it_has_room(tmp_path, device_key, caplog):
    spool = await Spool.open(tmp_path / "spool.db", max_bytes=1_000_000)
    await spool.begin_boot()
    batches = [seal_readings(device_key, spool, 20) for _ in range(6)]
    spool.max_bytes = len(batches[0]) * 2 + 10
    with caplog.at_level(logging.INFO, logger="ocn.spool"):
        stored = [put(spool, data, readings=20) for data in batches]
        for batch in stored[-2:]:
            spool.ack(batch)
        spool.put(seal_readings(device_key, spool, 20), readings=20)
    assert [r.getMessage() for r in caplog.records] == [
        "spool full: drop oldest batches until there is room",
        "spool has room again",
    ]
    assert spool.counters()["batches_dropped"] == 4
    await spool.close()

"""The batcher seals released readings into batches by span, size, flush interval and policy, into the spool."""

from __future__ import annotations

import asyncio
import os
import time

from edge.batcher import Batcher
from edge.protocol import open_batch
from edge.protocol.types import Channel, Kind, Reading
from edge.spool import Spool

T0 = 1_790_000_000_000 - 1_790_000_000_000 % 300_000  # the start of a 5-minute window
VOLTAGE = Channel("meter-1/voltage", unit="V", resolution=0.1)


def make_batcher(spool, device_key, **options) -> Batcher:
    settings = dict(
        device_id="pole-0042",
        private_key=device_key,
        spool=spool,
        boot_epoch=spool.boot_epoch,
        policy_digest=b"\x01" * 32,
        span_s=300,
        flush_interval_s=30,
        max_readings=20000,
        codec="zstd",
        channels=[VOLTAGE],
        clock_ms=lambda: T0 + 1000,
    )
    settings.update(options)
    return Batcher(**settings)


def stored(spool, device_key):
    return [open_batch(b.data, device_key.public_key()) for b in spool.oldest(1000)]


async def wait_for_batches(spool, count, *, timeout=5.0):
    async with asyncio.timeout(timeout):
        while spool.stats()["batches"] < count:
            await asyncio.sleep(0.02)


def volts(n, *, start=T0, step=1000):
    return [Reading(VOLTAGE.id, start + i * step, 230.0 + i % 5 / 10, "V") for i in range(n)]


async def test_a_batch_is_sealed_as_soon_as_max_readings_are_collected(spool, device_key):
    batcher = make_batcher(spool, device_key, max_readings=100)
    task = asyncio.create_task(batcher.run())
    for r in volts(250):
        batcher.add_nowait(r)
    await wait_for_batches(spool, 2)
    task.cancel()
    assert [len(b.readings) for b in stored(spool, device_key)] == [100, 100]
    assert batcher.unsealed == 50


async def test_readings_wait_in_memory_no_longer_than_the_flush_interval(spool, device_key):
    batcher = make_batcher(spool, device_key, flush_interval_s=1.0)
    task = asyncio.create_task(batcher.run())
    started = time.monotonic()
    for r in volts(3):
        batcher.add_nowait(r)
    await asyncio.sleep(0.3)
    assert spool.stats()["batches"] == 0
    await wait_for_batches(spool, 1)
    task.cancel()
    assert 1.0 <= time.monotonic() - started < 3.0
    assert [len(b.readings) for b in stored(spool, device_key)] == [3]


async def test_the_flush_interval_also_holds_for_the_first_reading_after_a_quiet_time(spool, device_key):
    batcher = make_batcher(spool, device_key, flush_interval_s=0.2)
    task = asyncio.create_task(batcher.run())
    await asyncio.sleep(0.1)  # run() is idle, waiting without a deadline
    await batcher.add(volts(1)[0])
    await wait_for_batches(spool, 1)
    task.cancel()


async def test_a_reading_in_the_next_span_window_closes_the_current_batch(spool, device_key):
    batcher = make_batcher(spool, device_key, span_s=60)
    for r in volts(3, start=T0 + 57_000) + volts(2, start=T0 + 60_000):
        batcher.add_nowait(r)
    await batcher.flush()
    batches = stored(spool, device_key)
    assert [[r.ts_ms for r in b.readings] for b in batches] == [
        [T0 + 57_000, T0 + 58_000, T0 + 59_000],
        [T0 + 60_000, T0 + 61_000],
    ]


async def test_the_batch_is_sealed_when_the_clock_passes_the_end_of_its_span(spool, device_key):
    now = [T0 + 59_900]
    batcher = make_batcher(spool, device_key, span_s=60, clock_ms=lambda: now[0])
    task = asyncio.create_task(batcher.run())
    batcher.add_nowait(Reading(VOLTAGE.id, T0 + 59_000, 231.0))
    await asyncio.sleep(0.05)
    assert spool.stats()["batches"] == 0
    now[0] = T0 + 60_000
    await asyncio.sleep(0.3)
    task.cancel()
    assert spool.stats()["batches"] == 1


async def test_flush_seals_everything_collected_and_keeps_every_value(spool, device_key):
    batcher = make_batcher(spool, device_key)
    readings = volts(10)
    for r in readings:
        batcher.add_nowait(r)
    await batcher.flush()
    [batch] = stored(spool, device_key)
    assert [(r.channel, r.ts_ms, r.value) for r in batch.readings] == [(r.channel, r.ts_ms, r.value) for r in readings]
    assert batch.header.device_id == "pole-0042"
    assert (batch.header.boot_epoch, batch.header.seq) == (spool.boot_epoch, 0)
    assert (batcher.counters.readings_in, batcher.counters.batches_sealed) == (10, 1)
    assert batcher.counters.bytes_sealed == len(spool.oldest(1)[0].data)


async def test_a_new_policy_digest_starts_a_new_batch(spool, device_key):
    batcher = make_batcher(spool, device_key)
    for r in volts(2):
        batcher.add_nowait(r)
    batcher.set_policy_digest(b"\x02" * 32)
    for r in volts(3, start=T0 + 5000):
        batcher.add_nowait(r)
    await batcher.flush()
    batches = stored(spool, device_key)
    assert [(b.header.policy_digest, len(b.readings)) for b in batches] == [(b"\x01" * 32, 2), (b"\x02" * 32, 3)]


async def test_channels_declared_at_run_time_travel_with_their_resolution(spool, device_key):
    batcher = make_batcher(spool, device_key)
    pm = Channel("pm-1/pm2_5", unit="ug/m3", resolution=0.1)
    batcher.set_channels([pm])
    batcher.add_nowait(Reading(pm.id, T0, 12.3, "ug/m3"))
    await batcher.flush()
    [batch] = stored(spool, device_key)
    assert batch.channels == (pm,)


async def test_an_undeclared_channel_is_still_sealed_without_a_resolution(spool, device_key):
    batcher = make_batcher(spool, device_key)
    batcher.add_nowait(Reading("door-1/open", T0, True))
    await batcher.flush()
    [batch] = stored(spool, device_key)
    assert [(c.id, c.kind, c.resolution) for c in batch.channels] == [("door-1/open", Kind.BOOL, None)]
    assert batch.readings[0].value is True


async def test_loss_counted_by_the_spool_travels_in_the_next_batch_header(tmp_path, device_key):
    spool = await Spool.open(tmp_path / "spool.db", max_bytes=1, when_full="refuse_newest")
    await spool.begin_boot()
    batcher = make_batcher(spool, device_key)
    for r in volts(20):
        batcher.add_nowait(r)
    await batcher.flush()
    assert batcher.counters.readings_refused == 20
    spool.max_bytes = 1_000_000
    batcher.add_nowait(Reading(VOLTAGE.id, T0 + 60_000, 230.0))
    await batcher.flush()
    [batch] = stored(spool, device_key)
    assert batch.header.counters["readings_dropped"] == 20
    assert batch.header.counters["batches_dropped"] == 1


async def test_a_batch_over_the_size_limit_is_split_rather_than_lost(spool, device_key):
    note = Channel("cam-1/note", kind=Kind.STRING)
    batcher = make_batcher(spool, device_key, channels=[note])
    readings = [Reading(note.id, T0 + i, os.urandom(15000).hex()) for i in range(100)]
    for r in readings:
        batcher.add_nowait(r)
    await batcher.flush()
    batches = stored(spool, device_key)
    assert len(batches) >= 2
    assert [r.value for b in batches for r in b.readings] == [r.value for r in readings]
    assert batcher.counters.readings_unsealable == 0


async def test_a_value_the_codec_cannot_carry_loses_only_itself_and_is_said_once_without_the_value(spool, device_key, caplog):
    import logging

    caplog.set_level(logging.DEBUG)
    batcher = make_batcher(spool, device_key)
    good = volts(40)
    # 1e300 V at a 0.1 V resolution is beyond 64-bit scaled integers: the codec refuses it.
    impossible = [Reading(VOLTAGE.id, T0 + 500 + i, 1e300, "V") for i in range(2)]
    for r in good[:20] + impossible[:1] + good[20:] + impossible[1:]:
        batcher.add_nowait(r)
    await batcher.flush()
    [batch] = stored(spool, device_key)  # one batch: the rest was not split up
    assert sorted((r.ts_ms, r.value) for r in batch.readings) == sorted((r.ts_ms, r.value) for r in good)
    assert batcher.counters.readings_unsealable == 2
    assert batch.header.counters["readings_unsealable"] == 2  # the loss travels with the rest of its batch

    for r in [Reading(VOLTAGE.id, T0 + 300_000, 1e300, "V"), *volts(3, start=T0 + 300_001)]:
        batcher.add_nowait(r)
    await batcher.flush()
    batches = stored(spool, device_key)
    assert [len(b.readings) for b in batches] == [40, 3]
    assert batches[1].header.counters["readings_unsealable"] == 3
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]  # said once, not once per batch
    assert errors[0].channels == VOLTAGE.id
    assert not any("1e+300" in r.getMessage() or "1e+300" in str(r.__dict__) for r in caplog.records)


async def test_cancelling_run_mid_seal_still_stores_the_batch(spool, device_key):
    batcher = make_batcher(spool, device_key, max_readings=5000)
    task = asyncio.create_task(batcher.run())
    for r in volts(5000):
        batcher.add_nowait(r)
    await asyncio.sleep(0)
    await asyncio.sleep(0.001)
    task.cancel()
    await batcher.flush()
    assert sum(b.readings for b in spool.oldest(100)) == 5000


PM = Channel("pm-1/pm2_5", unit="ug/m3", resolution=0.1)
PM_COARSE = Channel("pm-1/pm2_5", unit="ug/m3", resolution=5.0)
OLD_POLICY, NEW_POLICY = b"\x01" * 32, b"\x02" * 32


def pm(values, *, start=T0):
    return [Reading(PM.id, start + i * 1000, v, "ug/m3") for i, v in enumerate(values)]


def as_stored(batches):
    """Digest, channel declarations and values of each stored batch, values rounded past float noise."""
    return [
        (
            b.header.policy_digest,
            b.channels,
            [round(r.value, 6) if isinstance(r.value, float) else r.value for r in b.readings],
        )
        for b in batches
    ]


async def test_a_policy_swap_seals_earlier_readings_with_the_old_resolution_and_digest(spool, device_key):
    batcher = make_batcher(spool, device_key, channels=[PM])
    for r in pm([12.3, 12.4, 12.5, 12.6, 12.7]):
        batcher.add_nowait(r)
    batcher.set_policy(NEW_POLICY, [PM_COARSE])
    for r in pm([12.3, 12.7], start=T0 + 10_000):
        batcher.add_nowait(r)
    await batcher.flush()
    assert as_stored(stored(spool, device_key)) == [
        (OLD_POLICY, (PM,), [12.3, 12.4, 12.5, 12.6, 12.7]),
        (NEW_POLICY, (PM_COARSE,), [10, 15]),
    ]


async def test_re_declaring_channels_then_the_digest_keeps_earlier_readings_as_released(spool, device_key):
    batcher = make_batcher(spool, device_key, channels=[PM])
    for r in pm([12.3, 12.7]):
        batcher.add_nowait(r)
    batcher.set_channels([PM_COARSE])  # the runtime's order at a policy swap
    batcher.set_policy_digest(NEW_POLICY)
    batcher.add_nowait(pm([12.7], start=T0 + 10_000)[0])
    await batcher.flush()
    assert as_stored(stored(spool, device_key)) == [
        (OLD_POLICY, (PM,), [12.3, 12.7]),
        (NEW_POLICY, (PM_COARSE,), [15]),
    ]


async def test_a_batch_closed_but_not_yet_sealed_keeps_the_declarations_it_was_collected_under(spool, device_key):
    batcher = make_batcher(spool, device_key, channels=[PM], max_readings=2)
    for r in pm([12.3, 12.4]):
        batcher.add_nowait(r)  # full: closed, waiting for the sealing thread
    assert batcher.unsealed == 2 and spool.stats()["batches"] == 0
    batcher.set_policy(NEW_POLICY, [PM_COARSE])
    await batcher.flush()
    assert as_stored(stored(spool, device_key)) == [(OLD_POLICY, (PM,), [12.3, 12.4])]


async def test_a_channel_changing_from_number_to_string_seals_both_batches(spool, device_key):
    status = Channel("pm-1/status", kind=Kind.NUMBER, resolution=1.0)
    batcher = make_batcher(spool, device_key, channels=[status])
    batcher.add_nowait(Reading(status.id, T0, 3))
    retyped = Channel(status.id, kind=Kind.STRING)
    batcher.set_channels([retyped])
    batcher.add_nowait(Reading(status.id, T0 + 1000, "warming up"))
    await batcher.flush()
    assert as_stored(stored(spool, device_key)) == [
        (OLD_POLICY, (status,), [3]),
        (OLD_POLICY, (retyped,), ["warming up"]),
    ]
    assert batcher.counters.readings_unsealable == 0


async def test_declaring_only_new_channels_keeps_the_open_batch(spool, device_key):
    batcher = make_batcher(spool, device_key)
    batcher.add_nowait(Reading(VOLTAGE.id, T0, 230.1, "V"))
    batcher.set_channels([VOLTAGE, PM])  # VOLTAGE unchanged, PM new
    batcher.add_nowait(pm([12.3], start=T0 + 1000)[0])
    await batcher.flush()
    assert as_stored(stored(spool, device_key)) == [(OLD_POLICY, (VOLTAGE, PM), [230.1, 12.3])]


async def test_declaring_a_channel_that_already_arrived_undeclared_closes_the_batch(spool, device_key):
    batcher = make_batcher(spool, device_key)
    batcher.add_nowait(Reading(PM.id, T0, 12.34, "ug/m3"))
    batcher.set_channels([PM_COARSE])
    batcher.add_nowait(Reading(PM.id, T0 + 1000, 12.34, "ug/m3"))
    await batcher.flush()
    assert as_stored(stored(spool, device_key)) == [
        (OLD_POLICY, (Channel(PM.id, unit="ug/m3"),), [12.34]),
        (OLD_POLICY, (PM_COARSE,), [10]),
    ]


async def test_a_batch_of_only_values_the_codec_cannot_carry_seals_nothing_and_leaves_no_gap(spool, device_key):
    batcher = make_batcher(spool, device_key)
    for i in range(3):
        batcher.add_nowait(Reading(VOLTAGE.id, T0 + i, 1e300, "V"))
    await batcher.flush()
    assert stored(spool, device_key) == []  # no empty batch to pay for on a metered link
    assert batcher.counters.readings_unsealable == 3
    for r in volts(2, start=T0 + 300_000):
        batcher.add_nowait(r)
    await batcher.flush()
    [batch] = stored(spool, device_key)
    assert len(batch.readings) == 2 and batch.header.counters["readings_unsealable"] == 3
    assert batch.header.seq == spool.allocate_seq() - 1  # the number the lost batch had, not one after it


async def test_readings_added_at_once_make_the_batches_they_make_one_by_one(tmp_path, device_key):
    # Across a span boundary, with max_readings reached three times, and a channel the batcher was not told of.
    readings = volts(100, start=T0 + 300_000 - 60_000)  # 60 in one 5-minute span, 40 in the next
    readings.insert(7, Reading("meter-1/undeclared", T0 + 300_000 - 50_000, 1.0))
    sealed = []
    for way in ("one by one", "at once"):
        spool = await Spool.open(tmp_path / f"{way}.db", max_bytes=50_000_000)
        await spool.begin_boot()
        batcher = make_batcher(spool, device_key, max_readings=25)
        if way == "one by one":
            for r in readings:
                batcher.add_nowait(r)
        else:
            assert batcher.add_all_nowait(readings[:40]) == 40
            assert batcher.add_all_nowait(readings[40:]) == 61
        assert not batcher.holding_back  # four closed batches wait: at the bound, not over it
        await batcher.flush()
        sealed.append(([[(r.channel, r.ts_ms, r.value) for r in b.readings] for b in stored(spool, device_key)],
                       batcher.counters.readings_in, batcher.unsealed))
        await spool.close()
    assert sealed[1] == sealed[0]
    batches, readings_in, unsealed = sealed[0]
    assert [len(b) for b in batches] == [25, 25, 11, 25, 15] and readings_in == 101 and unsealed == 0


async def test_readings_added_at_once_stop_after_the_one_that_makes_the_batcher_hold_back(spool, device_key):
    batcher = make_batcher(spool, device_key, max_readings=10)
    readings = volts(80)
    taken = batcher.add_all_nowait(readings)  # nothing seals meanwhile: the fifth closed batch is one too many
    assert taken == 50 and batcher.holding_back and batcher.counters.readings_in == 50
    await batcher.flush()
    assert [r.value for b in stored(spool, device_key) for r in b.readings] == [r.value for r in readings[:50]]
    assert not batcher.holding_back and batcher.add_all_nowait(readings[taken:]) == 30  # room again: the rest

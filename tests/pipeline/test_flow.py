"""The reading flow: a poll's readings handed over at once take the steps each would take alone, in order."""

from __future__ import annotations

import logging

from edge.flow import PipelineCounters, ReadingFlow
from edge.privacy import PrivacyStage, parse_policy
from edge.protocol import open_batch
from edge.protocol.types import Reading
from tests.pipeline.test_batcher import T0, VOLTAGE, make_batcher
from tests.privacy.support import policy_text

POLICY = policy_text('[channels."meter-1/voltage"]\nrule = "quantize"\nstep = 0.001\n')


def _poll(start_ms: int, values) -> list[Reading]:
    return [Reading(VOLTAGE.id, start_ms + i, value, "V") for i, value in enumerate(values)]


async def test_a_poll_with_a_value_the_privacy_stage_cannot_handle_keeps_the_rest_in_order(spool, device_key, caplog):
    caplog.set_level(logging.INFO, logger="ocn")
    privacy = PrivacyStage(parse_policy(POLICY), [VOLTAGE], clock_ms=lambda: T0)
    batcher = make_batcher(spool, device_key)
    flow = ReadingFlow(privacy, batcher, counters=PipelineCounters(), clock_ms=lambda: T0)
    await flow.emit_all(_poll(T0, [230.1, 1e308, 230.2]))  # 1e308 / 0.001 overflows: a broken sensor's value
    await flow.emit_all(_poll(T0 + 1000, [1e308, 230.3]))
    assert flow.counters.readings_read == 5 and flow.counters.readings_failed == 2
    assert flow.counters.readings_released == 3
    assert flow.latest[VOLTAGE.id].value == 230.3 and flow.released_by_device == {"meter-1": 3}
    await batcher.flush()
    [batch] = [b for b in spool.oldest(10)]
    assert batch.readings == 3
    errors = [r for r in caplog.records if "cannot handle" in r.getMessage()]
    assert len(errors) == 1 and "1e308" not in errors[0].getMessage()  # once per channel, never the value
    first = [r for r in caplog.records if r.getMessage() == "first reading"]
    assert len(first) == 1 and first[0].device == "meter-1"


def _flow(spool, device_key, **batcher_options) -> ReadingFlow:
    keep = policy_text('[channels."meter-1/voltage"]\nrule = "keep"\n')
    privacy = PrivacyStage(parse_policy(keep), [VOLTAGE], clock_ms=lambda: T0)
    return ReadingFlow(privacy, make_batcher(spool, device_key, **batcher_options), counters=PipelineCounters(), clock_ms=lambda: T0)


def _sealed_values(spool, device_key) -> list[object]:
    return [r.value for b in spool.oldest(100) for r in open_batch(b.data, device_key.public_key()).readings]


async def test_a_poll_waits_in_line_behind_a_reading_still_queued_for_the_privacy_stage(spool, device_key):
    flow = _flow(spool, device_key)
    await flow.readings.put(Reading(VOLTAGE.id, T0, 1.0, "V"))  # an older reading the privacy loop has not taken yet
    await flow.emit_all(_poll(T0 + 1, [2.0, 3.0]))
    assert flow.readings.qsize() == 3 and flow.batcher.counters.readings_in == 0
    await flow.flush()
    assert _sealed_values(spool, device_key) == [1.0, 2.0, 3.0]


async def test_a_poll_that_makes_the_batcher_hold_back_hands_it_the_rest_in_line_not_past_its_bound(spool, device_key):
    # Two readings a batch: the poll's 12 readings close a batch every two; nothing seals them (no batcher task runs),
    # so after the fifth closed batch the batcher holds back, as it does while the spool cannot keep up.
    flow = _flow(spool, device_key, max_readings=2)
    await flow.emit_all(_poll(T0, [float(i) for i in range(12)]))
    assert flow.batcher.holding_back
    assert flow.batcher.counters.readings_in == 10 and flow.released.qsize() == 2  # the rest wait in line
    assert flow.counters.readings_read == flow.counters.readings_released == 12
    await flow.flush()
    assert _sealed_values(spool, device_key) == [float(i) for i in range(12)]

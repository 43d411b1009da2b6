"""The reading flow: a poll's readings handed over at once take the steps each would take alone, in order."""

from __future__ import annotations

import logging

from edge.flow import PipelineCounters, ReadingFlow
from edge.privacy import PrivacyStage, parse_policy
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

"""LogOnce says a fault once when it starts and once when it ends; a flapping key twice in all."""

import logging

import pytest

from edge.util.logonce import LogOnce


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lines(caplog):
    caplog.set_level(logging.DEBUG, logger="test.logonce")
    return lambda: [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "test.logonce"]


LOG = logging.getLogger("test.logonce")


def test_a_failure_is_logged_once_until_it_recovers(lines):
    notes = LogOnce(LOG)
    assert notes.failure("port", "port %s gone", "A") is True
    assert notes.failure("port", "port %s gone", "A") is False
    assert notes.failing("port")
    assert notes.recovered("port", "port %s back", "A") is True
    assert notes.recovered("port", "port %s back", "A") is False
    assert not notes.failing("port")
    assert lines() == [(logging.WARNING, "port A gone"), (logging.INFO, "port A back")]


def test_a_key_that_never_failed_logs_no_recovery(lines):
    assert LogOnce(LOG).recovered("port", "back") is False
    assert lines() == []


def test_keys_are_independent(lines):
    notes = LogOnce(LOG)
    notes.failure(1, "unit %d", 1)
    notes.failure(2, "unit %d", 2)
    notes.recovered(1, "unit %d ok", 1)
    assert not notes.failing(1) and notes.failing(2)
    assert [m for _, m in lines()] == ["unit 1", "unit 2", "unit 1 ok"]


def test_a_new_reason_is_logged_again_the_same_one_not(lines):
    notes = LogOnce(LOG)
    notes.failure("r", "refused: %s", "02", reason="02")
    notes.failure("r", "refused: %s", "02", reason="02")
    notes.failure("r", "refused: %s", "06", reason="06")
    assert [m for _, m in lines()] == ["refused: 02", "refused: 06"]


def test_the_level_and_extra_are_the_callers(lines, caplog):
    notes = LogOnce(LOG)
    notes.failure("d", "device failed", level=logging.ERROR, extra={"device": "d"})
    assert lines() == [(logging.ERROR, "device failed")]
    assert caplog.records[-1].device == "d"
    assert caplog.records[-1].filename == "test_logonce.py", "the record points at the caller"


def test_key_fn_chooses_what_identifies_a_fault(lines):
    notes = LogOnce(LOG, key_fn=lambda req: req["unit"] if isinstance(req, dict) else req)
    notes.failure({"unit": 3, "try": 1}, "unit 3")
    notes.failure({"unit": 3, "try": 2}, "unit 3")
    assert notes.failing({"unit": 3})
    assert len(lines()) == 1


def test_failing_again_soon_after_recovering_is_said_once_as_intermittent_then_once_when_steady(lines):
    clock = Clock()
    notes = LogOnce(LOG, flap_s=60.0, clock=clock)
    flap = ("unit %d intermittent", 1)
    steady = ("unit %d steady", 1)
    notes.failure(1, "unit %d down", 1, intermittent=flap)
    clock.now += 5
    notes.recovered(1, "unit %d back", 1, steady=steady)
    for _ in range(10):  # fails and recovers every few seconds for a while
        clock.now += 5
        notes.failure(1, "unit %d down", 1, intermittent=flap)
        assert notes.flapping(1) and notes.failing(1)
        clock.now += 5
        notes.recovered(1, "unit %d back", 1, steady=steady)
    clock.now += 54  # 59 s since the last failure
    assert notes.recovered(1, "unit %d back", 1, steady=steady) is False, "not yet steady for flap_s"
    clock.now += 1
    assert notes.recovered(1, "unit %d back", 1, steady=steady) is True
    assert not notes.flapping(1) and not notes.failing(1)
    assert [m for _, m in lines()] == ["unit 1 down", "unit 1 back", "unit 1 intermittent", "unit 1 steady"]


def test_a_failure_long_after_recovering_is_a_new_outage_not_flapping(lines):
    clock = Clock()
    notes = LogOnce(LOG, flap_s=60.0, clock=clock)
    notes.failure(1, "down", intermittent=("flapping",))
    notes.recovered(1, "back")
    clock.now += 60
    notes.failure(1, "down", intermittent=("flapping",))
    assert [m for _, m in lines()] == ["down", "back", "down"]


def test_without_an_intermittent_message_there_is_no_flapping(lines):
    clock = Clock()
    notes = LogOnce(LOG, flap_s=60.0, clock=clock)
    notes.failure(1, "down")
    notes.recovered(1, "back")
    notes.failure(1, "down")
    assert [m for _, m in lines()] == ["down", "back", "down"]

"""The probation's verdict from the gateway's /status documents (edge.update.probation), step by step."""

from __future__ import annotations

from typing import Any

from edge.update.probation import Probation


def status(
    *, readings: tuple[int, int] = (3, 5), sealed: int = 1, acked: int = 1, reachable: bool = True, boot: int = 7, uptime: float = 5.0, version: str = "2.0.0"
) -> dict[str, Any]:
    return {
        "software_version": version,
        "boot_epoch": boot,
        "uptime_s": uptime,
        "devices": {"pm-1": {"readings": readings[0]}, "meter-1": {"readings": readings[1]}},
        "batcher": {"batches_sealed": sealed},
        "uplink": {"batches_acked": acked, "reachable": reachable},
    }


def test_it_passes_once_every_device_was_read_a_batch_sealed_and_one_acknowledged() -> None:
    probation = Probation("2.0.0", started=0.0, deadline_s=60)
    assert probation.judge(None, 1.0).state == "pending"  # still starting
    verdict = probation.judge(status(readings=(0, 2), sealed=0, acked=0), 2.0)
    assert verdict.state == "pending" and verdict.reason == "no reading yet from pm-1; no batch sealed into the spool; no batch acknowledged by the hub"
    assert probation.judge(status(acked=0), 3.0).reason == "no batch acknowledged by the hub"
    assert probation.judge(status(), 4.0).state == "passed"


def test_the_old_version_still_answering_is_not_the_new_one() -> None:
    assert Probation("2.0.0", started=0.0).judge(status(version="1.0.0"), 1.0).state == "pending"


def test_a_restart_or_silence_during_probation_fails_it() -> None:
    probation = Probation("2.0.0", started=0.0)
    probation.judge(status(acked=0), 1.0)
    assert probation.judge(status(acked=0, boot=8, uptime=1.0), 2.0).reason == "2.0.0 restarted during probation (a crash or the watchdog)"
    probation = Probation("2.0.0", started=0.0)
    probation.judge(status(acked=0), 1.0)
    assert probation.judge(None, 2.0).state == "failed"


def test_a_version_that_never_answers_fails_after_the_start_timeout() -> None:
    probation = Probation("2.0.0", started=0.0, start_timeout_s=120)
    assert probation.judge(None, 119.0).state == "pending"
    assert "did not start" in probation.judge(None, 121.0).reason


def test_the_deadline_runs_from_the_first_answer_and_fails_what_is_unproven_while_the_hub_is_reachable() -> None:
    probation = Probation("2.0.0", started=0.0, deadline_s=60, start_timeout_s=120)
    assert probation.judge(status(acked=0), 100.0).state == "pending"  # a slow start is not held against it
    assert probation.judge(status(acked=0), 159.0).state == "pending"
    verdict = probation.judge(status(acked=0), 161.0)
    assert verdict.state == "failed" and verdict.reason == "2.0.0 failed probation: no batch acknowledged by the hub within 60 s"


def test_a_hub_outage_extends_the_probation_instead_of_failing_it() -> None:
    probation = Probation("2.0.0", started=0.0, deadline_s=60)
    probation.judge(status(acked=0), 1.0)
    for minute in range(1, 60):  # an hour without the hub
        assert probation.judge(status(acked=0, reachable=False, uptime=minute * 60.0), minute * 60.0).state == "pending"
    assert probation.judge(status(acked=0, uptime=3545.0), 3545.0).state == "pending"  # back: the clock stood still meanwhile
    assert probation.judge(status(uptime=3550.0), 3550.0).state == "passed"

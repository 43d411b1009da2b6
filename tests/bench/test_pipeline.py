"""bench.pipeline runs end to end: a small run delivers every reading to the hub and reports sane figures."""

from __future__ import annotations

from bench import pipeline
from tests.helpers.datasets import dataset


def test_the_pipeline_bench_delivers_every_reading_and_reports_positive_figures() -> None:
    dataset(pipeline.DATASET)
    run = pipeline.measure("keep", 2_200)
    assert run.readings == 2_200
    assert run.stored == run.readings  # the keep policy releases every reading, and each reaches the hub once
    assert 0 < run.seconds < 60
    assert run.readings_s > 0
    # CPU time is counted and attributed to the readings: some, but not minutes per thousand.
    assert 0 < run.cpu_ms_per_1000 < 60_000


def test_under_the_demo_policy_the_meter_reaches_the_hub_as_summaries() -> None:
    dataset(pipeline.DATASET)
    run = pipeline.measure("demo", 2_200)
    assert 0 < run.stored < run.readings

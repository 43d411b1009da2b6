"""bench.floor makes the gateway's own requests to a real hil-sim and counts every reply in its window."""

from __future__ import annotations

from pathlib import Path

from bench import floor, gateway_load


def test_the_floor_client_asks_what_the_gateway_asks_one_request_a_meter_a_poll(tmp_path: Path) -> None:
    # The gateway's planner on the same cut profile: bench.gateway_load reports 1.00 Modbus transactions per poll.
    assert floor.plan(gateway_load.LOADS["meter"], tmp_path) == [(4, 0, 80)]  # 30 float32 values in input registers 0x00..0x4F
    fleet = floor.plan(gateway_load.LOADS["fleet"], tmp_path)
    assert len(fleet) == 1 and fleet[0][:2] == (4, 0)


def test_a_short_run_reads_the_load_s_values_a_second_and_charges_it_cpu(tmp_path: Path) -> None:
    load = gateway_load.LOADS["meter"]
    run = floor.run_once(load, tmp_path, warmup_s=1.0, seconds=4.0)
    # Four polls of 30 values in the window (it starts half a poll after one): the replies were counted, not assumed.
    assert run["readings_s"] == 4 * 30 / run["window_s"]
    assert 0 < run["cpu_s_per_1000"] < 1  # some CPU, and far from a second per thousand values
    assert 0 < run["cpu_pct_core"] < 50

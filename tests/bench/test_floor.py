"""bench.floor makes the gateway's own requests to a real hil-sim and counts every reply in its window."""

from __future__ import annotations

from pathlib import Path

from bench import floor, gateway_load


def test_the_floor_client_asks_what_the_gateway_asks_one_request_a_meter_a_poll(tmp_path: Path) -> None:
    # The gateway's planner on the same cut profile: bench.gateway_load reports 1.00 Modbus transactions per poll.
    # The meter's 30 float32 values lie in input registers 0x00..0x4F: one request of 80 registers.
    assert floor.plan(gateway_load.LOADS["meter"], tmp_path) == [(4, 0, 80, 30)]
    fleet = floor.plan(gateway_load.LOADS["fleet"], tmp_path)
    assert len(fleet) == 1 and fleet[0][:2] == (4, 0) and fleet[0][3] == 10


def test_a_short_run_reads_the_load_s_values_a_second_and_charges_it_cpu(tmp_path: Path) -> None:
    # installed_env (called by run_once) compiles edge/ and drivers/ to bytecode in the checkout, as the benchmarks do.
    load = gateway_load.LOADS["meter"]
    run = floor.run_once(load, tmp_path, warmup_s=1.0, seconds=4.0)
    # Four one-second polls in a 4 s window that starts half a poll after one; one either way on a machine that
    # stalls the harness: the replies were counted, each with its 30 values, not assumed from the load.
    assert 3 <= run["replies"] <= 5
    assert run["readings_s"] == run["replies"] * 30 / run["window_s"]
    assert 0 < run["cpu_s_per_1000"] < 1  # some CPU, and far from a second per thousand values
    assert 0 < run["cpu_pct_core"] < 50

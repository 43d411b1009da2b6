"""Modbus bus benchmark: transactions and bus time per poll of the SDM630 profile, coalesced vs one request per value.

    .venv/bin/python -m bench.modbus_bus [--baud 9600] [--polls 5] [--response-delay 20ms]

The meter is hil-sim's SDM630 on a simulated RS-485 line (a real pty) that paces
every byte at the baud rate and keeps the 3.5-character silence between frames,
so the measured bus time is what the wire would take.  Each strategy reads every
value of the profile; the figures are means over ``--polls`` polls, after one
warm-up poll.  "wire estimate" is the RTU arithmetic: request and reply bytes
at 10 bits each plus two 3.5-character gaps, plus the meter's response delay.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from pathlib import Path

import hilsim
from drivers.modbus.bus import ModbusBus
from drivers.modbus.planner import ReadRequest, plan_reads
from drivers.modbus.profile import load_profile
from drivers.testing import bus_settings_for

SCENARIO = """
[scenario]
name = "bench-sdm630"
seed = 1
[[buses]]
name = "rs485-1"
type = "modbus-rtu"
baudrate = {baud}
[[devices]]
name = "meter-1"
kind = "eastron-sdm630"
bus = "rs485-1"
unit = 1
response_delay = "{delay}"
"""


def strategies() -> dict[str, list[ReadRequest]]:
    profile = load_profile("eastron-sdm630")
    per_value = [ReadRequest(r.function, r.address, r.count, r.count) for r in profile.registers]
    return {
        "one request per value": per_value,
        "contiguous only (max_gap 0)": plan_reads(profile.spans(), max_gap=0, unreadable=profile.unreadable),
        f"gap fill (max_gap {profile.max_gap}, profile default)": plan_reads(
            profile.spans(), max_gap=profile.max_gap, unreadable=profile.unreadable),
    }


def wire_estimate(plan: list[ReadRequest], baud: int, delay_s: float) -> float:
    char = 10 / baud
    return sum((8 + 5 + 2 * r.count) * char + 2 * 3.5 * char + delay_s for r in plan)


async def measure(baud: int, polls: int, delay: str) -> None:
    delay_s = float(delay.removesuffix("ms")) / 1000
    logging.getLogger("hilsim").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        scenario = Path(tmp) / "bench.toml"
        scenario.write_text(SCENARIO.format(baud=baud, delay=delay))
        async with hilsim.run_scenario(scenario, run_dir=Path(tmp) / "run") as sim:
            settings = bus_settings_for(sim.endpoints["meter-1"], timeout=2.0, frame_gap=0.0)
            print(f"SDM630 profile ({len(load_profile('eastron-sdm630').registers)} values) over Modbus RTU "
                  f"at {baud} baud 8N1 on hil-sim, meter response delay {delay}, mean of {polls} polls\n")
            print(f"{'strategy':<40} {'requests':>8} {'registers':>9} {'bytes':>7} {'bus time':>9} "
                  f"{'wire estimate':>13}")
            for name, plan in strategies().items():
                bus = ModbusBus(settings)
                owner = asyncio.create_task(bus.run())
                try:
                    await bus.wait_open()
                    for r in plan:  # warm-up poll
                        await bus.read(1, r.function, r.address, r.count)
                    before = bus.stats()
                    began = time.monotonic()
                    for _ in range(polls):
                        for r in plan:
                            await bus.read(1, r.function, r.address, r.count, used=r.used)
                    elapsed = (time.monotonic() - began) / polls
                    after = bus.stats()
                finally:
                    owner.cancel()
                    await asyncio.gather(owner, return_exceptions=True)
                nbytes = (after["bytes_out"] + after["bytes_in"] - before["bytes_out"] - before["bytes_in"]) / polls
                registers = (after["registers_read"] - before["registers_read"]) / polls
                print(f"{name:<40} {len(plan):>8} {registers:>9.0f} {nbytes:>7.0f} {elapsed * 1000:>7.0f}ms "
                      f"{wire_estimate(plan, baud, delay_s) * 1000:>11.0f}ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baud", type=int, default=9600)
    parser.add_argument("--polls", type=int, default=5)
    parser.add_argument("--response-delay", default="20ms", help="the meter's turnaround, in ms (default 20ms)")
    args = parser.parse_args()
    asyncio.run(measure(args.baud, args.polls, args.response_delay))


if __name__ == "__main__":
    main()

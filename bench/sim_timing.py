"""How faithful hil-sim's wire timing is, and what running the default scenario costs.

Prints, for each baud rate, the time a 255-byte Modbus RTU reply takes on the
pty (first to last byte) against the wire time the baud rate implies, the
request-to-reply round trip against its ideal, and the CPU share the default
scenario uses while a reader drains every serial device.

    .venv/bin/python -m bench.sim_timing [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import struct
import tempfile
import time
from pathlib import Path

import hilsim
from hilsim.modbus_adapter import crc16

SCENARIO = """
[[buses]]
name = "line"
type = "modbus-rtu"
baudrate = {baud}
[[devices]]
name = "m"
kind = "eastron-sdm630"
bus = "line"
unit = 1
response_delay = "10ms"
"""


async def _read(fd: int, n: int) -> tuple[float, float]:
    import os

    got = 0
    first = last = 0.0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while got < n and loop.time() < deadline:
        try:
            chunk = os.read(fd, 4096)
        except BlockingIOError:
            await asyncio.sleep(0.0002)
            continue
        now = time.perf_counter()
        if not got:
            first = now
        got += len(chunk)
        last = now
    return first, last


async def wire_timing(baud: int, rounds: int) -> dict[str, float]:
    import os
    import termios
    import tty

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scenario.toml"
        path.write_text(SCENARIO.format(baud=baud))
        async with hilsim.run_scenario(path, run_dir=Path(tmp) / "run") as sim:
            line = sim.endpoints["m"].path
            assert line is not None, "the scenario's meter is on a serial line"
            fd = os.open(line, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            tty.setraw(fd)
            termios.tcflush(fd, termios.TCIOFLUSH)
            request = struct.pack(">BBHH", 1, 4, 0, 125)
            request += crc16(request)
            spans, trips = [], []
            for _ in range(rounds):
                sent = time.perf_counter()
                os.write(fd, request)
                first, last = await _read(fd, 255)
                spans.append(last - first)
                trips.append(last - sent)
                await asyncio.sleep(0.02)
            os.close(fd)
    char = 10 / baud
    t35 = 3.5 * char if baud <= 19200 else 0.00175
    ideal_span = 254 * char
    ideal_trip = len(request) * char + max(t35, 0.002) + 0.010 + t35 + 255 * char
    return {
        "span_ms": statistics.median(spans) * 1000,
        "ideal_span_ms": ideal_span * 1000,
        "span_err_pct": (statistics.median(spans) / ideal_span - 1) * 100,
        "trip_ms": statistics.median(trips) * 1000,
        "trip_p95_ms": sorted(trips)[int(0.95 * (len(trips) - 1))] * 1000,
        "ideal_trip_ms": ideal_trip * 1000,
    }


async def scenario_cost(seconds: float) -> float:
    import os

    async with hilsim.run_scenario("default") as sim:
        fds = [os.open(e.path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
               for e in sim.endpoints.values() if e.transport == "serial" and e.path is not None]
        cpu0, wall0 = time.process_time(), time.perf_counter()
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while loop.time() < end:
            for fd in fds:
                try:
                    os.read(fd, 65536)
                except BlockingIOError:
                    pass
            await asyncio.sleep(0.05)
        share = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
        for fd in fds:
            os.close(fd)
    return share


async def main(rounds: int) -> None:
    print(f"Modbus RTU, 125 input registers (255-byte reply), {rounds} rounds, medians")
    print(f"{'baud':>7} {'reply span ms':>14} {'ideal':>8} {'error':>7} {'round trip ms':>14} {'p95':>7} {'ideal':>7}")
    for baud in (9600, 19200, 38400, 115200):
        r = await wire_timing(baud, rounds)
        print(f"{baud:>7} {r['span_ms']:>14.1f} {r['ideal_span_ms']:>8.1f} {r['span_err_pct']:>+6.1f}% "
              f"{r['trip_ms']:>14.1f} {r['trip_p95_ms']:>7.1f} {r['ideal_trip_ms']:>7.1f}")
    share = await scenario_cost(10.0)
    print(f"default scenario (8 devices, serial lines drained): {share * 100:.1f}% of one CPU core over 10 s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    asyncio.run(main(parser.parse_args().rounds))

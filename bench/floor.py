"""The floor under bench.gateway_load: a bare asyncio Modbus client making the gateway's requests, observed the same way.

    .venv/bin/python -m bench.floor [--load meter|fleet|both] [--runs 3] [--seconds 30] [--warmup 5] [--loop asyncio|uvloop] [--json FILE]

How much of the gateway's CPU is the gateway's?  This client polls as the gateway does and does
nothing else: the same hil-sim scenario (`ocn-edge sim`, pymodbus's Modbus TCP server answering
as SDM630 meters after 2 ms), the same requests (the gateway's own planner on the same cut
SDM630 profile: one request per meter per poll), one TCP connection with one request in flight,
shared under an asyncio.Lock as the gateway's bus owner shares its line, each device a task woken
by a loop timer at its poll interval (all started together, so in phase, as the gateway's devices
are on their interval's grid), a deadline timer per request cancelled by its reply (as the
gateway's), and each reply's registers unpacked with one struct call.  No pymodbus on the client
side (Modbus TCP frames built and parsed in a few lines), no float decoding, no Reading objects,
no privacy stage, batcher, spool, uplink, hub, local API or logging.

It runs as its own process (`python -m bench.floor client ...`) and bench/observer.py samples it
once a second exactly as it samples `ocn-edge run`: CPU seconds over a steady window (after
--warmup seconds), per 1,000 values read and as a share of one core.  The client counts its
replies; the harness asks for the count (SIGUSR1, one line on stdout) just outside the window.

On a virtual machine much of a lightly loaded process's CPU is the cost of waking up (see
bench.wakeups): this is what this way of polling costs in stock asyncio on this machine, one
request at a time per line, before a line of the gateway's own runs.  A target below it is out
of reach of the gateway's own code; only another event loop, several requests in flight on a
line, or fewer wake-ups per reading would go under it.  `--loop uvloop` runs the client on
uvloop (asyncio's loop in C; not a dependency: install it by hand to compare) for the first.
The window is 30 s after 5 s by default (bench.gateway_load's: 90 s after 10 s; CPU is read in
nanoseconds, so 30 one-second polls are enough).  Each figure is the median and range of --runs
runs.  Nothing passes or fails.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import importlib
import json
import re
import signal
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

from bench import gateway_load
from bench.observer import TreeObserver

FUNCTION_CODES = {"holding": 3, "input": 4}
DEADLINE_S = 1.0  # the gateway's bus timeout in bench.gateway_load
READ_TIMEOUT_S = 60.0  # a client that says nothing for this long is killed, so the harness never hangs

LOOPS = ("asyncio", "uvloop")  # uvloop only to compare: not a dependency, it must be installed by hand
Request = tuple[int, int, int, int]  # function code, address, register count, values of the profile in it


class _Link(asyncio.Protocol):
    """One Modbus TCP connection: each complete frame (MBAP length) resolves the request waiting for it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[bytes] | None = None
        self._buffer = b""
        self._tid = 0

    def next_tid(self) -> int:
        """The next transaction id on this connection (1..65535, then round again)."""
        self._tid = self._tid % 0xFFFF + 1
        return self._tid

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # a stream's transport (uvloop's is not an asyncio.Transport subclass)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 6:
            size = 6 + int.from_bytes(self._buffer[4:6], "big")
            if len(self._buffer) < size:
                return
            frame, self._buffer = self._buffer[:size], self._buffer[size:]
            waiter = self.waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("the simulator closed the connection"))


def _expire(future: asyncio.Future[bytes]) -> None:
    if not future.done():
        future.set_exception(TimeoutError("no reply"))


async def _device(unit: int, link: _Link, lock: asyncio.Lock, requests: Sequence[Request], poll_s: float,
                  counts: list[int]) -> None:
    """Poll ``unit``: each request under the lock with a deadline, its registers unpacked; then sleep to the next slot.

    ``counts``: replies, and values of the profile they carried, so far (all devices)."""
    loop = asyncio.get_running_loop()
    decoders = [struct.Struct(f">{count}H") for _, _, count, _ in requests]
    next_at = loop.time()
    while True:
        for (code, address, count, values), decoder in zip(requests, decoders, strict=True):
            async with lock:
                tid = link.next_tid()
                reply: asyncio.Future[bytes] = loop.create_future()
                link.waiter = reply
                assert link.transport is not None
                link.transport.write(struct.pack(">HHHBBHH", tid, 0, 6, unit, code, address, count))
                timer = loop.call_at(loop.time() + DEADLINE_S, _expire, reply)
                try:
                    frame = await reply
                finally:
                    timer.cancel()
            # The reply to this request: its transaction, unit and function (not an exception), all its registers.
            if struct.unpack_from(">H", frame)[0] != tid or frame[6] != unit or frame[7] != code or frame[8] != 2 * count:
                raise RuntimeError(f"unit {unit}: unexpected reply {frame.hex()}")
            decoder.unpack_from(frame, 9)
            counts[0] += 1
            counts[1] += values
        next_at += poll_s
        now = loop.time()
        if next_at < now:
            next_at = now + poll_s - (now - next_at) % poll_s
        await asyncio.sleep(next_at - now)


async def client(port: int, devices: int, requests: Sequence[Request], poll_s: float) -> None:
    """Poll ``devices`` units (1..devices) of the simulator on ``port`` until SIGTERM; SIGUSR1 prints the counts so far."""
    loop = asyncio.get_running_loop()
    _, link = await loop.create_connection(_Link, "127.0.0.1", port)
    counts = [0, 0]
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, lambda: print(json.dumps({"replies": counts[0], "values": counts[1]}), flush=True))
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    lock = asyncio.Lock()
    tasks = [asyncio.create_task(_device(unit, link, lock, requests, poll_s, counts)) for unit in range(1, devices + 1)]
    print(json.dumps({"started": time.monotonic()}), flush=True)
    stopped = asyncio.create_task(stop.wait())
    await asyncio.wait([stopped, *tasks], return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        if task.done():
            task.result()  # a device task that failed: its error, not a silent stop
        task.cancel()


def plan(load: gateway_load.Load, directory: Path) -> list[Request]:
    """The requests the gateway makes per poll of one device under ``load``, each with the profile's values in it."""
    from drivers.modbus.planner import plan_reads
    from drivers.modbus.profile import load_profile

    profile = load_profile(str(gateway_load.sdm630_profile(directory / "profile.toml", load.channels)))
    return [(FUNCTION_CODES[r.function], r.address, r.count,
             sum(1 for reg in profile.registers if r.holds(reg.function, reg.address, reg.count)))
            for r in plan_reads(profile.spans(), max_gap=profile.max_gap, unreadable=profile.unreadable)]


def _line(proc: subprocess.Popen[str], what: str) -> dict[str, Any]:
    """The client's next line on stdout, as JSON; the client is killed if none comes within READ_TIMEOUT_S."""
    assert proc.stdout is not None
    deadline = threading.Timer(READ_TIMEOUT_S, proc.kill)
    deadline.start()
    try:
        line = proc.stdout.readline()
    finally:
        deadline.cancel()
    if not line:
        raise SystemExit(f"the floor client exited with {proc.wait()} (killed after {READ_TIMEOUT_S:.0f} s if silent) {what}")
    doc: dict[str, Any] = json.loads(line)
    return doc


def _ask(proc: subprocess.Popen[str]) -> dict[str, Any]:
    """The client's replies and values so far."""
    proc.send_signal(signal.SIGUSR1)
    return _line(proc, "instead of its counts")


def _loop_factory(loop: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop to run the client on: stock asyncio's (None), or uvloop's when asked and installed."""
    if loop == "asyncio":
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        raise SystemExit("bench.floor --loop uvloop: uvloop is not installed here (pip install uvloop; OCN Edge does not depend on it)") from None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_once(load: gateway_load.Load, directory: Path, *, warmup_s: float, seconds: float, loop: str = "asyncio") -> dict[str, float]:
    env = gateway_load.installed_env()
    requests = plan(load, directory)
    procs: list[subprocess.Popen[str]] = []
    try:
        scenario = directory / "scenario.toml"
        scenario.write_text(gateway_load.scenario_toml(load))
        sim = subprocess.Popen(gateway_load.ocn_edge("sim", str(scenario), "--json", "--log-level", "warning",
                                                     "--run-dir", str(directory / "sim")),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        procs.append(sim)
        endpoints = json.loads(gateway_load._read_until(sim, sim.stdout, re.compile(r"^\{.*\}$"), "hil-sim").group(0))
        port = int(endpoints["devices"]["meter-1"]["port"])
        args = ["--port", str(port), "--devices", str(load.devices), "--poll", str(load.poll_s), "--loop", loop,
                *(a for request in requests for a in ("--request", ":".join(map(str, request))))]
        floor = subprocess.Popen([sys.executable, "-m", "bench.floor", "client", *args], stdout=subprocess.PIPE, text=True, env=env,
                                 cwd=gateway_load.ROOT)
        procs.append(floor)
        observer = TreeObserver(floor.pid).start()
        try:
            _line(floor, "before it started")
            time.sleep(warmup_s + load.poll_s / 2)  # the window's ends half a poll away from the polls (see gateway_load)
            a = _ask(floor)
            mark_a = observer.mark()
            time.sleep(seconds)
            mark_b = observer.mark()
            b = _ask(floor)
            window = observer.window(mark_a, mark_b)
        finally:
            observer.stop()
    finally:
        for proc in reversed(procs):
            gateway_load._stop(proc)
    values = b["values"] - a["values"]
    return {
        "replies": b["replies"] - a["replies"],
        "readings_s": values / window.seconds,
        "cpu_s_per_1000": window.cpu_s / values * 1000,
        "cpu_pct_core": window.cpu_s / window.seconds * 100,
        "window_s": window.seconds,
    }


def _request(text: str) -> Request:
    code, address, count, values = (int(x) for x in text.split(":"))
    return code, address, count, values


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["client"]:
        parser = argparse.ArgumentParser(prog="bench.floor client")
        parser.add_argument("--port", type=int, required=True)
        parser.add_argument("--devices", type=int, required=True)
        parser.add_argument("--poll", type=float, required=True)
        parser.add_argument("--request", type=_request, action="append", required=True, help="code:address:count:values")
        parser.add_argument("--loop", choices=LOOPS, default="asyncio")
        a = parser.parse_args(argv[1:])
        with asyncio.Runner(loop_factory=_loop_factory(a.loop)) as runner:
            runner.run(client(a.port, a.devices, a.request, a.poll))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", choices=("meter", "fleet", "both"), default="both")
    parser.add_argument("--runs", type=int, default=3, help="runs per load (default 3)")
    parser.add_argument("--seconds", type=float, default=30.0, help="the measured window per run (default 30)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds after the client started before the window (default 5)")
    parser.add_argument("--loop", choices=LOOPS, default="asyncio",
                        help="the client's event loop (default asyncio; uvloop, to compare, if installed by hand)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = parser.parse_args(argv)
    _loop_factory(args.loop)  # uvloop missing: said now, not after the simulator started
    out = {}
    for name in ("meter", "fleet"):
        if args.load in (name, "both"):
            load = gateway_load.LOADS[name]
            print(f"floor ({args.loop}), {load.title}: {args.runs} runs, {args.seconds:.0f} s window after {args.warmup:.0f} s", flush=True)
            out[name] = gateway_load.measure(load, runs=args.runs, warmup_s=args.warmup, seconds=args.seconds,
                                             run=functools.partial(run_once, loop=args.loop), prefix="ocn-floor")
    for got in out.values():
        s = got["summary"]
        cpu, pct = s["cpu_s_per_1000"], s["cpu_pct_core"]
        print(f"floor ({args.loop}), {got['load']}: {cpu['median']:.4f} CPU-s per 1,000 readings ({cpu['min']:.4f}–{cpu['max']:.4f}), "
              f"{pct['median']:.2f} % of one core ({pct['min']:.2f}–{pct['max']:.2f}), "
              f"{statistics.median(r['readings_s'] for r in got['runs']):,.0f} values/s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

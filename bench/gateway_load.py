"""A real `ocn-edge run` polling simulated Modbus meters, measured from outside: CPU, memory, start-up, bytes, disk writes.

    .venv/bin/python -m bench.gateway_load [--load meter|fleet|both] [--runs 3] [--seconds 90] [--quick] [--json FILE]

Every part is a real process on loopback: a hub (`ocn-edge hub`, SQLite), a hil-sim scenario
(`ocn-edge sim`, pymodbus's Modbus TCP server answering as Eastron SDM630 meters), and the
gateway exactly as systemd starts it (`ocn-edge run gateway.toml`, the console script), with
its local API on as shipped.  Two loads:

  meter   one meter, 30 float32 values (the first 30 of the SDM630 map, one contiguous
          request's worth), polled every second: 30 readings/s
  fleet   20 meters on one Modbus TCP bus, 10 float32 values each (the first 10 of the SDM630
          map), polled every 200 ms: 1,000 readings/s

The policy keeps every reading (each one is batched and sent), so the bytes are per reading
delivered, as a gateway that forwards everything would be compared.

Our modules are compiled to bytecode first, as an installed wheel has them (installed_env).

Measured from outside (bench/observer.py samples the gateway's process tree once a second):
  start-up     from just before exec to the first reading a driver handed to the pipeline
               (the gateway's "first reading" log line on stdout carries its CLOCK_MONOTONIC time)
  CPU          CPU seconds of the tree over a steady window (after --warmup seconds), per
               1,000 readings read in that window, and as a share of one core
  memory       the largest RssAnon and RSS (summed over the tree) seen at any sample, start included
  disk         write_bytes of the tree over the window, per reading
From the gateway's own counters (its local API's /status, read at the window's ends):
  readings read, Modbus transactions (per poll = per device per interval), and the bytes of
  sealed batches ("wire": the protocol's bytes) and of everything to and from the hub
  ("link": batches, status reports, HTTP framing, answers) per reading the hub acked.
Each figure is reported as the median and range of --runs runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.observer import TreeObserver

ROOT = Path(__file__).resolve().parent.parent
SERVING = re.compile(r"OCN hub serving on (http://\S+)")
FIRST = re.compile(r"first reading.*?monotonic=([0-9.]+)")
MIB = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Load:
    name: str
    title: str
    devices: int
    channels: int  # values per poll, per device
    poll: str
    poll_s: float

    @property
    def readings_s(self) -> float:
        return self.devices * self.channels / self.poll_s


LOADS = {
    "meter": Load("meter", "one 30-register float32 meter, 1 s", 1, 30, "1s", 1.0),
    # 10 values each, not the whole SDM630 map: 20 x 36 channels make a transparency notice over the OXP/2
    # status limit (130 kB), and the gateway stops when its notice task fails.
    "fleet": Load("fleet", "20 meters, 1,000 readings/s", 20, 10, "200ms", 0.2),
}

KEEP_POLICY = """\
[policy]
name = "bench: keep every meter reading"
version = "1"
organisation = "OCN bench"
contact = "bench@ocn.example"
purpose = "Measure the gateway"
retention = "None"
access = "None"

[channels."meter-*/*"]
rule = "keep"
purpose = "Energy use"
"""


def _q(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value)


def sdm630_profile(path: Path, values: int) -> Path:
    """The shipped SDM630 profile cut to its first ``values`` values (30 span addresses 0x00..0x4F: one request)."""
    shipped = tomllib.loads((ROOT / "drivers" / "profiles" / "eastron-sdm630.toml").read_text())
    lines = ["[profile]"]
    lines += [f"{k} = {_q(v)}" for k, v in {**shipped["profile"], "name": "bench-sdm630-30"}.items()]
    lines += [f"{k} = {_q(v)}" for k, v in shipped.items() if not isinstance(v, (dict, list))]
    for table in ("unreadable", "registers"):
        for row in shipped.get(table, [])[: values if table == "registers" else None]:
            lines += ["", f"[[{table}]]", *(f"{k} = {_q(v)}" for k, v in row.items())]
    path.write_text("\n".join(lines) + "\n")
    return path


def scenario_toml(load: Load) -> str:
    out = [f'[scenario]\nname = "bench-{load.name}"\ndescription = "{load.title}"\nseed = 7\n',
           '[[buses]]\nname = "meters"\ntype = "modbus-tcp"\n']
    for i in range(load.devices):
        out.append(f'[[devices]]\nname = "meter-{i + 1}"\nkind = "eastron-sdm630"\nbus = "meters"\nunit = {i + 1}\n'
                   f'response_delay = "2ms"\npoll_interval = "{load.poll}"\n')
    return "\n".join(out)


def gateway_toml(load: Load, state: Path, hub: str, modbus_port: int, api_port: int, profile: str) -> str:
    out = [f"""\
[gateway]
id = "bench-{load.name}"
site = "bench"
latitude = 0.0
longitude = 0.0
state_dir = {json.dumps(str(state))}
log_level = "info"

[[buses]]
name = "meters"
type = "modbus-tcp"
host = "127.0.0.1"
tcp_port = {modbus_port}
timeout = "1s"

[privacy]
policy = {json.dumps(str(state.parent / "policy.toml"))}

[uplink]
hub = "{hub}"
key = {json.dumps(str(state / "device.key"))}

[local_api]
listen = "127.0.0.1:{api_port}"
"""]
    for i in range(load.devices):
        out.append(f'[[devices]]\nname = "meter-{i + 1}"\ndriver = "modbus"\nbus = "meters"\naddress = {i + 1}\n'
                   f'poll_interval = "{load.poll}"\n[devices.options]\nprofile = {json.dumps(profile)}\n')
    return "\n".join(out)


def ocn_edge(*args: str) -> list[str]:
    """The console script systemd runs, from this venv; this tree's CLI if there is none."""
    script = Path(sys.executable).parent / "ocn-edge"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-c", "import sys; from edge.cli import main; sys.exit(main())", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _drain(stream: Any, lines: list[str] | None = None) -> None:
    for raw in stream:
        if lines is not None:
            lines.append(raw.decode(errors="replace") if isinstance(raw, bytes) else raw)


def _read_until(proc: subprocess.Popen[str], stream: Any, pattern: re.Pattern[str], what: str, timeout_s: float = 60) -> re.Match[str]:
    """The first line of ``stream`` that matches; the process is killed if none came within ``timeout_s``."""
    seen: list[str] = []
    deadline = threading.Timer(timeout_s, proc.kill)  # a silent process ends, so the read below returns
    deadline.start()
    try:
        while line := stream.readline():
            seen.append(line)
            match = pattern.search(line)
            if match:
                threading.Thread(target=_drain, args=(stream,), daemon=True).start()  # a full pipe must never stall it
                return match
    finally:
        deadline.cancel()
    raise SystemExit(f"{what} exited with {proc.wait()} (killed after {timeout_s:.0f} s if it said nothing): {''.join(seen[-20:])}")


def status(api: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"{api}/status", timeout=10) as r:
        doc: dict[str, Any] = json.load(r)
        return doc


def _stop(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def installed_env() -> dict[str, str]:
    """The environment of the processes, with this tree's modules compiled to bytecode as an installed wheel has them.

    pip compiles every module at install, so a deployed gateway never compiles at start; a checkout run with
    PYTHONDONTWRITEBYTECODE (or never run before) would compile ~100 of our modules at every start, which costs
    0.1 s and a few MiB that no gateway in the field pays.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "hil-sim"), os.environ.get("PYTHONPATH", "")])
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "edge"), str(ROOT / "drivers")], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return env


def between_polls(after: float, poll_s: float) -> float:
    """The first moment from ``after`` (CLOCK_MONOTONIC) half a poll interval away from the gateway's polls.

    After its first poll the gateway's Modbus driver polls on the interval's grid of the event loop's clock,
    which is CLOCK_MONOTONIC, the clock this process reads too: at whole multiples of ``poll_s``.
    """
    return (math.ceil(after / poll_s - 0.5) + 0.5) * poll_s


def run_once(load: Load, directory: Path, *, warmup_s: float, seconds: float) -> dict[str, float]:
    """One run: every process started fresh; the figures of this run."""
    env = installed_env()
    state, hub_state = directory / "gateway", directory / "hub"
    state.mkdir()
    db = f"sqlite:///{directory / 'hub.db'}"
    procs: list[subprocess.Popen[str]] = []
    try:
        token = subprocess.run(ocn_edge("hub", "token", "create", "--db", db, "--state-dir", str(hub_state), "--uses", "1", "--approve"),
                               check=True, capture_output=True, text=True, env=env).stdout.strip()
        hub = subprocess.Popen(ocn_edge("hub", "--listen", "127.0.0.1:0", "--db", db, "--state-dir", str(hub_state), "--admin-token",
                                        "bench-admin-token", "--log-level", "warning"),
                               stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
        procs.append(hub)
        hub_url = _read_until(hub, hub.stderr, SERVING, "the hub").group(1)
        scenario = directory / "scenario.toml"
        scenario.write_text(scenario_toml(load))
        sim = subprocess.Popen(ocn_edge("sim", str(scenario), "--json", "--log-level", "warning", "--run-dir", str(directory / "sim")),
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
        procs.append(sim)
        endpoints = json.loads(_read_until(sim, sim.stdout, re.compile(r"^\{.*\}$"), "hil-sim").group(0))
        modbus_port = int(endpoints["devices"]["meter-1"]["port"])
        profile = str(sdm630_profile(directory / "profile.toml", load.channels))
        (directory / "policy.toml").write_text(KEEP_POLICY)
        api_port = free_port()
        config = directory / "gateway.toml"
        config.write_text(gateway_toml(load, state, hub_url, modbus_port, api_port, profile))
        subprocess.run(ocn_edge("enrol", str(config), "--token", token), check=True, capture_output=True, env=env)

        started = time.monotonic()
        gateway = subprocess.Popen(ocn_edge("run", str(config)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        procs.append(gateway)
        observer = TreeObserver(gateway.pid).start()
        first = float(_read_until(gateway, gateway.stdout, FIRST, "the gateway").group(1))
        api = f"http://127.0.0.1:{api_port}"
        # The window's ends half a poll interval away from the polls: a window that began or ended just as a poll ran
        # could count one poll more or fewer (one meter: 1 % of a 90 s window's readings, 3 % of a 30 s one's).
        time.sleep(max(0.0, between_polls(first + warmup_s, load.poll_s) - time.monotonic()))
        # The window is between the observer's two marks, and our own /status requests fall outside it: what the
        # gateway spends answering them is the benchmark's, not the load's.
        a, mark_a = status(api), observer.mark()
        time.sleep(seconds)
        mark_b = observer.mark()
        b = status(api)
        window = observer.window(mark_a, mark_b)
        deadline = time.monotonic() + 60  # bytes are per reading acked: wait for the first ack if none came in the window
        while b["uplink"]["readings_acked"] == 0 and time.monotonic() < deadline:
            time.sleep(1)
            b = {**b, "uplink": status(api)["uplink"]}
        whole = observer.window(0, mark_b)
        observer.stop()
        _stop(gateway)
    finally:
        for proc in reversed(procs):
            _stop(proc)

    readings = b["readings_read"] - a["readings_read"]
    polls = readings / load.channels
    requests = sum(bus.get("requests", 0) for bus in b["buses"].values()) - sum(bus.get("requests", 0) for bus in a["buses"].values())
    up = b["uplink"]
    acked = max(1, up["readings_acked"])
    return {
        "startup_s": first - started,
        "readings_s": readings / window.seconds,
        "cpu_s_per_1000": window.cpu_s / readings * 1000,
        "cpu_pct_core": window.cpu_s / window.seconds * 100,
        "peak_rss_anon_mib": whole.peak_rss_anon / MIB,
        "peak_rss_mib": whole.peak_rss / MIB,
        "disk_bytes_per_reading": window.write_bytes / readings,
        "modbus_requests_per_poll": requests / polls,
        "wire_bytes_per_reading": up["bytes_sent"] / acked,
        "link_bytes_per_reading": (up["bytes_sent"] + up["overhead_bytes"]) / acked,
        "processes": whole.processes,
        "window_s": window.seconds,
    }


FIGURES = (  # key, label, format
    ("startup_s", "start-up to first reading, s", "{:.3f}"),
    ("readings_s", "readings/s", "{:,.0f}"),
    ("cpu_s_per_1000", "CPU s per 1,000 readings", "{:.4f}"),
    ("cpu_pct_core", "% of one core", "{:.2f}"),
    ("peak_rss_anon_mib", "peak RssAnon, MiB", "{:.1f}"),
    ("peak_rss_mib", "peak RSS, MiB", "{:.1f}"),
    ("modbus_requests_per_poll", "Modbus transactions per poll", "{:.2f}"),
    ("wire_bytes_per_reading", "bytes/reading, sealed batches", "{:.2f}"),
    ("link_bytes_per_reading", "bytes/reading, all to and from hub", "{:.2f}"),
    ("disk_bytes_per_reading", "disk bytes written per reading", "{:.1f}"),
)


def summarise(runs: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Median, min and max of each figure over the runs."""
    return {key: {"median": statistics.median(r[key] for r in runs), "min": min(r[key] for r in runs), "max": max(r[key] for r in runs)}
            for key in runs[0]}


RunOnce = Callable[..., dict[str, float]]  # (load, directory, *, warmup_s, seconds) -> one run's figures


def measure(load: Load, *, runs: int, warmup_s: float, seconds: float, run: RunOnce = run_once,
            prefix: str = "ocn-load") -> dict[str, Any]:
    """``runs`` runs of ``run`` (this module's run_once unless given), each in a fresh directory; each run's figures and their summary."""
    results = []
    for i in range(runs):
        with tempfile.TemporaryDirectory(prefix=f"{prefix}-{load.name}-", dir=os.environ.get("OCN_BENCH_DIR")) as d:
            r = run(load, Path(d), warmup_s=warmup_s, seconds=seconds)
        print(f"  {load.name} run {i + 1}/{runs}: " + ", ".join(f"{k}={v:.4g}" for k, v in r.items()), flush=True)
        results.append(r)
    return {"load": load.title, "runs": results, "summary": summarise(results)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--load", choices=("meter", "fleet", "both"), default="both")
    parser.add_argument("--runs", type=int, default=3, help="runs per load (default 3)")
    # A multiple of the batcher's 30 s flush interval, so each window holds the same number of spool writes.
    parser.add_argument("--seconds", type=float, default=90.0, help="the measured window per run (default 90)")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds after the first reading before the window (default 10)")
    parser.add_argument("--quick", action="store_true", help="3 runs of a 30 s window (rough figures in about 4 minutes)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures here")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds = 30.0
    out = {}
    for name in ("meter", "fleet"):
        if args.load in (name, "both"):
            print(f"{LOADS[name].title}: {args.runs} runs, {args.seconds:.0f} s window after {args.warmup:.0f} s", flush=True)
            out[name] = measure(LOADS[name], runs=args.runs, warmup_s=args.warmup, seconds=args.seconds)
    print(f"\n{'figure':<38}" + "".join(f"{LOADS[n].title:>40}" for n in out))
    for key, label, fmt in FIGURES:
        cells = []
        for n in out:
            s = out[n]["summary"][key]
            cells.append(f"{fmt.format(s['median'])} ({fmt.format(s['min'])}–{fmt.format(s['max'])})")
        print(f"{label:<38}" + "".join(f"{c:>40}" for c in cells))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()

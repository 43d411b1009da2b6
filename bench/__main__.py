"""The performance report (`make bench`), or the benchmarks named: `python -m bench codec spool`.

    .venv/bin/python -m bench            # the report, then the other short benchmarks (about 20 minutes)
    .venv/bin/python -m bench --quick    # the report alone, with shorter runs (about 8 minutes; rougher figures)
    .venv/bin/python -m bench NAME ...   # only those benchmarks, each printing its own figures

The report runs bench.pipeline (demo policy), bench.gateway_load (a real `ocn-edge run` measured
from outside, at two loads), bench.floor (a bare asyncio client polling as the gateway does: the
floor under those CPU figures on this machine) and bench.hub (SQLite and PostgreSQL), three runs
each, and writes bench/results/latest.json (every run's figures, the machine and its load
average) and bench/results/latest.md (the table: median and range of the runs, beside the
targets of issue 17).
Then, without --quick, the other benchmarks print their own figures.  bench.hostile and the MQTT
benchmarks run for many minutes and only when named; nothing passes or fails on time.
"""

from __future__ import annotations

import datetime
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCHES = ("codec", "pipeline", "gateway_load", "floor", "oxp_state", "privacy", "serial_decode", "modbus_bus", "spool", "hub", "sta", "hostile",
           "sim_timing", "wakeups", "mqtt_link", "mqtt_hub", "mqtt_clients", "export_outbox", "offload")
# Run after the report by a plain `python -m bench`: each takes seconds to a few minutes.
AFTER_REPORT = ("codec", "oxp_state", "privacy", "serial_decode", "modbus_bus", "spool", "sta", "sim_timing", "wakeups")
RESULTS = Path(__file__).resolve().parent / "results"
ROOT = RESULTS.parent.parent

# (bench, arguments for the full report, arguments for --quick)
REPORT_RUNS = (
    ("pipeline", ["--policy", "demo", "--repeat", "3"], ["--policy", "demo", "--repeat", "3", "--readings", "110000"]),
    ("gateway_load", ["--runs", "3"], ["--runs", "3", "--quick"]),
    ("floor", ["--runs", "3"], ["--runs", "3", "--seconds", "15"]),
    ("hub", ["--runs", "3", "--gateways", "300"], ["--runs", "3", "--gateways", "100"]),
)

Figure = tuple[str, str, str, Callable[[dict[str, Any]], list[float]], str, str]  # name, load, unit, values, format, target


def _load_figures() -> list[Figure]:
    def runs(bench: str, key: str, where: Callable[[dict[str, Any]], bool] = lambda r: True) -> Callable[[dict[str, Any]], list[float]]:
        return lambda raw: [float(r[key]) for r in raw.get(bench, []) if where(r)]

    def load(name: str, key: str, bench: str = "gateway_load") -> Callable[[dict[str, Any]], list[float]]:
        return lambda raw: [float(r[key]) for r in raw.get(bench, {}).get(name, {}).get("runs", [])]

    meter, fleet = "one 30-value meter, 1 s", "20 meters, 1,000 readings/s"
    return [
        ("pipeline throughput, driver to sealed batch in the spool and on to the hub", "demo policy, AMPds2 meter", "readings per CPU-second",
         runs("pipeline", "readings_per_cpu_s"), "{:,.0f}", "≥ 100,000"),
        ("pipeline throughput, wall clock", "demo policy, AMPds2 meter", "readings/s", runs("pipeline", "readings_s"), "{:,.0f}", ""),
        ("CPU per 1,000 readings", meter, "CPU-s", load("meter", "cpu_s_per_1000"), "{:.4f}", "≤ 0.02"),
        ("floor: the same requests from a bare asyncio client, CPU per 1,000 readings", meter, "CPU-s",
         load("meter", "cpu_s_per_1000", "floor"), "{:.4f}", ""),
        ("peak RssAnon", meter, "MiB", load("meter", "peak_rss_anon_mib"), "{:.1f}", "≤ 32"),
        ("peak RSS", meter, "MiB", load("meter", "peak_rss_mib"), "{:.1f}", "≤ 60"),
        ("start-up, exec to first reading", meter, "s", load("meter", "startup_s"), "{:.3f}", "≤ 0.35"),
        ("Modbus transactions per poll", meter, "", load("meter", "modbus_requests_per_poll"), "{:.2f}", ""),
        ("bytes per reading, sealed batches (wire)", meter, "B", load("meter", "wire_bytes_per_reading"), "{:.2f}", ""),
        ("bytes per reading, all to and from the hub (link)", meter, "B", load("meter", "link_bytes_per_reading"), "{:.2f}", ""),
        ("disk bytes written per reading", meter, "B", load("meter", "disk_bytes_per_reading"), "{:.1f}", ""),
        ("CPU, share of one core", fleet, "%", load("fleet", "cpu_pct_core"), "{:.2f}", "≤ 2"),
        ("floor: the same requests from a bare asyncio client, share of one core", fleet, "%", load("fleet", "cpu_pct_core", "floor"),
         "{:.2f}", ""),
        ("CPU per 1,000 readings", fleet, "CPU-s", load("fleet", "cpu_s_per_1000"), "{:.4f}", ""),
        ("peak RssAnon", fleet, "MiB", load("fleet", "peak_rss_anon_mib"), "{:.1f}", "≤ 40"),
        ("peak RSS", fleet, "MiB", load("fleet", "peak_rss_mib"), "{:.1f}", ""),
        ("start-up, exec to first reading", fleet, "s", load("fleet", "startup_s"), "{:.3f}", ""),
        ("readings read per second", fleet, "readings/s", load("fleet", "readings_s"), "{:,.0f}", ""),
        ("Modbus transactions per poll", fleet, "", load("fleet", "modbus_requests_per_poll"), "{:.2f}", ""),
        ("bytes per reading, sealed batches (wire)", fleet, "B", load("fleet", "wire_bytes_per_reading"), "{:.2f}", ""),
        ("bytes per reading, all to and from the hub (link)", fleet, "B", load("fleet", "link_bytes_per_reading"), "{:.2f}", ""),
        ("disk bytes written per reading", fleet, "B", load("fleet", "disk_bytes_per_reading"), "{:.1f}", ""),
        ("hub ingest", "SQLite, gateways posting sealed batches", "readings/s", runs("hub", "readings_s", lambda r: r["db"] == "sqlite"),
         "{:,.0f}", ""),
        ("hub ingest", "PostgreSQL, likewise", "readings/s", runs("hub", "readings_s", lambda r: r["db"] == "postgresql"), "{:,.0f}", ""),
    ]


def _machine() -> dict[str, Any]:
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": platform.python_version(), "kernel": platform.release(),
            "commit": commit or None}


def _table(report: dict[str, Any]) -> str:
    lines = [
        "# OCN Edge performance report",
        "",
        f"`{report['command']}` at commit {report['machine']['commit']}, {report['finished']} "
        f"({report['seconds'] / 60:.0f} minutes), on {report['machine']['cpus']} CPUs ({report['machine']['cpu_model']}), "
        f"CPython {report['machine']['python']}.",
        f"Load average (1, 5, 15 min) before: {', '.join(f'{x:.2f}' for x in report['load_before'])}; "
        f"after: {', '.join(f'{x:.2f}' for x in report['load_after'])}. The machine is shared: the range is the run-to-run spread.",
        "",
        "| figure | load | median | range (min–max) | runs | target |",
        "|---|---|---:|---:|---:|---|",
    ]
    for f in report["figures"]:
        fmt = f["format"]
        unit = f" {f['unit']}" if f["unit"] else ""
        if not f["runs"]:
            lines.append(f"| {f['name']} | {f['load']} | not measured | | 0 | {f['target']} |")
            continue
        lines.append(f"| {f['name']} | {f['load']} | {fmt.format(f['median'])}{unit} | {fmt.format(f['min'])}–{fmt.format(f['max'])} "
                     f"| {len(f['runs'])} | {f['target']} |")
    lines += [
        "",
        "How each figure is taken (the benchmark's docstring says more):",
        "",
        "- pipeline: `python -m bench.pipeline`: a synthetic driver replays the AMPds2 meter through a real gateway in this "
        "process (privacy with policies/demo.toml, batcher, spool, uplink) to a hub process; readings per CPU-second of the "
        "gateway process (all its threads).",
        "- gateway: `python -m bench.gateway_load`: hil-sim (Modbus TCP, SDM630 register map), a hub and `ocn-edge run` as "
        "separate processes; CPU, RssAnon, RSS and disk writes of the gateway's process tree sampled from /proc once a second "
        "(bench/observer.py); start-up from just before exec to the gateway's `first reading` log line (CLOCK_MONOTONIC); "
        "bytes per reading the hub acked; every reading kept by the policy.",
        "- floor: `python -m bench.floor`: the gateway's requests to the same hil-sim scenario from a bare asyncio client polling "
        "as the gateway does (one connection and one request in flight under a lock, a timer per poll and a deadline per "
        "request, the registers unpacked, nothing else), observed as the gateway is (30 s windows): what this way of polling "
        "costs in stock asyncio on this machine before any of the gateway's own work.",
        "- hub: `python -m bench.hub`: simulated gateways post pre-sealed 1,100-reading batches to `ocn-edge hub` over loopback.",
    ]
    return "\n".join(lines) + "\n"


def report(quick: bool) -> int:
    started = time.monotonic()
    command = "make bench ARGS=--quick" if quick else "make bench"
    load_before, machine = list(os.getloadavg()), _machine()  # the commit measured, not one made during the run
    raw: dict[str, Any] = {}
    failed = []
    with tempfile.TemporaryDirectory(prefix="ocn-bench-report-") as d:
        for name, full, short in REPORT_RUNS:
            out = Path(d) / f"{name}.json"
            print(f"\n=== bench.{name} {' '.join(short if quick else full)} ===", flush=True)
            t0 = time.monotonic()
            code = subprocess.call([sys.executable, "-m", f"bench.{name}", *(short if quick else full), "--json", str(out)])
            print(f"=== bench.{name}: exit {code}, {time.monotonic() - t0:.0f} s ===", flush=True)
            if code != 0 or not out.exists():
                failed.append(name)
                continue
            raw[name] = json.loads(out.read_text())
    figures = []
    for name, load, unit, values, fmt, target in _load_figures():
        got = values(raw)
        figures.append({"name": name, "load": load, "unit": unit, "format": fmt, "target": target, "runs": got,
                        **({"median": statistics.median(got), "min": min(got), "max": max(got)} if got else {})})
    result = {
        "command": command,
        "finished": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": time.monotonic() - started,
        "machine": machine,
        "load_before": load_before,
        "load_after": list(os.getloadavg()),
        "figures": figures,
        "raw": raw,
        "failed": failed,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    table = _table(result)
    (RESULTS / "latest.md").write_text(table)
    print("\n" + table)
    print(f"written: {RESULTS / 'latest.json'}, {RESULTS / 'latest.md'}")
    if failed:
        print(f"benchmarks that did not finish: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def run_each(names: Sequence[str]) -> int:
    failed = []
    for name in names:
        importlib.import_module(f"bench.{name}")  # fail early on an import error, before minutes of running
        print(f"\n=== bench.{name} ===", flush=True)
        started = time.monotonic()
        # Each benchmark runs in its own process so one's memory and threads never skew the next.
        code = subprocess.call([sys.executable, "-m", f"bench.{name}"])
        print(f"=== bench.{name}: exit {code}, {time.monotonic() - started:.0f} s ===", flush=True)
        if code != 0:
            failed.append(name)
    if failed:
        print(f"benchmarks that did not finish: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    quick = "--quick" in argv
    names = [a for a in argv if a != "--quick"]
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    if names:
        return run_each(names)
    code = report(quick)
    if not quick:
        code = run_each(AFTER_REPORT) or code
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Run every benchmark in turn (`make bench`), or the ones named: `python -m bench codec spool`.

Each prints its own figures; nothing passes or fails on time.  Run one alone with
`python -m bench.NAME --help` to see its options.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import time

BENCHES = ("codec", "pipeline", "oxp_state", "privacy", "serial_decode", "modbus_bus", "spool", "hub", "sta", "hostile", "sim_timing")


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHES)}", file=sys.stderr)
        return 2
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The soak: the whole system on loopback under a timeline of faults, then an exact reconciliation.

    .venv/bin/python -m bench.soak [--minutes 10] [--keep DIR] [--seed 7]     (`make soak SOAK_MINUTES=2`)
    .venv/bin/python -m bench.soak --transport mqtt                         (through a Mosquitto broker, restarted too)
    .venv/bin/python -m bench.soak --reconcile DIR                          (check a kept run again)

Without --keep the run happens in a temporary directory, removed if the soak passes and kept (its
path printed) if it fails.

hil-sim runs every device type (serial, Modbus RTU and TCP, with line noise, dead units and USB
unplugs on a one-minute cycle) and writes every value it serves to its ledger; a real
`ocn-edge run` process, installed by images/install.sh and run by a stand-in for its systemd units
(bench/releases), reads them and delivers through hil-sim's uplink proxy to a real hub process
(SQLite).  The timeline cuts the link until the spool's quota refuses batches, kills the gateway
with SIGKILL four times, answers 503 and garbage, takes the hub down, rolls out an update through
the hub (the gateway restarts into it) and a bad release (rolled back, the rollout halted),
restarts the hub with SIGKILL, throttles, cuts and black-holes the link, and stops the gateway
with SIGTERM.  Then the
hub's database is matched against the ledger passed through the gateway's own policy code; the
table is printed, and the exit status is 1 on any duplicate, extra or unexplained reading, or a
loss counter of the gateway that disagrees with the causes (docs/soak.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bench.soak.evidence import load_evidence, summary
from bench.soak.run import SCENARIO, TRANSPORTS, run_soak


async def soak_and_check(minutes: float, directory: Path, seed: int, transport: str) -> int:
    if not await run_soak(minutes, directory, seed, transport=transport):
        return 1
    return await check(directory)


async def check(directory: Path) -> int:
    evidence = await load_evidence(directory, SCENARIO)
    print()
    print(summary(evidence))
    return 0 if evidence.outcome.ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=float(os.environ.get("SOAK_MINUTES", "10")),
                        help="how long the timeline runs (default $SOAK_MINUTES, else 10); at least 2")
    parser.add_argument("--keep", type=Path, help="run in this directory and keep it (ledger, logs, databases, soak.json)")
    parser.add_argument("--seed", type=int, default=7, help="hil-sim's seed (values and fault draws)")
    parser.add_argument("--transport", choices=TRANSPORTS, default="http",
                        help="http (default), or mqtt: through a Mosquitto broker the timeline kills and restarts")
    parser.add_argument("--reconcile", type=Path, metavar="DIR", help="only reconcile the kept run in DIR again")
    args = parser.parse_args(argv)
    if args.reconcile:
        if not (args.reconcile / "soak.json").is_file():
            parser.error(f"--reconcile {args.reconcile}: no soak.json there; expected a directory a finished --keep run left")
        return asyncio.run(check(args.reconcile))
    if args.minutes < 2:
        parser.error(f"--minutes {args.minutes:g}: expected at least 2 (every device fault cycles once a minute)")
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        return asyncio.run(soak_and_check(args.minutes, args.keep, args.seed, args.transport))
    # Without --keep the run's directory goes when the soak passes and stays when it fails: a failed soak is
    # read in its logs and ledger (docs/soak.md), and a rare failure may not come back on the next run.
    directory = Path(tempfile.mkdtemp(prefix="ocn-soak-"))
    status = 1
    try:
        status = asyncio.run(soak_and_check(args.minutes, directory, args.seed, args.transport))
    finally:
        if status == 0:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            print(f"soak: the run is kept in {directory} (logs, ledger, databases, soak.json); "
                  f"reconcile it again with: python -m bench.soak --reconcile {directory}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())

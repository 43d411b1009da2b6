"""`ocn-edge sim`: run a hil-sim scenario until stopped and say where its devices are."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edge.commands import positive

if TYPE_CHECKING:
    from hilsim.scenario import Scenario

__all__ = ["register"]

# The field guide's `curl http://127.0.0.1:8080/status` works against the written config.
LOCAL_API = "127.0.0.1:8080"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sim = sub.add_parser(
        "sim",
        help="run simulated sensors, meters and faults (hil-sim) for a gateway on this machine",
        description=(
            "Run a hil-sim scenario: serial devices on pseudo-terminals, Modbus RTU on a pty and Modbus TCP "
            "on 127.0.0.1, with scripted faults. As soon as every device is ready, print the device paths "
            "and ports a gateway config should use, then run until Ctrl-C or --duration."
        ),
    )
    sim.add_argument("scenario", metavar="SCENARIO",
                     help="a scenario name shipped with hil-sim (e.g. default) or a path to a scenario .toml")
    sim.add_argument("--json", action="store_true", help="print the endpoints as one JSON object on one line")
    sim.add_argument("--write-config", metavar="FILE",
                     help="write a gateway config pointing at the simulated devices, with the local API on, and "
                          "the demo policy as policy.toml beside it unless one is there")
    sim.add_argument("--seed", type=int, help="seed for values, population and faults (default: the scenario's)")
    sim.add_argument("--duration", type=positive, metavar="S", help="stop after this many seconds")
    sim.add_argument("--run-dir", metavar="DIR", help="where the device symlinks go (default: a temporary directory)")
    sim.add_argument("--hub", metavar="URL", help="put the uplink proxy in front of this hub, e.g. http://127.0.0.1:8443/")
    sim.add_argument("--state-dir", metavar="DIR", default="state",
                     help="state_dir written into --write-config (default: %(default)s)")
    sim.add_argument("--log-level", choices=("debug", "info", "warning", "error"), default="info",
                     help="fault windows opening and closing are logged at info, to stderr (default: %(default)s)")
    sim.set_defaults(func=_sim)


def _sim(args: argparse.Namespace) -> int:
    from edge.logs import setup_logging
    from hilsim.scenario import ScenarioError, load_scenario

    setup_logging(args.log_level, stream=sys.stderr)  # stdout carries only the endpoints

    if args.write_config and Path(args.write_config).is_dir():  # found now, not after every device started
        print(f"ocn-edge sim: --write-config {args.write_config}: is a directory; expected a file name", file=sys.stderr)
        return 2
    try:
        scenario = load_scenario(args.scenario)
    except ScenarioError as exc:
        print(f"ocn-edge sim: {exc}", file=sys.stderr)
        return 2
    except UnicodeDecodeError as exc:
        print(f"ocn-edge sim: {args.scenario}: not UTF-8 text (at byte {exc.start})", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(scenario, args))
    except ScenarioError as exc:
        print(f"ocn-edge sim: {exc}", file=sys.stderr)
        return 2


async def _serve(scenario: Scenario, args: argparse.Namespace) -> int:
    from hilsim.scenario import run_scenario

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with run_scenario(scenario, seed=args.seed, run_dir=args.run_dir, hub=args.hub) as sim:
        if args.write_config:
            _write_config(Path(args.write_config), sim.gateway_config_toml(
                state_dir=args.state_dir, local_api_listen=LOCAL_API))
        print(sim.to_json() if args.json else sim.to_text(), flush=True)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=args.duration)
    return 0


def _write_config(config: Path, text: str) -> None:
    """Write the config and, unless one is there already, the demo policy it names, so the pair passes `check`."""
    from edge.starter import starter_files

    config.write_text(text, encoding="utf-8")
    policy = config.parent / "policy.toml"
    if not policy.exists():
        policy.write_text(starter_files()["policy.toml"], encoding="utf-8")

"""Sub-commands that run a gateway: `run` (the service) and `demo` (everything on this machine)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from pathlib import Path

from edge.commands import positive


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser(
        "run",
        help="run the gateway described by a config file (what the systemd service runs)",
        description=(
            "Run the gateway: read the configured devices, apply the privacy policy, seal batches "
            "into the spool and sync them to the hub. Stops cleanly on SIGTERM or Ctrl-C, first "
            "writing every reading still in memory to the spool. Under systemd (Type=notify) it "
            "reports readiness and pings the watchdog."
        ),
    )
    run.add_argument("config", metavar="CONFIG", help="the gateway's TOML config, e.g. /etc/ocn-edge/gateway.toml")
    run.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="overrides gateway.log_level")
    run.add_argument("--log-format", choices=("logfmt", "json"), default="logfmt",
                     help="one key=value line per event (default) or one JSON object per line, for log shippers")
    run.set_defaults(func=_run)

    demo = sub.add_parser(
        "demo",
        help="run simulated sensors -> gateway -> hub on this machine and show readings flowing",
        description=(
            "Start the simulator's default scenario (every device type), a hub on 127.0.0.1 with "
            "SQLite, and a gateway configured for both; print a live status line until Ctrl-C or "
            "--duration, then a summary."
        ),
    )
    demo.add_argument("--duration", type=positive, metavar="SECONDS", help="stop after this many seconds")
    demo.add_argument("--json", action="store_true", help="print the final summary as one JSON object")
    demo.add_argument("--scenario", default="default", help="simulator scenario name or path (default: %(default)s)")
    demo.add_argument("--state-dir", metavar="DIR", help="keep the demo's state here (default: a temporary directory)")
    demo.add_argument("--seed", type=int, default=1, help="simulator seed (default: %(default)s)")
    demo.add_argument("--log-format", choices=("logfmt", "json"), default="logfmt",
                      help="warnings on stderr as key=value lines (default) or JSON objects")
    demo.set_defaults(func=_demo)


def _run(args: argparse.Namespace) -> int:
    from edge.clock import hold_until_clock_set
    from edge.config import ConfigError, load_config
    from edge.logs import setup_logging
    from edge.runtime import StartError
    from edge.service import run_gateway

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        from edge.commands.check import with_hint

        print("\n".join(map(with_hint, exc.problems)), file=sys.stderr)
        return 2
    setup_logging(args.log_level or config.gateway.log_level, fmt=args.log_format)
    problem = _state_dir_problem(config.gateway.state_dir)
    if problem:
        print(f"ocn-edge run: {problem}", file=sys.stderr)
        return 2
    # Nothing is read or sealed before the clock can be believed (edge/clock.py).
    asyncio.run(hold_until_clock_set(config.gateway.state_dir))
    frozen = False

    def freeze(_gateway: object) -> None:
        # Everything alive once the pipeline has started (modules, config, clients) leaves the collector's
        # generations: every full collection walked all of it again, ~15 ms each, a third of a one-meter
        # gateway's CPU (py-spy).  Garbage made later is collected as ever.  After a reload the previous
        # pipeline's objects are handed back to the collector first, so none of them is kept for good.
        nonlocal frozen
        if frozen:
            gc.unfreeze()
            gc.collect()
        gc.freeze()
        frozen = True

    try:
        # Freezing again once aiohttp has loaded, after the first reading (edge.util.loading), takes its modules in too.
        gateway = asyncio.run(run_gateway(config, started=freeze, loaded=lambda: freeze(None)))
    except StartError as exc:
        print(f"ocn-edge run: {exc}", file=sys.stderr)
        return 2
    # A pipeline task died: exit non-zero so systemd (Restart=always) starts a fresh process.
    return 1 if gateway.fatal.is_set() else 0


def _state_dir_problem(state_dir: Path) -> str | None:
    """Why the state directory cannot be made or used, as one line with the fix; None when it can."""
    from edge.private import private_directory

    try:
        private_directory(state_dir)
    except OSError as exc:
        why = exc.strerror or str(exc)
        return (f"gateway.state_dir = \"{state_dir}\": cannot create it ({why}); create it for the gateway's user "
                f"(sudo install -d -o ocn-edge -m 0700 {state_dir}) or set state_dir to a directory it may write")
    if not os.access(state_dir, os.W_OK | os.X_OK):
        return (f"gateway.state_dir = \"{state_dir}\": not writable by this user; give it to the gateway's user "
                f"(sudo chown ocn-edge {state_dir}) or set state_dir to a directory it may write")
    return None


def _demo(args: argparse.Namespace) -> int:
    from edge.demo import run_demo

    return asyncio.run(
        run_demo(
            duration=args.duration,
            as_json=args.json,
            scenario=args.scenario,
            state_dir=args.state_dir,
            seed=args.seed,
            log_format=args.log_format,
        )
    )

"""Sub-commands that run a gateway: `run` (the service) and `demo` (everything on this machine)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edge.commands import positive

if TYPE_CHECKING:
    from edge.config import GatewayConfig


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
    run.add_argument("--log-level", action="append", type=_log_level, metavar="[LOGGER=]LEVEL",
                     help="overrides gateway.log_level (debug, info, warning, error); LOGGER=LEVEL one logger's, e.g. "
                          "ocn.bus=debug, over gateway.log_levels; may be given more than once")
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


def _log_level(text: str) -> tuple[str | None, str]:
    """``--log-level``: a level, or a logger's name and its level (``ocn.bus=debug``)."""
    from edge.logs import LEVELS, logger_problem

    name, _, level = text.rpartition("=")
    if level not in LEVELS:
        raise argparse.ArgumentTypeError(f"{text!r}: the level is one of {', '.join(LEVELS)}")
    if name and (problem := logger_problem(name)) is not None:
        raise argparse.ArgumentTypeError(f"{text!r}: {name} is {problem}")
    return name or None, level


def _pinned_levels(given: list[tuple[str | None, str]]) -> tuple[str | None, dict[str, str]]:
    """The gateway's level (the last plain ``--log-level LEVEL``, None if none) and each named logger's (the last for it)."""
    root = next((level for name, level in reversed(given) if name is None), None)
    return root, {name: level for name, level in given if name is not None}


def _unknown_device_logger(loggers: dict[str, str], config: GatewayConfig) -> str | None:
    """``ocn.driver.<device>=LEVEL`` for a device the config does not have, said as a problem; None if there is none."""
    from edge.logs import DRIVER_LOGGER

    names = {device.name for device in config.devices}
    for name, level in loggers.items():
        device = name.removeprefix(DRIVER_LOGGER + ".")
        if device != name and device not in names:
            return f"{name}={level}: no device named {device!r} in {config.path}"
    return None


def _run(args: argparse.Namespace) -> int:
    from edge.config import ConfigError, load_config
    from edge.logs import apply_levels, pin_levels, setup_logging

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        from edge.commands.check import with_hint

        print("\n".join(map(with_hint, exc.problems)), file=sys.stderr)
        return 2
    root, loggers = _pinned_levels(args.log_level or [])
    if (problem := _unknown_device_logger(loggers, config)) is not None:
        print(f"ocn-edge run: --log-level {problem}", file=sys.stderr)
        return 2
    setup_logging(root or config.gateway.log_level, fmt=args.log_format)
    pin_levels(root, loggers)  # over the config's, this one's and a reload's, until the gateway stops
    try:
        apply_levels(config.gateway.log_level, config.gateway.log_levels)
        return _run_gateway(config)
    finally:
        pin_levels(None, {})


def _run_gateway(config: GatewayConfig) -> int:
    """The gateway of ``config`` until it stops; its exit status."""
    from edge.clock import hold_until_clock_set
    from edge.runtime import StartError
    from edge.service import run_gateway

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

"""The `ocn-edge` command line: one entry point, one sub-command module per job."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from edge import __version__

# Each module defines `register(subparsers)`, adding its sub-commands with
# `set_defaults(func=handler)`; a handler takes the parsed args and returns an exit status.
COMMAND_MODULES: tuple[str, ...] = (
    # In the order a technician meets them: run a gateway, commission it, then the tools.
    "edge.commands.gateway",
    "edge.commands.init",
    "edge.commands.check",
    "edge.commands.enrol",
    "drivers.cli",
    "edge.commands.policy",
    "hilsim.cli",
    "hub.cli",
    "edge.commands.oxp",
)

DESCRIPTION = """\
OCN Edge gateway: reads municipal sensors, applies the city's privacy policy on
the device, and syncs signed batches to a city-run hub.

Start here:
  ocn-edge demo                 run simulated sensors -> gateway -> hub on this machine
  ocn-edge init /etc/ocn-edge   write a commented gateway.toml and a policy.toml to start from
  ocn-edge check gateway.toml   validate a gateway config and print the effective settings
  ocn-edge run gateway.toml     run the gateway (what the systemd service does)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ocn-edge",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ocn-edge {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

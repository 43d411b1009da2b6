"""The `ocn-edge` command line: one entry point, one sub-command module per job."""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from edge import __version__
from edge.commands import EXIT_USAGE, CommandError, file_problem

EXIT_BUG = 70  # sysexits EX_SOFTWARE: ocn-edge itself failed, whatever the input

DESCRIPTION = """\
OCN Edge gateway: reads municipal sensors, applies the city's privacy policy on
the device, and syncs signed batches to a city-run hub.

Start here:
  ocn-edge demo                 run simulated sensors -> gateway -> hub on this machine
  ocn-edge init /etc/ocn-edge   write a commented gateway.toml and a policy.toml to start from
  ocn-edge check gateway.toml   validate a gateway config and print the effective settings
  ocn-edge run gateway.toml     run the gateway (what the systemd service does)

Bad input (a missing or malformed file, an option out of range) ends a command
with exit status 2 and a line naming the file, option or value; status 70 means
a bug in ocn-edge itself.
"""


class _Parser(argparse.ArgumentParser):
    """Says what is wrong with the command line in one line (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


# Each module defines `register(subparsers)`, adding its sub-commands with `set_defaults(func=handler)`; a handler
# takes the parsed args and returns an exit status.  COMMANDS names the module that registers each command word, the
# modules in the order a technician meets them (run a gateway, commission it, then the tools).  `ocn-edge WORD ...`
# builds only that module's parser: `ocn-edge run`, which systemd starts at every boot and restart, does not pay the
# hub's, the simulator's and the tools' imports in its start-up time and memory (targets measured by
# bench/gateway_load.py; tests/guardrails/test_run_imports.py keeps them out), and a technician's `ocn-edge status`,
# `check` or `ports` does not import the hub, hil-sim and aiohttp first (0.6 s of the 0.7 s `ocn-edge drivers` took on
# a 2-core EPYC, a few seconds on a Pi).  Only `ocn-edge`, `--help` and an unknown word build them all.
# tests/runtime/test_cli.py keeps this table equal to what the modules register.
COMMANDS: dict[str, str] = {
    "run": "edge.commands.gateway",
    "demo": "edge.commands.gateway",
    "init": "edge.commands.init",
    "check": "edge.commands.check",
    "status": "edge.commands.status",
    "access-token": "edge.commands.status",
    "enrol": "edge.commands.enrol",
    "image": "edge.commands.image",
    "release": "edge.commands.release",
    "drivers": "edge.commands.drivers",
    "driver": "edge.commands.drivers",
    "ports": "edge.commands.drivers",
    "scan": "edge.commands.drivers",
    "read": "edge.commands.drivers",
    "policy": "edge.commands.policy",
    "notice": "edge.commands.policy",
    "sim": "hilsim.cli",
    "hub": "hub.cli",
    "oxp": "edge.commands.oxp",
    "keygen": "edge.commands.oxp",
}
COMMAND_MODULES: tuple[str, ...] = tuple(dict.fromkeys(COMMANDS.values()))  # each once, in COMMANDS' order


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ocn-edge",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ocn-edge {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name in modules:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else list(argv)
    if words == ["--version"]:  # what argparse would print, without importing every command's module (the hub's too)
        print(f"ocn-edge {__version__}")
        return 0
    home = COMMANDS.get(words[0]) if words else None
    parser = build_parser((home,) if home else COMMAND_MODULES)
    args = parser.parse_args(words)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        return 130
    except CommandError as exc:
        print(f"ocn-edge: {exc}", file=sys.stderr)
        return exc.status
    except OSError as exc:
        if exc.filename is None:  # not about a file the user named: a bug, or a fault the command should report
            return _bug()
        print(f"ocn-edge: {file_problem(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception:
        return _bug()


def _bug() -> int:
    """Anything else is a bug, never the input's fault: show where it happened, and say so once."""
    traceback.print_exc()
    print(f"ocn-edge: this is a bug in ocn-edge {__version__}, not a problem with the input; "
          "please report it with the command line and the lines above", file=sys.stderr)
    return EXIT_BUG


if __name__ == "__main__":
    sys.exit(main())

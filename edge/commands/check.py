"""`ocn-edge check CONFIG`: validate a gateway config and print the settings the gateway would use."""

from __future__ import annotations

import argparse
import sys

from edge.config import ConfigError, GatewayConfig, effective_toml, load_config

__all__ = ["check", "register"]

EXIT_OK = 0
EXIT_INVALID = 2

HELP = "validate a gateway config file and print the effective settings"
DESCRIPTION = """\
Check a gateway config file before you install or restart the gateway.

Every problem is listed at once, one per line, naming the file, the setting,
the value found and what would be accepted, for example:

  gateway.toml: devices[2].poll_interval = "fast": expected a duration like "10s"

The privacy policy the file names is checked too (as `ocn-edge policy check`
does), since the gateway does not start with a bad policy either.

When both are valid, the effective config is printed: every setting the
gateway will use, defaults filled in and paths made absolute. It is itself a
valid config file.

Exit status: 0 when the file is valid, 2 when it has problems.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "check",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", metavar="CONFIG", help="the gateway config file, e.g. /etc/ocn-edge/gateway.toml")
    parser.add_argument(
        "--quiet", "-q", action="store_true", help="print nothing when the file is valid; only the exit status tells"
    )
    parser.set_defaults(func=check)


def check(args: argparse.Namespace) -> int:
    """Validate ``args.config``: the effective config to stdout (exit 0), or every problem to stderr (exit 2)."""
    from edge.privacy import PolicyError  # imported here so `ocn-edge --help` stays quick on a Pi

    try:
        cfg = load_config(args.config)
        _check_policy(cfg)
    except (ConfigError, PolicyError) as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        count = len(err.problems)
        print(f"{args.config}: {count} problem{'s' if count != 1 else ''}; the gateway will not start", file=sys.stderr)
        return EXIT_INVALID
    if not args.quiet:
        sys.stdout.write(effective_toml(cfg))
        enabled = sum(device.enabled for device in cfg.devices)
        print(
            f"{args.config}: valid ({len(cfg.buses)} buses, {enabled} of {len(cfg.devices)} devices enabled)",
            file=sys.stderr,
        )
    return EXIT_OK


def _check_policy(cfg: GatewayConfig) -> None:
    """Load the policy the way the gateway does at start-up; PolicyError lists its problems."""
    from edge.privacy import load_policy

    load_policy(
        cfg.privacy.policy,
        governance_key=cfg.privacy.governance_key,
        require_signed=cfg.privacy.require_signed,
    )

"""`ocn-edge enrol CONFIG --token TOKEN`: create the device key if needed and register it at the hub."""

from __future__ import annotations

import argparse
import asyncio
import sys

from edge.config import ConfigError, load_config
from edge.enrol import EnrolError, enrol

__all__ = ["register", "run_enrol"]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_INVALID = 2

DESCRIPTION = """\
Enrol this gateway at the hub named in its config ([uplink] hub), using a
one-time token from city IT.

If the device key ([uplink] key, by default <state_dir>/device.key) does not
exist yet, it is created first (mode 0600, with device.pub beside it). The
key id and the hub's answer are printed:

  status active    the hub accepts this gateway's batches from now on
  status pending   city IT must approve the gateway in the hub first

Pass --token - to read the token from standard input, so it does not appear
in the shell history or the process list.

Exit status: 0 enrolled, 1 the hub refused or could not be reached, 2 the
config file has problems.
"""


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "enrol",
        help="create the device key if needed and enrol the gateway at its hub with a token",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", metavar="CONFIG", help="the gateway config file, e.g. /etc/ocn-edge/gateway.toml")
    parser.add_argument("--token", required=True, help="the enrolment token from city IT ('-' reads it from stdin)")
    parser.set_defaults(func=run_enrol)


def run_enrol(args: argparse.Namespace) -> int:
    """Enrol per ``args.config``; prints the key id and status, or the reason it failed."""
    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    token = sys.stdin.readline() if args.token == "-" else args.token
    try:
        result = asyncio.run(
            enrol(
                hub_url=cfg.uplink.hub,
                token=token,
                device_id=cfg.gateway.id,
                key_path=cfg.uplink.key,
                ca=cfg.uplink.ca,
                timeout_s=cfg.uplink.timeout,
            )
        )
    except EnrolError as err:
        print(f"{args.config}: enrolment failed: {err}", file=sys.stderr)
        return EXIT_REFUSED
    if result.key_created:
        print(f"created device key {result.key_path} (mode 0600)")
    print(f"device {result.device_id} enrolled at {cfg.uplink.hub}")
    print(f"key id {result.key_id}")
    print(f"status {result.status}")
    if result.status == "pending":
        print("city IT must approve this gateway in the hub before its batches are accepted")
    return EXIT_OK

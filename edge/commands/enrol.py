"""`ocn-edge enrol CONFIG --token TOKEN`: create the device key if needed and register it at the hub.

`ocn-edge enrol --first-boot CONFIG` is what the oneshot unit ocn-edge-enrol.service runs on a seeded
card: the token comes from the file cloud-init wrote beside the config (/etc/ocn-edge/enrol-token).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from edge.commands import not_negative
from edge.config import ConfigError, GatewayConfig, load_config
from edge.enrol import TOKEN_FILE, EnrolError, HubUnreachable, enrol, first_boot

__all__ = ["register", "run_enrol"]

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_INVALID = 2
EXIT_UNREACHABLE = 75  # sysexits EX_TEMPFAIL: the hub was not reachable in time; the token is kept for the next try

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

--first-boot is the unattended form a seeded card runs once before the gateway
starts (ocn-edge-enrol.service): the token is read from --token-file (default
enrol-token beside CONFIG, where `ocn-edge image seed` has cloud-init put it),
the outcome is recorded in <state_dir>/enrolment.json (the local page shows a
refusal), and the token file is deleted once the hub has accepted it. Run again
it does nothing. While the hub cannot be reached it retries, waiting 1 s, 2 s,
4 s ... up to 60 s between tries, for --retry-for seconds.

Exit status: 0 enrolled (or, with --first-boot, enrolled before or no token to
present), 1 the hub refused or could not be reached, 2 the config file has
problems, 75 (--first-boot) the hub was not reachable within --retry-for.
"""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "enrol",
        help="create the device key if needed and enrol the gateway at its hub with a token",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", metavar="CONFIG", help="the gateway config file, e.g. /etc/ocn-edge/gateway.toml")
    parser.add_argument("--token", help="the enrolment token from city IT ('-' reads it from stdin)")
    parser.add_argument("--first-boot", action="store_true", help="unattended: token from --token-file, retried, recorded, then deleted")
    parser.add_argument("--token-file", metavar="PATH", help=f"with --first-boot: where the seeded token is (default {TOKEN_FILE} beside CONFIG)")
    parser.add_argument(
        "--retry-for", type=not_negative, default=900.0, metavar="SECONDS",
        help="with --first-boot: keep trying an unreachable hub this long (default %(default)s)",
    )
    parser.set_defaults(func=run_enrol)


def run_enrol(args: argparse.Namespace) -> int:
    """Enrol per ``args.config``; prints the key id and status, or the reason it failed."""
    try:
        cfg = load_config(args.config)
    except ConfigError as err:
        for problem in err.problems:
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    if args.first_boot:
        return _first_boot(args, cfg)
    if args.token is None:
        print("ocn-edge enrol: --token is required (or --first-boot to use the seeded token file)", file=sys.stderr)
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


def _first_boot(args: argparse.Namespace, cfg: GatewayConfig) -> int:
    """Each line printed here lands in the journal once: a retry is announced once, not per attempt."""
    token_file = Path(args.token_file) if args.token_file else Path(args.config).resolve().parent / TOKEN_FILE
    announced: list[bool] = []

    def on_retry(exc: HubUnreachable, delay: float) -> None:
        if not announced:
            announced.append(True)
            print(f"{args.config}: {exc}; retrying for up to {args.retry_for:g} s", file=sys.stderr)

    try:
        result = asyncio.run(
            first_boot(
                hub_url=cfg.uplink.hub,
                token_file=token_file,
                device_id=cfg.gateway.id,
                key_path=cfg.uplink.key,
                state_dir=Path(cfg.gateway.state_dir),
                ca=cfg.uplink.ca,
                timeout_s=cfg.uplink.timeout,
                retry_for_s=args.retry_for,
                on_retry=on_retry,
            )
        )
    except HubUnreachable as err:
        print(f"{args.config}: enrolment postponed: {err}; the token is kept for the next boot", file=sys.stderr)
        return EXIT_UNREACHABLE
    except EnrolError as err:
        print(f"{args.config}: enrolment refused: {err}", file=sys.stderr)
        return EXIT_REFUSED
    if result.outcome == "already":
        print(f"device {cfg.gateway.id} is already enrolled; nothing to do")
    elif result.outcome == "no-token":
        print(f"no enrolment token at {token_file}; nothing to do")
    elif result.enrolment is not None:
        print(f"device {result.enrolment.device_id} enrolled at {cfg.uplink.hub}, key id {result.enrolment.key_id}, "
              f"status {result.enrolment.status}; {token_file} deleted")
    return EXIT_OK

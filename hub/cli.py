"""`ocn-edge hub`: run the hub, and manage enrolment tokens, devices, desired configuration, accounts, the audit log and retention.

Commands other than the server work on the store directly; what they change is recorded in the
audit log as ``cli:<os user>`` (hub.audit.cli_actor).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import re
import shlex
import signal
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge.commands import CommandError, file_problem, make_directory, positive, whole
from edge.protocol import DEVICE_ID_RE
from edge.util.files import toml_problem
from hub import keycommands
from hub.audit import cli_actor

__all__ = ["register", "parse_duration_s"]

DEFAULT_STATE_DIR = "ocn-hub"
DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d)$")
UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_TOKEN_USES = 1_000_000  # more devices than any city has: a larger number is a typo
MAX_TOKEN_DAYS = 3650  # a token is for a roll-out, not forever


def parse_duration_s(option: str, text: str) -> float:
    """'500ms', '10s', '5m', '12h', '7d' as seconds; the error names the option and what is accepted."""
    m = DURATION.match(text.strip())
    if m is None:
        raise argparse.ArgumentTypeError(f"{option} {text!r}: expected a number and a unit, like 30s, 15m, 12h or 7d")
    return float(m.group(1)) * UNITS[m.group(2)]


def _duration(option: str, *, at_most_s: float = float("inf")) -> Callable[[str], float]:
    def parse(text: str) -> float:
        seconds = parse_duration_s(option, text)
        if seconds > at_most_s:
            raise argparse.ArgumentTypeError(f"{option} {text!r}: expected at most {at_most_s / 86400:g}d")
        return seconds

    return parse


def _device_id(text: str) -> str:
    if not DEVICE_ID_RE.match(text):
        raise argparse.ArgumentTypeError(f"{text[:80]!r}: expected a device id of 1-64 lowercase letters, digits and '-'"
                                         " (see `ocn-edge hub device list`)")
    return text


def _browser_url(text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise argparse.ArgumentTypeError(f"{text!r}: expected the hub's address as http(s)://HOST[:PORT], "
                                         "e.g. https://hub.example.org")
    return text


def _store_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default=argparse.SUPPRESS, metavar="URL",
                        help="sqlite:///path.db or postgresql://user@host/db (default: SQLite in the state directory)")
    common.add_argument("--state-dir", default=argparse.SUPPRESS, metavar="DIR",
                        help=f"holds the hub signing key and the default SQLite database (default: ./{DEFAULT_STATE_DIR}, or $OCN_HUB_STATE_DIR)")
    return common


def _state_dir(args: argparse.Namespace) -> Path:
    return Path(getattr(args, "state_dir", None) or os.environ.get("OCN_HUB_STATE_DIR") or DEFAULT_STATE_DIR)


def _db(args: argparse.Namespace) -> str:
    url = getattr(args, "db", None) or os.environ.get("OCN_HUB_DB") or f"sqlite:///{(_state_dir(args) / 'hub.db').resolve()}"
    try:
        _ = urlsplit(url).port  # the store's drivers parse host and port as they like; refuse what none can read
    except ValueError:
        raise CommandError(f"--db {url!r}: cannot read its host or port; expected sqlite:///path.db "
                           "or postgresql://user@host[:port]/database") from None
    return url


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = _store_options()
    hub = sub.add_parser(
        "hub", parents=[common], help="run the city hub (enrolment, ingest, fleet dashboard, open data)",
        description="Run the OCN hub. Without a sub-command it serves until stopped (SIGTERM or Ctrl-C).",
    )
    hub.add_argument("--listen", default="127.0.0.1:8443", metavar="HOST:PORT", help="address to serve on (default 127.0.0.1:8443)")
    hub.add_argument("--admin-token", default=os.environ.get("OCN_HUB_ADMIN_TOKEN"), metavar="TOKEN",
                     help="admin token for the dashboard (default: $OCN_HUB_ADMIN_TOKEN, else generated and printed at first start)")
    hub.add_argument("--rate", type=positive, default=50.0, metavar="N", help="batches per second each device may send (default 50)")
    hub.add_argument("--burst", type=whole(1, 1_000_000), default=200, metavar="N", help="batches a device may send at once above its rate (default 200)")
    hub.add_argument("--readings-rate", type=float, default=1000.0, metavar="N",
                     help="readings per second each device may send, up to 4x more if it has shown a higher rate (default 1000)")
    hub.add_argument("--readings-burst", type=int, default=100_000, metavar="N", help="readings a device may send at once (default 100000)")
    hub.add_argument("--ingest-workers", type=int, default=2, metavar="N", help="threads verifying and decoding messages (default 2)")
    hub.add_argument("--ingest-queue", type=int, default=16, metavar="N",
                     help="messages that may wait for a worker; beyond them the hub answers 503 busy (default 16)")
    hub.add_argument("--address-rate", type=float, default=5.0, metavar="N",
                     help="refused enrolments and messages refused before or at their signature, per second per client address (default 5)")
    hub.add_argument("--address-burst", type=int, default=300, metavar="N", help="such requests a client address may make at once (default 300)")
    hub.add_argument("--trusted-proxy", action="append", default=[], metavar="NETWORK",
                     help="a proxy whose X-Forwarded-For names the client, e.g. 127.0.0.1/32 (repeatable; default none)")
    hub.add_argument("--public-process", choices=("on", "off"), default="on",
                     help="answer open data and SensorThings in a process of their own at a lower CPU priority, so heavy public "
                          "queries never slow devices or operators (default on; off: in the hub's process, paced by --public-loop-share)")
    hub.add_argument("--public-nice", type=int, default=10, metavar="N",
                     help="how much lower the public reads process's CPU priority is, 0-19 (default 10)")
    hub.add_argument("--public-per-client", type=int, default=2, metavar="N",
                     help="open-data and SensorThings requests one client address may run at once; more are answered 429 (default 2)")
    hub.add_argument("--public-queue", type=int, default=8, metavar="N",
                     help="public queries of readings that may wait for the public lane; beyond them the hub answers 503 busy (default 8)")
    hub.add_argument("--public-time-budget", type=_duration("--public-time-budget"), default=30.0, metavar="DURATION",
                     help="time one public request's queries of readings may take, waiting included; then 503 busy (default 30s)")
    hub.add_argument("--public-cpu-budget", type=_duration("--public-cpu-budget"), default=5.0, metavar="DURATION",
                     help="CPU work one public request's queries of readings may use; a query needing more is answered 400 too_costly (default 5s)")
    hub.add_argument("--public-cpu-share", type=float, default=0.5, metavar="FRACTION",
                     help="part of one CPU all public queries together may use; they pause to stay within it (default 0.5)")
    hub.add_argument("--public-readings-in-flight", type=int, default=100_000, metavar="N",
                     help="readings the public requests being answered may hold together; others wait for the lane (default 100000)")
    hub.add_argument("--public-loop-share", type=float, default=0.25, metavar="FRACTION",
                     help="with --public-process off: part of the event loop's time rendering public answers may take, all together (default 0.25)")
    hub.add_argument("--public-max-examined", type=int, default=1_000_000, metavar="N",
                     help="readings one public request may examine; a query needing more is answered 400 too_costly (default 1000000)")
    hub.add_argument("--header-timeout", type=_duration("--header-timeout"), default=10.0, metavar="DURATION",
                     help="a request's headers must arrive within this of the connection or the request's first byte (default 10s)")
    hub.add_argument("--body-timeout", type=_duration("--body-timeout"), default=30.0, metavar="DURATION",
                     help="a request's body must arrive within this, else 408 (default 30s)")
    hub.add_argument("--max-connections", type=int, default=4096, metavar="N",
                     help="open connections at most; more are answered 503 and closed; the hub raises its open-file limit to fit (default 4096)")
    hub.add_argument("--stale-after", type=_duration("--stale-after"), default=900.0, metavar="DURATION",
                     help="a device unheard of for this long is shown as stale (default 15m)")
    hub.add_argument("--mqtt-broker", default="", metavar="URL",
                     help="also take OXP messages from this MQTT broker, mqtt://[USER@]HOST[:PORT] or mqtts://… (docs/fleet.md, Running a broker)")
    hub.add_argument("--mqtt-client-id", default="", metavar="ID", help="MQTT client id, the same across restarts (default ocn-hub-<host>-<pid>)")
    hub.add_argument("--mqtt-password-file", default="", metavar="FILE", help="file holding the hub's broker password")
    hub.add_argument("--mqtt-ca", default="", metavar="FILE", help="PEM CA bundle for an mqtts broker (default: the system store)")
    hub.add_argument("--mqtt-static-access", action="store_true",
                     help="city IT keeps the broker's device credentials and ACLs; by default the hub keeps them (Mosquitto's dynamic-security plugin)")
    hub.add_argument("--export-broker", default="", metavar="URL",
                     help="publish released, public readings to this MQTT broker, mqtt://[USER@]HOST[:PORT] or mqtts://… "
                          "(docs/fleet.md, Exporting to the city's broker)")
    hub.add_argument("--export-password-file", default="", metavar="FILE", help="file holding the password of the user --export-broker names")
    hub.add_argument("--export-ca", default="", metavar="FILE", help="PEM CA bundle for an mqtts export broker (default: the system store)")
    hub.add_argument("--export-client-id", default="", metavar="ID", help="MQTT client id for the export (default ocn-hub-export-<host>-<pid>)")
    hub.add_argument("--export-topic", default="ocn/{device}/{channel}", metavar="TEMPLATE",
                     help="topic of the SenML messages; {device} and {channel} are filled in (default ocn/{device}/{channel})")
    hub.add_argument("--export-formats", default="senml,sensorthings", metavar="LIST",
                     help="what to publish: senml, sensorthings (v1.1/Datastreams(<id>)/Observations) or both (default both)")
    hub.add_argument("--export-public-url", default="", metavar="URL",
                     help="the hub's address as SensorThings clients reach it, for @iot.selfLink (default: the address it serves on)")
    hub.add_argument("--retention-interval", type=_duration("--retention-interval"), default=86400.0, metavar="DURATION",
                     help="how often readings older than each gateway's stated retention are deleted; the first run is a minute after start (default 1d)")
    hub.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    hub.set_defaults(func=_serve)
    commands = hub.add_subparsers(title="hub commands", metavar="COMMAND")

    group = commands.add_parser("token", help="enrolment tokens")
    group.set_defaults(func=_usage(group))
    token = group.add_subparsers(title="token commands", metavar="COMMAND")
    create = token.add_parser("create", parents=[common], help="create an enrolment token and print it (shown only once)")
    create.add_argument("--uses", type=whole(1, MAX_TOKEN_USES), default=1, metavar="N", help="how many devices may enrol with it (default 1)")
    create.add_argument("--expires", type=_duration("--expires", at_most_s=MAX_TOKEN_DAYS * 86400.0), default=7 * 86400.0, metavar="DURATION",
                        help="valid for (default 7d)")
    create.add_argument("--approve", action="store_true", help="devices enrolled with it are active at once (default: pending until approved)")
    create.add_argument("--fleet", default="default", help="fleet the devices join (default 'default')")
    create.add_argument("--note", default="", help="what the token is for, shown in `token list`")
    create.set_defaults(func=_token_create)
    listing = token.add_parser("list", parents=[common], help="list enrolment tokens (never the tokens themselves)")
    listing.set_defaults(func=_token_list)

    group = commands.add_parser("device", help="enrolled devices")
    group.set_defaults(func=_usage(group))
    device = group.add_subparsers(title="device commands", metavar="COMMAND")
    dlist = device.add_parser("list", parents=[common], help="list devices with their health")
    dlist.add_argument("--json", action="store_true", help="print JSON instead of a table")
    dlist.add_argument("--stale-after", type=_duration("--stale-after"), default=900.0, metavar="DURATION",
                       help="a device unheard of for this long is stale (default 15m, as the hub's)")
    dlist.set_defaults(func=_device_list)
    dring = device.add_parser("ring", parents=[common], help="put a device in a rollout ring (docs/updates.md), or '-' for none")
    dring.add_argument("device_id", type=_device_id)
    dring.add_argument("ring", type=_ring, metavar="RING", help="1-32 lowercase letters, digits and '-', e.g. canary; '-' takes it out of its ring")
    dring.set_defaults(func=_device_ring)
    for name, status, text in (("revoke", "revoked", "revoke a device: its key is refused from now on"), ("approve", "active", "approve a pending device")):
        action = device.add_parser(name, parents=[common], help=text)
        action.add_argument("device_id", type=_device_id)
        action.set_defaults(func=_device_status, status=status)

    group = commands.add_parser("desired", help="desired configuration and policy")
    group.set_defaults(func=_usage(group))
    desired = group.add_subparsers(title="desired commands", metavar="COMMAND")
    dset = desired.add_parser("set", parents=[common], help="set the desired document of a fleet or a device from a JSON or TOML file")
    target = dset.add_mutually_exclusive_group(required=True)
    target.add_argument("--fleet", metavar="NAME")
    target.add_argument("--device", metavar="DEVICE_ID", type=_device_id)
    dset.add_argument("file", help='JSON or TOML with a "config" and/or a "policy" table')
    dset.add_argument("--allow-unknown", action="store_true",
                      help="store it even if no enrolled device has that id or is in that fleet (yet)")
    dset.set_defaults(func=_desired_set)
    dclear = desired.add_parser("clear", parents=[common], help="remove the desired document of a fleet or a device")
    target = dclear.add_mutually_exclusive_group(required=True)
    target.add_argument("--fleet", metavar="NAME")
    target.add_argument("--device", metavar="DEVICE_ID", type=_device_id)
    dclear.set_defaults(func=_desired_clear)

    link = commands.add_parser("login-link", parents=[common], help="print a one-time link that opens a dashboard session (10 minutes)")
    link.add_argument("--url", type=_browser_url, default="http://127.0.0.1:8443", help="the hub's address as your browser reaches it")
    link.add_argument("--user", metavar="NAME", help="the account the session is for (default: the built-in admin of the admin token)")
    link.set_defaults(func=_login_link)

    group = commands.add_parser("user", help="people's accounts and their roles (viewer, operator, privacy-officer, admin)")
    group.set_defaults(func=_usage(group))
    user = group.add_subparsers(title="user commands", metavar="COMMAND")
    uadd = user.add_parser("add", parents=[common], help="create an account and print its API token (shown only once)")
    uadd.add_argument("name")
    uadd.add_argument("--role", required=True, action="append", metavar="ROLE",
                      help="viewer, operator, privacy-officer or admin; several as operator,privacy-officer or a repeated --role")
    uadd.set_defaults(func=_user_add)
    ulist = user.add_parser("list", parents=[common], help="list accounts with their roles (never their tokens)")
    ulist.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ulist.set_defaults(func=_user_list)
    urole = user.add_parser("role", parents=[common], help="give an account new roles (in force at its next request)")
    urole.add_argument("name")
    urole.add_argument("role", help="viewer, operator, privacy-officer or admin; several comma-separated")
    urole.set_defaults(func=_user_role)
    udisable = user.add_parser("disable", parents=[common], help="disable an account: its token, sessions and login links stop working at once")
    udisable.add_argument("name")
    udisable.set_defaults(func=_user_disable)
    utoken = user.add_parser("token", parents=[common], help="give an account a new API token (the old one stops working) and print it once")
    utoken.add_argument("name")
    utoken.set_defaults(func=_user_token)

    group = commands.add_parser("audit", help="the audit log of every change made at the hub")
    group.set_defaults(func=_usage(group))
    audit = group.add_subparsers(title="audit commands", metavar="COMMAND")
    export = audit.add_parser("export", parents=[common], help="write the whole audit log, newest first, as CSV or JSON")
    export.add_argument("--format", choices=("csv", "json"), default="csv", help="csv (default) or json")
    export.add_argument("--output", metavar="FILE", help="write to FILE instead of standard output")
    export.set_defaults(func=_audit_export)

    group = commands.add_parser("retention", help="delete readings older than the retention each gateway's notice states")
    group.set_defaults(func=_usage(group))
    retention = group.add_subparsers(title="retention commands", metavar="COMMAND")
    rrun = retention.add_parser("run", parents=[common], help="run retention now (the hub also runs it every --retention-interval)")
    rrun.add_argument("--dry-run", action="store_true", help="count what would be deleted, delete nothing")
    rrun.set_defaults(func=_retention_run)

    group = commands.add_parser("release", help="software releases the hub keeps and serves to gateways (docs/updates.md)")
    group.set_defaults(func=_usage(group))
    release = group.add_subparsers(title="release commands", metavar="COMMAND")
    radd = release.add_parser("add", parents=[common], help="check a release bundle as a gateway would and keep it, served at /releases/VERSION/")
    radd.add_argument("bundle", metavar="BUNDLE", help="the bundle directory `ocn-edge release build` wrote")
    radd.add_argument("--key", required=True, metavar="PEM", help="the city's release public key (release.pub)")
    radd.set_defaults(func=_release_add)

    group = commands.add_parser("rollout", help="staged rollouts of a kept release to a fleet (docs/updates.md)")
    group.set_defaults(func=_usage(group))
    rollout = group.add_subparsers(title="rollout commands", metavar="COMMAND")
    rstart = rollout.add_parser("start", parents=[common], help="target a kept release at a fleet, stage by stage")
    rstart.add_argument("version", metavar="VERSION", help="a release the hub keeps (ocn-edge hub release add)")
    rstart.add_argument("--fleet", required=True, metavar="NAME", help="the fleet whose active devices get the release")
    rstart.add_argument("--stages", type=_rollout_option("stages"), default=(100.0,), metavar="PLAN",
                        help="percentages of the fleet, e.g. 5%%,25%%,100%% (default 100%%: everyone at once), "
                             "or device rings in order, e.g. canary,early,* (* = every device; `hub device ring` sets them)")
    rstart.add_argument("--wait", type=_rollout_option("wait"), default=3_600_000, metavar="DURATION", help="time between stages (default 1h)")
    rstart.add_argument("--max-failures", type=_rollout_option("max_failures"), default=0.1, metavar="PERCENT",
                        help="halt when more than this share of a stage's devices roll back or refuse the release (default 10%%)")
    rstart.add_argument("--pause-backlog", type=whole(0, 1_000_000_000), default=0, metavar="BATCHES",
                        help="gateways hold the download back while more batches than this wait in their spool (default 0: never)")
    rstart.add_argument("--url", metavar="URL", help="where gateways fetch the release, if the city hosts it (default: this hub's /releases/VERSION)")
    rstart.set_defaults(func=_rollout_start)
    rstatus = rollout.add_parser("status", parents=[common], help="each rollout: its state, stage and how many devices run the release")
    rstatus.add_argument("--json", action="store_true", help="print JSON instead of a table")
    rstatus.set_defaults(func=_rollout_status)
    for name, text in (("halt", "halt a running rollout: devices not running the release yet lose the target"),
                       ("resume", "resume a halted rollout at the stage it reached")):
        action = rollout.add_parser(name, parents=[common], help=text)
        action.add_argument("rollout_id", type=whole(1, 10**12), metavar="ID", help="the rollout's number (rollout status)")
        action.set_defaults(func=_rollout_change, action=name)
    keycommands.register(commands, common, with_store=_with_store, state_dir=_state_dir, usage=_usage)


def _usage(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def show(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return 2

    return show


def _with_store(args: argparse.Namespace, work: Callable[[Any], Awaitable[int]]) -> int:
    from hub.database import open_store
    from hub.models import StoreError

    async def run() -> int:
        try:
            store = await open_store(_db(args))
        except StoreError as exc:
            print(f"ocn-edge hub: {exc}", file=sys.stderr)
            return 2
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(run())


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _token_create(args: argparse.Namespace) -> int:
    from hub.tokens import create_token

    async def work(store: Any) -> int:
        try:
            token = await create_token(store, uses=args.uses, expires_s=args.expires, approve=args.approve, fleet=args.fleet, note=args.note,
                                       actor=cli_actor())
        except ValueError as exc:
            print(f"ocn-edge hub token create: {exc}", file=sys.stderr)
            return 2
        print(token)
        state = "active at once" if args.approve else "pending until approved"
        print(f"# for {args.uses} device(s), fleet {args.fleet!r}, expires in {args.expires / 3600:g} h; devices will be {state}.", file=sys.stderr)
        print("# This is the only time the token is shown. On the gateway: ocn-edge enrol --token TOKEN ...", file=sys.stderr)
        return 0

    make_directory(_state_dir(args), option="--state-dir", private=True)
    return _with_store(args, work)


def _token_list(args: argparse.Namespace) -> int:
    async def work(store: Any) -> int:
        now = _now_ms()
        print(f"{'id':>4}  {'uses left':>9}  {'expires (UTC)':<20} {'approve':<8} {'fleet':<12} note")
        for t in await store.tokens():
            expires = time.strftime("%Y-%m-%d %H:%M", time.gmtime(t.expires_ms / 1000)) + (" (expired)" if t.expires_ms <= now else "")
            print(f"{t.token_id:>4}  {t.uses_left:>9}  {expires:<20} {'yes' if t.approve else 'no':<8} {t.fleet:<12} {t.note}")
        return 0

    return _with_store(args, work)


def _device_list(args: argparse.Namespace) -> int:
    from hub.dashboard import ago, device_health

    async def work(store: Any) -> int:
        now = _now_ms()
        devices = await store.devices()
        stale_ms = int(args.stale_after * 1000)
        if args.json:
            rows = [{"device_id": d.device_id, "status": d.status, "health": device_health(d, now=now, stale_after_ms=stale_ms), "fleet": d.fleet,
                     "last_seen_ms": d.last_seen_ms, "software_version": d.software_version, "readings_stored": d.readings_stored,
                     "readings_dropped": d.readings_dropped, "duplicates": d.duplicates, "spool_batches": d.spool_batches, "ring": d.ring}
                    for d in devices]
            print(json.dumps(rows, indent=2))
            return 0
        print(f"{'device':<24} {'health':<9} {'fleet':<12} {'last seen':<12} {'software':<10} {'stored':>10} {'lost':>8}")
        for d in devices:
            print(f"{d.device_id:<24} {device_health(d, now=now, stale_after_ms=stale_ms):<9} {d.fleet:<12} {ago(d.last_seen_ms, now):<12} "
                  f"{d.software_version or '-':<10} {d.readings_stored:>10} {d.readings_dropped:>8}")
        return 0

    return _with_store(args, work)


def _ring(text: str) -> str:
    from hub.rollout import RolloutError, parse_ring

    try:
        return parse_ring("" if text == "-" else text)
    except RolloutError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _device_ring(args: argparse.Namespace) -> int:
    async def work(store: Any) -> int:
        if not await store.set_device_ring(args.device_id, args.ring, now_ms=_now_ms(), actor=cli_actor()):
            print(f"ocn-edge hub device ring: no device {args.device_id!r} is enrolled (see `ocn-edge hub device list`)", file=sys.stderr)
            return 1
        print(f"{args.device_id}: ring {args.ring or '(none)'}; rollouts by rings (--stages canary,early,*) target it with its ring")
        return 0

    return _with_store(args, work)


def _device_status(args: argparse.Namespace) -> int:
    async def work(store: Any) -> int:
        device = await store.device(args.device_id)
        if device is None:
            print(f"ocn-edge hub device: no device {args.device_id!r} is enrolled (see `ocn-edge hub device list`)", file=sys.stderr)
            return 1
        if not await store.set_device_status(args.device_id, args.status, now_ms=_now_ms(), actor=cli_actor()):
            print(f"ocn-edge hub device: {args.device_id} is {device.status}; nothing to change", file=sys.stderr)
            return 1
        print(f"{args.device_id}: {device.status} -> {args.status}"
              + (" (other hub processes refuse its key within 5 s)" if args.status == "revoked" else ""))
        return 0

    return _with_store(args, work)


def _read_document(path: str) -> dict[str, Any]:
    from hub.fleet import check_desired

    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (at byte {exc.start})") from None
    except OSError as exc:
        raise ValueError(file_problem(exc)) from None
    try:
        document = tomllib.loads(text) if path.endswith(".toml") else json.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(toml_problem(path, exc)) from None
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON: {exc}") from None
    except RecursionError:
        raise ValueError(f"{path}: nested too deeply to be a desired document") from None
    try:
        return check_desired(document)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def _desired_set(args: argparse.Namespace) -> int:
    try:
        document = _read_document(args.file)
    except (OSError, ValueError) as exc:
        print(f"ocn-edge hub desired set: {exc}", file=sys.stderr)
        return 2
    scope, name = ("fleet", args.fleet) if args.fleet else ("device", args.device)

    async def work(store: Any) -> int:
        if not args.allow_unknown:
            devices = await store.devices()
            if not any((d.device_id if scope == "device" else d.fleet) == name for d in devices):
                known = sorted({d.device_id if scope == "device" else d.fleet for d in devices})
                print(f"ocn-edge hub desired set: no enrolled device {'has id' if scope == 'device' else 'is in fleet'} {name!r} "
                      f"(known: {', '.join(known[:10]) or 'none'}{', ...' if len(known) > 10 else ''}); "
                      "check the name, or pass --allow-unknown to set it before the device enrols", file=sys.stderr)
                return 2
        await store.set_desired(scope, name, document, now_ms=_now_ms(), actor=cli_actor())
        print(f"desired {', '.join(sorted(document))} set for {scope} {name!r}; running gateways apply it within seconds")
        return 0

    return _with_store(args, work)


def _desired_clear(args: argparse.Namespace) -> int:
    scope, name = ("fleet", args.fleet) if args.fleet else ("device", args.device)

    async def work(store: Any) -> int:
        await store.set_desired(scope, name, None, now_ms=_now_ms(), actor=cli_actor())
        print(f"desired document of {scope} {name!r} cleared")
        return 0

    return _with_store(args, work)


def _login_link(args: argparse.Namespace) -> int:
    from hub.accounts import BUILT_IN_ADMIN, AccountError
    from hub.auth import Admin

    async def work(store: Any) -> int:
        try:
            print(await Admin(store).login_link(args.url, account=args.user or BUILT_IN_ADMIN, actor=cli_actor()))
        except AccountError as exc:
            print(f"ocn-edge hub login-link: {exc}", file=sys.stderr)
            return 2
        return 0

    return _with_store(args, work)


def _account_command(args: argparse.Namespace, command: str, act: Callable[[Any], Awaitable[str]]) -> int:
    """Run an account change on the store; an AccountError is one line naming the command and what is accepted."""
    from hub.accounts import AccountError

    async def work(store: Any) -> int:
        try:
            out = await act(store)
        except AccountError as exc:
            print(f"ocn-edge hub user {command}: {exc}", file=sys.stderr)
            return 2
        print(out)
        return 0

    return _with_store(args, work)


def _user_add(args: argparse.Namespace) -> int:
    from hub.auth import add_account

    async def act(store: Any) -> str:
        token = await add_account(store, args.name, ",".join(args.role), actor=cli_actor())
        print(f"# account {args.name!r} created. This is the only time its API token is shown: give it to {args.name} over a private channel.\n"
              f"# Sign in with it on the hub's login page, use it as 'Authorization: Bearer TOKEN' in scripts, or send a one-time link:\n"
              f"#   ocn-edge hub login-link --user {args.name} --url https://HUB", file=sys.stderr)
        return token

    make_directory(_state_dir(args), option="--state-dir", private=True)
    return _account_command(args, "add", act)


def _user_list(args: argparse.Namespace) -> int:
    from hub.accounts import role_text

    async def work(store: Any) -> int:
        accounts = await store.accounts()
        if args.json:
            print(json.dumps([{"name": a.name, "roles": role_text(a.roles).split(","), "disabled": a.disabled, "created_ms": a.created_ms,
                               "updated_ms": a.updated_ms} for a in accounts], indent=2))
            return 0
        print(f"{'account':<24} {'roles':<40} {'state':<9} {'created (UTC)':<17}")
        for a in accounts:
            created = time.strftime("%Y-%m-%d %H:%M", time.gmtime(a.created_ms / 1000))
            print(f"{a.name:<24} {role_text(a.roles):<40} {'disabled' if a.disabled else 'enabled':<9} {created:<17}")
        return 0

    return _with_store(args, work)


def _user_role(args: argparse.Namespace) -> int:
    from hub.accounts import role_text
    from hub.auth import set_roles

    async def act(store: Any) -> str:
        account = await set_roles(store, args.name, args.role, actor=cli_actor())
        return f"{account.name}: {role_text(account.roles)} (in force at its next request)"

    return _account_command(args, "role", act)


def _user_disable(args: argparse.Namespace) -> int:
    from hub.auth import disable

    async def act(store: Any) -> str:
        await disable(store, args.name, actor=cli_actor())
        return f"{args.name}: disabled; its token, sessions and login links no longer work"

    return _account_command(args, "disable", act)


def _user_token(args: argparse.Namespace) -> int:
    from hub.auth import new_account_token

    async def act(store: Any) -> str:
        token = await new_account_token(store, args.name, actor=cli_actor())
        print(f"# new API token of {args.name!r}, shown only this once; the old one no longer works.", file=sys.stderr)
        return token

    return _account_command(args, "token", act)


def _audit_export(args: argparse.Namespace) -> int:
    from hub.audit import csv_lines, entry_json

    async def work(store: Any) -> int:
        entries = []
        before = None
        while True:  # newest first, a page at a time
            page = await store.audit_log(limit=1000, before_id=before)
            entries.extend(page)
            if len(page) < 1000:
                break
            before = page[-1].id
        text = "".join(csv_lines(entries)) if args.format == "csv" else json.dumps({"entries": [entry_json(e) for e in entries]}, indent=1) + "\n"
        if args.output:
            try:
                Path(args.output).write_text(text, encoding="utf-8")
            except OSError as exc:
                print(f"ocn-edge hub audit export: {file_problem(exc)}", file=sys.stderr)
                return 2
            print(f"{len(entries)} audit entries written to {args.output}", file=sys.stderr)
        else:
            sys.stdout.write(text)
        return 0

    return _with_store(args, work)


def _release_add(args: argparse.Namespace) -> int:
    from edge.protocol import KeyFileError, load_public_key
    from hub.releases import ReleaseError, add_release

    try:
        key = load_public_key(args.key)
    except KeyFileError as exc:
        raise CommandError(f"--key {exc}") from None
    if not Path(args.bundle).is_dir():
        raise CommandError(f"{args.bundle}: no such directory (a release bundle is the directory `ocn-edge release build` wrote)")
    state = make_directory(_state_dir(args), option="--state-dir", private=True)
    try:
        manifest = add_release(state / "releases", Path(args.bundle), key)
    except ReleaseError as exc:
        print(f"ocn-edge hub release add: {exc}", file=sys.stderr)
        return 1
    print(f"release {manifest.version} kept; gateways fetch it from <hub URL>/releases/{manifest.version}")
    return 0


def _rollout_option(name: str) -> Callable[[str], Any]:
    """An argparse type for --stages, --wait or --max-failures (hub.rollout is imported only when one is given)."""

    def convert(text: str) -> Any:
        from hub.rollout import RolloutError, parse_max_failures, parse_stages, parse_wait

        parse = {"stages": parse_stages, "wait": parse_wait, "max_failures": parse_max_failures}[name]
        try:
            return parse(text)
        except RolloutError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _rollout_start(args: argparse.Namespace) -> int:
    from hub.rollout import RolloutError, release_target, stage_label, start_rollout

    releases = _state_dir(args) / "releases"
    try:
        release_target(releases, args.version)  # before the database is opened: a typo is named at once
    except RolloutError as exc:
        print(f"ocn-edge hub rollout start: {exc}", file=sys.stderr)
        return 1

    async def work(store: Any) -> int:
        try:
            rollout = await start_rollout(store, releases, version=args.version, fleet=args.fleet, stages=args.stages, wait_ms=args.wait,
                                          max_failure=args.max_failures, url=args.url, pause_backlog=args.pause_backlog, actor=cli_actor())
        except RolloutError as exc:
            print(f"ocn-edge hub rollout start: {exc}", file=sys.stderr)
            return 1
        print(f"rollout {rollout.id} of {rollout.version} to fleet {rollout.fleet!r} started: stage 1 of {len(rollout.stages)} "
              f"({stage_label(rollout.stages[0])}) targeted; the running hub advances it")
        return 0

    return _with_store(args, work)


def _rollout_status(args: argparse.Namespace) -> int:
    from hub.rollout import rollout_progress, stage_label

    async def work(store: Any) -> int:
        devices, updates = await store.devices(), await store.software_updates()
        rows = [(r, rollout_progress(r, devices, updates)) for r in await store.rollouts()]
        if args.json:
            print(json.dumps([{"id": r.id, "version": r.version, "fleet": r.fleet, "state": r.state, "stage": r.stage + 1,
                               "stages": [stage_label(s) for s in r.stages], "reason": r.reason, "progress": p} for r, p in rows], indent=2))
            return 0
        if not rows:
            print("no rollout yet")
        for r, p in rows:
            line = (f"{r.id}  {r.version}  fleet {r.fleet}  {r.state}  stage {r.stage + 1} of {len(r.stages)} ({stage_label(r.stages[r.stage])})  "
                    f"targeted {p['targeted']} of {p['devices']}, running {p['running']}, failed {p['failed']}")
            print(line + (f"  why: {r.reason}" if r.reason else ""))
        return 0

    return _with_store(args, work)


def _rollout_change(args: argparse.Namespace) -> int:
    from hub.rollout import RolloutError, halt_rollout, resume_rollout

    async def work(store: Any) -> int:
        try:
            if args.action == "halt":
                rollout = await halt_rollout(store, args.rollout_id, actor=cli_actor())
            else:
                rollout = await resume_rollout(store, args.rollout_id, actor=cli_actor())
        except RolloutError as exc:
            print(f"ocn-edge hub rollout {args.action}: {exc}", file=sys.stderr)
            return 1
        print(f"rollout {rollout.id} {rollout.state}")
        return 0

    return _with_store(args, work)


def _retention_run(args: argparse.Namespace) -> int:
    from hub.retention import run_retention

    async def work(store: Any) -> int:
        run = await run_retention(store, actor=cli_actor(), dry_run=args.dry_run)
        print(run.summary())
        for device_id, count in sorted(run.per_gateway.items()):
            print(f"  {device_id}: {count}")
        return 0

    return _with_store(args, work)


def _serve(args: argparse.Namespace) -> int:
    from hub.app import IngestSettings, parse_listen, run_hub
    from hub.export import ExportSettings, parse_formats
    from hub.models import StoreError
    from hub.mqtt import MqttSettings
    from hub.publicprocess import PublicProcessSettings
    from hub.publicreads import PublicReadSettings
    from hub.server import ConnectionSettings

    try:
        from edge.logs import setup_logging

        setup_logging(args.log_level)
    except ImportError:
        import logging

        logging.basicConfig(level=args.log_level.upper())
    try:
        parse_listen(args.listen)
        ingest = IngestSettings(workers=args.ingest_workers, queue=args.ingest_queue, readings_rate=args.readings_rate,
                                readings_burst=args.readings_burst, address_rate=args.address_rate, address_burst=args.address_burst,
                                trusted_proxies=tuple(args.trusted_proxy))
        public_reads = PublicReadSettings(per_client=args.public_per_client, queue=args.public_queue, seconds=args.public_time_budget,
                                          max_examined=args.public_max_examined, cpu_seconds=args.public_cpu_budget,
                                          cpu_share=args.public_cpu_share, loop_share=args.public_loop_share,
                                          readings_in_flight=args.public_readings_in_flight)
        public_process = PublicProcessSettings(enabled=args.public_process == "on", nice=args.public_nice)
        connections = ConnectionSettings(header_timeout_s=args.header_timeout, body_timeout_s=args.body_timeout,
                                         max_connections=args.max_connections)
        mqtt = MqttSettings(args.mqtt_broker, client_id=args.mqtt_client_id, password_file=args.mqtt_password_file,
                            ca=args.mqtt_ca, manage_access=not args.mqtt_static_access) if args.mqtt_broker else None
        export = ExportSettings(args.export_broker, password_file=args.export_password_file, ca=args.export_ca, client_id=args.export_client_id,
                                topic=args.export_topic, formats=parse_formats(args.export_formats),
                                public_url=args.export_public_url) if args.export_broker else None
        if not args.export_broker:
            for name in ("export_password_file", "export_ca", "export_client_id", "export_public_url"):
                if getattr(args, name):
                    raise ValueError(f"--{name.replace('_', '-')} {getattr(args, name)!r}: no --export-broker to use it with")
    except ValueError as exc:
        print(f"ocn-edge hub: {exc}", file=sys.stderr)
        return 2

    # Ingest decodes on the event loop while the SQLite writer thread commits; a short GIL
    # switch interval lets the writer in promptly instead of waiting out 5 ms slices.
    sys.setswitchinterval(0.0005)
    # Decoding a batch allocates a Reading per value; with default thresholds the cyclic
    # collector runs every few hundred readings although readings never form cycles.
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)

    async def serve() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            async with run_hub(listen=args.listen, db=_db(args), state_dir=_state_dir(args), admin_token=args.admin_token,
                               rate=args.rate, burst=args.burst, stale_after_s=args.stale_after, ingest=ingest,
                               public_reads=public_reads, public_process=public_process, connections=connections,
                               retention_interval_s=args.retention_interval, mqtt=mqtt,
                               export=export) as running:
                if running.admin_token and not args.admin_token:
                    print(f"Admin token (shown once, stored hashed): {running.admin_token}", file=sys.stderr, flush=True)
                    print("Keep it for emergencies; give each person an account: ocn-edge hub user add NAME --role operator "
                          "(docs/fleet.md, Accounts and roles)", file=sys.stderr, flush=True)
                print(f"OCN hub serving on {running.url}  (dashboard {running.url}/fleet)", file=sys.stderr, flush=True)
                if not running.admin_token:
                    # The token was shown at an earlier start; a one-time link is the way in without it.
                    where = "".join(f" --{name.replace('_', '-')} {shlex.quote(str(getattr(args, name)))}"
                                    for name in ("state_dir", "db") if getattr(args, name, None))
                    print(f"To sign in to the dashboard: ocn-edge hub login-link --url {running.url}{where}", file=sys.stderr, flush=True)
                await stop.wait()
        except StoreError as exc:
            print(f"ocn-edge hub: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            if isinstance(exc, FileExistsError):  # creating the state directory (exist_ok) met a file
                print(f"ocn-edge hub: {exc.filename}: a file is in the way; expected the state directory", file=sys.stderr)
            elif exc.filename is not None:  # the state directory or a file in it, not the address
                print(f"ocn-edge hub: {file_problem(exc)}", file=sys.stderr)
            else:
                from edge.util.linkwords import listen_problem

                print(f"ocn-edge hub: cannot listen on {args.listen}: {listen_problem(exc)}", file=sys.stderr)
            return 2
        return 0

    return asyncio.run(serve())

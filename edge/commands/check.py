"""`ocn-edge check CONFIG`: validate a gateway config and print the settings the gateway would use."""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from edge.config import ConfigError, GatewayConfig, effective_toml, load_config

if TYPE_CHECKING:
    from edge.privacy import Policy

__all__ = ["check", "field_warnings", "online_warnings", "with_hint", "register"]

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

Then the mistakes a valid file can still hold in the field are warned about:
a serial port that does not exist on this machine, a placeholder left from
`ocn-edge init` (marked CHANGE in the example), a device none of whose
channels the policy releases (every reading it makes would be dropped). With
--online, the hub's name is resolved and the hub asked for its key.

Exit status: 0 when the file is valid (warnings included; 2 with --strict),
2 when it has problems.
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
    parser.add_argument("--strict", action="store_true", help="exit 2 on warnings too, as on problems")
    parser.add_argument("--online", action="store_true",
                        help="also resolve the hub's name and ask the hub for its key (needs the network)")
    parser.set_defaults(func=check)


def check(args: argparse.Namespace) -> int:
    """Validate ``args.config``: the effective config to stdout (exit 0), or every problem to stderr (exit 2)."""
    from edge.privacy import PolicyError  # imported here so `ocn-edge --help` stays quick on a Pi

    try:
        cfg = load_config(args.config)
        policy = _check_policy(cfg)
    except (ConfigError, PolicyError) as err:
        for problem in err.problems:
            print(with_hint(problem), file=sys.stderr)
        count = len(err.problems)
        print(f"{args.config}: {count} problem{'s' if count != 1 else ''}; the gateway will not start", file=sys.stderr)
        return EXIT_INVALID
    name = Path(args.config).name
    warnings = [*field_warnings(cfg, policy, name), *(online_warnings(cfg, name) if args.online else [])]
    if not args.quiet:
        sys.stdout.write(effective_toml(cfg))
    if warnings and (args.strict or not args.quiet):
        for warning in warnings:
            print(f"warning: {warning}", file=sys.stderr)
    if args.strict and warnings:
        count = len(warnings)
        print(f"{args.config}: {count} warning{'s' if count != 1 else ''}; --strict refuses them", file=sys.stderr)
        return EXIT_INVALID
    if not args.quiet:
        enabled = sum(device.enabled for device in cfg.devices)
        noted = f", {len(warnings)} warning{'s' if len(warnings) != 1 else ''}" if warnings else ""
        print(
            f"{args.config}: valid ({len(cfg.buses)} buses, {enabled} of {len(cfg.devices)} devices enabled{noted})",
            file=sys.stderr,
        )
    return EXIT_OK


def with_hint(problem: str) -> str:
    """``problem``, with the way out when it is the policy file missing (a first-time setup, most often)."""
    if "privacy.policy = " in problem and "no such file" in problem:
        return (f"{problem}; `ocn-edge init DIR` writes a starter policy.toml (the demo policy) to begin from, "
                "or copy your city's policy there")
    return problem


def _check_policy(cfg: GatewayConfig) -> Policy:
    """Load the policy the way the gateway does at start-up; PolicyError lists its problems."""
    from edge.privacy import load_policy

    return load_policy(
        cfg.privacy.policy,
        governance_key=cfg.privacy.governance_key,
        require_signed=cfg.privacy.require_signed,
    )


def _placeholders() -> dict[str, set[str]]:
    """Setting name -> the values marked CHANGE in the shipped example (what `init` copies), for the
    settings that say where to talk to: a port, a host, the hub."""
    from edge.starter import EXAMPLE_CONFIG

    found: dict[str, set[str]] = {"port": set(), "host": set(), "hub": set()}
    for line in EXAMPLE_CONFIG.read_text(encoding="utf-8").splitlines():
        setting, eq, rest = line.partition("=")
        value, _, comment = rest.partition("#")
        if eq and setting.strip() in found and "CHANGE" in comment:
            found[setting.strip()].add(value.strip().strip('"'))
    return found


def field_warnings(cfg: GatewayConfig, policy: Policy, name: str) -> list[str]:
    """What a valid config can still get wrong on a pole: missing ports, init's placeholders, devices the policy mutes,
    texts the policy lacks in a language its notice is shown in."""
    placeholders = _placeholders()
    warnings: list[str] = []
    used = {d.bus for d in cfg.devices if d.enabled and d.bus}
    for i, bus in enumerate(cfg.buses):
        if bus.name not in used:
            continue
        if bus.port and bus.port in placeholders["port"]:
            warnings.append(
                f'{name}: buses[{i}].port = "{bus.port}": the placeholder from `ocn-edge init`; put the adapter\'s '
                "stable name here (/dev/serial/by-id/..., listed by `ocn-edge ports`)")
        elif bus.port and not os.path.exists(bus.port):
            warnings.append(
                f'{name}: buses[{i}].port = "{bus.port}": no such port on this machine; plug the adapter in, '
                "or find its name with `ocn-edge ports`")
        if bus.host and bus.host in placeholders["host"]:
            warnings.append(f'{name}: buses[{i}].host = "{bus.host}": the placeholder from `ocn-edge init`; '
                            "put the Modbus TCP device's address here")
    if cfg.uplink.hub and cfg.uplink.hub in placeholders["hub"]:
        warnings.append(f'{name}: uplink.hub = "{cfg.uplink.hub}": the placeholder from `ocn-edge init`; put your '
                        'city\'s hub URL here, or "" to keep batches on the gateway')
    warnings.extend(_muted_devices(cfg, policy, name))
    warnings.extend(policy.translation_gaps())
    return warnings


def _muted_devices(cfg: GatewayConfig, policy: Policy, name: str) -> list[str]:
    """Enabled devices none of whose channels the policy releases: the gateway would drop all they read."""
    from drivers.registry import load_driver
    from drivers.sdk import DeviceContext
    from edge.privacy.rules import kind_of

    warnings: list[str] = []
    for i, device in enumerate(cfg.devices):
        if not device.enabled:
            continue
        cls = load_driver(device.driver)
        context = DeviceContext(device_id=device.name, options=cls.check_options(device.options),
                                address=device.address, poll_interval=device.poll_interval)
        channels = [c.id for c in cls(context).channels()]
        rules = [policy.rule_for(c) for c in channels]
        if channels and not any(rule is not None and kind_of(rule).releases for rule in rules):
            shown = ", ".join(channels[:3]) + (f" and {len(channels) - 3} more" if len(channels) > 3 else "")
            warnings.append(
                f'{name}: devices[{i}] "{device.name}": the policy ({Path(policy.path).name}) releases none of its '
                f'channels ({shown}), so everything it reads is dropped; add a rule for "{device.name}/*" to the '
                "policy, or set enabled = false")
    return warnings


def online_warnings(cfg: GatewayConfig, name: str) -> list[str]:
    """Whether the hub's name resolves and the hub answers for its key, as a gateway would reach it."""
    hub = cfg.uplink.hub
    if not hub or hub in _placeholders()["hub"]:  # already warned about; its name resolves nowhere useful
        return []
    where = f'{name}: uplink.hub = "{hub}"'
    parts = urlsplit(hub)
    host = parts.hostname or ""
    try:
        socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80), type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        return [f"{where}: {host} does not resolve ({exc.strerror if isinstance(exc, OSError) else exc}); "
                "check the name, and this gateway's DNS (`resolvectl status`)"]
    url = urljoin(hub if hub.endswith("/") else hub + "/", "oxp/v1/hub-key")
    try:
        context = ssl.create_default_context(cafile=str(cfg.uplink.ca) if cfg.uplink.ca else None)
    except (OSError, ssl.SSLError) as exc:
        from edge.util.linkwords import ca_bundle_problem

        return [f'{name}: uplink.ca = "{cfg.uplink.ca}": cannot load it as a CA bundle ({ca_bundle_problem(exc)}); expected PEM certificates']
    try:
        with urllib.request.urlopen(url, timeout=min(cfg.uplink.timeout, 10.0), context=context) as answer:
            body = answer.read(4096)
    except urllib.error.HTTPError as exc:
        return [f"{where}: {url} answered {exc.code} {exc.reason}; is this the hub's address?"]
    except (urllib.error.URLError, OSError) as exc:
        from edge.util.linkwords import link_problem

        reason = getattr(exc, "reason", exc)  # a URLError's: an OSError, or a sentence
        reason = link_problem(reason) if isinstance(reason, BaseException) else reason
        return [f"{where}: no answer from {url} ({reason}); check the hub is running, the firewall, and uplink.ca"]
    except http.client.HTTPException:
        return [f"{where}: {url} answered, but not in whole HTTP; is this the hub's address?"]
    if b"-----BEGIN PUBLIC KEY-----" not in body:  # an OCN hub answers its signing key in PEM (OXP §8.4)
        return [f"{where}: {url} answered, but not with a hub's key; is this the hub's address?"]
    return []

"""Sub-commands for the privacy policy and the public notice: `policy check|sign|verify|explain|keygen`, `notice`."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from edge.commands import CommandError, file_problem, make_directory, shows_usage

if TYPE_CHECKING:
    from edge.protocol.types import Channel

__all__ = ["register"]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    policy = sub.add_parser(
        "policy",
        help="check, sign, verify or explain a privacy policy",
        description=("Work with the privacy policy: the city's rules for what may leave the gateway, as data. "
                     "Every action exits 1 when the policy, a key or the config cannot be used (each problem "
                     "on its own line) and 2 when the command line is wrong."),
    )
    actions = policy.add_subparsers(title="actions", metavar="ACTION")
    shows_usage(policy)

    check = actions.add_parser(
        "check",
        help="validate a policy (and, with --config, against the channels the configured devices declare)",
        description=(
            "Validate a policy file and print its digest. With --config, also check it against every channel "
            "the gateway's devices declare (e.g. a personal channel marked keep) and list patterns that match "
            "nothing. Exit status 0 when the policy is usable, 1 when it is not."
        ),
    )
    check.add_argument("policy", metavar="POLICY", help="the policy TOML file")
    check.add_argument("--config", metavar="CONFIG", help="a gateway config whose devices' channels to check against")
    check.add_argument("--governance-key", metavar="PUB", help="governance public key (PEM) to verify the signature")
    check.add_argument("--require-signed", action="store_true", help="fail unless the policy carries a valid signature")
    check.set_defaults(func=_check)

    sign = actions.add_parser(
        "sign",
        help="sign a policy with the governance key (writes POLICY.sig)",
        description="Sign the policy's canonical digest with the governance private key; writes POLICY.sig next to it.",
    )
    sign.add_argument("policy", metavar="POLICY")
    sign.add_argument("--key", required=True, metavar="KEY", help="the governance private key (PEM)")
    sign.set_defaults(func=_sign)

    verify = actions.add_parser(
        "verify",
        help="verify POLICY.sig against the governance public key",
        description="Check that POLICY.sig was made by the governance key over exactly this policy. Exit 0 if so, 1 if not.",
    )
    verify.add_argument("policy", metavar="POLICY")
    verify.add_argument("--key", required=True, metavar="PUB", help="the governance public key (PEM)")
    verify.set_defaults(func=_verify)

    explain = actions.add_parser(
        "explain",
        help="say in plain language what leaves the device and in what form",
        description="Print, in plain language, what leaves the gateway under this policy and in what form.",
    )
    explain.add_argument("policy", metavar="POLICY")
    explain.add_argument("--config", metavar="CONFIG", help="explain per channel of this gateway's devices")
    explain.set_defaults(func=_explain)

    keygen = actions.add_parser(
        "keygen",
        help="create a governance key pair (governance.key, governance.pub) in a directory",
        description=(
            "Create an Ed25519 governance key pair, distinct from device and hub keys. Keep governance.key "
            "off the gateways (only governance.pub goes on them)."
        ),
    )
    keygen.add_argument("directory", metavar="DIR")
    keygen.set_defaults(func=_keygen)

    notice = sub.add_parser(
        "notice",
        help="write the gateway's transparency notice (notice.json and notice.html)",
        description=(
            "Build the public transparency notice of a gateway from its config and privacy policy: "
            "machine-readable notice.json (DTPR taxonomy) and a plain-language notice.html for a QR code. "
            "Exit status 1 when the config or its policy cannot be used (each problem on its own line), 2 when "
            "the command line or the output directory is wrong."
        ),
    )
    notice.add_argument("config", metavar="CONFIG", help="the gateway's TOML config")
    notice.add_argument("--out", metavar="DIR", default=".", help="directory to write into (default: current directory)")
    notice.set_defaults(func=_notice)


def _fail(lines: list[str] | str) -> int:
    for line in [lines] if isinstance(lines, str) else lines:
        print(line, file=sys.stderr)
    return 1


def _declared_channels(config: Any) -> list[Channel]:
    """Every channel the enabled devices of ``config`` declare (drivers are created, never started)."""
    import logging

    from drivers.registry import load_driver
    from drivers.sdk import DeviceContext

    channels: list[Channel] = []
    for dev in config.devices:
        if not dev.enabled:
            continue
        cls = load_driver(dev.driver)
        ctx = DeviceContext(
            device_id=dev.name,
            options=dev.options,  # checked when the config was loaded
            address=dev.address,
            poll_interval=dev.poll_interval,
            logger=logging.getLogger(f"ocn.driver.{dev.name}"),
        )
        channels.extend(cls(ctx).channels())
    return channels


def _load_config(path: str) -> Any:
    from edge.config import load_config

    return load_config(path)


def _check(args: argparse.Namespace) -> int:
    from edge.config import ConfigError
    from edge.privacy import PolicyError, load_policy

    try:
        policy = load_policy(args.policy, governance_key=args.governance_key, require_signed=args.require_signed)
    except PolicyError as exc:
        return _fail(exc.problems)
    print(f"{args.policy}: {len(policy.rules)} rules, digest {policy.digest.hex()}")
    if policy.signed_by:
        print(f"signature: valid, governance key {policy.signed_by}")
    elif args.governance_key:
        print("signature: none (the policy is not signed)")
    else:
        print("signature: not checked (give --governance-key to check it)")
    deletion = f"the hub deletes readings after {policy.retention_days} days" if policy.retention_days else "no scheduled deletion"
    print(f"notice in {', '.join(policy.languages)}; {deletion}")
    for gap in policy.translation_gaps():
        print(f"warning: {gap}", file=sys.stderr)
    if args.config:
        try:
            channels = _declared_channels(_load_config(args.config))
        except ConfigError as exc:
            return _fail(str(exc).splitlines())
        problems = policy.check_channels(channels)
        if problems:
            return _fail(problems)
        leaving = sum(1 for c in channels if (r := policy.rule_for(c.id)) is not None and r.rule != "drop")
        print(f"{len(channels)} declared channels: {leaving} leave the device in some form, {len(channels) - leaving} never do")
        for pattern in policy.unused_patterns(channels):
            print(f'note: channels."{pattern}" matches no channel of this gateway')
    return 0


def _sign(args: argparse.Namespace) -> int:
    from edge.privacy import PolicyError, load_policy
    from edge.privacy.signing import load_governance_private_key, write_signature

    try:
        policy = load_policy(args.policy)
        key = load_governance_private_key(args.key)
    except PolicyError as exc:
        return _fail(exc.problems)
    except OSError as exc:
        return _fail(f"--key: cannot read the governance private key: {file_problem(exc)}")
    except ValueError:
        return _fail(f"--key {args.key}: expected an unencrypted PEM Ed25519 private key "
                     "(`ocn-edge policy keygen` writes governance.key)")
    path = write_signature(args.policy, policy.digest, key)
    print(f"wrote {path} (digest {policy.digest.hex()})")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from edge.privacy import PolicyError, load_policy

    try:
        policy = load_policy(args.policy, governance_key=args.key, require_signed=True)
    except PolicyError as exc:
        return _fail(exc.problems)
    print(f"{args.policy}: signature valid, governance key {policy.signed_by}, digest {policy.digest.hex()}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from edge.config import ConfigError
    from edge.privacy import PolicyError, load_policy
    from edge.privacy.explain import explain

    try:
        policy = load_policy(args.policy)
        channels = _declared_channels(_load_config(args.config)) if args.config else None
    except PolicyError as exc:
        return _fail(exc.problems)
    except ConfigError as exc:
        return _fail(str(exc).splitlines())
    print(explain(policy, channels))
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from edge.privacy.signing import governance_key_id, load_governance_public_key, write_governance_keypair

    try:
        private_path, public_path = write_governance_keypair(args.directory)
    except FileExistsError as exc:
        if exc.filename is None:  # the key is there already
            return _fail(str(exc))
        raise CommandError(f"{args.directory}: a file is in the way; expected a directory for the key pair") from None
    except OSError as exc:
        raise CommandError(f"{args.directory}: cannot write the key pair: {file_problem(exc)}") from None
    key_id = governance_key_id(load_governance_public_key(public_path))
    print(f"wrote {private_path} (keep it offline) and {public_path} (key id {key_id})")
    return 0


def _notice(args: argparse.Namespace) -> int:
    from edge.config import ConfigError
    from edge.privacy import PolicyError, build_notice, load_policy, render_notice_html

    try:
        config = _load_config(args.config)
        policy = load_policy(
            config.privacy.policy,
            governance_key=config.privacy.governance_key or None,
            require_signed=config.privacy.require_signed,
        )
        channels = _declared_channels(config)
    except ConfigError as exc:
        return _fail(str(exc).splitlines())
    except PolicyError as exc:
        return _fail(exc.problems)
    problems = policy.check_channels(channels)
    if problems:
        return _fail(problems)
    notice = build_notice(policy, config, channels=channels)
    out = make_directory(args.out, option="--out")
    (out / "notice.json").write_text(json.dumps(notice, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    # notice.html in the default language, notice.<language>.html in each other; each links to the others
    pages = {language: "notice.html" if i == 0 else f"notice.{language}.html" for i, language in enumerate(policy.languages)}
    for language, page in pages.items():
        (out / page).write_text(render_notice_html(notice, language, link=pages.__getitem__), encoding="utf-8")
    print(f"wrote {out / 'notice.json'} and " + ", ".join(str(out / page) for page in pages.values()))
    return 0

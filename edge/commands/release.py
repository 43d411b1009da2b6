"""`ocn-edge release keygen|build|verify|fetch|rotate`: city IT's release key, signed release bundles, and checking one offline.

`rotate` signs the move from one release key to the next (a rollover chain gateways follow).  `fetch` is the
gateway's part of an update run by hand: download a release from a URL into the state directory (only the files
not already held) and ask the privileged installer to install it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import cbor2
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.commands import CommandError, file_problem, make_directory, shows_usage, whole
from edge.protocol.keys import KeyFileError, generate_keypair, key_id, load_private_key, load_public_key
from edge.protocol.release import release_key_id
from edge.update.bundle import BundleError, ReleaseSpec, build_bundle
from edge.update.fetch import FetchError, fetch_release
from edge.update.manifest import MANIFEST_FILE, REASONS, Refused, parse_version, this_target
from edge.update.rollover import Trust, check_trusted_bundle, newest_key_id, read_chain, seal_rollover

__all__ = ["register", "EXIT_REFUSED"]

EXIT_REFUSED = 1  # the bundle was checked and must not be installed; the line says why
RELEASE_KEY, RELEASE_PUB = "release.key", "release.pub"

DESCRIPTION = """\
Signed software releases (docs/updates.md).

  ocn-edge release keygen --out DIR       the city's release key pair: release.key (keep it
                                          offline) and release.pub (goes on every gateway as
                                          /etc/ocn-edge/release.pub)
  ocn-edge release build WHEELHOUSE --version V --min-from V --key release.key --out BUNDLE
                                          a bundle from `make wheelhouse`, its manifest signed
  ocn-edge release verify BUNDLE --key release.pub
                                          every check a gateway makes, offline
  ocn-edge release rotate --key OLD.key --new NEW.pub --out rollover.cbor [--chain rollover.cbor]
                                          retire a release key: the new key signed by the old
                                          one; build later releases with --rollover rollover.cbor
  ocn-edge release fetch URL --key release.pub --state DIR
                                          download a release into a gateway's state directory
                                          (what the gateway does) and ask for its install

A refused bundle ends with exit status 1 and one line: the reason code, then which file,
field or value. Reasons:
""" + "\n".join(f"  {reason:<15} {text}" for reason, text in REASONS.items())


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    release = sub.add_parser(
        "release", help="signed software releases: keygen, build, verify, fetch", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = release.add_subparsers(title="commands", metavar="COMMAND")

    keygen = commands.add_parser("keygen", help="make the city's release key pair (release.key, release.pub)")
    keygen.add_argument("--out", required=True, metavar="DIR", help="where release.key (0600) and release.pub are written")
    keygen.set_defaults(func=run_keygen)

    build = commands.add_parser("build", help="turn a wheelhouse into a signed release bundle")
    build.add_argument("wheelhouse", metavar="WHEELHOUSE", help="`make wheelhouse`'s output (dist/wheelhouse) or one target's folder of it")
    build.add_argument("--version", required=True, help="the release version, OCN Edge's wheel's own, e.g. 1.4.0")
    build.add_argument("--min-from", required=True, metavar="VERSION", help="the oldest installed version that may upgrade to it")
    build.add_argument("--key", required=True, metavar="PEM", help="the release private key (release.key)")
    build.add_argument("--out", required=True, metavar="DIR", help="the bundle directory to create (must not exist)")
    build.add_argument("--valid-days", type=whole(1, 3650), default=90, metavar="DAYS", help="days until the manifest expires (default %(default)s)")
    build.add_argument("--allow-downgrade", action="store_true", help="let devices running a newer version install it (a deliberate step back)")
    build.add_argument(
        "--not-rollback-safe", action="store_true", help="the previous version cannot read what this one writes: devices install it only when approved"
    )
    build.add_argument("--notes", default="", help="one line about the release, shown with it")
    build.add_argument(
        "--delta-from",
        action="append",
        default=[],
        metavar="BUNDLE",
        help="a bundle devices may run (repeatable): each changed wheel also travels as a small delta from its wheel",
    )
    build.add_argument(
        "--rollover", metavar="FILE", help="the rollover chain from `release rotate` (when --key is not the key gateways were installed with)"
    )
    build.set_defaults(func=run_build)

    rotate = commands.add_parser("rotate", help="retire the release key: a rollover to a new key, signed by the old one")
    rotate.add_argument("--key", required=True, metavar="PEM", help="the release private key in use now (release.key)")
    rotate.add_argument("--new", required=True, metavar="PEM", help="the new release public key (release.pub of `release keygen --out NEWDIR`)")
    rotate.add_argument("--out", required=True, metavar="FILE", help="the chain to write (must not exist): --chain's rollovers, then this one")
    rotate.add_argument("--chain", metavar="FILE", help="the chain of earlier rotations, whose newest key is --key's")
    rotate.add_argument(
        "--old-valid-days", type=whole(0, 3650), default=30, metavar="DAYS",
        help="days the old key still signs releases gateways accept, once they know of the rollover (default %(default)s)",
    )
    rotate.set_defaults(func=run_rotate)

    verify = commands.add_parser("verify", help="check a bundle offline: signature, key, expiry, platform, version, every file")
    verify.add_argument("bundle", metavar="BUNDLE", help="the bundle directory")
    verify.add_argument("--key", required=True, metavar="PEM", help="the release public key (release.pub)")
    verify.add_argument("--target", help="check as a device of this target would, e.g. aarch64-cp311 ('this' = this machine)")
    verify.add_argument("--installed", metavar="VERSION", help="check as a device running this version would (downgrade, min_from)")
    verify.set_defaults(func=run_verify)

    fetch = commands.add_parser("fetch", help="download a release into the state directory and ask the installer for it")
    fetch.add_argument("url", metavar="URL", help="the bundle's base URL (its manifest.cose is URL/manifest.cose)")
    fetch.add_argument("--key", required=True, metavar="PEM", help="the release public key (/etc/ocn-edge/release.pub)")
    fetch.add_argument("--state", required=True, metavar="DIR", help="the gateway's state directory (/var/lib/ocn-edge)")
    fetch.add_argument("--opt", default="/opt/ocn-edge", metavar="DIR", help="the slots, to reuse the wheels installed there (default %(default)s)")
    fetch.add_argument("--ca", metavar="PEM", help="a CA bundle to trust for an https URL (the city's CA; default: the system's)")
    fetch.add_argument("--max-bytes", type=whole(0, 1 << 50), default=0, metavar="N", help="stop after N bytes today, resume later (0: no limit)")
    fetch.set_defaults(func=run_fetch)
    shows_usage(release)


def _private_key(path: str) -> Ed25519PrivateKey:
    if not Path(path).is_file():
        raise CommandError(f"--key {path}: no such file (make the release key with `ocn-edge release keygen --out DIR`)")
    try:
        return load_private_key(path)
    except KeyFileError as exc:
        raise CommandError(f"--key {exc}") from None


def _public_key(path: str) -> Ed25519PublicKey:
    if not Path(path).is_file():
        raise CommandError(f"--key {path}: no such file (the release public key is release.pub, from `ocn-edge release keygen`)")
    try:
        return load_public_key(path)
    except KeyFileError as exc:
        raise CommandError(f"--key {exc}") from None


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise CommandError(f"{path}: already exists; a release key is never replaced (devices trust its public half)") from None
    with os.fdopen(fd, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())


def run_keygen(args: argparse.Namespace) -> int:
    out = make_directory(args.out, option="--out", private=True)
    key = generate_keypair()
    for name in (RELEASE_KEY, RELEASE_PUB):
        if (out / name).exists():
            raise CommandError(f"{out / name}: already exists; a release key is never replaced (devices trust its public half)")
    _write_new(out / RELEASE_KEY, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), 0o600)
    _write_new(out / RELEASE_PUB, key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    print(f"release key id {key_id(key).hex()}: {out / RELEASE_KEY} (keep offline), {out / RELEASE_PUB} (install on gateways)")
    return 0


def run_build(args: argparse.Namespace) -> int:
    key = _private_key(args.key)
    spec = ReleaseSpec(
        version=args.version,
        min_from=args.min_from,
        valid_days=args.valid_days,
        allow_downgrade=args.allow_downgrade,
        rollback_safe=not args.not_rollback_safe,
        notes=args.notes,
    )
    for option, value in (("--version", spec.version), ("--min-from", spec.min_from)):
        try:
            parse_version(value, field=option)
        except Refused as exc:
            raise CommandError(str(exc).replace("manifest ", "", 1)) from None
    wheelhouse = Path(args.wheelhouse)
    if not wheelhouse.is_dir():
        raise CommandError(f"{wheelhouse}: no such directory (build the wheelhouse with `make wheelhouse`)")
    chain = _chain(args.rollover, "--rollover") if args.rollover else ()
    if chain and key_id(key) != _chain_head(chain):
        raise CommandError(f"--rollover {args.rollover}: its newest key is key id {_chain_head(chain).hex()}, not --key's ({key_id(key).hex()})")
    try:
        out = build_bundle(wheelhouse, Path(args.out), spec, key, delta_from=[Path(old) for old in args.delta_from], rollover=chain)
    except BundleError as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"--out {args.out}: {file_problem(exc)}") from None
    print(f"release {spec.version} (from {spec.min_from}) signed by key id {key_id(key).hex()}: {out}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    key = _public_key(args.key)
    bundle = Path(args.bundle)
    if not bundle.is_dir():
        raise CommandError(f"{bundle}: no such directory (a release bundle is the directory `ocn-edge release build` wrote)")
    target = this_target() if args.target == "this" else args.target
    try:
        manifest, trust = check_trusted_bundle(bundle, key, now=time.time(), target=target, installed=args.installed)
    except Refused as exc:
        print(f"ocn-edge: refused ({exc.reason}): {exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(
        f"release {manifest.version} verified: signed by key id {release_key_id((bundle / MANIFEST_FILE).read_bytes()).hex()}{_via(trust)}, "
        f"expires {time.strftime('%Y-%m-%d', time.gmtime(manifest.expires))}, "
        f"targets {', '.join(sorted(manifest.targets))}, {len(manifest.files)} files"
    )
    return 0


def run_fetch(args: argparse.Namespace) -> int:
    if args.ca and not Path(args.ca).is_file():
        raise CommandError(f"--ca {args.ca}: no such file (a PEM bundle of the CA certificates the hub's certificate chains to)")
    key = _public_key(args.key)
    state = make_directory(args.state, option="--state", private=True)
    try:
        outcome = fetch_release(args.url, key, state=state, opt=Path(args.opt), max_bytes=args.max_bytes, ca=args.ca)
    except Refused as exc:
        print(f"ocn-edge: refused ({exc.reason}): {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except FetchError as exc:
        print(f"ocn-edge: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    print(outcome.summary())
    return 0


def _chain(path: str, option: str) -> tuple[bytes, ...]:
    try:
        return read_chain(Path(path).read_bytes(), where=path)
    except OSError as exc:
        raise CommandError(f"{option} {path}: {file_problem(exc)}") from None
    except Refused as exc:
        raise CommandError(f"{option} {exc}") from None


def _chain_head(chain: tuple[bytes, ...]) -> bytes:
    try:
        return newest_key_id(chain)
    except Refused as exc:
        raise CommandError(f"the rollover chain: {exc}") from None


def _via(trust: Trust) -> str:
    return f" (through {len(trust.chain)} rollover(s) from key id {key_id(trust.anchor).hex()})" if trust.chain else ""


def run_rotate(args: argparse.Namespace) -> int:
    old = _private_key(args.key)
    new = _public_key(args.new)
    chain = _chain(args.chain, "--chain") if args.chain else ()
    if chain and _chain_head(chain) != key_id(old):
        raise CommandError(f"--chain {args.chain}: its newest key is key id {_chain_head(chain).hex()}, not --key's ({key_id(old).hex()})")
    if key_id(new) == key_id(old):
        raise CommandError(f"--new {args.new}: the same key as --key; make a new one with `ocn-edge release keygen --out NEWDIR`")
    now = int(time.time())
    rollover = seal_rollover(old, new, issued=now, old_key_until=now + args.old_valid_days * 86_400)
    out = Path(args.out)
    try:
        with out.open("xb") as stream:
            stream.write(cbor2.dumps([*chain, rollover]))
    except FileExistsError:
        raise CommandError(f"--out {args.out}: already exists; write the longer chain to a new file") from None
    except OSError as exc:
        raise CommandError(f"--out {args.out}: {file_problem(exc)}") from None
    print(
        f"rollover from key id {key_id(old).hex()} to {key_id(new).hex()} ({len(chain) + 1} in the chain): {out}; "
        f"build releases with --key NEW.key --rollover {out}; gateways accept key id {key_id(old).hex()} for {args.old_valid_days} more day(s) "
        "once they hold the rollover"
    )
    return 0

"""`ocn-edge hub key rotate|switch|status|ca`: rotate the hub's desired-document key and the CA gateways trust (hub.hubkey).

Registered by hub.cli; what they change is audited as ``cli:<os user>`` like every hub command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from edge.commands import CommandError, file_problem
from hub.audit import cli_actor

__all__ = ["register"]

WithStore = Callable[[argparse.Namespace, Callable[[Any], Awaitable[int]]], int]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser, *,
             with_store: WithStore, state_dir: Callable[[argparse.Namespace], Path], usage: Callable[[argparse.ArgumentParser], Any]) -> None:
    group = commands.add_parser("key", help="rotate the hub's signing key and the CA gateways trust, over the signed desired documents")
    group.set_defaults(func=usage(group))
    key = group.add_subparsers(title="key commands", metavar="COMMAND")
    rotate = key.add_parser("rotate", parents=[common], help="make the next signing key and announce it to every gateway (step 1 of 2)")
    rotate.set_defaults(func=lambda args: _rotate(args, with_store, state_dir))
    switch = key.add_parser("switch", parents=[common], help="sign with the announced key from now on (step 2 of 2)")
    switch.set_defaults(func=lambda args: _switch(args, with_store, state_dir))
    status = key.add_parser("status", parents=[common], help="the signing key, an announced one, the CA bundle, and how many devices took them")
    status.set_defaults(func=lambda args: _status(args, with_store, state_dir))
    ca = key.add_parser("ca", parents=[common], help="give every gateway a CA bundle for the hub's https certificate (or stop giving one)")
    which = ca.add_mutually_exclusive_group(required=True)
    which.add_argument("--bundle", metavar="PEM", help="the CA certificates gateways trust from now on (during a change: the old and the new CA)")
    which.add_argument("--clear", action="store_true", help="give no bundle: gateways go back to their [uplink] ca")
    ca.set_defaults(func=lambda args: _ca(args, with_store))


def _now_ms() -> int:
    from edge.util.clock import now_ms

    return now_ms()


def _first_key(args: argparse.Namespace, state_dir: Callable[[argparse.Namespace], Path]) -> tuple[Path, Any]:
    from hub.fleet import load_or_create_signing_key

    state = state_dir(args)
    if not (state / "hub.key").is_file():
        raise CommandError(f"{state / 'hub.key'}: no hub key here; run the key commands with the hub's --state-dir")
    return state, load_or_create_signing_key(state / "hub.key")


def _rotate(args: argparse.Namespace, with_store: WithStore, state_dir: Callable[[argparse.Namespace], Path]) -> int:
    from hub.hubkey import announce_next_key

    return _key_step(args, with_store, state_dir, "rotate", lambda store, state, first: announce_next_key(store, state, actor=cli_actor(), now_ms=_now_ms()),
                     "next key id {} announced in every device's desired document; once `ocn-edge hub key status` shows "
                     "the devices took it, run `ocn-edge hub key switch`")


def _switch(args: argparse.Namespace, with_store: WithStore, state_dir: Callable[[argparse.Namespace], Path]) -> int:
    from hub.hubkey import switch_key

    return _key_step(args, with_store, state_dir, "switch", lambda store, state, first: switch_key(store, state, first, actor=cli_actor(), now_ms=_now_ms()),
                     "desired documents are signed with key id {} from now on; gateways that missed the announcement "
                     "follow the rollover every document carries")


def _key_step(args: argparse.Namespace, with_store: WithStore, state_dir: Callable[[argparse.Namespace], Path], name: str,
              step: Callable[[Any, Path, Any], Awaitable[Any]], done: str) -> int:
    """One step of a key rotation: run it on the store, print `done` with the new key's id, or the refusal."""
    from edge.protocol.keys import key_id
    from hub.hubkey import KeyRotationError

    state, first = _first_key(args, state_dir)

    async def work(store: Any) -> int:
        try:
            new = await step(store, state, first)
        except KeyRotationError as exc:
            print(f"ocn-edge hub key {name}: {exc}", file=sys.stderr)
            return 1
        print(done.format(key_id(new).hex()))
        return 0

    return with_store(args, work)


def _status(args: argparse.Namespace, with_store: WithStore, state_dir: Callable[[argparse.Namespace], Path]) -> int:
    from hub.fleet import TRUST_KEY, desired_document
    from hub.hubkey import describe, trust_document

    state, first = _first_key(args, state_dir)

    async def work(store: Any) -> int:
        trust = await trust_document(store)
        for line in describe(state, first, trust):
            print(line)
        active = [device for device in await store.devices() if device.status == "active"]
        known = dict(await store.desired_documents())
        behind = []
        for device in active:
            for key in (("fleet", device.fleet), ("device", device.device_id), ("software", device.device_id), TRUST_KEY):
                known.setdefault(key, None)  # every document was read above: none set means none, not another read
            _, etag = await desired_document(store, device, known=known)
            if device.applied_etag != etag:
                behind.append(device.device_id)
        print(f"{len(active) - len(behind)} of {len(active)} active devices applied their current desired document"
              + (f"; not yet: {', '.join(behind[:20])}{' …' if len(behind) > 20 else ''}" if behind else ""))
        return 0

    return with_store(args, work)


def _ca(args: argparse.Namespace, with_store: WithStore) -> int:
    from hub.hubkey import KeyRotationError, set_ca

    bundle = None
    if args.bundle:
        try:
            bundle = Path(args.bundle).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"--bundle {args.bundle}: {file_problem(exc) if isinstance(exc, OSError) else 'not a text PEM file'}") from None
        from edge.protocol.hubtrust import TrustError, parse_trust

        try:
            parse_trust({"ca": bundle})
        except TrustError as exc:  # before the database is opened
            raise CommandError(f"--bundle {args.bundle}: {str(exc).replace('desired trust.ca: ', '')}") from None

    async def work(store: Any) -> int:
        try:
            await set_ca(store, bundle, actor=cli_actor(), now_ms=_now_ms())
        except KeyRotationError as exc:
            print(f"ocn-edge hub key ca: --bundle {args.bundle}: {exc}", file=sys.stderr)
            return 1
        print("CA bundle given to every gateway in its signed desired document" if bundle else "no CA bundle given any more")
        return 0

    return with_store(args, work)

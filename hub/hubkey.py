"""The key the hub signs desired documents with, and rotating it (and the CA gateways trust) without visiting a gateway.

Gateways pin the hub's desired-document key on first use. A rotation (docs/updates.md, "Rotating
the hub's key and CA") goes in two steps, both over the signed desired channel:

1. ``ocn-edge hub key rotate`` makes the next key (``hub.next.key`` in the state directory) and
   announces its public half in every device's document (``trust.next_hub_key``, protocol §8.4),
   signed with the current key. Gateways keep it and accept documents signed with either.
2. ``ocn-edge hub key switch`` makes it the signing key (``hub.signing.key``) and appends a link
   to ``hub.rollover.json``: the new key signed by the old. Every signed document carries that
   chain from then on, so a gateway that missed step 1 — offline, say — follows it from the key it
   pinned. Hub processes sharing the state directory take the new key at their next signature.

``hub.key`` stays: it is the hub's first key, from which the broker passwords of MQTT gateways are
derived (hub.brokerauth), so they do not change with a rotation.

The trust part of the documents is a desired row of scope ``trust`` (name ``hub``), so it changes
every device's ETag at once, is audited like any desired document, and every hub process sees it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge.protocol.desired import ISSUED, clear_document, sign_document
from edge.protocol.hubtrust import CA, KEY_ID, NEXT_KEY, ROLLOVER, TrustError, parse_trust, pem, rollover_link
from edge.protocol.keys import key_id
from edge.util.clock import now_ms
from hub.dbwords import database_problem
from hub.store import Store

__all__ = ["CHAIN_FILE", "NEXT_FILE", "SIGNING_FILE", "TRUST_KEY", "DesiredSigner", "KeyRotationError", "announce_next_key", "describe", "set_ca", "switch_key",
           "trust_document"]

NEXT_FILE = "hub.next.key"
SIGNING_FILE = "hub.signing.key"  # after a switch; until then hub.key signs
CHAIN_FILE = "hub.rollover.json"
TRUST_KEY = ("trust", "hub")  # the desired row whose document is every device's "trust" part
DATES_SETTING = "desired_issued_ms"  # the latest date on a desired document any hub process signed (OXP §8.4)
DATES_SYNC_S = 10.0

log = logging.getLogger("ocn.hub")


class KeyRotationError(Exception):
    """A rotation step that cannot be taken now; the message says what to do instead."""


def _load(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyRotationError(f"{path}: holds a {type(key).__name__}; the hub's signing keys are Ed25519")
    return key


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


class DesiredSigner:
    """Signs desired documents with the hub's current key, with the rollover chain once the hub has switched keys."""

    def __init__(self, state: Path | None, first: Ed25519PrivateKey) -> None:
        self.state, self.first = state, first
        self._seen: tuple[int, int] | None = None
        self._key: Ed25519PrivateKey = first
        self._chain: list[dict[str, str]] = []
        # Dates (OXP §8.4), whatever a clock does: after the latest date the store holds (``_stored``: what any hub process
        # sharing it signed, this one's earlier runs included; kept there by keep_dates), not before the latest this process
        # signed (``_latest``), and never twice the same for one device.
        self._stored = 0
        self._latest = 0
        self._last: dict[str, int] = {}

    def _files(self) -> tuple[int, int]:
        assert self.state is not None
        marks = []
        for name in (SIGNING_FILE, CHAIN_FILE):
            try:
                marks.append((self.state / name).stat().st_mtime_ns)
            except FileNotFoundError:
                marks.append(0)
        return marks[0], marks[1]

    def key(self) -> Ed25519PrivateKey:
        """The key documents are signed with now (the files are looked at on each call: a switch by the CLI takes effect at once)."""
        if self.state is None:
            return self.first
        marks = self._files()
        if marks != self._seen:
            self._key = _load(self.state / SIGNING_FILE) if marks[0] else self.first
            self._chain = json.loads((self.state / CHAIN_FILE).read_text()) if marks[1] else []
            self._seen = marks
        return self._key

    def chain(self) -> list[dict[str, str]]:
        """The rollover chain, oldest link first ([] before the first switch)."""
        self.key()
        return list(self._chain)

    def sign(self, document: Mapping[str, Any]) -> dict[str, Any]:
        """``document`` signed, with its date (``issued_ms``, OXP §8.4): a gateway ignores one dated before the document it
        has in force, so a document the hub signed before cannot be played to it again."""
        return self._signed({**document, ISSUED: self._issue(str(document["device_id"]))})

    def sign_clear(self, device_id: str) -> dict[str, Any]:
        """The signed clear: nothing is desired for ``device_id`` any more (sent with the ETag ""), dated like a document."""
        return self._signed(clear_document(device_id, self._issue(device_id)))

    def _issue(self, device_id: str) -> int:
        """The hub's clock, unless that is before the latest date signed (a clock stepped back, another process's clock ahead,
        a restart), or not after this device's last date."""
        issued = max(now_ms(), self._stored + 1, self._latest, self._last.get(device_id, -1) + 1)
        self._last[device_id] = issued
        self._latest = max(self._latest, issued)
        return issued

    async def sync_dates(self, store: Store) -> None:
        """Share the latest date signed through the store: taken from it (at start: a hub never dates before its last run did,
        nor before its peers), and raised in it, never lowered, when this process signed later (Store.raise_setting)."""
        if self._latest > self._stored:
            known = await store.raise_setting(DATES_SETTING, self._latest)
        else:
            stored = await store.get_setting(DATES_SETTING)
            known = int(stored) if stored is not None and stored.isascii() and stored.isdigit() else 0
        self._stored = max(self._stored, known)

    async def share_dates_at_stop(self, store: Store) -> None:
        """sync_dates once more as the hub stops, so its next start dates after what this run signed; whatever fails is said."""
        try:
            await self.sync_dates(store)
        except Exception as exc:  # a stop goes on whatever the database does
            log.warning("desired dates not shared with the store at stop", extra={"error": database_problem(exc)})

    async def keep_dates(self, store: Store, *, every_s: float = DATES_SYNC_S) -> None:
        """sync_dates every ``every_s`` until cancelled; a failed round is logged once, the next success once.  The hub also
        syncs once more as it stops: only a process killed within ``every_s`` of signing can leave a date unshared."""
        failing = False
        while True:
            await asyncio.sleep(every_s)
            try:
                await self.sync_dates(store)
            except Exception as exc:  # whatever the database raises, the dates must outlive it
                if not failing:
                    log.warning("desired dates not shared with the store; trying again", extra={"error": database_problem(exc)})
                    failing = True
            else:
                if failing:
                    log.info("desired dates shared with the store again")
                    failing = False

    def _signed(self, document: Mapping[str, Any]) -> dict[str, Any]:
        signed = sign_document(document, self.key())
        if self._chain:
            signed[ROLLOVER] = self._chain
        return signed


async def trust_document(store: Store) -> dict[str, Any]:
    """The trust part devices get now ({} when nothing is announced)."""
    row = await store.desired(*TRUST_KEY)
    return dict(row[0]) if row else {}


async def _set_trust(store: Store, trust: Mapping[str, Any], *, actor: str, now_ms: int) -> None:
    await store.set_desired(*TRUST_KEY, dict(trust) or None, now_ms=now_ms, actor=actor)


async def announce_next_key(store: Store, state: Path, *, actor: str, now_ms: int) -> Ed25519PrivateKey:
    """Step 1: make the next key and put its public half in every device's document."""
    path = state / NEXT_FILE
    if path.exists():
        raise KeyRotationError(f"{path}: a next key is announced already; finish with `ocn-edge hub key switch` (after gateways took it)")
    key = Ed25519PrivateKey.generate()
    _write_private(path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    await _set_trust(store, {**await trust_document(store), NEXT_KEY: pem(key).decode()}, actor=actor, now_ms=now_ms)
    return key


async def switch_key(store: Store, state: Path, first: Ed25519PrivateKey, *, actor: str, now_ms: int) -> Ed25519PrivateKey:
    """Step 2: sign with the announced key from now on; the chain vouches for it to gateways that missed the announcement.

    Order, so that a stop anywhere leaves a hub whose documents gateways accept: the chain (harmless while the old
    key signs), then the key file, then the announcement is taken out of the documents. Run again, it finishes."""
    trust = await trust_document(store)
    path = state / NEXT_FILE
    signer = DesiredSigner(state, first)
    if not path.exists():
        if trust.get(NEXT_KEY) == pem(signer.key()).decode():  # stopped after the key file: finish the last step
            trust.pop(NEXT_KEY)
            await _set_trust(store, {**trust, KEY_ID: key_id(signer.key()).hex()}, actor=actor, now_ms=now_ms)
            return signer.key()
        raise KeyRotationError("no next key is announced; start a rotation with `ocn-edge hub key rotate`")
    new = _load(path)
    chain = signer.chain()
    if not chain or chain[-1]["key"] != pem(new).decode():
        chain.append(rollover_link(signer.key(), new.public_key()))
        _write_private(state / CHAIN_FILE, json.dumps(chain, indent=1).encode())  # public, but nobody else's to change
    os.replace(path, state / SIGNING_FILE)
    trust.pop(NEXT_KEY, None)
    # The key id in every document changes every ETag, so each gateway gets a document signed by the new key (and the
    # chain) now, not at the next change of its config: it pins the new key while the chain is fresh in its mind.
    await _set_trust(store, {**trust, KEY_ID: key_id(new).hex()}, actor=actor, now_ms=now_ms)
    return new


async def set_ca(store: Store, bundle: str | None, *, actor: str, now_ms: int) -> None:
    """Give every device this CA bundle for the hub's https certificate (None: stop giving one; gateways go back to [uplink] ca)."""
    trust = await trust_document(store)
    if bundle is None:
        trust.pop(CA, None)
    else:
        try:
            parse_trust({CA: bundle})
        except TrustError as exc:
            raise KeyRotationError(str(exc).replace("desired trust.ca", "the CA bundle")) from None
        trust[CA] = bundle
    await _set_trust(store, trust, actor=actor, now_ms=now_ms)


def describe(state: Path, first: Ed25519PrivateKey, trust: Mapping[str, Any]) -> list[str]:
    """What `hub key status` prints: the signing key, an announced next key, the chain's length, the CA bundle given."""
    signer = DesiredSigner(state, first)
    lines = [f"signing desired documents with key id {key_id(signer.key()).hex()}"
             f"{' (hub.signing.key)' if (state / SIGNING_FILE).exists() else ' (hub.key)'}; {len(signer.chain())} rollover(s) in {CHAIN_FILE}"]
    if (state / NEXT_FILE).exists():
        lines.append(f"next key id {key_id(_load(state / NEXT_FILE)).hex()} announced; `ocn-edge hub key switch` once gateways took it")
    if trust.get(CA):
        lines.append(f"CA bundle given to gateways: {str(trust[CA]).count('BEGIN CERTIFICATE')} certificate(s)")
    return lines

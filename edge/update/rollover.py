"""Release key rollovers: a new release key, vouched for by the key before it, so gateways follow a rotation without a visit.

Gateways hold one release key they were installed with (/etc/ocn-edge/release.pub, the anchor).
When city IT retires that key it signs a **rollover** with it: the new public key, when it was
issued and until when the old key stays good for manifests (docs/updates.md, "Rotating the
release key"). Rollovers chain — each signed by the key the one before introduced — and travel as
``rollover.cbor`` (a CBOR array of the signed rollovers, oldest first) inside every bundle signed
by a newer key, so a gateway that slept through any number of rotations walks from its anchor to
the key of today's manifest. A rollover never expires (a gateway offline for years must still
follow it); what expires is the old key's standing: from ``old_key_until`` on, a manifest signed
by it is refused by a gateway that has seen the rollover.

A gateway keeps the longest chain it has verified in ``<state>/update/rollover.cbor``, so a key
retired there stays retired even for a bundle that comes without the chain.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edge.protocol.errors import ProtocolError, show
from edge.protocol.keys import key_id, raw_public_key
from edge.protocol.release import open_release, release_key_id, seal_release
from edge.update.manifest import FORMAT, MANIFEST_FILE, Manifest, Refused, check_bundle, read_manifest

__all__ = [
    "MAX_CHAIN_BYTES",
    "ROLLOVER_FILE",
    "ROLLOVER_PRODUCT",
    "Trust",
    "check_trusted_bundle",
    "check_trusted_manifest",
    "extend_chain",
    "key_for",
    "load_chain",
    "newest_key_id",
    "read_chain",
    "seal_rollover",
    "trust_from",
]

ROLLOVER_FILE = "rollover.cbor"  # in a bundle beside manifest.cose, and in the gateway's <state>/update
ROLLOVER_PRODUCT = "ocn-edge-release-key"  # not "ocn-edge": a rollover is never read as a manifest, nor the reverse
MAX_CHAIN_BYTES = 64 * 1024  # a rollover is about 200 bytes: room for centuries of rotations


@dataclass(frozen=True, slots=True)
class Trust:
    """The release keys a device trusts now: the newest key of its chain, and older ones until their ``old_key_until``."""

    keys: dict[bytes, tuple[Ed25519PublicKey, float | None]]  # key id -> (key, good until; None: no end); the anchor first
    chain: tuple[bytes, ...]  # the rollovers walked, oldest first

    @property
    def anchor(self) -> Ed25519PublicKey:
        return next(iter(self.keys.values()))[0]

    @property
    def newest(self) -> Ed25519PublicKey:
        return list(self.keys.values())[-1][0]

    def key_for(self, kid: bytes, *, now: float) -> Ed25519PublicKey:
        """The trusted key with id ``kid``; Refused("wrong_key") naming why not."""
        found = self.keys.get(kid)
        if found is None:
            known = ", ".join(k.hex() for k in self.keys)
            raise Refused("wrong_key", f"signed by key id {kid.hex()}, which is not a release key this device trusts (key ids {known}, "
                                       "with the rollovers it holds)")
        key, until = found
        if until is not None and now >= until:
            raise Refused("wrong_key", f"signed by key id {kid.hex()}, a release key retired by a rollover at {int(until)} (now {int(now)})")
        return key


def seal_rollover(old: Ed25519PrivateKey, new: Ed25519PublicKey, *, issued: int, old_key_until: int) -> bytes:
    """A rollover to ``new``, signed by ``old`` (COSE_Sign1 under the release header, as manifests are)."""
    if not issued <= old_key_until < 1 << 40:
        raise ValueError(f"old_key_until = {old_key_until}: expected at or after issued ({issued})")
    return seal_release(
        {"format": FORMAT, "product": ROLLOVER_PRODUCT, "new_key": raw_public_key(new), "issued": issued, "old_key_until": old_key_until},
        old,
    )


def read_chain(data: bytes, *, where: str) -> tuple[bytes, ...]:
    """The rollovers in a ``rollover.cbor``, unverified; Refused("malformed") naming ``where`` when it is not one."""
    if len(data) > MAX_CHAIN_BYTES:
        raise Refused("malformed", f"{where}: {len(data)} bytes, over {MAX_CHAIN_BYTES}: not a rollover chain")
    try:
        chain = cbor2.loads(data)
    except (cbor2.CBORDecodeError, RecursionError, ValueError) as exc:
        raise Refused("malformed", f"{where}: not CBOR ({exc})") from None
    if not isinstance(chain, list) or not all(type(item) is bytes for item in chain):
        raise Refused("malformed", f"{where}: expected a CBOR array of signed rollovers, got {show(chain)}")
    return tuple(chain)


def newest_key_id(chain: Sequence[bytes]) -> bytes:
    """The key id of a chain's newest key (its last rollover's new key), read WITHOUT verifying: for checking what city IT passes
    to `release build` and `release rotate` before signing; a gateway always walks the chain (trust_from)."""
    try:
        envelope = cbor2.loads(chain[-1])
        raw = cbor2.loads(envelope.value[2])
        return key_id(Ed25519PublicKey.from_public_bytes(raw["new_key"]))
    except (IndexError, AttributeError, KeyError, TypeError, ValueError, cbor2.CBORDecodeError):
        raise Refused("malformed", "its last item is not a rollover `ocn-edge release rotate` wrote") from None


def load_chain(path: Path) -> tuple[bytes, ...]:
    """The chain kept in a file (nothing when there is none, or when it is unreadable: the anchor alone is trusted then)."""
    try:
        return read_chain(path.read_bytes(), where=str(path))
    except (OSError, Refused):
        return ()


def trust_from(anchor: Ed25519PublicKey, *chains: Sequence[bytes]) -> Trust:
    """The keys trusted from ``anchor`` along the longest of ``chains`` (the one a device kept, the one a bundle or server
    offers); Refused naming its first bad rollover.

    A chain the anchor does not start (a rollover signed by a key not yet trusted) is refused
    ``wrong_key``; a changed one ``bad_signature``. Each rollover retires the key that signed it
    at its ``old_key_until``."""
    chain: tuple[bytes, ...] = max((tuple(c) for c in chains), key=len, default=())
    head: Ed25519PublicKey = anchor
    keys: dict[bytes, tuple[Ed25519PublicKey, float | None]] = {}
    for n, rollover in enumerate(chain):
        new, until = _step(head, rollover, n)
        keys[key_id(head)] = (head, until)
        head = new
    keys[key_id(head)] = (head, None)
    return Trust(keys, chain)


def key_for(data: bytes, trust: Trust, *, now: float) -> Ed25519PublicKey:
    """The key to check a signed manifest with: the trusted key it names, or the anchor (whose check then names the refusal)."""
    try:
        kid = release_key_id(data)
    except ProtocolError:
        return trust.anchor
    return trust.key_for(kid, now=now) if kid in trust.keys else trust.anchor


def check_trusted_manifest(bundle: Path, anchor: Ed25519PublicKey, *, now: float | None = None) -> Manifest:
    """A bundle's manifest, its signature checked with the keys ``anchor`` leads to (its files are not read)."""
    trust = trust_from(anchor, *_bundle_chain(bundle))
    data = (bundle / MANIFEST_FILE).read_bytes()
    return read_manifest(data, key_for(data, trust, now=time.time() if now is None else now))


def _bundle_chain(bundle: Path) -> list[tuple[bytes, ...]]:
    path = bundle / ROLLOVER_FILE
    return [read_chain(path.read_bytes(), where=str(path))] if path.exists() else []


def check_trusted_bundle(bundle: Path, anchor: Ed25519PublicKey, *, now: float, kept: Path | None = None, **device: Any) -> tuple[Manifest, Trust]:
    """check_bundle with the keys ``anchor`` leads to through the bundle's rollover.cbor (and the chain ``kept``, a gateway's).

    ``device`` are check_bundle's target, installed and approved."""
    trust = trust_from(anchor, *([load_chain(kept)] if kept is not None else []), *_bundle_chain(bundle))
    try:
        data = (bundle / MANIFEST_FILE).read_bytes()
    except FileNotFoundError:
        data = b""
    return check_bundle(bundle, key_for(data, trust, now=now), now=now, **device), trust


def _step(head: Ed25519PublicKey, rollover: bytes, n: int) -> tuple[Ed25519PublicKey, float]:
    try:
        raw = open_release(rollover, head)
    except ProtocolError as exc:
        try:
            signer = release_key_id(rollover).hex()
        except ProtocolError:
            signer = "?"
        if exc.reason == "bad_signature" and signer != key_id(head).hex():
            raise Refused("wrong_key", f"rollover {n} is signed by key id {signer}, not by the key before it (key id {key_id(head).hex()})") from None
        raise Refused("bad_signature" if exc.reason == "bad_signature" else "malformed", f"rollover {n}: {exc}") from None
    new, issued, until = raw.get("new_key"), raw.get("issued"), raw.get("old_key_until")
    if (
        raw.get("format") != FORMAT
        or raw.get("product") != ROLLOVER_PRODUCT
        or type(new) is not bytes
        or len(new) != 32
        or type(issued) is not int
        or type(until) is not int
        or not 0 <= issued <= until
    ):
        raise Refused("malformed", f"rollover {n} = {show(raw)}: expected format 1, product {ROLLOVER_PRODUCT!r}, new_key (32 bytes), "
                                   "issued <= old_key_until")
    return Ed25519PublicKey.from_public_bytes(new), float(until)


def extend_chain(path: Path, trust: Trust) -> None:
    """Keep ``trust``'s chain in ``path`` when it is longer than the one there (write, fsync, rename)."""
    if len(trust.chain) <= len(load_chain(path)):
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as stream:
        stream.write(cbor2.dumps(list(trust.chain)))
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(tmp, path)
